"""Jira webhook events: check their signature, read them, and record them for the waiting tickets.

Jira Cloud signs an admin webhook registered with a secret as ``X-Hub-Signature: sha256=<hex>``, the
HMAC-SHA256 of the raw body under the secret. :func:`check_signature` accepts nothing else: an
unsigned or wrongly signed call is rejected, because anyone who can reach the receiver could
otherwise send events.

A recorded event is an entry of the request's audit log (action :data:`EVENT_ACTION`), so the
webhook receiver (in the API server) and the ticket watchers (in the triggerer) share it through the
plugin database without a table of their own. A watcher that sees a newer entry for its request
searches Jira at once instead of waiting for its next poll; the event itself is only the wake-up
call, and the search result from Jira decides.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from b2cal.db.models import AuditEntry, CalibrationProgress, ProcessingRequest

log = logging.getLogger(__name__)

EVENT_ACTION = "jira_issue_updated"
EVENT_ACTOR = "jira-webhook"
SIGNATURE_HEADER = "X-Hub-Signature"
ISSUE_UPDATED = "jira:issue_updated"


class SignatureError(ValueError):
    """A webhook call whose signature is missing or wrong."""


@dataclass(frozen=True)
class IssueEvent:
    """The parts of a ``jira:issue_updated`` payload that the product uses."""

    webhook_event: str
    issue_key: str
    issue_id: str | None
    status: str | None
    status_category: str | None
    #: ``(from, to)`` status names when the event changed the status.
    status_change: tuple[str | None, str | None] | None
    user: str | None


def sign(secret: str, body: bytes) -> str:
    """Return the ``X-Hub-Signature`` value that Jira sends for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def check_signature(secret: str, body: bytes, header: str | None) -> None:
    """Raise :class:`SignatureError` unless ``header`` is the HMAC-SHA256 signature of ``body``."""
    if not secret:
        raise SignatureError("no webhook secret is configured, so no call can be trusted")
    if not header:
        raise SignatureError(f"the {SIGNATURE_HEADER} header is missing")
    method, _, digest = header.partition("=")
    if method.lower() != "sha256" or not digest:
        raise SignatureError(f"the {SIGNATURE_HEADER} header is not of the form sha256=<hex>")
    if not hmac.compare_digest(sign(secret, body), f"sha256={digest.lower()}"):
        raise SignatureError(f"the {SIGNATURE_HEADER} header does not match the body")


def parse_issue_event(payload: Any) -> IssueEvent:
    """Read an issue event payload; raise ``ValueError`` when it names no issue."""
    if not isinstance(payload, dict):
        raise ValueError("the webhook body is not a JSON object")
    issue = payload.get("issue")
    if not isinstance(issue, dict) or not issue.get("key"):
        raise ValueError("the webhook body has no issue key")
    status = ((issue.get("fields") or {}).get("status")) or {}
    change = None
    for item in (payload.get("changelog") or {}).get("items", []) or []:
        if isinstance(item, dict) and item.get("field") == "status":
            change = (item.get("fromString"), item.get("toString"))
    user = payload.get("user") or {}
    return IssueEvent(
        webhook_event=str(payload.get("webhookEvent") or ""),
        issue_key=str(issue["key"]),
        issue_id=str(issue["id"]) if issue.get("id") is not None else None,
        status=status.get("name"),
        status_category=(status.get("statusCategory") or {}).get("key"),
        status_change=change,
        user=user.get("name") or user.get("accountId") or user.get("displayName"),
    )


def record_issue_event(session: Session, event: IssueEvent, delivery: str | None = None) -> list[str]:
    """Add the event to the audit log of every request whose ticket it is; return those requests."""
    rows = session.execute(
        select(ProcessingRequest.uid, CalibrationProgress.calibration)
        .join(CalibrationProgress, CalibrationProgress.request_id == ProcessingRequest.id)
        .where(CalibrationProgress.ticket_key == event.issue_key)
    ).all()
    for uid, calibration in rows:
        message = f"Jira ticket {event.issue_key} updated"
        if event.status_change:
            message += f": status {event.status_change[0]} -> {event.status_change[1]}"
        session.add(
            AuditEntry(
                actor=EVENT_ACTOR,
                action=EVENT_ACTION,
                request_uid=uid,
                calibration=calibration,
                message=message,
                detail={
                    "issue_key": event.issue_key,
                    "status": event.status,
                    "status_category": event.status_category,
                    "user": event.user,
                    "delivery": delivery,
                },
            )
        )
    return [uid for uid, _ in rows]


def latest_issue_event(session: Session, request_uid: str) -> int:
    """Return the id of the request's newest recorded issue event, 0 when it has none."""
    value = session.scalar(
        select(func.max(AuditEntry.id)).where(
            AuditEntry.request_uid == request_uid, AuditEntry.action == EVENT_ACTION
        )
    )
    return int(value or 0)
