"""Run selection: which runs of a bucket pass a calibration's input data filters, and their files.

A filter list mixes values of five categories (Magnet, Beam Energy, Run Type, Data Tag, Data Quality
Tag). Inside one category the plain values are alternatives, and a run must match one of them. A
value prefixed with ``NOT`` and a space excludes the runs that match it. A category the list leaves
out sets no requirement. A run passes when it meets every category the list mentions.

Data tags are special. A plain data tag names a skim whose files the input reads, and a run passes
the data tag filter when the site holds files of at least one of the input's skims for it: which
skims exist per run comes from the :class:`~b2cal.filesources.FileSource`. An input without a plain
data tag reads the run's full raw data, listed under the tag :data:`RAW_DATA_TAG`. ``NOT <data tag>``
drops that skim's files from what the input reads, not the run.

:func:`select_inputs` applies the filters as a funnel in a fixed order (run type, beam energy,
magnet, data quality, exclusions, then files at the site, then the ``expert_config`` caps) and
records how many runs each step dropped, so every selection explains itself.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from b2cal.catalog import NOT_PREFIX, CalibrationSettings
from b2cal.filesources import CallableFileSource, FileEntry, FileSource, PathTemplateSource
from b2cal.iov import IoV

logger = logging.getLogger(__name__)

GOOD = "GOOD"
RAW_DATA_TAG = "raw"
RECOVERABLE = "RECOVERABLE"
ALIGNMENT_DETECTORS = ("PXD", "SVD", "CDC")
#: Minimum run length for the ``>=30 Minute Run`` quality tag, in seconds.
MIN_LONG_RUN_SECONDS = 30 * 60
#: Order in which the run-level categories are checked; the first failing one is the drop reason.
RUN_CATEGORIES = ("Run Type", "Beam Energy", "Magnet", "Data Quality Tag")
DATA_TAG = "Data Tag"
#: The funnel category of the runs that the bucket's skim quota left out (see :mod:`b2cal.skimquota`).
SKIM_QUOTA = "Skim quota"
#: The ``expert_config`` keys that shape the file list, and what each one sets.
CAP_KEYS = {
    "min_events_per_file": "files with fewer events are skipped",
    "max_files_per_run": "at most this many files per run, in path order",
    "max_events_per_run": "files are added per run until their events reach this number",
    "payload_boundaries": "[exp, run] pairs where a new payload starts; each segment is counted",
}

RunKey = tuple[int, int]


@dataclass(frozen=True)
class Run:
    """One run as the run registry describes it, reduced to what the filters look at."""

    experiment: int
    run: int
    run_type: str
    solenoid_field: str = "On"
    beam_energy: str = "4S"
    quality: Mapping[str, str] = field(default_factory=dict)
    shifter_quality: str = GOOD
    duration_s: float = 0.0
    recorded_luminosity: float = 0.0
    skims: tuple[str, ...] = ()
    start_time: datetime | None = None

    @property
    def key(self) -> tuple[int, int]:
        """The ``(exp, run)`` pair."""
        return (self.experiment, self.run)

    @classmethod
    def from_registry(cls, record: Mapping[str, Any]) -> Run:
        """Build a run from a run registry record."""
        duration = 0.0
        start, stop = record.get("start_time"), record.get("stop_time")
        started = parse_time(start) if start else None
        if started and stop:
            duration = (parse_time(stop) - started).total_seconds()
        return cls(
            experiment=int(record["experiment"]),
            run=int(record["run"]),
            run_type=str(record.get("run_type") or "null"),
            solenoid_field=str(record.get("solenoid_field") or "On"),
            beam_energy=str(record.get("beam_energy") or ""),
            quality=dict(record.get("quality") or {}),
            shifter_quality=str(record.get("shifter_quality") or ""),
            duration_s=duration,
            recorded_luminosity=float(record.get("recorded_luminosity") or 0.0),
            skims=tuple(record.get("skims") or ()),
            start_time=started,
        )

    def quality_tags(self) -> set[str]:
        """Return the ``Data Quality Tag`` values this run matches."""
        overall = self.quality.get("overall", GOOD)
        quality: set[str] = set()
        if overall == GOOD:
            quality |= {"Good", "Good Or Recoverable"}
        elif overall == RECOVERABLE:
            quality.add("Good Or Recoverable")
        if self.shifter_quality == GOOD:
            quality |= {"Good Shifter", "Good Or Recoverable Shifter"}
        elif self.shifter_quality == RECOVERABLE:
            quality.add("Good Or Recoverable Shifter")
        if self.duration_s >= MIN_LONG_RUN_SECONDS:
            quality.add(">=30 Minute Run")
        if self.quality.get("PXD", GOOD) == GOOD and overall in (GOOD, RECOVERABLE):
            quality.add("Good For PXD")
        if any(self.quality.get(detector, GOOD) == "BAD" for detector in ALIGNMENT_DETECTORS):
            quality.add("Bad For Alignment")
        return quality

    def tags(self) -> dict[str, set[str]]:
        """Return, per filter category, the vocabulary values this run matches."""
        return {
            "Magnet": {"Either", "On" if self.solenoid_field == "On" else "Off"},
            "Beam Energy": {self.beam_energy},
            "Run Type": {self.run_type},
            DATA_TAG: set(self.skims),
            "Data Quality Tag": self.quality_tags(),
        }


def parse_time(value: str) -> datetime:
    """Parse an ISO 8601 time as the run registry writes it, ``Z`` included."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _label(values: Iterable[str]) -> str:
    return " or ".join(repr(value) if value == "" else value for value in values)


class RunFilter:
    """A compiled filter list of one calibration input."""

    def __init__(self, values: Iterable[str], vocabulary: Mapping[str, Iterable[str]]) -> None:
        self.values = tuple(values)
        category_of = {value: category for category, items in vocabulary.items() for value in items}
        # Dicts keep the order of the filter list, so labels read as the catalog writes them.
        self.required: dict[str, dict[str, None]] = {}
        self.excluded: dict[str, dict[str, None]] = {}
        for value in self.values:
            negated = value.startswith(NOT_PREFIX)
            bare = value[len(NOT_PREFIX) :] if negated else value
            if bare not in category_of:
                raise ValueError(
                    f"filter value {value!r} is not in the filter vocabulary; "
                    f"use a value of {', '.join(vocabulary)}"
                )
            target = self.excluded if negated else self.required
            target.setdefault(category_of[bare], {})[bare] = None

    @property
    def data_tags(self) -> list[str]:
        """The data tags (skims) whose files this input reads, in filter order."""
        return list(self.required.get(DATA_TAG, {}))

    @property
    def excluded_data_tags(self) -> list[str]:
        """The data tags whose files are dropped from this input, in filter order."""
        return list(self.excluded.get(DATA_TAG, {}))

    def run_checks(self) -> list[tuple[str, str]]:
        """Return the run-level checks in funnel order, as ``(label, category)``.

        A required category gives one check labelled with its alternatives, e.g. ``4S or Continuum``;
        the exclusions of a category give one check labelled ``NOT <value>``.
        """
        checks = []
        for category in RUN_CATEGORIES:
            if category in self.required:
                checks.append((_label(self.required[category]), category))
        for category in RUN_CATEGORIES:
            for value in self.excluded.get(category, {}):
                checks.append((f"{NOT_PREFIX}{value}", category))
        return checks

    def reject_reason_tags(self, tags: Mapping[str, Collection[str]]) -> str | None:
        """Return the first run-level check that ``tags`` (see :meth:`Run.tags`) fails, or ``None``.

        The data tag category is not checked here: that needs the file source.
        """
        for category in RUN_CATEGORIES:
            wanted = self.required.get(category)
            if wanted and not any(value in tags[category] for value in wanted):
                return _label(wanted)
        for category in RUN_CATEGORIES:
            for value in self.excluded.get(category, {}):
                if value in tags[category]:
                    return f"{NOT_PREFIX}{value}"
        return None

    def reject_reason(self, run: Run, data_tags: Collection[str] | None = None) -> str | None:
        """Return the first filter that rejects ``run``, or ``None`` when the run passes.

        :param data_tags: the skims the site holds for the run; the skims the run registry lists
            when ``None``. Excluded data tags do not reject a run: they only keep that skim's files
            out of the input.
        """
        tags = run.tags()
        reason = self.reject_reason_tags(tags)
        if reason is not None:
            return reason
        wanted = self.required.get(DATA_TAG)
        available = tags[DATA_TAG] if data_tags is None else set(data_tags)
        if wanted and not any(value in available for value in wanted):
            return _label(wanted)
        return None

    def accepts(self, run: Run, data_tags: Collection[str] | None = None) -> bool:
        """Return whether ``run`` passes every category of the filter list."""
        return self.reject_reason(run, data_tags) is None


FileLister = Callable[[str, Run], Sequence[str]]


def path_template_lister(root: Path | str, template: str = "{tag}/e{exp:04d}/r{run:05d}") -> FileLister:
    """Return a file lister that lists ``*.root`` files in a folder built from a path template."""
    source = PathTemplateSource(root, template)

    def list_files(tag: str, run: Run) -> list[str]:
        found = source.list_files(tag, [run.key])
        return [entry.path for entry in found.get(run.key, [])]

    # select_inputs recognises the lister and lists the files of all runs through the source in one call.
    list_files.source = source  # type: ignore[attr-defined]
    return list_files


@dataclass
class SelectionStep:
    """One step of the selection funnel: a filter or cap and how many runs and files it removed."""

    label: str
    category: str
    runs_dropped: int = 0
    runs_left: int = 0
    files_dropped: int = 0
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the step as JSON-ready data."""
        data: dict[str, Any] = {
            "filter": self.label,
            "category": self.category,
            "runs_dropped": self.runs_dropped,
            "runs_left": self.runs_left,
        }
        if self.files_dropped:
            data["files_dropped"] = self.files_dropped
        if self.detail:
            data["detail"] = self.detail
        return data


@dataclass
class Segment:
    """The part of a bucket between two payload boundaries, and what the selection kept in it."""

    start: RunKey
    runs: int = 0
    files: int = 0
    luminosity: float = 0.0


@dataclass
class InputSelection:
    """The files chosen for one input name of a calibration, and why runs were dropped."""

    input_name: str
    files: list[tuple[str, tuple[int, int]]] = field(default_factory=list)
    runs_considered: int = 0
    runs_kept: int = 0
    dropped_by: Counter[str] = field(default_factory=Counter)
    luminosity_kept: float = 0.0
    filters: list[str] = field(default_factory=list)
    data_tags: list[str] = field(default_factory=list)
    source: str = ""
    steps: list[SelectionStep] = field(default_factory=list)
    events_kept: int = 0
    files_without_events: int = 0
    segments: list[Segment] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    run_files: dict[RunKey, int] = field(default_factory=dict)
    dropped_runs: dict[RunKey, str] = field(default_factory=dict)

    @property
    def emptied_by(self) -> SelectionStep | None:
        """The step after which no run was left, or ``None`` when runs are left or none came in."""
        left = self.runs_considered
        for step in self.steps:
            if left and step.runs_left == 0:
                return step
            left = step.runs_left
        return None

    def explain(self) -> str:
        """Return a one-line account of the selection."""
        drops = ", ".join(f"{count} by {reason!r}" for reason, count in self.dropped_by.most_common())
        return (
            f"{self.input_name}: {self.runs_kept} of {self.runs_considered} runs kept"
            f"{' (dropped ' + drops + ')' if drops else ''}, {len(self.files)} files, "
            f"{self.luminosity_kept:.1f} pb^-1"
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the selection summary as JSON-ready data, without the file list."""
        data: dict[str, Any] = {
            "input_name": self.input_name,
            "filters": list(self.filters),
            "data_tags": list(self.data_tags),
            "source": self.source,
            "runs_considered": self.runs_considered,
            "runs_kept": self.runs_kept,
            "files": len(self.files),
            "dropped_by": dict(self.dropped_by),
            "luminosity_kept_pb": round(self.luminosity_kept, 3),
            "events_kept": self.events_kept if self.files_without_events < len(self.files) else None,
            "files_without_events": self.files_without_events,
            "steps": [step.to_dict() for step in self.steps],
            "segments": [
                {
                    "start": list(segment.start),
                    "runs": segment.runs,
                    "files": segment.files,
                    "luminosity_pb": round(segment.luminosity, 3),
                }
                for segment in self.segments
            ],
            "warnings": list(self.warnings),
            "explanation": self.explain(),
        }
        return data


class EmptyInputError(ValueError):
    """An input name of a calibration ended up with no files.

    :ivar selection: the selection that came out empty, with its funnel
    """

    def __init__(self, message: str, selection: InputSelection | None = None) -> None:
        super().__init__(message)
        self.selection = selection


@dataclass(frozen=True)
class Caps:
    """The ``expert_config`` values that cap the file list, checked."""

    min_events_per_file: int = 0
    max_files_per_run: int | None = None
    max_events_per_run: int | None = None
    payload_boundaries: tuple[RunKey, ...] = ()

    @property
    def needs_events(self) -> bool:
        """Whether a cap reads the files' event counts."""
        return bool(self.min_events_per_file) or self.max_events_per_run is not None

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None, calibration: str = "") -> Caps:
        """Read and check the caps of a calibration's merged ``expert_config``.

        ``None`` (or a missing key) sets no cap.

        :raises ValueError: naming the key and the value when a cap is not a usable number
        """
        config = config or {}
        where = f" of calibration {calibration!r}" if calibration else ""

        def count(key: str, minimum: int) -> int | None:
            value = config.get(key)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(
                    f"expert_config {key}={value!r}{where} is invalid: use an integer >= {minimum}, "
                    "or null for no cap"
                )
            return value

        return cls(
            min_events_per_file=count("min_events_per_file", 0) or 0,
            max_files_per_run=count("max_files_per_run", 1),
            max_events_per_run=count("max_events_per_run", 1),
            payload_boundaries=_boundaries(config.get("payload_boundaries"), where),
        )


def _boundaries(value: Any, where: str) -> tuple[RunKey, ...]:
    if value is None:
        return ()
    example = "[[26, 100], [26, 250]]"
    if not isinstance(value, list | tuple):
        raise ValueError(
            f"expert_config payload_boundaries={value!r}{where} must be a list such as {example}"
        )
    boundaries = []
    for item in value:
        if (
            not isinstance(item, list | tuple)
            or len(item) != 2
            or not all(isinstance(part, int) and not isinstance(part, bool) and part >= 0 for part in item)
        ):
            raise ValueError(
                f"expert_config payload_boundaries entry {item!r}{where} must be an [exp, run] pair of "
                f"non-negative integers, e.g. {example}"
            )
        boundaries.append((int(item[0]), int(item[1])))
    return tuple(sorted(set(boundaries)))


def as_file_source(list_files: FileLister | FileSource, runs_by_key: Mapping[RunKey, Run]) -> FileSource:
    """Return ``list_files`` as a :class:`~b2cal.filesources.FileSource`."""
    if hasattr(list_files, "list_files") and hasattr(list_files, "description"):
        return list_files  # type: ignore[return-value]
    source = getattr(list_files, "source", None)
    if source is not None:
        return source  # type: ignore[no-any-return]
    return CallableFileSource(list_files, runs_by_key.__getitem__)  # type: ignore[arg-type]


def _apply_caps(entries: list[FileEntry], caps: Caps, dropped: Counter[str]) -> list[FileEntry]:
    """Cap one run's files: the event minimum first, then the file count, then the event total."""
    if caps.min_events_per_file:
        kept = [
            entry for entry in entries if entry.events is None or entry.events >= caps.min_events_per_file
        ]
        dropped["min_events_per_file"] += len(entries) - len(kept)
        entries = kept
    if caps.max_files_per_run is not None and len(entries) > caps.max_files_per_run:
        dropped["max_files_per_run"] += len(entries) - caps.max_files_per_run
        entries = entries[: caps.max_files_per_run]
    if caps.max_events_per_run is not None:
        total = 0
        kept = []
        for entry in entries:
            if total >= caps.max_events_per_run:
                break
            if entry.events == 0:
                continue
            kept.append(entry)
            # A file without an event count cannot be weighed, so it is taken without counting.
            total += entry.events or 0
        dropped["max_events_per_run"] += len(entries) - len(kept)
        entries = kept
    return entries


def _list_input_files(
    run_filter: RunFilter,
    source: FileSource,
    keys: list[RunKey],
    with_events: bool,
    skim_runs: Mapping[str, Collection[RunKey]] | None = None,
) -> tuple[dict[RunKey, list[FileEntry]], int]:
    """Return the files of an input per run, and how many files the excluded data tags removed."""
    tags = run_filter.data_tags or [RAW_DATA_TAG]
    per_run: dict[RunKey, list[FileEntry]] = {}
    for tag in tags:
        quota = (skim_runs or {}).get(tag)
        tag_keys = keys if quota is None else [key for key in keys if key in quota]
        for key, entries in source.list_files(tag, tag_keys, with_events=with_events).items():
            per_run.setdefault(key, []).extend(entries)
    removed = 0
    if run_filter.excluded_data_tags and per_run:
        listed = list(per_run)
        unwanted: set[str] = set()
        for tag in run_filter.excluded_data_tags:
            for entries in source.list_files(tag, listed).values():
                unwanted.update(entry.path for entry in entries)
        for key, entries in per_run.items():
            kept = [entry for entry in entries if entry.path not in unwanted]
            removed += len(entries) - len(kept)
            per_run[key] = kept
    return per_run, removed


def _segments(bucket: IoV, boundaries: Sequence[RunKey]) -> list[Segment]:
    starts = [(bucket.exp_low, bucket.run_low)]
    starts += [key for key in boundaries if key > starts[0] and bucket.contains(*key)]
    return [Segment(start) for start in starts]


def select_input(
    settings: CalibrationSettings,
    input_name: str,
    runs: Sequence[tuple[Run, Mapping[str, Collection[str]]]],
    filter_values: Sequence[str],
    vocabulary: Mapping[str, Iterable[str]],
    source: FileSource,
    caps: Caps,
    bucket: IoV,
    skim_runs: Mapping[str, Collection[RunKey]] | None = None,
) -> InputSelection:
    """Select the files of one input name from runs already restricted to the bucket.

    :param runs: each bucket run with its :meth:`Run.tags`, computed once for all inputs
    :param skim_runs: per data tag, the only runs whose files of that skim may be read
    """
    run_filter = RunFilter(filter_values, vocabulary)
    selection = InputSelection(
        input_name=input_name,
        runs_considered=len(runs),
        filters=list(filter_values),
        data_tags=run_filter.data_tags or [RAW_DATA_TAG],
        source=source.description,
    )
    steps = {label: SelectionStep(label, category) for label, category in run_filter.run_checks()}
    left = len(runs)

    passing: list[Run] = []
    for run, tags in runs:
        reason = run_filter.reject_reason_tags(tags)
        if reason is None:
            passing.append(run)
        else:
            steps[reason].runs_dropped += 1
            selection.dropped_runs[run.key] = reason
    for step in steps.values():
        left -= step.runs_dropped
        step.runs_left = left
    selection.steps.extend(steps.values())

    limited = [tag for tag in run_filter.data_tags if tag in (skim_runs or {})]
    # A run drops out only when every skim of the input is limited and the run is in none of the quotas.
    if skim_runs and limited and len(limited) == len(run_filter.data_tags):
        allowed = set().union(*(skim_runs[tag] for tag in limited))
        quota_step = SelectionStep(f"skim quota of {_label(limited)}", SKIM_QUOTA)
        kept = []
        for run in passing:
            if run.key in allowed:
                kept.append(run)
            else:
                quota_step.runs_dropped += 1
                selection.dropped_runs[run.key] = quota_step.label
        passing = kept
        left -= quota_step.runs_dropped
        quota_step.runs_left = left
        selection.steps.append(quota_step)

    per_run, excluded_files = _list_input_files(
        run_filter, source, [run.key for run in passing], caps.needs_events, skim_runs
    )
    files_step = SelectionStep(
        _label(run_filter.data_tags) if run_filter.data_tags else "raw data",
        DATA_TAG if run_filter.data_tags else "Files",
        detail=f"no files at {source.description}",
    )
    exclusion = None
    if run_filter.excluded_data_tags:
        exclusion = SelectionStep(
            " and ".join(f"{NOT_PREFIX}{tag}" for tag in run_filter.excluded_data_tags),
            DATA_TAG,
            files_dropped=excluded_files,
            detail="removes that skim's files, not the run",
        )
    caps_dropped: Counter[str] = Counter()
    caps_emptied: Counter[str] = Counter()
    segments = _segments(bucket, caps.payload_boundaries)
    for run in passing:
        entries = per_run.get(run.key)
        if not entries:
            files_step.runs_dropped += 1
            selection.dropped_runs[run.key] = files_step.label
            continue
        before = Counter(caps_dropped)
        entries = _apply_caps(entries, caps, caps_dropped)
        if not entries:
            cause = next(key for key in caps_dropped if caps_dropped[key] > before[key])
            caps_emptied[cause] += 1
            selection.dropped_runs[run.key] = cause
            continue
        selection.runs_kept += 1
        selection.luminosity_kept += run.recorded_luminosity
        selection.run_files[run.key] = len(entries)
        key = run.key
        selection.files.extend((entry.path, key) for entry in entries)
        for entry in entries:
            if entry.events is None:
                selection.files_without_events += 1
            else:
                selection.events_kept += entry.events
        segment = next(item for item in reversed(segments) if item.start <= key)
        segment.runs += 1
        segment.files += len(entries)
        segment.luminosity += run.recorded_luminosity

    left -= files_step.runs_dropped
    files_step.runs_left = left
    selection.steps.append(files_step)
    if exclusion is not None:
        exclusion.runs_left = left
        selection.steps.append(exclusion)
    for cap in ("min_events_per_file", "max_files_per_run", "max_events_per_run"):
        value = getattr(caps, cap)
        if not value:
            continue
        left -= caps_emptied[cap]
        selection.steps.append(
            SelectionStep(
                f"{cap}={value}",
                "expert_config",
                runs_dropped=caps_emptied[cap],
                runs_left=left,
                files_dropped=caps_dropped[cap],
            )
        )
    for step in selection.steps:
        if step.runs_dropped:
            selection.dropped_by[step.label] += step.runs_dropped

    if caps.needs_events and selection.files_without_events:
        selection.warnings.append(
            f"{selection.files_without_events} files have no event count at {source.description}, "
            "so the event caps did not weigh them"
        )
    if caps.payload_boundaries:
        selection.segments = segments
        ignored = [key for key in caps.payload_boundaries if key not in {item.start for item in segments}]
        if ignored:
            selection.warnings.append(f"payload boundaries {ignored} are outside the bucket {bucket}")
        for segment in segments:
            if not segment.files:
                selection.warnings.append(
                    f"the payload segment starting at e{segment.start[0]} r{segment.start[1]} has no files"
                )
    return selection


def _empty_input_message(settings: CalibrationSettings, selection: InputSelection, bucket: IoV) -> str:
    step = selection.emptied_by
    if selection.runs_considered == 0:
        cause = "the bucket has no runs"
        fix = "collect the runs of the bucket first, or check the bucket's run range"
    elif step is None:
        cause = "no run has files"
        fix = "check the site's storage"
    elif step.category == "expert_config":
        cause = f"the cap {step.label} removed the files of the last {step.runs_dropped} runs"
        fix = "raise or remove the cap in the request's expert_config"
    elif step.category == SKIM_QUOTA:
        cause = f"none of the runs that passed the filters is in the {step.label}"
        fix = "choose the bucket's skim quota again with this calibration's filters in the catalog"
    elif step.detail.startswith("no files"):
        cause = f"no run that passed the filters has {step.label} files at {selection.source}"
        fix = "check that the skims are at the site, or widen the bucket"
    else:
        cause = f"the filter {step.label!r} ({step.category}) removed the last {step.runs_dropped} runs"
        fix = "widen the bucket or override the filter"
    return (
        f"calibration {settings.name!r} input {selection.input_name!r} has no files in bucket {bucket}: "
        f"{cause}; {fix}. Funnel: {selection.explain()}"
    )


def select_inputs(
    settings: CalibrationSettings,
    runs: Iterable[Run],
    bucket: IoV,
    vocabulary: Mapping[str, Iterable[str]],
    list_files: FileLister | FileSource,
    filter_overrides: Mapping[str, Sequence[str]] | None = None,
    expert_config: Mapping[str, Any] | None = None,
    skim_runs: Mapping[str, Collection[RunKey]] | None = None,
) -> dict[str, InputSelection]:
    """Choose the files of every input name of a calibration for one bucket.

    An input without a positive data tag reads the run's full raw data under the tag :data:`RAW_DATA_TAG`.
    A ``NOT <data tag>`` drops that skim's files, not the run.

    :param list_files: a :class:`~b2cal.filesources.FileSource`, or a function ``(tag, run) -> paths``
    :param filter_overrides: replacement filter lists per input name, from the processing request.
    :param expert_config: the calibration's merged ``expert_config``; see :data:`CAP_KEYS` for the keys
        that cap the file list.
    :param skim_runs: the bucket's skim quota: per data tag, the only runs whose files of that skim
        are read (:meth:`b2cal.skimquota.BucketQuota.runs_by_tag`); tags without an entry are not limited.
    :raises EmptyInputError: naming the input and the filter or cap that removed the last runs, when
        an input has no files left.
    :raises ValueError: for a filter value outside the vocabulary or an invalid cap.
    """
    bucket_runs = sorted(
        (run for run in runs if bucket.contains(run.experiment, run.run)), key=lambda run: run.key
    )
    tagged = [(run, run.tags()) for run in bucket_runs]
    source = as_file_source(list_files, {run.key: run for run in bucket_runs})
    caps = Caps.from_config(expert_config, settings.name)
    selections: dict[str, InputSelection] = {}
    for input_name in settings.input_data_names:
        values = (filter_overrides or {}).get(input_name, settings.input_data_filters.get(input_name, ()))
        selection = select_input(
            settings, input_name, tagged, values, vocabulary, source, caps, bucket, skim_runs
        )
        if not selection.files:
            raise EmptyInputError(_empty_input_message(settings, selection, bucket), selection)
        logger.info("Calibration %s, bucket %s: %s", settings.name, bucket, selection.explain())
        selections[input_name] = selection
    return selections


def input_data(selections: Mapping[str, InputSelection]) -> dict[str, list[list[Any]]]:
    """Return the ``input_data.json`` content of a set of selections."""
    return {
        name: [[path, [exp, run]] for path, (exp, run) in selection.files]
        for name, selection in selections.items()
    }
