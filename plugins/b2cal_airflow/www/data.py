"""Read what the pages show from the plugin database and shape it with :mod:`b2cal.reports`."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from b2cal.catalog import Catalog, CatalogError
from b2cal.db import inventory, runcache, store
from b2cal.db.models import AuditEntry, CalibrationCheck, CalibrationProgress, ProcessingRequest, SignOffRound
from b2cal.iov import IoV
from b2cal.reports import (
    FAILED,
    FINAL_REQUEST_STATES,
    QUEUED,
    BucketDurations,
    ProgressEvent,
    Timeline,
    bucket_durations,
    build_timeline,
    calibration_state,
    state_counts,
)
from b2cal.storage import KINDS, TYPICAL_BYTES, format_bytes
from b2cal_airflow.www.context import aware

PHASE_TASKS = {"raw": "raw_phase", "cdst": "cdst_phase"}
MERGED = "merged"
#: The audit action of a manager's cancellation; its message is the reason.
CANCEL_ACTION = "cancel_request"
#: Final request states without a merge: the bucket's durations stop when the request reached one.
UNMERGED_FINAL_STATES = FINAL_REQUEST_STATES - {MERGED}


def bucket_of(row: ProcessingRequest) -> IoV:
    """Return a request's bucket."""
    return IoV(row.exp_low, row.run_low, row.exp_high, row.run_high)


def summary(row: ProcessingRequest, counts: dict[str, int]) -> dict[str, Any]:
    """Return the fields of a request that lists and headers show."""
    total = sum(counts.values())
    return {
        "request_id": row.uid,
        "kind": row.kind,
        "site": row.site,
        "release": row.release,
        "bucket": bucket_of(row).as_list(),
        "bucket_text": bucket_of(row).as_text(),
        "state": row.state,
        "final": row.state in FINAL_REQUEST_STATES,
        "requested_by": row.requested_by,
        "staging_tag": row.staging_tag,
        "running_tag": row.running_tag,
        "dag_run_id": row.dag_run_id,
        "created_at": aware(row.created_at),
        "calibrations": total,
        "done": counts.get("done", 0),
        "counts": counts,
    }


def request_list(session: Session) -> list[dict[str, Any]]:
    """Return every request, newest first, with the number of calibrations in each state."""
    states: dict[int, list[tuple[str | None, str | None]]] = defaultdict(list)
    query = select(
        CalibrationProgress.request_id, CalibrationProgress.job_state, CalibrationProgress.ticket_state
    )
    for request_id, job, ticket in session.execute(query):
        states[request_id].append((job, ticket))
    rows = session.scalars(select(ProcessingRequest).order_by(ProcessingRequest.created_at.desc()))
    return [summary(row, state_counts(states[row.id])) for row in rows]


def progress_events(session: Session, uid: str) -> list[ProgressEvent]:
    """Return the recorded progress changes of a request's calibrations, oldest first."""
    query = (
        select(AuditEntry.at, AuditEntry.calibration, AuditEntry.detail)
        .where(AuditEntry.request_uid == uid, AuditEntry.action == "update_progress")
        .order_by(AuditEntry.id)
    )
    return [
        ProgressEvent(at=aware(at), calibration=calibration, changes=detail or {})  # type: ignore[arg-type]
        for at, calibration, detail in session.execute(query)
        if calibration
    ]


def calibrated_at(session: Session, uid: str) -> datetime | None:
    """Return when the request's staging tag was merged into the running tag, if it was."""
    query = (
        select(AuditEntry.at)
        .where(
            AuditEntry.request_uid == uid, AuditEntry.action == "request_state", AuditEntry.message == MERGED
        )
        .order_by(AuditEntry.id)
        .limit(1)
    )
    return aware(session.scalar(query))


def _end_times(session: Session, uid: str | None = None) -> dict[tuple[str, str], datetime]:
    """Return the newest time each request was set to each unmerged final state, by request and state.

    :param uid: one request's times only; every request's when ``None``.
    """
    query = select(AuditEntry.request_uid, AuditEntry.message, func.max(AuditEntry.at)).where(
        AuditEntry.action == "request_state", AuditEntry.message.in_(UNMERGED_FINAL_STATES)
    )
    if uid is not None:
        query = query.where(AuditEntry.request_uid == uid)
    rows = session.execute(query.group_by(AuditEntry.request_uid, AuditEntry.message))
    return {(str(uid), str(state)): aware(at) for uid, state, at in rows}  # type: ignore[misc]


def _ended_at(row: ProcessingRequest, end_times: Mapping[tuple[str, str], datetime]) -> datetime | None:
    """Return when a request reached its final state other than ``merged``, or None if it has not.

    The time is that of the newest audit entry that set the state, or the row's last update when the
    audit log has no such entry.
    """
    if row.state not in UNMERGED_FINAL_STATES:
        return None
    return end_times.get((row.uid, row.state)) or aware(row.updated_at)


def ended_at(session: Session, row: ProcessingRequest) -> datetime | None:
    """Return when request ``row`` reached its final state other than ``merged``, or None if it has not."""
    return _ended_at(row, _end_times(session, row.uid))


def finished_at(session: Session, row: ProcessingRequest, now: datetime) -> datetime:
    """Return where a request's timeline ends: its last state change when it is over, else now."""
    if row.state not in FINAL_REQUEST_STATES:
        return now
    query = (
        select(AuditEntry.at)
        .where(AuditEntry.request_uid == row.uid, AuditEntry.action == "request_state")
        .order_by(AuditEntry.id.desc())
        .limit(1)
    )
    return aware(session.scalar(query)) or now  # type: ignore[return-value]


def timeline(session: Session, row: ProcessingRequest, catalog: Catalog | None, now: datetime) -> Timeline:
    """Return the bucket's timeline with the critical path marked."""
    names = [item.calibration for item in row.progress]
    phases = {item.calibration: item.phase for item in row.progress}
    depends_on = {name: _depends_on(catalog, name) for name in names}
    start = aware(row.created_at) or now
    return build_timeline(
        names,
        phases,
        depends_on,
        progress_events(session, row.uid),
        start=start,
        end=finished_at(session, row, now),
    )


def _depends_on(catalog: Catalog | None, name: str) -> tuple[str, ...]:
    if catalog is None or name not in catalog:
        return ()
    return catalog[name].depends_on


def durations(session: Session, row: ProcessingRequest, now: datetime) -> BucketDurations:
    """Return the two figures of merit of a request's bucket."""
    bucket = bucket_of(row)
    return bucket_durations(
        row.uid,
        bucket.as_text(),
        started_at=aware(row.created_at) or now,
        data_taken_until=aware(runcache.data_taken_until(session, bucket)),
        calibrated_at=calibrated_at(session, row.uid),
        now=now,
        ended_at=ended_at(session, row),
        end_state=row.state,
    )


def all_durations(session: Session, now: datetime) -> list[BucketDurations]:
    """Return the figures of merit of every request, oldest first."""
    merged: dict[str, datetime] = {}
    query = (
        select(AuditEntry.request_uid, func.min(AuditEntry.at))
        .where(AuditEntry.action == "request_state", AuditEntry.message == MERGED)
        .group_by(AuditEntry.request_uid)
    )
    for uid, at in session.execute(query):
        merged[str(uid)] = aware(at)  # type: ignore[assignment]
    end_times = _end_times(session)
    taken = runcache.data_taken_until_by_request(session)
    result = []
    for row in session.scalars(select(ProcessingRequest).order_by(ProcessingRequest.created_at)):
        bucket = bucket_of(row)
        result.append(
            bucket_durations(
                row.uid,
                bucket.as_text(),
                started_at=aware(row.created_at) or now,
                data_taken_until=aware(taken.get(row.uid)),
                calibrated_at=merged.get(row.uid),
                now=now,
                ended_at=_ended_at(row, end_times),
                end_state=row.state,
            )
        )
    return result


def task_link(airflow: str, dag_id: str, run_id: str | None, phase: str, index: int | None) -> str | None:
    """Return the Airflow UI page of one calibration's task instance, where its log is."""
    if not run_id or index is None or phase not in PHASE_TASKS:
        return None
    return (
        f"{airflow}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"
        f"/tasks/{PHASE_TASKS[phase]}/mapped/{index}"
    )


def calibration_rows(
    session: Session,
    row: ProcessingRequest,
    catalog: Catalog | None,
    *,
    jira_url: str | None,
    airflow: str,
    dag_id: str,
) -> list[dict[str, Any]]:
    """Return one row per calibration of a request: ticket, expert, job, upload, checks and links."""
    names = [item.calibration for item in row.progress]
    index_of: dict[str, int] = {}
    if catalog is not None:
        try:
            for phase_names in catalog.phases([name for name in names if name in catalog]).values():
                index_of.update({name: index for index, name in enumerate(phase_names)})
        except CatalogError:
            index_of = {}
    checks: dict[str, list[dict[str, Any]]] = defaultdict(list)
    query = (
        select(CalibrationCheck).where(CalibrationCheck.request_id == row.id).order_by(CalibrationCheck.id)
    )
    for check in session.scalars(query):
        checks[check.calibration].append(
            {"name": check.name, "status": check.status, "message": check.message, "attempt": check.attempt}
        )
    rows = []
    for item in row.progress:
        settings = catalog.calibrations.get(item.calibration) if catalog is not None else None
        rows.append(
            {
                "calibration": item.calibration,
                "phase": item.phase,
                "expert": settings.expert_username if settings else "",
                "depends_on": list(settings.depends_on) if settings else [],
                "ticket_key": item.ticket_key,
                "ticket_url": f"{jira_url}/browse/{item.ticket_key}"
                if jira_url and item.ticket_key
                else None,
                "ticket_state": item.ticket_state,
                "job_state": item.job_state,
                "job_detail": item.job_detail or {},
                "attempt": item.attempt,
                "state": calibration_state(item.job_state, item.ticket_state),
                "inputs": item.inputs or {},
                "upload_state": item.upload_state,
                "upload": item.upload_detail or {},
                "checks": checks.get(item.calibration, []),
                "started_at": aware(item.started_at),
                "ended_at": aware(item.ended_at),
                "log_url": task_link(
                    airflow, dag_id, row.dag_run_id, item.phase, index_of.get(item.calibration)
                ),
            }
        )
    failed = {item["calibration"] for item in rows if item["state"] == FAILED}
    for item in rows:
        # A calibration whose dependency failed waits until that dependency runs again. Nothing else
        # on the page shows this, so the row names the failed dependency.
        item["blocked_by"] = (
            [name for name in item["depends_on"] if name in failed and name in names]
            if item["state"] == QUEUED
            else []
        )
    return rows


def audit_entries(session: Session, uid: str, limit: int = 200) -> list[dict[str, Any]]:
    """Return the newest audit entries of a request, newest first."""
    query = (
        select(AuditEntry).where(AuditEntry.request_uid == uid).order_by(AuditEntry.id.desc()).limit(limit)
    )
    return [
        {
            "at": aware(entry.at),
            "actor": entry.actor,
            "action": entry.action,
            "calibration": entry.calibration,
            "message": entry.message,
            "detail": entry.detail or {},
        }
        for entry in session.scalars(query)
    ]


def cancellation(session: Session, uid: str) -> dict[str, Any] | None:
    """Return the newest cancellation of a request from the audit log, or None when it was never cancelled."""
    query = (
        select(AuditEntry)
        .where(AuditEntry.request_uid == uid, AuditEntry.action == CANCEL_ACTION)
        .order_by(AuditEntry.id.desc())
        .limit(1)
    )
    entry = session.scalar(query)
    if entry is None:
        return None
    return {
        "at": aware(entry.at),
        "actor": entry.actor,
        "reason": entry.message,
        "detail": entry.detail or {},
    }


def signoff_rounds(session: Session, row: ProcessingRequest) -> list[dict[str, Any]]:
    """Return the request's readiness reports and the decisions on them, newest first."""
    query = select(SignOffRound).where(SignOffRound.request_id == row.id).order_by(SignOffRound.id.desc())
    return [
        {
            "state": item.state,
            "clean": item.clean,
            "report": item.report or {},
            "report_text": item.report_text,
            "decision": item.decision,
            "decided_by": item.decided_by,
            "decided_at": aware(item.decided_at),
            "comment": item.comment,
            "created_at": aware(item.created_at),
            "dag_run_id": item.dag_run_id,
        }
        for item in session.scalars(query)
    ]


def latest_report(session: Session, uid: str) -> dict[str, Any] | None:
    """Return the last readiness outcome the audit log holds: the report, or why it was blocked."""
    query = (
        select(AuditEntry)
        .where(
            AuditEntry.request_uid == uid,
            AuditEntry.action == "request_state",
            AuditEntry.message.in_(("awaiting_signoff", "signoff_blocked")),
        )
        .order_by(AuditEntry.id.desc())
        .limit(1)
    )
    entry = session.scalar(query)
    if entry is None:
        return None
    detail = entry.detail or {}
    return {
        "at": aware(entry.at),
        "ready": entry.message == "awaiting_signoff",
        "report": str(detail.get("report", "")),
        "blockers": [str(item) for item in detail.get("blockers", [])],
    }


def find_request(session: Session, uid: str) -> ProcessingRequest:
    """Return a request by id; raise :class:`b2cal.db.store.NotFoundError` when it does not exist."""
    return store.get_request(session, uid)


def skim_quota_rows(session: Session, bucket: IoV) -> list[dict[str, Any]]:
    """Return the stored skim quota of a bucket: per skim the luminosity, the chosen runs and why."""
    rows = []
    for row in inventory.bucket_quotas(session, bucket, with_runs=False):
        summary = row.summary or {}
        rows.append(
            {
                "data_tag": row.data_tag,
                "release": row.release,
                "target_pb": row.target_pb,
                "chosen_pb": row.chosen_pb,
                "reached": row.chosen_pb >= row.target_pb,
                # False when the skim's runs have no recorded luminosity, so every accepted run is kept.
                "applied": bool(summary.get("applied", True)),
                "chosen_runs": row.chosen_runs,
                "candidate_runs": summary.get("candidate_runs"),
                "explanation": row.explanation,
                "chosen_at": aware(row.chosen_at),
            }
        )
    return rows


def _usage() -> dict[str, int]:
    return {"bytes": 0, "files": 0, "unsized_files": 0}


def storage_rows(session: Session, bucket: IoV) -> list[dict[str, Any]]:
    """Return the measured storage of a bucket per site: bytes, files and unsized files per kind.

    Each kind carries ``text``, its bytes in decimal units (:func:`b2cal.storage.format_bytes`).
    """
    sites: dict[str, dict[str, Any]] = {}
    for line in inventory.storage_lines(session, bucket):
        site = sites.setdefault(
            line.site, {"site": line.site, "kinds": {kind: _usage() for kind in KINDS}, "measured_at": None}
        )
        usage = site["kinds"].setdefault(line.kind, _usage())
        usage["bytes"] += line.bytes
        usage["files"] += line.files
        usage["unsized_files"] += line.unsized_files
        measured = aware(line.measured_at)
        if measured is not None and (site["measured_at"] is None or measured > site["measured_at"]):
            site["measured_at"] = measured
    for site in sites.values():
        for usage in site["kinds"].values():
            usage["text"] = format_bytes(usage["bytes"])
        site["total_bytes"] = sum(usage["bytes"] for usage in site["kinds"].values())
        site["total_text"] = format_bytes(site["total_bytes"])
    return list(sites.values())


def typical_storage() -> dict[str, str]:
    """Return the bytes per prompt bucket that the experiment quotes, per kind, in decimal units."""
    return {kind: format_bytes(TYPICAL_BYTES[kind]) for kind in KINDS}
