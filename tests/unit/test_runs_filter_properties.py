"""Property-based tests of the filter algebra: RunFilter against an independent model, and its laws."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from b2cal.catalog import NOT_PREFIX, load_packaged_release
from b2cal.filesources import FileEntry, StaticFileSource
from b2cal.iov import IoV
from b2cal.runs import Caps, Run, RunFilter, select_input

VOCABULARY = load_packaged_release().vocabulary
CATEGORY = {value: category for category, values in VOCABULARY.items() for value in values}
DATA_TAGS = list(VOCABULARY["Data Tag"])
NON_TAG_VALUES = [value for value, category in CATEGORY.items() if category != "Data Tag"]
FLAGS = ("GOOD", "RECOVERABLE", "BAD", "NOTSET")


def _overall(run: Run) -> str:
    return run.quality.get("overall", "GOOD")


# The model states each vocabulary value as its own predicate, written from the filter definitions
# rather than from Run.tags(), so the two implementations can disagree.
MODEL: dict[str, Callable[[Run, set[str]], bool]] = {
    "On": lambda run, tags: run.solenoid_field == "On",
    "Off": lambda run, tags: run.solenoid_field != "On",
    "Either": lambda run, tags: True,
    ">=30 Minute Run": lambda run, tags: run.duration_s >= 1800,
    "Bad For Alignment": lambda run, tags: (
        "BAD" in (run.quality.get(d, "GOOD") for d in ("PXD", "SVD", "CDC"))
    ),
    "Good": lambda run, tags: _overall(run) == "GOOD",
    "Good Shifter": lambda run, tags: run.shifter_quality == "GOOD",
    "Good For PXD": lambda run, tags: (
        run.quality.get("PXD", "GOOD") == "GOOD" and _overall(run) in ("GOOD", "RECOVERABLE")
    ),
    "Good Or Recoverable": lambda run, tags: _overall(run) in ("GOOD", "RECOVERABLE"),
    "Good Or Recoverable Shifter": lambda run, tags: run.shifter_quality in ("GOOD", "RECOVERABLE"),
}
for _value in VOCABULARY["Beam Energy"]:
    MODEL[_value] = lambda run, tags, value=_value: run.beam_energy == value
for _value in VOCABULARY["Run Type"]:
    MODEL[_value] = lambda run, tags, value=_value: run.run_type == value
for _value in DATA_TAGS:
    MODEL[_value] = lambda run, tags, value=_value: value in tags


def model_accepts(values: list[str], run: Run, tags: set[str]) -> bool:
    """Accept when every mentioned category has a matching plain value and no excluded value matches."""
    required: dict[str, list[str]] = {}
    for value in values:
        if value.startswith(NOT_PREFIX):
            bare = value[len(NOT_PREFIX) :]
            if CATEGORY[bare] != "Data Tag" and MODEL[bare](run, tags):
                return False
        else:
            required.setdefault(CATEGORY[value], []).append(value)
    return all(any(MODEL[value](run, tags) for value in group) for group in required.values())


runs = st.builds(
    Run,
    experiment=st.just(26),
    run=st.integers(0, 5000),
    run_type=st.sampled_from(list(VOCABULARY["Run Type"])),
    solenoid_field=st.sampled_from(["On", "Off"]),
    beam_energy=st.sampled_from(list(VOCABULARY["Beam Energy"])),
    quality=st.fixed_dictionaries(
        {"overall": st.sampled_from(FLAGS)},
        optional={detector: st.sampled_from(FLAGS) for detector in ("PXD", "SVD", "CDC")},
    ),
    shifter_quality=st.sampled_from((*FLAGS, "")),
    duration_s=st.floats(0, 20_000),
    recorded_luminosity=st.floats(0, 500),
)
available_tags = st.sets(st.sampled_from(DATA_TAGS), max_size=4)
values = st.sampled_from(sorted(CATEGORY))
filter_values = st.lists(st.one_of(values, values.map(lambda value: NOT_PREFIX + value)), max_size=7)


@given(filter_values, runs, available_tags)
def test_filter_matches_model(values: list[str], run: Run, tags: set[str]) -> None:
    assert RunFilter(values, VOCABULARY).accepts(run, tags) == model_accepts(values, run, tags)


@given(filter_values, runs, available_tags, st.randoms())
def test_order_and_duplicates_do_not_matter(values: list[str], run: Run, tags: set[str], random) -> None:
    shuffled = list(values) + list(values)
    random.shuffle(shuffled)
    assert RunFilter(shuffled, VOCABULARY).accepts(run, tags) == RunFilter(values, VOCABULARY).accepts(
        run, tags
    )


@given(runs, available_tags)
def test_empty_filter_accepts_every_run(run: Run, tags: set[str]) -> None:
    assert RunFilter([], VOCABULARY).accepts(run, tags)


@given(filter_values, values, runs, available_tags)
def test_exclusion_never_widens(values: list[str], value: str, run: Run, tags: set[str]) -> None:
    if RunFilter([*values, NOT_PREFIX + value], VOCABULARY).accepts(run, tags):
        assert RunFilter(values, VOCABULARY).accepts(run, tags)


@given(filter_values, values, runs, available_tags)
def test_alternative_never_narrows_and_new_category_never_widens(
    values: list[str], value: str, run: Run, tags: set[str]
) -> None:
    before = RunFilter(values, VOCABULARY)
    after = RunFilter([*values, value], VOCABULARY)
    if CATEGORY[value] in before.required:
        assert not before.accepts(run, tags) or after.accepts(run, tags)
    else:
        assert not after.accepts(run, tags) or before.accepts(run, tags)


@given(filter_values, st.sampled_from(NON_TAG_VALUES), runs, available_tags)
def test_value_and_its_negation_split_the_accepted_runs(
    values: list[str], value: str, run: Run, tags: set[str]
) -> None:
    if CATEGORY[value] in RunFilter(values, VOCABULARY).required:
        return
    with_value = RunFilter([*values, value], VOCABULARY).accepts(run, tags)
    without_value = RunFilter([*values, NOT_PREFIX + value], VOCABULARY).accepts(run, tags)
    assert (with_value or without_value) == RunFilter(values, VOCABULARY).accepts(run, tags)
    assert not (with_value and without_value)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(
    filter_values, st.lists(st.tuples(runs, available_tags), max_size=25, unique_by=lambda item: item[0].run)
)
def test_selection_funnel_is_consistent(values: list[str], bucket: list[tuple[Run, set[str]]]) -> None:
    files = {
        (tag, run.key): [FileEntry(f"/site/{tag}/{run.run}/f.root")] for run, tags in bucket for tag in tags
    }
    files.update({("raw", run.key): [FileEntry(f"/site/raw/{run.run}/f.root")] for run, _ in bucket})
    source = StaticFileSource(files)
    tagged = [(run, run.tags()) for run, _ in sorted(bucket, key=lambda item: item[0].run)]
    settings_stub = load_packaged_release()["CDC deadboard"]
    selection = select_input(
        settings_stub, "input", tagged, values, VOCABULARY, source, Caps(), IoV(26, 0, 26, -1)
    )

    tags_of = {run.key: tags for run, tags in bucket}
    kept = set(selection.run_files)
    required = {value for value in values if value in DATA_TAGS}
    excluded = {value[len(NOT_PREFIX) :] for value in values if value.startswith(NOT_PREFIX)}
    expected = set()
    for key, tags in tags_of.items():
        # The input reads its data tags' files less the excluded skims' files, or raw data, which every
        # run has here, when it names no data tag.
        has_files = bool((required - excluded) & tags) if required else True
        if has_files and model_accepts(values, _run(bucket, key), tags):
            expected.add(key)
    assert kept == expected
    assert len(kept) + len(selection.dropped_runs) == len(bucket)
    lefts = [step.runs_left for step in selection.steps]
    assert lefts == sorted(lefts, reverse=True)
    assert (lefts[-1] if lefts else len(bucket)) == selection.runs_kept
    assert sum(selection.dropped_by.values()) == len(bucket) - selection.runs_kept


def _run(bucket: list[tuple[Run, set[str]]], key: tuple[int, int]) -> Run:
    return next(run for run, _ in bucket if run.key == key)
