"""Reads and writes of the plugin database: catalogs, requests, per-calibration progress, audit log."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from b2cal.catalog import Catalog, build_catalog
from b2cal.cdst import check_attempt
from b2cal.db.models import (
    AuditEntry,
    CalibrationProgress,
    CalibrationSetting,
    ProcessingRequest,
    Release,
    utcnow,
)
from b2cal.request import RequestSpec

#: The audit action that records a change of a request's cDST production attempt.
ACTION_CDST_ATTEMPT = "cdst_attempt"


class NotFoundError(LookupError):
    """A release or request is not in the plugin database."""


def audit(
    session: Session,
    actor: str,
    action: str,
    *,
    request_uid: str | None = None,
    calibration: str | None = None,
    message: str = "",
    **detail: Any,
) -> AuditEntry:
    """Record one action in the audit log."""
    entry = AuditEntry(
        actor=actor,
        action=action,
        request_uid=request_uid,
        calibration=calibration,
        message=message,
        detail=detail,
    )
    session.add(entry)
    return entry


def import_catalog(session: Session, catalog: Catalog, *, source: str, actor: str = "system") -> Release:
    """Store a validated catalog, replacing the settings of a release imported before."""
    release = session.scalar(select(Release).where(Release.name == catalog.release))
    if release is None:
        release = Release(name=catalog.release, vocabulary={}, source=source)
        session.add(release)
    release.vocabulary = {key: list(values) for key, values in catalog.vocabulary.items()}
    release.source = source
    release.imported_at = utcnow()
    release.calibrations.clear()
    session.flush()
    for position, settings in enumerate(catalog.calibrations.values()):
        release.calibrations.append(
            CalibrationSetting(
                position=position, name=settings.name, phase=settings.phase, settings=settings.to_dict()
            )
        )
    audit(
        session,
        actor,
        "import_catalog",
        message=f"{catalog.release}: {len(catalog)} calibrations",
        source=source,
    )
    return release


def load_catalog(session: Session, release: str) -> Catalog:
    """Rebuild the catalog of an imported release.

    :raises NotFoundError: when the release was never imported.
    """
    row = session.scalar(select(Release).where(Release.name == release))
    if row is None:
        known = session.scalars(select(Release.name).order_by(Release.name)).all()
        raise NotFoundError(
            f"basf2 release {release!r} is not imported; imported releases: {', '.join(known) or 'none'}. "
            "Import it with 'b2cal import-catalog'"
        )
    return build_catalog(row.name, row.vocabulary, [item.settings for item in row.calibrations])


def list_releases(session: Session) -> list[str]:
    """Return the names of the imported releases."""
    return list(session.scalars(select(Release.name).order_by(Release.name)).all())


def save_request(session: Session, spec: RequestSpec, catalog: Catalog) -> ProcessingRequest:
    """Store a validated request and one progress row per calibration; return the existing one on retry."""
    existing = session.scalar(select(ProcessingRequest).where(ProcessingRequest.uid == spec.uid))
    if existing is not None:
        return existing
    row = ProcessingRequest(
        uid=spec.uid,
        kind=spec.kind,
        site=spec.site,
        release=spec.release,
        exp_low=spec.bucket.exp_low,
        run_low=spec.bucket.run_low,
        exp_high=spec.bucket.exp_high,
        run_high=spec.bucket.run_high,
        calibrations=list(spec.calibrations),
        filter_overrides=dict(spec.filter_overrides),
        expert_config_overrides=dict(spec.expert_config_overrides),
        staging_tag=spec.staging_tag,
        running_tag=spec.running_tag,
        requested_by=spec.requested_by,
        state="submitted",
    )
    for name in spec.calibrations:
        row.progress.append(CalibrationProgress(calibration=name, phase=catalog[name].phase))
    session.add(row)
    session.flush()
    audit(
        session,
        spec.requested_by,
        "submit_request",
        request_uid=spec.uid,
        message=f"{spec.kind} request for {spec.bucket} with {len(spec.calibrations)} calibrations",
    )
    return row


def get_request(session: Session, uid: str) -> ProcessingRequest:
    """Return a request by its id.

    :raises NotFoundError: when no request has that id.
    """
    row = session.scalar(select(ProcessingRequest).where(ProcessingRequest.uid == uid))
    if row is None:
        raise NotFoundError(f"processing request {uid!r} does not exist in the plugin database")
    return row


def get_progress(session: Session, uid: str, calibration: str) -> CalibrationProgress:
    """Return the progress row of one calibration of a request."""
    row = session.scalar(
        select(CalibrationProgress)
        .join(ProcessingRequest)
        .where(ProcessingRequest.uid == uid, CalibrationProgress.calibration == calibration)
    )
    if row is None:
        raise NotFoundError(f"calibration {calibration!r} is not part of processing request {uid!r}")
    return row


def update_progress(
    session: Session, uid: str, calibration: str, *, actor: str = "system", **changes: Any
) -> CalibrationProgress:
    """Change fields of a calibration's progress and audit the change."""
    row = get_progress(session, uid, calibration)
    for key, value in changes.items():
        if not hasattr(CalibrationProgress, key):
            raise AttributeError(f"calibration progress has no field {key!r}")
        setattr(row, key, value)
    audit(
        session,
        actor,
        "update_progress",
        request_uid=uid,
        calibration=calibration,
        **{key: _jsonable(value) for key, value in changes.items()},
    )
    return row


def set_request_state(
    session: Session, uid: str, state: str, *, actor: str = "system", **detail: Any
) -> None:
    """Change a request's state and audit it."""
    row = get_request(session, uid)
    row.state = state
    audit(session, actor, "request_state", request_uid=uid, message=state, **detail)


def _change_state_where(
    session: Session, uid: str, condition: Any, state: str, actor: str, detail: dict[str, Any]
) -> bool:
    """Set a request's state in one UPDATE that also checks ``condition``; audit the change.

    Checking and changing in one statement means that of several tasks or users who change the same
    request at once, one changes it and the others find it changed.
    """
    result = session.execute(
        update(ProcessingRequest)
        .where(ProcessingRequest.uid == uid, condition)
        .values(state=state)
        .execution_options(synchronize_session="fetch")
    )
    changed = cast(CursorResult[Any], result).rowcount
    if changed:
        audit(session, actor, "request_state", request_uid=uid, message=state, **detail)
    return bool(changed)


def advance_request_state(
    session: Session, uid: str, from_states: Iterable[str], state: str, **detail: Any
) -> bool:
    """Move a request to ``state`` only while it is in one of ``from_states``; audit the change.

    :return: whether the state changed.
    """
    condition = ProcessingRequest.state.in_(list(from_states))
    return _change_state_where(session, uid, condition, state, "system", detail)


def set_final_request_state(
    session: Session,
    uid: str,
    state: str,
    *,
    final_states: Iterable[str],
    actor: str = "system",
    **detail: Any,
) -> bool:
    """Move a request to the final ``state`` unless it is in one of ``final_states``; audit the change.

    :return: whether the state changed.
    """
    condition = ProcessingRequest.state.not_in(list(final_states))
    return _change_state_where(session, uid, condition, state, actor, detail)


def get_cdst_attempt(session: Session, uid: str) -> int:
    """Return the attempt of cDST production whose output request ``uid`` uses."""
    return int(get_request(session, uid).cdst_attempt or 1)


def set_cdst_attempt(
    session: Session, uid: str, attempt: int, *, actor: str = "system", reason: str = ""
) -> None:
    """Record ``attempt`` as the cDST production attempt of request ``uid``, and audit a change.

    :raises ValueError: if ``attempt`` is not an integer of at least 1.
    """
    check_attempt(attempt)
    row = get_request(session, uid)
    before = int(row.cdst_attempt or 1)
    if before == attempt:
        return
    row.cdst_attempt = attempt
    audit(
        session,
        actor,
        ACTION_CDST_ATTEMPT,
        request_uid=uid,
        message=f"cDST production attempt {before} -> {attempt}" + (f": {reason}" if reason else ""),
        before=before,
        attempt=attempt,
    )


def has_action(session: Session, uid: str, action: str) -> bool:
    """Return whether the audit log records ``action`` for request ``uid``."""
    found = session.scalar(
        select(AuditEntry.id).where(AuditEntry.request_uid == uid, AuditEntry.action == action).limit(1)
    )
    return found is not None


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
