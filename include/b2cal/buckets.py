"""Buckets: cut the next run range from the accumulated luminosity of good physics runs, and list buckets.

A bucket is a contiguous run range calibrated together. The next one starts after the last stored
bucket and ends at the good physics run whose recorded luminosity brings the sum to the target
(9 fb^-1 by default). Only runs of type ``physics`` with overall quality GOOD count toward the
target, but every run in the range belongs to the bucket.

Some calibrations cannot produce one payload across two experiments, so a bucket stops at the end
of an experiment unless the caller allows crossing. Either way the proposal's notes record it.

:func:`propose_bucket` is pure; the functions taking a ``Session`` store, close and list buckets
in the plugin database, with run counts and luminosity computed from the collected runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from b2cal.db.models import utcnow
from b2cal.db.runmodels import BucketRecord, CollectedRun
from b2cal.iov import IoV
from b2cal.runsync import in_bucket

logger = logging.getLogger(__name__)

#: Default bucket size: recorded luminosity of good physics runs, in pb^-1 (9 fb^-1).
DEFAULT_TARGET_PB = 9000.0
OPEN = "open"
CLOSED = "closed"
BUCKET_STATES = (OPEN, CLOSED)


@dataclass(frozen=True)
class BucketRun:
    """The fields of a run that bucket cutting needs."""

    experiment: int
    run: int
    run_type: str
    recorded_luminosity: float
    good: bool
    start_time: datetime | None = None
    stop_time: datetime | None = None

    @property
    def key(self) -> tuple[int, int]:
        """The ``(exp, run)`` pair."""
        return (self.experiment, self.run)

    @property
    def counts(self) -> bool:
        """Whether the run's luminosity counts toward the target: a good physics run."""
        return self.good and self.run_type == "physics"


@dataclass
class BucketProposal:
    """The run range proposed as the next bucket, with its counts and the reason it ends where it does."""

    iov: IoV
    runs: int
    good_physics_runs: int
    luminosity_pb: float
    target_pb: float
    complete: bool
    experiments: list[int]
    start_time: datetime | None = None
    stop_time: datetime | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The bucket's name, e.g. ``e0026r00001-e0026r00400``."""
        return bucket_name(self.iov)

    @property
    def crosses_experiments(self) -> bool:
        """Whether the range contains an experiment boundary."""
        return len(self.experiments) > 1

    def to_dict(self) -> dict[str, Any]:
        """Return the proposal as JSON-ready data."""
        return {
            "name": self.name,
            "iov": self.iov.as_list(),
            "runs": self.runs,
            "good_physics_runs": self.good_physics_runs,
            "luminosity_pb": round(self.luminosity_pb, 3),
            "target_pb": self.target_pb,
            "complete": self.complete,
            "experiments": list(self.experiments),
            "crosses_experiments": self.crosses_experiments,
            "start_time": self.start_time.isoformat() if self.start_time else None,
            "stop_time": self.stop_time.isoformat() if self.stop_time else None,
            "notes": list(self.notes),
        }


def bucket_name(iov: IoV) -> str:
    """Return the name of a bucket's run range, e.g. ``e0026r00001-e0026r00400``."""
    return f"e{iov.exp_low:04d}r{iov.run_low:05d}-e{iov.exp_high:04d}r{iov.run_high:05d}"


def _fb(value_pb: float) -> str:
    return f"{value_pb / 1000.0:.2f} fb^-1"


def propose_bucket(
    runs: Iterable[BucketRun],
    *,
    after: tuple[int, int] | None = None,
    target_pb: float = DEFAULT_TARGET_PB,
    cross_experiments: bool = False,
) -> BucketProposal | None:
    """Propose the next bucket from the runs after ``after``; ``None`` when there is no such run.

    :param after: the last run of the previous bucket; the proposal starts at the first run after it
    :param target_pb: good physics luminosity at which the bucket is cut, in pb^-1
    :param cross_experiments: continue into the next experiment when the current one ends before
        the target; otherwise the bucket stops at the experiment's last run
    """
    if not target_pb > 0:
        raise ValueError(f"target_pb is {target_pb!r}; give a positive luminosity in pb^-1, e.g. 9000")
    ordered = sorted((run for run in runs if after is None or run.key > after), key=lambda run: run.key)
    if not ordered:
        return None
    chosen: list[BucketRun] = []
    luminosity = 0.0
    notes: list[str] = []
    complete = False
    for index, run in enumerate(ordered):
        if chosen and run.experiment != chosen[-1].experiment:
            if not cross_experiments:
                notes.append(
                    f"experiment {chosen[-1].experiment} ended at {_fb(luminosity)} of {_fb(target_pb)}: "
                    f"the bucket stops at its last run e{chosen[-1].experiment} r{chosen[-1].run} "
                    "instead of crossing into experiment "
                    f"{run.experiment}; allow crossing experiments to continue"
                )
                complete = True
                break
            notes.append(
                f"the bucket crosses from experiment {chosen[-1].experiment} into {run.experiment} at "
                f"{_fb(luminosity)}; calibrations that cannot span experiments need a payload boundary at "
                f"[{run.experiment}, {run.run}]"
            )
        chosen.append(run)
        if run.counts:
            luminosity += run.recorded_luminosity
        if luminosity >= target_pb:
            complete = True
            break
        if index == len(ordered) - 1:
            notes.append(
                f"only {_fb(luminosity)} of {_fb(target_pb)} so far: the bucket stays incomplete until "
                "more good physics runs are collected"
            )
    starts = [run.start_time for run in chosen if run.start_time is not None]
    stops = [run.stop_time for run in chosen if run.stop_time is not None]
    proposal = BucketProposal(
        iov=IoV(chosen[0].experiment, chosen[0].run, chosen[-1].experiment, chosen[-1].run),
        runs=len(chosen),
        good_physics_runs=sum(1 for run in chosen if run.counts),
        luminosity_pb=luminosity,
        target_pb=target_pb,
        complete=complete,
        experiments=sorted({run.experiment for run in chosen}),
        start_time=min(starts, default=None),
        stop_time=max(stops, default=None),
        notes=notes,
    )
    return proposal


# -- plugin database ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BucketSummary:
    """A stored bucket with the run counts and luminosity of its collected runs."""

    name: str
    iov: IoV
    state: str
    runs: int
    good_physics_runs: int
    luminosity_pb: float
    recorded_luminosity_pb: float
    missing_runs: int
    target_pb: float
    notes: tuple[str, ...]
    created_at: datetime
    closed_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        """Return the summary as JSON-ready data."""
        return {
            "name": self.name,
            "iov": self.iov.as_list(),
            "state": self.state,
            "runs": self.runs,
            "good_physics_runs": self.good_physics_runs,
            "luminosity_pb": round(self.luminosity_pb, 3),
            "recorded_luminosity_pb": round(self.recorded_luminosity_pb, 3),
            "missing_runs": self.missing_runs,
            "target_pb": self.target_pb,
            "notes": list(self.notes),
            "created_at": self.created_at.isoformat(),
            "closed_at": self.closed_at.isoformat() if self.closed_at else None,
        }


class BucketError(ValueError):
    """A bucket cannot be stored or changed as asked."""


def _bucket_runs(session: Session, after: tuple[int, int] | None = None) -> list[BucketRun]:
    query = select(
        CollectedRun.experiment,
        CollectedRun.run,
        CollectedRun.run_type,
        CollectedRun.recorded_luminosity,
        CollectedRun.good,
        CollectedRun.start_time,
        CollectedRun.stop_time,
    ).where(CollectedRun.missing_since.is_(None))
    if after is not None:
        query = query.where(CollectedRun.experiment >= after[0])
    rows = session.execute(query.order_by(CollectedRun.experiment, CollectedRun.run))
    return [BucketRun(*row) for row in rows]


def last_bucket_end(session: Session) -> tuple[int, int] | None:
    """Return the last run of the latest stored bucket, or ``None`` when no bucket is stored."""
    row = session.execute(
        select(BucketRecord.exp_high, BucketRecord.run_high)
        .order_by(BucketRecord.exp_high.desc(), BucketRecord.run_high.desc())
        .limit(1)
    ).first()
    return (row[0], row[1]) if row else None


def propose_next_bucket(
    session: Session, *, target_pb: float = DEFAULT_TARGET_PB, cross_experiments: bool = False
) -> BucketProposal | None:
    """Propose the bucket after the latest stored one from the collected runs.

    Runs flagged as missing upstream are left out.
    """
    after = last_bucket_end(session)
    proposal = propose_bucket(
        _bucket_runs(session, after), after=after, target_pb=target_pb, cross_experiments=cross_experiments
    )
    if proposal is not None:
        logger.info(
            "Proposed bucket %s: %d runs, %.1f pb^-1 of good physics (%s)",
            proposal.name,
            proposal.runs,
            proposal.luminosity_pb,
            "complete" if proposal.complete else "incomplete",
        )
    return proposal


def save_bucket(session: Session, proposal: BucketProposal, *, actor: str = "system") -> BucketRecord:
    """Store a proposed bucket as open; return the stored one when the same range is stored already.

    :raises BucketError: when the range overlaps another stored bucket.
    """
    iov = proposal.iov
    for row in session.scalars(select(BucketRecord)):
        other = IoV(row.exp_low, row.run_low, row.exp_high, row.run_high)
        if other == iov:
            return row
        if other.overlaps(iov):
            raise BucketError(
                f"bucket {proposal.name} overlaps the stored bucket {row.name}; "
                "propose the next bucket again so that it starts after the stored ones"
            )
    row = BucketRecord(
        name=proposal.name,
        exp_low=iov.exp_low,
        run_low=iov.run_low,
        exp_high=iov.exp_high,
        run_high=iov.run_high,
        state=OPEN,
        target_luminosity_pb=proposal.target_pb,
        notes=list(proposal.notes),
        created_by=actor,
    )
    session.add(row)
    session.flush()
    logger.info("Stored bucket %s as open (by %s)", row.name, actor)
    return row


def close_bucket(session: Session, name: str) -> BucketRecord:
    """Mark a bucket as closed: its calibration is finished.

    :raises BucketError: when no bucket has that name.
    """
    row = session.scalar(select(BucketRecord).where(BucketRecord.name == name))
    if row is None:
        raise BucketError(f"bucket {name!r} is not stored; list the buckets to see their names")
    if row.state != CLOSED:
        row.state = CLOSED
        row.closed_at = utcnow()
        logger.info("Closed bucket %s", name)
    return row


def bucket_ranges(session: Session) -> dict[str, IoV]:
    """Return the run range of every stored bucket by name, in run order, with one query."""
    rows = session.execute(
        select(
            BucketRecord.name,
            BucketRecord.exp_low,
            BucketRecord.run_low,
            BucketRecord.exp_high,
            BucketRecord.run_high,
        ).order_by(BucketRecord.exp_low, BucketRecord.run_low)
    )
    return {name: IoV(*bounds) for name, *bounds in rows}


def list_buckets(session: Session, state: str | None = None) -> list[BucketSummary]:
    """Return the stored buckets in run order, with counts and luminosity of their collected runs.

    :param state: ``open`` or ``closed`` to list only those; every bucket when ``None``.
    """
    if state is not None and state not in BUCKET_STATES:
        raise ValueError(f"bucket state {state!r} is unknown; use one of {', '.join(BUCKET_STATES)}")
    query = select(BucketRecord).order_by(BucketRecord.exp_low, BucketRecord.run_low)
    if state is not None:
        query = query.where(BucketRecord.state == state)
    summaries = []
    for row in session.scalars(query):
        iov = IoV(row.exp_low, row.run_low, row.exp_high, row.run_high)
        summaries.append(_summary(session, row, iov))
    return summaries


def _summary(session: Session, row: BucketRecord, iov: IoV) -> BucketSummary:
    runs: Sequence[Any] = session.execute(
        select(
            CollectedRun.run_type,
            CollectedRun.good,
            CollectedRun.recorded_luminosity,
            CollectedRun.missing_since,
        ).where(in_bucket(iov))
    ).all()
    present = [item for item in runs if item.missing_since is None]
    good_physics = [item for item in present if item.good and item.run_type == "physics"]
    return BucketSummary(
        name=row.name,
        iov=iov,
        state=row.state,
        runs=len(present),
        good_physics_runs=len(good_physics),
        luminosity_pb=sum(item.recorded_luminosity for item in good_physics),
        recorded_luminosity_pb=sum(item.recorded_luminosity for item in present),
        missing_runs=len(runs) - len(present),
        target_pb=row.target_luminosity_pb,
        notes=tuple(row.notes or ()),
        created_at=row.created_at,
        closed_at=row.closed_at,
    )
