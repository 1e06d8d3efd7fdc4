"""Data behind the calibration pages: timelines, critical paths, bucket durations, catalog diffs, plans.

Every function here is pure: it takes plain values read from the plugin database or the catalog and
returns dataclasses that the pages render. Nothing here talks to Airflow, Jira or a database.

The states a calibration goes through on the bucket timeline are:

``queued``
    from the start of the request until its job starts; this includes waiting for the tickets of
    its dependencies;
``running``
    while its job runs at the site;
``waiting_for_expert``
    from the end of the job (the payloads are uploaded then) until the expert closes the ticket;
``done``
    once the ticket is in the status category *done*;
``failed``
    when the job failed or found no input; the expert has to act;
``cancelled``
    once a calibration manager cancelled the request before the calibration's job ended.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from b2cal.catalog import CalibrationSettings, Catalog, topological_levels
from b2cal.iov import IoV
from b2cal.request import RequestSpec
from b2cal.runs import RAW_DATA_TAG, Run, RunFilter
from b2cal.tickets import plan_tickets

QUEUED = "queued"
RUNNING = "running"
WAITING_FOR_EXPERT = "waiting_for_expert"
DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"
TIMELINE_STATES = (QUEUED, RUNNING, WAITING_FOR_EXPERT, DONE, FAILED, CANCELLED)

#: Job states of a progress row that mean the job ended badly.
FAILED_JOB_STATES = frozenset({"failed", "no_input"})
#: Job states of a progress row that mean the job ended well.
FINISHED_JOB_STATES = frozenset({"succeeded"})
#: The job state that the cancellation of a request gives the calibrations whose job had not ended.
CANCELLED_JOB_STATE = "cancelled"
#: Request states after which nothing more happens.
FINAL_REQUEST_STATES = frozenset({"merged", "rejected", "failed", "cancelled"})
#: About two weeks of data taking, the size at which the experiment cuts a bucket, in pb^-1.
BUCKET_LUMINOSITY_PB = 10_000.0
SECONDS_PER_DAY = 86_400.0


# ---------------------------------------------------------------------------------------------------------
# Calibration states and the timeline


def calibration_state(job_state: str | None, ticket_state: str | None) -> str:
    """Return the timeline state of a calibration from its progress row's job and ticket states."""
    if ticket_state == DONE:
        return DONE
    if job_state in FAILED_JOB_STATES:
        return FAILED
    if job_state == CANCELLED_JOB_STATE:
        return CANCELLED
    if job_state in FINISHED_JOB_STATES or ticket_state == WAITING_FOR_EXPERT:
        return WAITING_FOR_EXPERT
    if job_state == RUNNING:
        return RUNNING
    return QUEUED


def state_counts(states: Iterable[tuple[str | None, str | None]]) -> dict[str, int]:
    """Count the calibrations in each timeline state, from ``(job_state, ticket_state)`` pairs."""
    counts = Counter(calibration_state(job, ticket) for job, ticket in states)
    return {state: counts.get(state, 0) for state in TIMELINE_STATES}


@dataclass(frozen=True)
class ProgressEvent:
    """One recorded change of a calibration's progress row: when, and which fields took which value."""

    at: datetime
    calibration: str
    changes: Mapping[str, Any]


@dataclass(frozen=True)
class Segment:
    """A stretch of time a calibration spent in one timeline state."""

    state: str
    start: datetime
    end: datetime

    @property
    def seconds(self) -> float:
        """The length of the segment in seconds."""
        return max(0.0, (self.end - self.start).total_seconds())


@dataclass
class TimelineRow:
    """The bar of one calibration: its segments, and whether it lies on the critical path."""

    calibration: str
    phase: str
    segments: list[Segment] = field(default_factory=list)
    critical: bool = False

    @property
    def state(self) -> str:
        """The state the calibration is in at the end of the timeline."""
        return self.segments[-1].state if self.segments else QUEUED

    @property
    def done_at(self) -> datetime | None:
        """When the calibration's ticket was done, if it is."""
        for segment in self.segments:
            if segment.state == DONE:
                return segment.start
        return None

    def seconds_in(self, state: str) -> float:
        """Return how long the calibration spent in ``state``."""
        return sum(segment.seconds for segment in self.segments if segment.state == state)


@dataclass
class Timeline:
    """The timeline of one bucket: a bar per calibration between ``start`` and ``end``."""

    start: datetime
    end: datetime
    rows: list[TimelineRow]
    critical_path: list[str]

    @property
    def seconds(self) -> float:
        """The length of the timeline in seconds."""
        return max(0.0, (self.end - self.start).total_seconds())

    def waiting_seconds(self) -> dict[str, float]:
        """Return the time summed over all calibrations in each state: where the bucket waited."""
        return {state: sum(row.seconds_in(state) for row in self.rows) for state in TIMELINE_STATES}


def _state_after(current: str, changes: Mapping[str, Any]) -> str:
    job = changes.get("job_state")
    ticket = changes.get("ticket_state")
    if ticket == DONE:
        return DONE
    if job in FAILED_JOB_STATES:
        return FAILED
    if job == CANCELLED_JOB_STATE:
        return CANCELLED if current != DONE else DONE
    if job in FINISHED_JOB_STATES or ticket == WAITING_FOR_EXPERT:
        return WAITING_FOR_EXPERT if current != DONE else DONE
    if job == RUNNING:
        return RUNNING
    return current


def build_timeline(
    calibrations: Sequence[str],
    phases: Mapping[str, str],
    depends_on: Mapping[str, Sequence[str]],
    events: Iterable[ProgressEvent],
    *,
    start: datetime,
    end: datetime,
) -> Timeline:
    """Build the bucket timeline from the recorded progress changes of its calibrations.

    :param calibrations: the request's calibrations, in the order the rows should have.
    :param phases: the phase (``raw`` or ``cdst``) of each calibration.
    :param depends_on: each calibration's dependencies; those outside the request are ignored.
    :param events: the progress changes, in any order; changes of other calibrations are ignored.
    :param start: when the request started; every calibration is queued from then.
    :param end: where the bars end: when the request finished, or now while it runs.
    """
    by_calibration: dict[str, list[ProgressEvent]] = {name: [] for name in calibrations}
    for event in events:
        if event.calibration in by_calibration:
            by_calibration[event.calibration].append(event)
    rows = []
    for name in calibrations:
        row = TimelineRow(calibration=name, phase=phases.get(name, ""))
        state, since = QUEUED, start
        for event in sorted(by_calibration[name], key=lambda item: item.at):
            at = min(max(event.at, start), end)
            following = _state_after(state, event.changes)
            if following == state:
                continue
            if at > since:
                row.segments.append(Segment(state, since, at))
            state, since = following, at
        row.segments.append(Segment(state, since, max(since, end)))
        rows.append(row)
    path = critical_path(rows, depends_on, end=end)
    on_path = set(path)
    for row in rows:
        row.critical = row.calibration in on_path
    return Timeline(start=start, end=end, rows=rows, critical_path=path)


def critical_path(
    rows: Sequence[TimelineRow], depends_on: Mapping[str, Sequence[str]], *, end: datetime
) -> list[str]:
    """Return the chain of calibrations that decided when the bucket finished, root first.

    The chain ends at the calibration that finished last (an unfinished one counts as finishing at
    ``end``) and steps back, each time, to the dependency that finished last, since that dependency
    held the calibration back. Before any calibration has started, it is the longest dependency chain.
    """
    names = [row.calibration for row in rows]
    chosen = set(names)
    finish: dict[str, datetime] = {}
    started = False
    for row in rows:
        finish[row.calibration] = row.done_at or end
        started = started or any(segment.state != QUEUED for segment in row.segments)
    if not rows:
        return []
    if not started:
        return longest_chain({name: depends_on.get(name, ()) for name in names})
    position = {name: index for index, name in enumerate(names)}
    current = max(names, key=lambda name: (finish[name], -position[name]))
    path = [current]
    while True:
        deps = [dep for dep in depends_on.get(current, ()) if dep in chosen and dep not in path]
        if not deps:
            break
        current = max(deps, key=lambda name: (finish[name], -position[name]))
        path.append(current)
    return path[::-1]


def longest_chain(depends_on: Mapping[str, Sequence[str]]) -> list[str]:
    """Return one longest dependency chain of a graph, root first; ties keep the input order."""
    graph = {name: [dep for dep in deps if dep in depends_on] for name, deps in depends_on.items()}
    best: dict[str, list[str]] = {}
    for level in topological_levels(graph):
        for name in level:
            parents = [best[dep] for dep in graph[name]]
            best[name] = [*max(parents, key=len, default=[]), name]
    return max(best.values(), key=len, default=[])


# ---------------------------------------------------------------------------------------------------------
# The two durations per bucket


@dataclass(frozen=True)
class BucketDurations:
    """The experiment's two figures of merit for one bucket, in days.

    ``bucket_days`` runs from the request's start to the merge into the running tag, and
    ``data_to_calibrated_days`` from the end of data taking in the bucket to that merge. A request
    that ended without a merge (``end_state`` is ``cancelled``, ``failed`` or ``rejected``) stops
    both at ``ended_at``. While the request goes on, both run to ``now``. ``finished`` and
    ``stopped`` tell the cases apart.
    """

    request_uid: str
    bucket: str
    started_at: datetime
    data_taken_until: datetime | None
    calibrated_at: datetime | None
    bucket_days: float
    data_to_calibrated_days: float | None
    ended_at: datetime | None = None
    end_state: str | None = None

    @property
    def finished(self) -> bool:
        """Whether the bucket's payloads reached the running tag."""
        return self.calibrated_at is not None

    @property
    def stopped(self) -> bool:
        """Whether the figures no longer grow: the bucket is calibrated or its request ended."""
        return self.calibrated_at is not None or self.ended_at is not None


def bucket_durations(
    request_uid: str,
    bucket: str,
    *,
    started_at: datetime,
    data_taken_until: datetime | None,
    calibrated_at: datetime | None,
    now: datetime,
    ended_at: datetime | None = None,
    end_state: str | None = None,
) -> BucketDurations:
    """Compute the time for the bucket and the time from data taken to calibrated.

    :param data_taken_until: the stop time of the bucket's last run, if the runs are known.
    :param calibrated_at: when the staging tag was merged into the running tag, if it was.
    :param ended_at: when the request reached a final state other than ``merged``, if it did. The
        figures stop there. A merge wins over this time.
    :param end_state: that final state, e.g. ``cancelled``.
    """
    if calibrated_at is not None or ended_at is None:
        ended_at, end_state = None, None
    until = calibrated_at or ended_at or now
    data_days = None
    if data_taken_until is not None:
        data_days = (until - data_taken_until).total_seconds() / SECONDS_PER_DAY
    return BucketDurations(
        request_uid=request_uid,
        bucket=bucket,
        started_at=started_at,
        data_taken_until=data_taken_until,
        calibrated_at=calibrated_at,
        bucket_days=(until - started_at).total_seconds() / SECONDS_PER_DAY,
        data_to_calibrated_days=data_days,
        ended_at=ended_at,
        end_state=end_state,
    )


# ---------------------------------------------------------------------------------------------------------
# Catalog diff


@dataclass(frozen=True)
class SettingChange:
    """One setting of a calibration whose value differs between two releases."""

    key: str
    old: Any
    new: Any


@dataclass
class CatalogDiff:
    """What changed in the calibration catalog from one release to another."""

    old_release: str
    new_release: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: dict[str, list[SettingChange]] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)
    vocabulary_added: dict[str, list[str]] = field(default_factory=dict)
    vocabulary_removed: dict[str, list[str]] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        """Whether the two catalogs define the same calibrations with the same settings."""
        return not (
            self.added or self.removed or self.changed or self.vocabulary_added or self.vocabulary_removed
        )


def diff_catalogs(old: Catalog, new: Catalog) -> CatalogDiff:
    """Compare two release catalogs: calibrations added, removed and changed, setting by setting."""
    diff = CatalogDiff(old_release=old.release, new_release=new.release)
    diff.added = [name for name in new.names if name not in old]
    diff.removed = [name for name in old.names if name not in new]
    for name in new.names:
        if name not in old:
            continue
        before, after = old[name].to_dict(), new[name].to_dict()
        changes = [
            SettingChange(key, before.get(key), after.get(key))
            for key in sorted(set(before) | set(after))
            if before.get(key) != after.get(key)
        ]
        if changes:
            diff.changed[name] = changes
        else:
            diff.unchanged.append(name)
    for category in sorted(set(old.vocabulary) | set(new.vocabulary)):
        before_values = set(old.vocabulary.get(category, ()))
        after_values = set(new.vocabulary.get(category, ()))
        if after_values - before_values:
            diff.vocabulary_added[category] = sorted(after_values - before_values)
        if before_values - after_values:
            diff.vocabulary_removed[category] = sorted(before_values - after_values)
    return diff


# ---------------------------------------------------------------------------------------------------------
# Plan preview


@dataclass(frozen=True)
class InputCount:
    """How many runs of the bucket one input of a calibration would read, before files are listed."""

    input_name: str
    filters: tuple[str, ...]
    data_tags: tuple[str, ...]
    runs_considered: int
    runs_kept: int
    luminosity_pb: float
    dropped_by: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        """Return the count as JSON-ready data."""
        return {
            "input_name": self.input_name,
            "filters": list(self.filters),
            "data_tags": list(self.data_tags),
            "runs_considered": self.runs_considered,
            "runs_kept": self.runs_kept,
            "luminosity_pb": round(self.luminosity_pb, 3),
            "dropped_by": dict(self.dropped_by),
        }


@dataclass(frozen=True)
class PlannedTicket:
    """One ticket the request would create."""

    calibration: str
    summary: str
    assignee: str
    blocked_by: tuple[str, ...]
    phase: str
    level: int


@dataclass
class PlanPreview:
    """What a request would do, shown before it is submitted."""

    request_uid: str
    bucket: IoV
    calibrations: list[str]
    added_dependencies: list[str]
    levels: list[list[str]]
    phases: dict[str, list[str]]
    tickets: list[PlannedTicket]
    inputs: dict[str, list[InputCount]]
    bucket_runs: int
    warnings: list[str] = field(default_factory=list)

    def empty_inputs(self) -> list[tuple[str, InputCount]]:
        """Return each calibration input that keeps no run of a bucket that has runs.

        The job of such a calibration fails at once for lack of input. The plan's warnings contain the
        same message.
        """
        if not self.bucket_runs:
            return []
        return [
            (name, count) for name, counts in self.inputs.items() for count in counts if count.runs_kept == 0
        ]

    def to_dict(self) -> dict[str, Any]:
        """Return the preview as JSON-ready data."""
        return {
            "request_id": self.request_uid,
            "bucket": self.bucket.as_list(),
            "calibrations": list(self.calibrations),
            "added_dependencies": list(self.added_dependencies),
            "levels": [list(level) for level in self.levels],
            "phases": {phase: list(names) for phase, names in self.phases.items()},
            "tickets": [
                {
                    "calibration": ticket.calibration,
                    "summary": ticket.summary,
                    "assignee": ticket.assignee,
                    "blocked_by": list(ticket.blocked_by),
                    "phase": ticket.phase,
                    "level": ticket.level,
                }
                for ticket in self.tickets
            ],
            "inputs": {name: [count.to_dict() for count in counts] for name, counts in self.inputs.items()},
            "bucket_runs": self.bucket_runs,
            "warnings": list(self.warnings),
        }


def count_inputs(
    settings: CalibrationSettings,
    runs: Sequence[Run],
    vocabulary: Mapping[str, Iterable[str]],
    filter_overrides: Mapping[str, Sequence[str]] | None = None,
) -> list[InputCount]:
    """Count, per input name, the runs that pass the filters and carry one of the input's data tags.

    This is the run selection of :func:`b2cal.runs.select_inputs` without the file listing, which
    only the site can do: a run with no files at the site is counted here and dropped there.
    """
    counts = []
    for input_name in settings.input_data_names:
        values = (filter_overrides or {}).get(input_name, settings.input_data_filters.get(input_name, ()))
        run_filter = RunFilter(values, vocabulary)
        excluded_tags = run_filter.excluded.get("Data Tag", {})
        tags = [tag for tag in run_filter.data_tags if tag not in excluded_tags]
        kept, luminosity = 0, 0.0
        dropped: Counter[str] = Counter()
        for run in runs:
            reason = run_filter.reject_reason(run)
            if reason is None and run_filter.data_tags and not set(tags) & set(run.skims):
                reason = f"no {' or '.join(tags) or 'allowed'} skim"
            if reason is not None:
                dropped[reason] += 1
                continue
            kept += 1
            luminosity += run.recorded_luminosity
        counts.append(
            InputCount(
                input_name=input_name,
                filters=tuple(values),
                data_tags=tuple(tags) if run_filter.data_tags else (RAW_DATA_TAG,),
                runs_considered=len(runs),
                runs_kept=kept,
                luminosity_pb=luminosity,
                dropped_by=dict(dropped.most_common()),
            )
        )
    return counts


def empty_input_message(name: str, count: InputCount) -> str:
    """Describe a calibration input that keeps no run, naming the filter that removes the most runs."""
    worst = next(iter(count.dropped_by), "the filters")
    return f"{name} input {count.input_name!r} keeps no run of the bucket ({worst!r} removes most)"


def plan_preview(spec: RequestSpec, catalog: Catalog, runs: Iterable[Run]) -> PlanPreview:
    """Preview a validated request: its ticket tree, order and phases, and input counts per calibration.

    :param runs: the runs known for the bucket; runs outside it are ignored.
    """
    bucket_runs = [run for run in runs if spec.bucket.contains(run.experiment, run.run)]
    levels = catalog.levels(spec.calibrations)
    level_of = {name: index for index, level in enumerate(levels) for name in level}
    plan = plan_tickets(
        catalog,
        spec.calibrations,
        request_uid=spec.uid,
        project="CAL",
        kind=spec.kind,
        site=spec.site,
        bucket=spec.bucket.as_text(),
        staging_tag=spec.staging_tag,
    )
    tickets = [
        PlannedTicket(
            calibration=ticket.calibration,
            summary=str(ticket.fields["summary"]),
            assignee=ticket.assignee,
            blocked_by=ticket.blocked_by,
            phase=catalog[ticket.calibration].phase,
            level=level_of[ticket.calibration],
        )
        for ticket in plan.tickets
    ]
    inputs: dict[str, list[InputCount]] = {}
    warnings: list[str] = []
    if not bucket_runs:
        warnings.append(f"no run of bucket {spec.bucket} is known to the run registry")
    for name in spec.calibrations:
        counts = count_inputs(catalog[name], bucket_runs, catalog.vocabulary, spec.filter_overrides.get(name))
        inputs[name] = counts
        for count in counts:
            if bucket_runs and count.runs_kept == 0:
                warnings.append(f"{empty_input_message(name, count)}; its job would find no input")
    return PlanPreview(
        request_uid=spec.uid,
        bucket=spec.bucket,
        calibrations=list(spec.calibrations),
        added_dependencies=list(spec.added_dependencies),
        levels=levels,
        phases=catalog.phases(spec.calibrations),
        tickets=tickets,
        inputs=inputs,
        bucket_runs=len(bucket_runs),
        warnings=warnings,
    )


def dependency_notes(catalog: Catalog, selection: Iterable[str]) -> dict[str, list[str]]:
    """Return, for each calibration the closure adds, the chosen calibrations that need it."""
    chosen = list(selection)
    notes: dict[str, list[str]] = {}
    for added in catalog.added_by_closure(chosen):
        notes[added] = [name for name in chosen if added in catalog.closure([name])]
    return notes


# ---------------------------------------------------------------------------------------------------------
# Proposed buckets


@dataclass(frozen=True)
class RunSummary:
    """The few fields of a run that bucket proposals and the durations need."""

    experiment: int
    run: int
    run_type: str
    recorded_luminosity: float
    start_time: datetime | None = None
    stop_time: datetime | None = None


@dataclass(frozen=True)
class ProposedBucket:
    """A run range cut from the accumulated luminosity, offered on the request form."""

    iov: IoV
    runs: int
    physics_runs: int
    luminosity_pb: float
    complete: bool
    start_time: datetime | None
    stop_time: datetime | None
    requests: tuple[str, ...] = ()
    #: The name of the stored bucket this proposal is, such as ``e0026r00000-e0026r00120``.
    stored_name: str | None = None


def propose_buckets(
    runs: Iterable[RunSummary],
    *,
    target_luminosity_pb: float = BUCKET_LUMINOSITY_PB,
    requested: Mapping[str, IoV] | None = None,
    stored: Mapping[str, IoV] | None = None,
) -> list[ProposedBucket]:
    """Cut the runs into buckets of about ``target_luminosity_pb`` of physics luminosity each.

    Buckets never span two experiments. The last bucket of the last experiment is marked incomplete
    while it holds less than the target, since data taking goes on; the last bucket of an earlier
    experiment is complete, as that experiment has ended.

    :param requested: the buckets of existing requests, by request id; each proposal lists the
        requests whose bucket overlaps it.
    :param stored: the buckets stored by run collection, by name. Each is proposed as it is stored,
        complete, so that a request for it finds the bucket's skim quota and storage; only the runs
        outside every stored bucket are cut, and no cut bucket overlaps a stored one.
    """
    if target_luminosity_pb <= 0:
        raise ValueError(
            f"target_luminosity_pb is {target_luminosity_pb}; give a positive luminosity in pb^-1"
        )
    ordered = sorted(runs, key=lambda item: (item.experiment, item.run))
    last_experiment = ordered[-1].experiment if ordered else None
    buckets: list[ProposedBucket] = []
    current: list[RunSummary] = []
    stored_ranges = dict(stored or {})
    stored_buckets = sorted(stored_ranges.items(), key=lambda entry: entry[1].first)
    stored_name: str | None = None
    # Both lists are in run order, so one pass finds the stored bucket of each run.
    next_stored = 0

    def close(complete: bool) -> None:
        physics = [item for item in current if item.run_type == "physics"]
        if stored_name is not None:
            iov = stored_ranges[stored_name]
        else:
            iov = IoV(current[0].experiment, current[0].run, current[-1].experiment, current[-1].run)
        overlapping = tuple(uid for uid, other in (requested or {}).items() if other.overlaps(iov))
        starts = [item.start_time for item in current if item.start_time is not None]
        stops = [item.stop_time for item in current if item.stop_time is not None]
        buckets.append(
            ProposedBucket(
                iov=iov,
                runs=len(current),
                physics_runs=len(physics),
                luminosity_pb=sum(item.recorded_luminosity for item in physics),
                complete=complete,
                start_time=min(starts, default=None),
                stop_time=max(stops, default=None),
                requests=overlapping,
                stored_name=stored_name,
            )
        )
        current.clear()

    def stored_bucket_of(item: RunSummary) -> str | None:
        nonlocal next_stored
        key = (item.experiment, item.run)
        while next_stored < len(stored_buckets) and stored_buckets[next_stored][1].last_key() < key:
            next_stored += 1
        if next_stored < len(stored_buckets) and stored_buckets[next_stored][1].contains(*key):
            return stored_buckets[next_stored][0]
        return None

    luminosity = 0.0
    for item in ordered:
        owner = stored_bucket_of(item)
        if current and owner != stored_name:
            # A stored bucket starts or ends here: the runs so far form a bucket of their own.
            close(complete=True)
            luminosity = 0.0
        stored_name = owner
        if owner is not None:
            current.append(item)
            continue
        if current and item.experiment != current[-1].experiment:
            close(complete=True)
            luminosity = 0.0
        current.append(item)
        if item.run_type == "physics":
            luminosity += item.recorded_luminosity
        if luminosity >= target_luminosity_pb:
            close(complete=True)
            luminosity = 0.0
    if current:
        close(complete=stored_name is not None or current[-1].experiment != last_experiment)
    return buckets
