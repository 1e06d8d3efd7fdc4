"""Intervals of validity (IoVs) of conditions payloads.

An IoV is ``(exp_low, run_low, exp_high, run_high)``. ``-1`` in both high fields means open-ended,
and ``(0, 0, -1, -1)`` means valid for every run. Experiment and run numbers are at most
:data:`MAX_NUMBER`, because basf2's ``IntervalOfValidity`` and the plugin database store them as
signed 32-bit integers.
"""

from __future__ import annotations

from dataclasses import dataclass

OPEN = -1
MAX_NUMBER = 2**31 - 1


@dataclass(frozen=True, order=True)
class IoV:
    """An interval of validity, inclusive at both ends."""

    exp_low: int
    run_low: int
    exp_high: int = OPEN
    run_high: int = OPEN

    def __post_init__(self) -> None:
        for field, value in zip(("exp_low", "run_low"), (self.exp_low, self.run_low), strict=True):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"IoV {field} must be a non-negative integer, got {value!r}")
        for field, value in zip(("exp_low", "run_low", "exp_high", "run_high"), self.as_list(), strict=True):
            if not isinstance(value, int) or value > MAX_NUMBER:
                raise ValueError(
                    f"IoV {field} {value!r} is out of range: experiment and run numbers are integers "
                    f"from 0 to {MAX_NUMBER}, and -1 in both high fields means open-ended"
                )
        open_end = self.exp_high == OPEN and self.run_high == OPEN
        if not open_end and (self.exp_high < 0 or self.run_high < OPEN):
            raise ValueError(
                f"IoV high end {self.exp_high},{self.run_high} is invalid: use -1,-1 for open-ended, "
                "exp,-1 for the end of an experiment, or two non-negative numbers"
            )
        if not open_end and self.last_key() < self.first:
            raise ValueError(f"IoV {self.as_text()} ends before it starts: swap or correct its ends")

    @classmethod
    def parse(cls, text: str) -> IoV:
        """Parse ``"e1,r1,e2,r2"`` as written in ``database.txt`` and the conditions database URLs."""
        parts = [part.strip() for part in text.split(",")]
        if len(parts) != 4:
            raise ValueError(f"IoV {text!r} must have four comma-separated integers e1,r1,e2,r2")
        try:
            numbers = [int(part) for part in parts]
        except ValueError:
            raise ValueError(f"IoV {text!r} must have four comma-separated integers e1,r1,e2,r2") from None
        return cls(*numbers)

    @classmethod
    def from_list(cls, values: list[int] | tuple[int, ...]) -> IoV:
        """Build an IoV from a list of four integers, as in ``requested_iov`` of ``caf_config.json``.

        :raises ValueError: for anything but a list or tuple of four integers; ``24.5``, ``True`` and
            ``"24"`` are refused rather than turned into other run numbers.
        """
        if not isinstance(values, list | tuple) or len(values) != 4:
            raise ValueError(f"IoV {values!r} must be a list of exactly four integers [e1, r1, e2, r2]")
        wrong = [value for value in values if isinstance(value, bool) or not isinstance(value, int)]
        if wrong:
            raise ValueError(f"IoV {list(values)!r} contains {wrong[0]!r}, which is not an integer")
        return cls(*values)

    @property
    def first(self) -> tuple[int, int]:
        """The first ``(exp, run)`` the IoV covers."""
        return (self.exp_low, self.run_low)

    @property
    def is_open_ended(self) -> bool:
        """Whether the IoV has no upper end."""
        return self.exp_high == OPEN and self.run_high == OPEN

    def last_key(self) -> tuple[float, float]:
        """Return the last ``(exp, run)`` covered, with infinity standing for an open end."""
        if self.is_open_ended:
            return (float("inf"), float("inf"))
        if self.run_high == OPEN:
            return (self.exp_high, float("inf"))
        return (self.exp_high, self.run_high)

    def contains(self, exp: int, run: int) -> bool:
        """Return whether run ``(exp, run)`` lies inside the IoV."""
        return self.first <= (exp, run) and (exp, run) <= self.last_key()

    def overlaps(self, other: IoV) -> bool:
        """Return whether the two IoVs share at least one run."""
        return self.first <= other.last_key() and other.first <= self.last_key()

    def as_list(self) -> list[int]:
        """Return ``[e1, r1, e2, r2]``."""
        return [self.exp_low, self.run_low, self.exp_high, self.run_high]

    def as_text(self) -> str:
        """Return ``"e1,r1,e2,r2"``."""
        return ",".join(str(value) for value in self.as_list())

    def __str__(self) -> str:
        return self.as_text()


def open_ended_from(exp: int, run: int) -> IoV:
    """Return the IoV that starts at ``(exp, run)`` and never ends, as prompt payloads use."""
    return IoV(exp, run, OPEN, OPEN)
