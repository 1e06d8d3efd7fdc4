"""Check the IoVs of global tags and plan the running update that signs off a bucket.

Pure functions over :class:`PayloadIoV` records, with no I/O. :mod:`b2cal.conddb` fetches the
records and applies the plans.

The running update merges a validated staging tag into the running (prompt) tag from the bucket's
first run ``(exp, run)`` on:

- Every open-ended IoV of the running tag that starts before the first run, and whose payload
  name is in the staging tag, is closed just before the first run. It then ends at
  ``(exp, run - 1)``, or at ``(exp - 1, -1)`` (the end of the previous experiment) when the first
  run is run 0.
- Every staging IoV is added to the running tag unchanged.

A plan is computed from the current contents of both tags. IoVs the running tag already has (same
payload, same IoV) are not added again, and IoVs already closed are not closed again. So planning
again after a partly applied update yields exactly the remaining operations.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from b2cal.iov import IoV

RunKey = tuple[float, float]
_INFINITY = float("inf")


class ProblemKind(StrEnum):
    """Kinds of :class:`TagProblem`."""

    OVERLAP = "overlap"
    GAP = "gap"
    WRONG_START = "wrong_start"
    NOT_OPEN_ENDED = "not_open_ended"
    MISSING_PAYLOAD = "missing_payload"
    RUNNING_CONFLICT = "running_conflict"


@dataclass(frozen=True)
class TagProblem:
    """A reason why a global tag is not fit for the running update."""

    kind: str
    payload: str
    message: str


@dataclass(frozen=True)
class PayloadIoV:
    """One IoV of one payload in a global tag."""

    payload_id: int
    name: str
    revision: int
    checksum: str
    #: Id of the IoV in the conditions database, ``None`` for an IoV not stored yet.
    iov_id: int | None
    iov: IoV


@dataclass(frozen=True)
class IoVToClose:
    """An open-ended IoV of the running tag and the closed IoV it becomes."""

    iov_id: int | None
    payload_id: int
    name: str
    revision: int
    old: IoV
    new: IoV

    @property
    def key(self) -> str:
        """A readable text that identifies this operation, as reports list it."""
        return f"close {self.name} rev {self.revision} (IoV id {self.iov_id}) {self.old} -> {self.new}"


@dataclass(frozen=True)
class IoVToAdd:
    """A staging IoV to add to the running tag."""

    payload_id: int
    name: str
    revision: int
    iov: IoV

    @property
    def key(self) -> str:
        """A readable text that identifies this operation, as reports list it."""
        return f"add {self.name} rev {self.revision} (payload id {self.payload_id}) {self.iov}"


@dataclass
class RunningUpdatePlan:
    """The operations of a running update, the problems that forbid it, and what was applied."""

    first_run: tuple[int, int]
    to_close: list[IoVToClose] = field(default_factory=list)
    to_add: list[IoVToAdd] = field(default_factory=list)
    #: Number of staging IoVs that the running tag already has.
    already_added: int = 0
    problems: list[TagProblem] = field(default_factory=list)
    staging_tag: str = ""
    running_tag: str = ""
    dry_run: bool = True
    #: Whether the operations were applied to the conditions database.
    applied: bool = False

    @property
    def ok(self) -> bool:
        """Whether no problem forbids the update."""
        return not self.problems

    @property
    def is_empty(self) -> bool:
        """Whether there is nothing left to do."""
        return not self.to_close and not self.to_add

    def operation_keys(self) -> list[str]:
        """Return the key of every operation, closes first, in the order they are listed."""
        return [item.key for item in self.to_close] + [item.key for item in self.to_add]

    def unapproved(self, approved: Iterable[str]) -> list[str]:
        """Return the keys of the operations that are not among ``approved``.

        A plan computed again after a partly applied update lists a subset of the first plan's
        operations, so it passes; an operation that appeared since the approval does not.
        """
        allowed = set(approved)
        return [key for key in self.operation_keys() if key not in allowed]

    def summary(self) -> str:
        """Return a one-line description for logs and reports."""
        if self.dry_run:
            mode = "dry run"
        elif self.applied:
            mode = "applied"
        else:
            mode = "to apply"
        return (
            f"running update {self.staging_tag or '<staging>'} -> {self.running_tag or '<running>'} from run "
            f"{self.first_run[0]},{self.first_run[1]} ({mode}): close {len(self.to_close)} IoVs, add "
            f"{len(self.to_add)}, {self.already_added} already added, {len(self.problems)} problems"
        )


def fingerprint(iovs: Iterable[PayloadIoV]) -> str:
    """Return a SHA-256 hex digest of a tag's contents: every payload id, checksum and IoV.

    Two reads of a tag give the same fingerprint exactly when no IoV was added, removed or changed
    in between; the tag's state does not count.
    """
    lines = sorted(
        f"{item.name}|{item.payload_id}|{item.revision}|{item.checksum}|{item.iov_id}|{item.iov}"
        for item in iovs
    )
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def end_before(first_run: tuple[int, int]) -> tuple[int, int]:
    """Return the IoV end ``(exp, run)`` just before ``first_run``.

    It is ``(exp, run - 1)``, or ``(exp - 1, -1)`` (the end of the previous experiment) for run 0.

    :raises ValueError: for ``(0, 0)``, which has no run before it
    """
    exp, run = first_run
    if run > 0:
        return (exp, run - 1)
    if exp > 0:
        return (exp - 1, -1)
    raise ValueError("first run 0,0 has no run before it: a running update cannot start at 0,0")


def _after(key: RunKey) -> RunKey:
    """Return the first run after ``key``; an experiment's end is followed by its successor's run 0."""
    exp, run = key
    if run == _INFINITY:
        return (exp + 1, 0)
    return (exp, run + 1)


def _key_text(key: RunKey) -> str:
    exp, run = key
    if exp == _INFINITY:
        return "the open end"
    return f"{int(exp)},{-1 if run == _INFINITY else int(run)}"


def _by_name(iovs: Iterable[PayloadIoV]) -> dict[str, list[PayloadIoV]]:
    grouped: dict[str, list[PayloadIoV]] = defaultdict(list)
    for item in iovs:
        grouped[item.name].append(item)
    for items in grouped.values():
        items.sort(key=lambda item: (item.iov.first, item.iov.last_key()))
    return dict(sorted(grouped.items()))


def find_overlaps_and_gaps(iovs: Iterable[PayloadIoV]) -> list[TagProblem]:
    """Return every overlap and every gap between the IoVs of each payload name."""
    problems = []
    for name, items in _by_name(iovs).items():
        reach = items[0]
        for item in items[1:]:
            if item.iov.first <= reach.iov.last_key():
                problems.append(
                    TagProblem(
                        ProblemKind.OVERLAP,
                        name,
                        f"Payload {name}: IoV {item.iov} (revision {item.revision}) overlaps IoV {reach.iov} "
                        f"(revision {reach.revision})",
                    )
                )
            elif item.iov.first > _after(reach.iov.last_key()):
                problems.append(
                    TagProblem(
                        ProblemKind.GAP,
                        name,
                        f"Payload {name}: no IoV covers the runs from "
                        f"{_key_text(_after(reach.iov.last_key()))} to before {_key_text(item.iov.first)}, "
                        f"between IoVs {reach.iov} and {item.iov}",
                    )
                )
            if item.iov.last_key() > reach.iov.last_key():
                reach = item
    return problems


def check_staging_tag(
    iovs: Iterable[PayloadIoV],
    first_run: tuple[int, int],
    expected_payloads: Iterable[str] = (),
    require_open_ended: bool = True,
) -> list[TagProblem]:
    """Return the problems that keep a staging tag from being merged into the running tag.

    :param iovs: the staging tag's IoVs
    :param first_run: the bucket's first ``(exp, run)``; every payload must start exactly there
    :param expected_payloads: payload names the bucket's calibrations produce; each must be present
    :param require_open_ended: whether each payload's last IoV must be open-ended, as prompt
        payloads are
    """
    items = list(iovs)
    problems = find_overlaps_and_gaps(items)
    for name, group in _by_name(items).items():
        start = min(item.iov.first for item in group)
        if start != tuple(first_run):
            problems.append(
                TagProblem(
                    ProblemKind.WRONG_START,
                    name,
                    f"Payload {name} starts at {start[0]},{start[1]}, "
                    f"but must start at the bucket's first run {first_run[0]},{first_run[1]}",
                )
            )
        last = max(group, key=lambda item: item.iov.last_key())
        if require_open_ended and not last.iov.is_open_ended:
            problems.append(
                TagProblem(
                    ProblemKind.NOT_OPEN_ENDED,
                    name,
                    f"Payload {name} ends with IoV {last.iov}; its last IoV must be open-ended (-1,-1)",
                )
            )
    present = {item.name for item in items}
    for name in sorted(set(expected_payloads) - present):
        problems.append(
            TagProblem(
                ProblemKind.MISSING_PAYLOAD,
                name,
                f"Payload {name} is produced by the bucket's calibrations but missing from the staging tag",
            )
        )
    return problems


def check_running_tag(
    running: Iterable[PayloadIoV], first_run: tuple[int, int], staging: Iterable[PayloadIoV] = ()
) -> list[TagProblem]:
    """Return the running tag's IoVs that conflict with an update starting at ``first_run``.

    An IoV conflicts when it starts at or after the first run, or is closed and ends at or after it.
    IoVs identical to a staging IoV (same payload and IoV) were added by an earlier, partly applied
    run of the same update and do not conflict.
    """
    added = {(item.payload_id, item.iov) for item in staging}
    first = (float(first_run[0]), float(first_run[1]))
    problems = []
    for item in running:
        if (item.payload_id, item.iov) in added:
            continue
        if item.iov.first >= first_run:
            problems.append(
                TagProblem(
                    ProblemKind.RUNNING_CONFLICT,
                    item.name,
                    f"Payload {item.name} in the running tag has IoV {item.iov}, "
                    f"which starts at or after the first run {first_run[0]},{first_run[1]} of the update",
                )
            )
        elif not item.iov.is_open_ended and item.iov.last_key() >= first:
            problems.append(
                TagProblem(
                    ProblemKind.RUNNING_CONFLICT,
                    item.name,
                    f"Payload {item.name} in the running tag has closed IoV {item.iov}, "
                    f"which ends at or after the first run {first_run[0]},{first_run[1]} of the update",
                )
            )
    return problems


def plan_running_update(
    running: Sequence[PayloadIoV],
    staging: Sequence[PayloadIoV],
    first_run: tuple[int, int],
    expected_payloads: Iterable[str] = (),
) -> RunningUpdatePlan:
    """Plan the running update of ``running`` with ``staging`` from ``first_run`` on.

    The plan lists the IoVs to close and to add, and the problems of both tags. It is computed even
    when there are problems, so a report can show both, but it must not be applied then.
    """
    first_run = (int(first_run[0]), int(first_run[1]))
    plan = RunningUpdatePlan(first_run=first_run)
    plan.problems = check_staging_tag(staging, first_run, expected_payloads) + check_running_tag(
        running, first_run, staging
    )

    staging_names = {item.name for item in staging}
    if first_run > (0, 0):
        close_exp, close_run = end_before(first_run)
        for item in sorted(running, key=lambda entry: (entry.name, entry.iov.first)):
            if item.name in staging_names and item.iov.is_open_ended and item.iov.first < first_run:
                closed = IoV(item.iov.exp_low, item.iov.run_low, close_exp, close_run)
                plan.to_close.append(
                    IoVToClose(item.iov_id, item.payload_id, item.name, item.revision, item.iov, closed)
                )

    present = {(item.payload_id, item.iov) for item in running}
    for item in sorted(staging, key=lambda entry: (entry.name, entry.iov.first)):
        if (item.payload_id, item.iov) in present:
            plan.already_added += 1
        else:
            plan.to_add.append(IoVToAdd(item.payload_id, item.name, item.revision, item.iov))
    return plan
