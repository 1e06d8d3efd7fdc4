"""Run collection: copy the run registry's runs into the plugin database, logging every change.

:func:`collect_runs` reads the runs of a :class:`CollectionScope` from the run registry and
:func:`sync_runs` upserts them. For each run the plugin database keeps the registry's record and
the flags that the input data filters use (Good, Good Or Recoverable, >=30 Minute Run, Bad For
Alignment, magnet on or off, beam energy), computed by :class:`b2cal.runs.Run`, so the flags stored
and the flags the selection applies cannot disagree.

A run whose record changed upstream is updated and the change is written to the run change log with
the old and new value of each field. A run of the scope that the registry no longer returns is
flagged with ``missing_since``, never deleted. Such a run is left out of buckets and input selection
until it comes back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import ColumnElement, and_, select, tuple_
from sqlalchemy.orm import Session

from b2cal.db.models import utcnow
from b2cal.db.runmodels import CollectedRun, RunChange
from b2cal.iov import IoV
from b2cal.runs import Run, parse_time

logger = logging.getLogger(__name__)

NEW = "new"
CHANGED = "changed"
MISSING = "missing"
REAPPEARED = "reappeared"
#: Changes listed in a :class:`SyncReport`; the change log keeps them all.
REPORTED_CHANGES = 50


class RunSource(Protocol):
    """The part of a run registry client that collection uses (see :class:`b2cal.runregistry.RunRegistry`)."""

    def iter_runs(self, **filters: Any) -> Iterable[dict[str, Any]]: ...


class RunSyncError(RuntimeError):
    """Collected runs cannot be stored as they are."""


@dataclass(frozen=True)
class CollectionScope:
    """The runs one collection reads: an experiment range and, optionally, a run range.

    Only runs inside the scope can be flagged as missing, so a narrow collection never flags the
    runs it did not ask for.
    """

    min_experiment: int | None = None
    max_experiment: int | None = None
    min_run: int | None = None
    max_run: int | None = None

    def __post_init__(self) -> None:
        for name in ("min_experiment", "max_experiment", "min_run", "max_run"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"collection scope {name}={value!r} must be a non-negative integer or None")
        low, high = self.min_experiment, self.max_experiment
        if low is not None and high is not None and low > high:
            raise ValueError(
                f"collection scope min_experiment={self.min_experiment} is above "
                f"max_experiment={self.max_experiment}"
            )

    def filters(self) -> dict[str, int]:
        """Return the run registry filters of the scope."""
        names = ("min_experiment", "max_experiment", "min_run", "max_run")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def contains(self, experiment: int, run: int) -> bool:
        """Return whether a run lies in the scope, with the registry's meaning of each filter."""
        return (
            (self.min_experiment is None or experiment >= self.min_experiment)
            and (self.max_experiment is None or experiment <= self.max_experiment)
            and (self.min_run is None or run >= self.min_run)
            and (self.max_run is None or run <= self.max_run)
        )

    def clause(self) -> ColumnElement[bool]:
        """Return the scope as a condition on the run table."""
        conditions: list[ColumnElement[bool]] = []
        if self.min_experiment is not None:
            conditions.append(CollectedRun.experiment >= self.min_experiment)
        if self.max_experiment is not None:
            conditions.append(CollectedRun.experiment <= self.max_experiment)
        if self.min_run is not None:
            conditions.append(CollectedRun.run >= self.min_run)
        if self.max_run is not None:
            conditions.append(CollectedRun.run <= self.max_run)
        return and_(True, *conditions)

    def __str__(self) -> str:
        return ", ".join(f"{name}={value}" for name, value in self.filters().items()) or "all runs"


@dataclass
class SyncReport:
    """The changes one collection made in the plugin database."""

    scope: str
    fetched: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    missing: int = 0
    reappeared: int = 0
    changes: list[dict[str, Any]] = field(default_factory=list)

    def note(self, entry: dict[str, Any]) -> None:
        """Keep one change for the report, up to :data:`REPORTED_CHANGES`."""
        if len(self.changes) < REPORTED_CHANGES:
            self.changes.append(entry)

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready data."""
        return {
            "scope": self.scope,
            "fetched": self.fetched,
            "new": self.new,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "missing": self.missing,
            "reappeared": self.reappeared,
            "changes": list(self.changes),
        }


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    return value if isinstance(value, datetime) else parse_time(str(value))


def run_columns(record: Mapping[str, Any]) -> dict[str, Any]:
    """Return the run table's columns for a run registry record, derived flags included.

    :raises ValueError: naming the record when it lacks an integer ``experiment`` or ``run`` or has
        an unreadable time.
    """
    try:
        run = Run.from_registry(record)
        start, stop = _time(record.get("start_time")), _time(record.get("stop_time"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"run registry record {dict(record)!r} is unusable ({exc}); each run needs integer "
            "'experiment' and 'run' fields and ISO 8601 times"
        ) from None
    quality = run.quality_tags()
    return {
        "experiment": run.experiment,
        "run": run.run,
        "run_type": run.run_type[:32],
        "overall_quality": str(run.quality.get("overall", ""))[:16],
        "recorded_luminosity": run.recorded_luminosity,
        "start_time": start,
        "stop_time": stop,
        "detectors": list(record.get("detectors") or []),
        "quality": dict(run.quality),
        "solenoid_field": run.solenoid_field[:8],
        "beam_energy": run.beam_energy[:16],
        "good": "Good" in quality,
        "good_or_recoverable": "Good Or Recoverable" in quality,
        "long_run": ">=30 Minute Run" in quality,
        "bad_for_alignment": "Bad For Alignment" in quality,
        "magnet_on": run.solenoid_field == "On",
        "quality_tags": sorted(quality),
        "record": dict(record),
    }


def record_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Return ``{field: [old value, new value]}`` for every top-level field that differs."""
    return {
        key: [old.get(key), new.get(key)]
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    }


def sync_runs(
    session: Session,
    records: Iterable[Mapping[str, Any]],
    scope: CollectionScope,
    *,
    allow_empty: bool = False,
) -> SyncReport:
    """Upsert the registry's records of ``scope``, log changes and flag the runs it no longer returns.

    :param records: every run the registry returned for ``scope``; runs outside it are rejected
    :param allow_empty: flag every stored run of the scope when the registry returned none. Without
        it an empty response for a scope with stored runs is an error, because a wrong filter or a
        registry fault is likelier than the loss of all runs
    :raises RunSyncError: for a record outside the scope, or an empty answer without ``allow_empty``
    """
    now = utcnow()
    report = SyncReport(scope=str(scope))
    fetched: dict[tuple[int, int], dict[str, Any]] = {}
    for record in records:
        columns = run_columns(record)
        key = (columns["experiment"], columns["run"])
        if not scope.contains(*key):
            raise RunSyncError(
                f"the run registry returned run e{key[0]} r{key[1]} outside the collection scope {scope}; "
                "check the registry's filters"
            )
        fetched[key] = columns
    report.fetched = len(fetched)

    stored = {
        (row.experiment, row.run): row for row in session.scalars(select(CollectedRun).where(scope.clause()))
    }
    present = [key for key, row in stored.items() if row.missing_since is None]
    if not fetched and present and not allow_empty:
        raise RunSyncError(
            f"the run registry returned no runs for {scope}, but {len(present)} runs of it are stored; "
            "check the registry and the collection scope, or allow an empty collection to flag them all"
        )

    for key, columns in sorted(fetched.items()):
        row = stored.get(key)
        if row is None:
            session.add(CollectedRun(**columns, fetched_at=now, first_seen_at=now))
            report.new += 1
            _log(session, report, key, NEW, {}, now)
            continue
        changes = record_changes(row.record or {}, columns["record"])
        if row.missing_since is not None:
            row.missing_since = None
            report.reappeared += 1
            _log(session, report, key, REAPPEARED, changes, now)
        elif changes:
            report.changed += 1
            _log(session, report, key, CHANGED, changes, now)
        else:
            report.unchanged += 1
        if changes:
            for name, value in columns.items():
                setattr(row, name, value)
            row.changed_at = now
        row.fetched_at = now

    for key in present:
        if key not in fetched:
            stored[key].missing_since = now
            report.missing += 1
            _log(session, report, key, MISSING, {}, now)
    session.flush()
    logger.info(
        "Collected runs of %s: %d fetched, %d new, %d changed, %d missing, %d reappeared",
        scope,
        report.fetched,
        report.new,
        report.changed,
        report.missing,
        report.reappeared,
    )
    return report


def _log(
    session: Session,
    report: SyncReport,
    key: tuple[int, int],
    kind: str,
    changes: dict[str, list[Any]],
    now: datetime,
) -> None:
    session.add(RunChange(experiment=key[0], run=key[1], kind=kind, changes=changes, at=now))
    entry = {"experiment": key[0], "run": key[1], "kind": kind, "fields": sorted(changes)}
    report.note(entry)
    if kind == CHANGED:
        logger.info("Run e%d r%d changed upstream: %s", key[0], key[1], ", ".join(sorted(changes)))
    elif kind == MISSING:
        logger.warning("Run e%d r%d is no longer in the run registry; flagged as missing", key[0], key[1])
    elif kind == REAPPEARED:
        logger.info("Run e%d r%d is back in the run registry", key[0], key[1])


def collect_runs(
    session: Session, registry: RunSource, scope: CollectionScope, *, allow_empty: bool = False
) -> SyncReport:
    """Read the runs of ``scope`` from the run registry and store them with :func:`sync_runs`."""
    records = list(registry.iter_runs(**scope.filters()))
    return sync_runs(session, records, scope, allow_empty=allow_empty)


def in_bucket(bucket: IoV) -> ColumnElement[bool]:
    """Return the condition that a row of the run table lies in ``bucket``."""
    key = tuple_(CollectedRun.experiment, CollectedRun.run)
    low = key >= tuple_(bucket.exp_low, bucket.run_low)
    if bucket.is_open_ended:
        return low
    if bucket.run_high < 0:
        return and_(low, CollectedRun.experiment <= bucket.exp_high)
    return and_(low, key <= tuple_(bucket.exp_high, bucket.run_high))


def load_runs(session: Session, bucket: IoV, *, include_missing: bool = False) -> list[Run]:
    """Return the collected runs of a bucket in run order, without the runs missing upstream."""
    query = select(CollectedRun.record).where(in_bucket(bucket))
    if not include_missing:
        query = query.where(CollectedRun.missing_since.is_(None))
    rows = session.scalars(query.order_by(CollectedRun.experiment, CollectedRun.run))
    return [Run.from_registry(record) for record in rows]


def run_changes(session: Session, experiment: int, run: int) -> list[dict[str, Any]]:
    """Return the change log of one run, oldest first."""
    rows = session.scalars(
        select(RunChange)
        .where(RunChange.experiment == experiment, RunChange.run == run)
        .order_by(RunChange.id)
    )
    return [{"at": row.at.isoformat(), "kind": row.kind, "changes": row.changes} for row in rows]
