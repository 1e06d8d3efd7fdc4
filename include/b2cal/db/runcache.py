"""The runs the pages read: the collected runs of the plugin database (see :mod:`b2cal.runsync`).

The request form proposes buckets from the accumulated luminosity, the bucket pages list the runs
with their flags and the durations need each bucket's last stop time. The pages read the runs that
run collection stored, so they never wait for the run registry. The request form also collects
runs itself: the experiments of a bucket before it validates the bucket, and the runs from the
latest collected experiment on when the newest collected run is older than a few minutes. Runs that
the registry stopped returning (``missing_since`` is set) are left out everywhere, as in input
selection.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, cast

from sqlalchemy import func, or_, select, tuple_
from sqlalchemy.orm import Session

from b2cal.db.models import ProcessingRequest
from b2cal.db.runmodels import CollectedRun
from b2cal.iov import OPEN, IoV
from b2cal.reports import RunSummary
from b2cal.runs import Run
from b2cal.runsync import CollectionScope, RunSource, in_bucket, load_runs, sync_runs

log = logging.getLogger(__name__)

__all__ = [
    "RunSource",
    "data_taken_until",
    "data_taken_until_by_request",
    "last_fetched",
    "records_in",
    "refresh_runs",
    "run_summaries",
    "runs_in",
    "store_runs",
    "version",
]


def store_runs(session: Session, records: Iterable[Mapping[str, Any]]) -> int:
    """Store run registry records as collected runs of their experiments; return how many were stored.

    The scope is the experiments of the records, so a stored run of those experiments that the
    records lack is flagged as missing.

    :raises ValueError: naming the record when it lacks ``experiment`` or ``run``.
    """
    items = [dict(record) for record in records]
    if not items:
        return 0
    try:
        experiments = [int(item["experiment"]) for item in items]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"a run registry record lacks an integer 'experiment' ({exc}); "
            "each run needs 'experiment' and 'run'"
        ) from None
    scope = CollectionScope(min_experiment=min(experiments), max_experiment=max(experiments))
    sync_runs(session, items, scope)
    return len(items)


def _scope(bucket: IoV) -> CollectionScope:
    high = None if bucket.is_open_ended else bucket.exp_high
    if bucket.exp_low == bucket.exp_high and bucket.run_high >= 0:
        return CollectionScope(bucket.exp_low, high, bucket.run_low, bucket.run_high)
    return CollectionScope(min_experiment=bucket.exp_low, max_experiment=high)


def refresh_runs(session: Session, source: RunSource, bucket: IoV | None = None) -> int:
    """Collect runs from the registry; return how many runs of the bucket (or in all) it returned.

    :param bucket: collect this bucket's experiments (its run range too, within one experiment);
        without it, the latest collected experiment and every later one, or every run when none is
        collected yet.
    :raises b2cal.runsync.RunSyncError: when the registry returns no run for a scope that has
        collected runs, or a run outside the scope.
    """
    if bucket is not None:
        scope = _scope(bucket)
    else:
        latest = session.scalar(select(func.max(CollectedRun.experiment)))
        scope = CollectionScope(min_experiment=latest)
    records = list(source.iter_runs(**scope.filters()))
    sync_runs(session, records, scope)
    if bucket is None:
        return len(records)
    return sum(1 for record in records if bucket.contains(int(record["experiment"]), int(record["run"])))


def _present(bucket: IoV) -> Any:
    # The plain experiment bounds let the database use the (experiment, run) index; the row-value
    # comparison of in_bucket alone makes SQLite scan every run.
    experiments = CollectedRun.experiment >= bucket.exp_low
    if not bucket.is_open_ended:
        experiments = experiments & (CollectedRun.experiment <= bucket.exp_high)
    return experiments & in_bucket(bucket) & CollectedRun.missing_since.is_(None)


def last_fetched(session: Session) -> datetime | None:
    """Return when a run was last collected, or None when none is."""
    return session.scalar(select(func.max(CollectedRun.fetched_at)))


def records_in(session: Session, bucket: IoV) -> list[CollectedRun]:
    """Return the collected runs of a bucket, in run order."""
    query = select(CollectedRun).where(_present(bucket)).order_by(CollectedRun.experiment, CollectedRun.run)
    return list(session.scalars(query))


def runs_in(session: Session, bucket: IoV) -> list[Run]:
    """Return the collected runs of a bucket as :class:`b2cal.runs.Run`, for run selection."""
    return load_runs(session, bucket)


def data_taken_until(session: Session, bucket: IoV) -> datetime | None:
    """Return the stop time of the last collected run of a bucket: when its data taking ended."""
    return session.scalar(select(func.max(CollectedRun.stop_time)).where(_present(bucket)))


def run_summaries(session: Session, *, with_times: bool = False) -> list[RunSummary]:
    """Return every collected run reduced to what bucket proposals need, in run order.

    :param with_times: also read the start and stop times, which costs most of the query's time.
    """
    columns = [
        CollectedRun.experiment,
        CollectedRun.run,
        CollectedRun.run_type,
        CollectedRun.recorded_luminosity,
    ]
    if with_times:
        columns += [CollectedRun.start_time, CollectedRun.stop_time]
    query = (
        select(*columns)
        .where(CollectedRun.missing_since.is_(None))
        .order_by(CollectedRun.experiment, CollectedRun.run)
    )
    return [RunSummary(*cast(tuple[Any, ...], row)) for row in session.execute(query)]


def version(session: Session) -> tuple[Any, ...]:
    """Return a value that changes whenever a run is collected for the first time, changes or goes missing.

    Pages cache what they compute from all runs under this value; collecting runs again without a
    change leaves it as it was.
    """
    query = select(
        func.count(),
        func.max(CollectedRun.first_seen_at),
        func.max(CollectedRun.changed_at),
        func.count(CollectedRun.missing_since),
    )
    return tuple(session.execute(query).one())


def data_taken_until_by_request(session: Session) -> dict[str, datetime]:
    """Return, per request id, the stop time of the last collected run of its bucket, in one query."""
    run = CollectedRun
    request = ProcessingRequest
    lower = (run.experiment >= request.exp_low) & (
        tuple_(run.experiment, run.run) >= tuple_(request.exp_low, request.run_low)
    )
    upper = or_(
        (request.exp_high == OPEN) & (request.run_high == OPEN),
        (request.run_high == OPEN) & (run.experiment <= request.exp_high),
        (run.experiment <= request.exp_high)
        & (tuple_(run.experiment, run.run) <= tuple_(request.exp_high, request.run_high)),
    )
    query = (
        select(request.uid, func.max(run.stop_time))
        .join(run, lower & upper & run.missing_since.is_(None))
        .group_by(request.uid)
    )
    return {str(uid): stop for uid, stop in session.execute(query) if stop is not None}
