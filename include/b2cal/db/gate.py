"""Reads and writes of the sign-off gate: check results per calibration and sign-off rounds.

A sign-off round is one readiness report and the decision on it. Its state moves along
``blocked`` (the report is not clean) or ``open`` (waiting for the manager), then ``approved`` or
``rejected``, then for an approval ``merging`` and ``merged``. A round whose staging tag changed after
the report becomes ``invalidated``. Every change is also written to the audit log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from b2cal.catalog import Catalog
from b2cal.db.models import AuditEntry, CalibrationCheck, ProcessingRequest, SignOffRound, utcnow
from b2cal.db.store import NotFoundError, audit, get_request
from b2cal.deadlines import SIGN_OFF, TICKET, Wait, WaitKey, as_utc
from b2cal.validation import CheckResult

#: Audit actions of the sign-off gate.
ACTION_CHECKS = "validate_upload"
ACTION_REPORT = "readiness_report"
ACTION_AUTHORISED = "sign_off_authorised"
ACTION_REFUSED = "sign_off_refused"
ACTION_DECISION = "sign_off_decision"
ACTION_ACCEPTED = "sign_off_response_accepted"
ACTION_ROUND_STATE = "sign_off_state"
ACTION_REMINDER = "deadline_reminder"
#: The progress ticket state of a calibration whose payloads wait for the expert's check.
WAITING_FOR_EXPERT = "waiting_for_expert"

ROUND_STATES = ("blocked", "open", "approved", "rejected", "merging", "merged", "invalidated")


def save_checks(
    session: Session,
    uid: str,
    calibration: str,
    results: Iterable[CheckResult],
    *,
    attempt: int = 1,
    actor: str = "system",
) -> list[CalibrationCheck]:
    """Store the latest results of a calibration's checks, replacing the earlier ones, and audit them."""
    request = get_request(session, uid)
    results = list(results)
    session.execute(
        delete(CalibrationCheck).where(
            CalibrationCheck.request_id == request.id, CalibrationCheck.calibration == calibration
        )
    )
    rows = [
        CalibrationCheck(
            request_id=request.id,
            calibration=calibration,
            name=result.name,
            status=result.status,
            message=result.message,
            detail=dict(result.detail),
            attempt=attempt,
            checked_at=utcnow(),
        )
        for result in results
    ]
    session.add_all(rows)
    audit(
        session,
        actor,
        ACTION_CHECKS,
        request_uid=uid,
        calibration=calibration,
        message=", ".join(f"{result.name}={result.status}" for result in results),
        attempt=attempt,
    )
    return rows


def load_checks(session: Session, uid: str) -> dict[str, list[CheckResult]]:
    """Return the stored check results of every calibration of a request that has any."""
    request = get_request(session, uid)
    rows = session.scalars(
        select(CalibrationCheck)
        .where(CalibrationCheck.request_id == request.id)
        .order_by(CalibrationCheck.id)
    )
    found: dict[str, list[CheckResult]] = {}
    for row in rows:
        found.setdefault(row.calibration, []).append(
            CheckResult(row.name, row.status, row.message, dict(row.detail or {}))
        )
    return found


def clear_checks(session: Session, uid: str, calibrations: Iterable[str]) -> None:
    """Delete the check results of some calibrations, e.g. before they run again."""
    request = get_request(session, uid)
    session.execute(
        delete(CalibrationCheck).where(
            CalibrationCheck.request_id == request.id, CalibrationCheck.calibration.in_(list(calibrations))
        )
    )


def resolve_targets(
    items: Iterable[str], ticket_keys: Mapping[str, str], calibrations: Sequence[str]
) -> list[str]:
    """Return the calibrations that a list of ticket keys or calibration names refers to.

    Ticket keys match in any case, calibration names exactly. Blank items are skipped and each
    calibration is listed once, in the order of its first mention.

    :param ticket_keys: the ticket key of each calibration that has one
    :raises ValueError: naming each item that is neither, and what is accepted
    """
    by_key = {key.upper(): name for name, key in ticket_keys.items()}
    found, unknown = [], []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        if text in calibrations:
            found.append(text)
        elif text.upper() in by_key:
            found.append(by_key[text.upper()])
        else:
            unknown.append(text)
    if unknown:
        raise ValueError(
            f"{', '.join(repr(item) for item in unknown)} is neither a ticket key nor a calibration of the "
            f"request; use one of the ticket keys {', '.join(sorted(ticket_keys.values()))} "
            "or a calibration name"
        )
    return list(dict.fromkeys(found))


def resolve_reopen(request: ProcessingRequest, items: Iterable[str]) -> list[str]:
    """Return the calibrations of ``request`` that a rejection's ``reopen`` entries name.

    :raises ValueError: naming each entry that is neither a ticket key nor a calibration of the request
    """
    keys = {item.calibration: item.ticket_key for item in request.progress if item.ticket_key}
    return resolve_targets(items, keys, list(request.calibrations))


def round_number(session: Session, round_row: SignOffRound) -> int:
    """Return the ordinal of a stored round among its request's sign-off rounds, counting from 1.

    Rounds are numbered in the order they were stored, so the number is the one shown to users,
    while ``round_row.id`` stays the key that audit details store as ``round_id``.
    """
    earlier = select(func.count(SignOffRound.id)).where(
        SignOffRound.request_id == round_row.request_id, SignOffRound.id <= round_row.id
    )
    return int(session.scalar(earlier) or 0)


def add_round(
    session: Session,
    uid: str,
    *,
    clean: bool,
    staging_fingerprint: str,
    report: Mapping[str, Any],
    report_text: str,
    dag_run_id: str | None = None,
) -> SignOffRound:
    """Store a new readiness report as a round: ``open`` when it is clean, ``blocked`` otherwise.

    Rounds of the request that are still ``open`` or ``blocked`` become ``invalidated``, because a
    decision may only concern the newest report.
    """
    request = get_request(session, uid)
    for earlier in session.scalars(
        select(SignOffRound).where(
            SignOffRound.request_id == request.id, SignOffRound.state.in_(("open", "blocked"))
        )
    ):
        earlier.state = "invalidated"
    row = SignOffRound(
        request_id=request.id,
        dag_run_id=dag_run_id,
        state="open" if clean else "blocked",
        clean=clean,
        staging_fingerprint=staging_fingerprint,
        report=dict(report),
        report_text=report_text,
        comment="",
    )
    session.add(row)
    session.flush()
    audit(
        session,
        "system",
        ACTION_REPORT,
        request_uid=uid,
        message=f"round {round_number(session, row)}: {'clean' if clean else 'not clean'}",
        round_id=row.id,
        staging_fingerprint=staging_fingerprint,
        blockers=len(report.get("blockers", [])),
    )
    return row


def latest_round(session: Session, uid: str) -> SignOffRound | None:
    """Return the newest sign-off round of a request, or ``None``."""
    request = get_request(session, uid)
    return session.scalar(
        select(SignOffRound)
        .where(SignOffRound.request_id == request.id)
        .order_by(SignOffRound.id.desc())
        .limit(1)
    )


def require_round(session: Session, uid: str) -> SignOffRound:
    """Return the newest sign-off round of a request.

    :raises NotFoundError: when the request has no readiness report yet
    """
    row = latest_round(session, uid)
    if row is None:
        raise NotFoundError(f"processing request {uid!r} has no readiness report: run readiness_report first")
    return row


def set_round_state(
    session: Session,
    round_row: SignOffRound,
    state: str,
    *,
    actor: str = "system",
    message: str = "",
    **detail: Any,
) -> None:
    """Move a round to ``state`` and audit it."""
    if state not in ROUND_STATES:
        raise ValueError(f"sign-off state {state!r} is unknown; use one of {', '.join(ROUND_STATES)}")
    previous = round_row.state
    round_row.state = state
    audit(
        session,
        actor,
        ACTION_ROUND_STATE,
        request_uid=_uid(session, round_row),
        message=message or f"round {round_number(session, round_row)}: {previous} -> {state}",
        round_id=round_row.id,
        previous=previous,
        state=state,
        **detail,
    )


def record_decision(
    session: Session,
    round_row: SignOffRound,
    *,
    decision: str,
    user: str,
    at: datetime,
    comment: str = "",
    **detail: Any,
) -> None:
    """Store the manager's decision on a round and move it to ``approved`` or ``rejected``."""
    if decision not in ("Approve", "Reject"):
        raise ValueError(f"sign-off decision {decision!r} is unknown; use 'Approve' or 'Reject'")
    round_row.decision = decision
    round_row.decided_by = user
    round_row.decided_at = at
    round_row.comment = comment
    # A new dict, so that SQLAlchemy detects the change of the JSON column.
    round_row.report = {
        **(round_row.report or {}),
        "decision": {"decision": decision, "user": user, "at": at.isoformat(), "comment": comment, **detail},
    }
    audit(
        session,
        user,
        ACTION_DECISION,
        request_uid=_uid(session, round_row),
        message=f"{decision} round {round_number(session, round_row)}" + (f": {comment}" if comment else ""),
        round_id=round_row.id,
        decision=decision,
        decided_at=at.isoformat(),
        **detail,
    )
    set_round_state(session, round_row, "approved" if decision == "Approve" else "rejected", actor=user)


def record_response_attempt(
    session: Session,
    *,
    allowed: bool,
    user_id: str,
    user_name: str,
    roles: Iterable[str],
    dag_id: str,
    run_id: str,
    task_id: str,
    map_index: int,
    reason: str = "",
) -> AuditEntry:
    """Audit one attempt to respond to a sign-off task, as the API server's guard judged it."""
    request = session.scalar(select(ProcessingRequest).where(ProcessingRequest.dag_run_id == run_id))
    return audit(
        session,
        user_name,
        ACTION_AUTHORISED if allowed else ACTION_REFUSED,
        request_uid=request.uid if request is not None else None,
        message=reason or ("allowed to respond" if allowed else "rejected"),
        user_id=user_id,
        roles=sorted(roles),
        dag_id=dag_id,
        run_id=run_id,
        task_id=task_id,
        map_index=map_index,
    )


def record_accepted_response(
    session: Session,
    *,
    user_id: str,
    user_name: str,
    run_id: str,
    task_id: str,
    chosen_options: list[str],
    params_input: Mapping[str, Any],
    responded_at: datetime,
) -> AuditEntry:
    """Audit a sign-off response that Airflow accepted, with its content.

    The sign-off task reads it back when it starts again after a failure, so that a decision Airflow
    stored is applied instead of being asked for a second time.
    """
    request = session.scalar(select(ProcessingRequest).where(ProcessingRequest.dag_run_id == run_id))
    return audit(
        session,
        user_name,
        ACTION_ACCEPTED,
        request_uid=request.uid if request is not None else None,
        message=f"{user_name} responded {chosen_options} to {task_id} of {run_id}",
        user_id=user_id,
        run_id=run_id,
        task_id=task_id,
        chosen_options=list(chosen_options),
        params_input=dict(params_input),
        responded_at=responded_at.isoformat(),
    )


def unapplied_response(
    session: Session, *, uid: str, run_id: str, task_id: str, round_row: SignOffRound
) -> dict[str, Any] | None:
    """Return the newest response accepted for an open round and not yet applied to it, or ``None``.

    Only a response recorded after the round opened counts, and only while the round has no decision.
    The result has the keys of a human-in-the-loop event: ``chosen_options``, ``params_input``,
    ``responded_at`` and ``responded_by_user``.
    """
    if round_row.state != "open" or round_row.decision:
        return None
    opened = round_row.created_at
    entries = session.scalars(
        select(AuditEntry)
        .where(AuditEntry.request_uid == uid, AuditEntry.action == ACTION_ACCEPTED)
        .order_by(AuditEntry.id.desc())
    )
    for entry in entries:
        detail = entry.detail or {}
        if detail.get("run_id") != run_id or detail.get("task_id") != task_id:
            continue
        responded_at = datetime.fromisoformat(detail["responded_at"])
        if opened is not None and as_utc(responded_at) < as_utc(opened):
            return None
        return {
            "chosen_options": list(detail.get("chosen_options") or []),
            "params_input": dict(detail.get("params_input") or {}),
            "responded_at": responded_at,
            "responded_by_user": {"id": str(detail.get("user_id", "")), "name": entry.actor},
        }
    return None


def is_authorised_responder(
    session: Session, *, uid: str, user_id: str, user_name: str, run_id: str, task_id: str
) -> bool:
    """Return whether the guard let this user respond to this sign-off task of this run."""
    entries = session.scalars(
        select(AuditEntry).where(
            AuditEntry.request_uid == uid,
            AuditEntry.action == ACTION_AUTHORISED,
            AuditEntry.actor == user_name,
        )
    )
    return any(
        (entry.detail or {}).get("user_id") == user_id
        and (entry.detail or {}).get("run_id") == run_id
        and (entry.detail or {}).get("task_id") == task_id
        for entry in entries
    )


def has_round_action(session: Session, uid: str, action: str, round_id: int, **match: Any) -> bool:
    """Return whether the audit log records ``action`` for a round, with every ``match`` in its detail."""
    entries = session.scalars(
        select(AuditEntry).where(AuditEntry.request_uid == uid, AuditEntry.action == action)
    )
    wanted = {"round_id": round_id, **match}
    return any(
        all((entry.detail or {}).get(key) == value for key, value in wanted.items()) for entry in entries
    )


def list_waits(session: Session, catalogs: Mapping[str, Catalog]) -> list[Wait]:
    """Return every ticket waiting for its expert and every sign-off waiting for its manager.

    A ticket waits since its calibration's progress last changed to ``waiting_for_expert``; a
    sign-off since its open round was made.

    :param catalogs: the catalog of each release, for the experts' names
    """
    waits = []
    for request in session.scalars(select(ProcessingRequest).order_by(ProcessingRequest.id)):
        catalog = catalogs.get(request.release)
        for item in request.progress:
            if item.ticket_state != WAITING_FOR_EXPERT or catalog is None or item.calibration not in catalog:
                continue
            entries = session.scalars(
                select(AuditEntry)
                .where(
                    AuditEntry.request_uid == request.uid,
                    AuditEntry.calibration == item.calibration,
                    AuditEntry.action == "update_progress",
                )
                .order_by(AuditEntry.id.desc())
            )
            since = next(
                (
                    entry.at
                    for entry in entries
                    if (entry.detail or {}).get("ticket_state") == WAITING_FOR_EXPERT
                ),
                None,
            )
            waits.append(
                Wait(
                    request.uid,
                    TICKET,
                    since or item.updated_at,
                    catalog[item.calibration].expert_username,
                    request.requested_by,
                    item.calibration,
                    item.ticket_key,
                )
            )
        round_row = latest_round(session, request.uid)
        if round_row is not None and round_row.state == "open":
            waits.append(
                Wait(request.uid, SIGN_OFF, round_row.created_at, request.requested_by, request.requested_by)
            )
    return waits


def last_reminders(session: Session) -> dict[WaitKey, datetime]:
    """Return when the last reminder of each wait was sent."""
    sent: dict[WaitKey, datetime] = {}
    for entry in session.scalars(select(AuditEntry).where(AuditEntry.action == ACTION_REMINDER)):
        detail = entry.detail or {}
        key = (str(entry.request_uid), str(detail.get("kind")), entry.calibration or "")
        if key not in sent or entry.at > sent[key]:
            sent[key] = entry.at
    return sent


def record_reminder(session: Session, wait: Wait, text: str, sent_to: str) -> None:
    """Audit a reminder that was sent."""
    audit(
        session,
        "system",
        ACTION_REMINDER,
        request_uid=wait.request_uid,
        calibration=wait.calibration,
        message=text,
        kind=wait.kind,
        owner=wait.owner,
        manager=wait.manager,
        sent_to=sent_to,
    )


def _uid(session: Session, round_row: SignOffRound) -> str:
    return session.get(ProcessingRequest, round_row.request_id).uid  # type: ignore[union-attr]
