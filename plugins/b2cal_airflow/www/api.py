"""JSON endpoints of the calibration pages, for scripts and for the pages' live updates."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException

from b2cal.db import store
from b2cal.db.engine import session_scope
from b2cal.reports import diff_catalogs
from b2cal_airflow.auth import ProductAction
from b2cal_airflow.www import data
from b2cal_airflow.www.context import SettingsDep, UserDep, cached_catalog, require

router = APIRouter(prefix="/api")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _summary_json(item: dict[str, Any]) -> dict[str, Any]:
    return {**item, "created_at": _iso(item["created_at"])}


@router.get("/requests")
def list_requests(user: UserDep, settings: SettingsDep) -> list[dict[str, Any]]:
    """Return every request, newest first, with its calibrations counted per state."""
    require(user, ProductAction.READ)
    with session_scope(settings.db_url()) as session:
        return [_summary_json(item) for item in data.request_list(session)]


@router.get("/requests/{uid}")
def get_request(uid: str, user: UserDep, settings: SettingsDep) -> dict[str, Any]:
    """Return one request with its calibrations, timeline, durations and audit log."""
    require(user, ProductAction.READ)
    now = datetime.now(UTC)
    with session_scope(settings.db_url()) as session:
        try:
            row = data.find_request(session, uid)
        except store.NotFoundError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None
        try:
            catalog = cached_catalog(session, settings.db_url(), row.release)
        except store.NotFoundError:
            catalog = None
        counts = data.state_counts((item.job_state, item.ticket_state) for item in row.progress)
        calibrations = data.calibration_rows(
            session, row, catalog, jira_url=settings.jira_url(), airflow="", dag_id=settings.dag_id
        )
        timeline = data.timeline(session, row, catalog, now)
        durations = data.durations(session, row, now)
        audit = data.audit_entries(session, uid)
    return {
        **_summary_json(data.summary(row, counts)),
        "progress": [
            {**item, "started_at": _iso(item["started_at"]), "ended_at": _iso(item["ended_at"])}
            for item in calibrations
        ],
        "timeline": {
            "start": _iso(timeline.start),
            "end": _iso(timeline.end),
            "critical_path": timeline.critical_path,
            "rows": [
                {
                    "calibration": line.calibration,
                    "critical": line.critical,
                    "segments": [
                        {"state": part.state, "start": _iso(part.start), "end": _iso(part.end)}
                        for part in line.segments
                    ],
                }
                for line in timeline.rows
            ],
        },
        "durations": {
            "bucket_days": durations.bucket_days,
            "data_to_calibrated_days": durations.data_to_calibrated_days,
            "finished": durations.finished,
            "ended_at": _iso(durations.ended_at),
            "end_state": durations.end_state,
        },
        "audit": [{**entry, "at": _iso(entry["at"])} for entry in audit],
    }


@router.get("/durations")
def list_durations(user: UserDep, settings: SettingsDep) -> list[dict[str, Any]]:
    """Return the time for each bucket and the time from data taken to calibrated, in days."""
    require(user, ProductAction.READ)
    with session_scope(settings.db_url()) as session:
        rows = data.all_durations(session, datetime.now(UTC))
    return [
        {
            "request_id": row.request_uid,
            "bucket": row.bucket,
            "bucket_days": row.bucket_days,
            "data_to_calibrated_days": row.data_to_calibrated_days,
            "finished": row.finished,
            "ended_at": _iso(row.ended_at),
            "end_state": row.end_state,
        }
        for row in rows
    ]


@router.get("/catalog/diff")
def catalog_diff(old: str, new: str, user: UserDep, settings: SettingsDep) -> dict[str, Any]:
    """Return what changed between the catalogs of two releases."""
    require(user, ProductAction.READ)
    with session_scope(settings.db_url()) as session:
        try:
            diff = diff_catalogs(
                cached_catalog(session, settings.db_url(), old),
                cached_catalog(session, settings.db_url(), new),
            )
        except store.NotFoundError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None
    return {
        "old": diff.old_release,
        "new": diff.new_release,
        "added": diff.added,
        "removed": diff.removed,
        "changed": {
            name: [{"key": change.key, "old": change.old, "new": change.new} for change in changes]
            for name, changes in diff.changed.items()
        },
        "vocabulary_added": diff.vocabulary_added,
        "vocabulary_removed": diff.vocabulary_removed,
    }
