"""Decide who to remind when a ticket or a sign-off waits longer than its deadline.

Two waits have deadlines: an expert's ticket waiting to be closed after its payloads were uploaded,
and a clean readiness report waiting for the manager's sign-off. A wait past its deadline gets a
:class:`Reminder` for the person who must act, copied to the calibration manager, and again every
``repeat_every`` while it lasts. The functions here are pure; the reminder DAG reads the waits from
the plugin database and sends the reminders to Jira.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

TICKET = "ticket"
SIGN_OFF = "sign_off"
WaitKind = Literal["ticket", "sign_off"]
WaitKey = tuple[str, str, str]


@dataclass(frozen=True)
class DeadlineSettings:
    """How long a ticket and a sign-off may wait before a reminder, and how often to repeat it."""

    ticket_wait: timedelta = timedelta(days=3)
    sign_off_wait: timedelta = timedelta(days=1)
    repeat_every: timedelta = timedelta(days=1)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> DeadlineSettings:
        """Read ``ticket_hours``, ``sign_off_hours`` and ``repeat_hours``; missing keys keep their default.

        :raises ValueError: naming the key and value that is not a positive number of hours
        """
        known = {
            "ticket_hours": "ticket_wait",
            "sign_off_hours": "sign_off_wait",
            "repeat_hours": "repeat_every",
        }
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"deadline settings {unknown} are unknown; use {', '.join(known)}")
        values: dict[str, timedelta] = {}
        for key, attribute in known.items():
            if key not in data:
                continue
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"deadline setting {key}={value!r} must be a positive number of hours")
            values[attribute] = timedelta(hours=float(value))
        return cls(**values)

    def limit(self, kind: str) -> timedelta:
        """Return the deadline of a kind of wait."""
        return self.ticket_wait if kind == TICKET else self.sign_off_wait


@dataclass(frozen=True)
class Wait:
    """Something that waits for a person: an open ticket or a sign-off."""

    request_uid: str
    kind: str
    since: datetime
    #: The Jira username of the person who must act: the expert for a ticket, the manager for a sign-off.
    owner: str
    manager: str
    calibration: str | None = None
    ticket_key: str | None = None

    @property
    def key(self) -> WaitKey:
        """What identifies the wait across runs of the reminder DAG."""
        return (self.request_uid, self.kind, self.calibration or "")


@dataclass(frozen=True)
class Reminder:
    """A reminder due now for one wait."""

    wait: Wait
    waited: timedelta

    def jira_text(self) -> str:
        """Return the comment that reminds the owner and copies the manager, in Jira wiki markup."""
        hours = self.waited.total_seconds() / 3600
        since = self.wait.since.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
        copy = (
            f" [~{self.wait.manager}], for your information." if self.wait.manager != self.wait.owner else ""
        )
        owner, uid = self.wait.owner, self.wait.request_uid
        if self.wait.kind == TICKET:
            return (
                f"[~{owner}], the payloads of {self.wait.calibration} have been waiting for your check "
                f"since {since} ({hours:.0f} hours). Please check them and close this ticket: the "
                f"calibrations it blocks and the sign-off of request {uid} wait for it.{copy}"
            )
        return (
            f"[~{owner}], request {uid} has been ready for sign-off since {since} ({hours:.0f} hours). "
            f"Please approve or reject it in Airflow (task sign_off).{copy}"
        )


def as_utc(value: datetime) -> datetime:
    """Return a datetime in UTC; a naive one, as SQLite returns them, is taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def due_reminders(
    waits: Iterable[Wait],
    settings: DeadlineSettings,
    now: datetime,
    last_sent: Mapping[WaitKey, datetime],
) -> list[Reminder]:
    """Return the reminders due at ``now``.

    A wait gets one when it is older than its deadline and no reminder for it was sent during the
    last ``repeat_every``; a reminder sent before the wait began (for an earlier wait on the same
    ticket) does not count.
    """
    now = as_utc(now)
    due = []
    for wait in waits:
        since = as_utc(wait.since)
        waited = now - since
        if waited < settings.limit(wait.kind):
            continue
        last = last_sent.get(wait.key)
        if last is not None and as_utc(last) >= since and now - as_utc(last) < settings.repeat_every:
            continue
        due.append(Reminder(wait, waited))
    return due
