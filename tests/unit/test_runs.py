from __future__ import annotations

import json
from pathlib import Path

import pytest

from b2cal.catalog import load_packaged_release
from b2cal.iov import IoV
from b2cal.runs import EmptyInputError, Run, RunFilter, input_data, path_template_lister, select_inputs

CATALOG = load_packaged_release()
VOCABULARY = CATALOG.vocabulary


def make_run(run: int, **changes) -> Run:
    values = {
        "experiment": 26,
        "run": run,
        "run_type": "physics",
        "solenoid_field": "On",
        "beam_energy": "4S",
        "quality": {"overall": "GOOD"},
        "duration_s": 3600.0,
        "recorded_luminosity": 10.0,
        "skims": ("hadron_calib", "mumu_tight_or_highm_calib", "cosmic_calib"),
    }
    values.update(changes)
    return Run(**values)


def test_filter_requires_each_category():
    run_filter = RunFilter(["hadron_calib", "physics", "Good", "On"], VOCABULARY)
    assert run_filter.accepts(make_run(1))
    assert not run_filter.accepts(make_run(1, run_type="cosmic"))
    assert not run_filter.accepts(make_run(1, solenoid_field="Off"))
    assert not run_filter.accepts(make_run(1, quality={"overall": "RECOVERABLE"}))
    assert not run_filter.accepts(make_run(1, skims=("cosmic_calib",)))


def test_filter_values_in_category_are_alternatives():
    run_filter = RunFilter(["4S", "Continuum"], VOCABULARY)
    assert run_filter.accepts(make_run(1, beam_energy="Continuum"))
    assert not run_filter.accepts(make_run(1, beam_energy="Scan"))


def test_not_prefix_excludes():
    run_filter = RunFilter(["NOT On", "physics"], VOCABULARY)
    assert run_filter.accepts(make_run(1, solenoid_field="Off"))
    assert run_filter.reject_reason(make_run(1)) == "NOT On"


def test_good_or_recoverable():
    run_filter = RunFilter(["Good Or Recoverable"], VOCABULARY)
    assert run_filter.accepts(make_run(1, quality={"overall": "RECOVERABLE"}))
    assert not run_filter.accepts(make_run(1, quality={"overall": "BAD"}))


def test_minute_run_flag():
    run_filter = RunFilter([">=30 Minute Run"], VOCABULARY)
    assert run_filter.accepts(make_run(1, duration_s=1800))
    assert not run_filter.accepts(make_run(1, duration_s=1799))


def test_unknown_filter_value_rejected():
    with pytest.raises(ValueError, match="'Purple'"):
        RunFilter(["Purple"], VOCABULARY)


def test_from_registry_record():
    run = Run.from_registry(
        {
            "experiment": 26,
            "run": 7,
            "start_time": "2026-01-01T00:00:00Z",
            "stop_time": "2026-01-01T02:00:00Z",
            "run_type": "physics",
            "solenoid_field": "On",
            "beam_energy": "4S",
            "quality": {"overall": "GOOD"},
            "recorded_luminosity": 12.5,
            "skims": ["hadron_calib"],
        }
    )
    assert run.duration_s == 7200
    assert run.key == (26, 7)
    assert run.skims == ("hadron_calib",)


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    for run in range(1, 6):
        for tag in ("hadron_calib", "mumu_tight_or_highm_calib", "cosmic_calib"):
            folder = tmp_path / tag / "e0026" / f"r{run:05d}"
            folder.mkdir(parents=True)
            for index in range(3):
                (folder / f"{tag}_{index}.root").write_bytes(b"x")
    return tmp_path


def test_select_inputs_counts_and_explains(storage: Path):
    runs = [
        make_run(1),
        make_run(2),
        make_run(3, run_type="cosmic"),
        make_run(4, solenoid_field="Off"),
        make_run(9),
    ]
    selections = select_inputs(
        CATALOG["CDC deadboard"], runs, IoV(26, 1, 26, 5), VOCABULARY, path_template_lister(storage)
    )
    chosen = selections["mumu_tight_or_highm_calib"]
    assert chosen.runs_considered == 4
    # CDC deadboard sets no run type, so the cosmic run passes; only the magnet-off run is dropped.
    assert chosen.runs_kept == 3
    assert len(chosen.files) == 9
    assert chosen.dropped_by == {"On": 1}
    assert "3 of 4 runs kept" in chosen.explain()
    data = input_data(selections)
    assert data["mumu_tight_or_highm_calib"][0][1] == [26, 1]
    json.dumps(data)


def test_max_files_per_run_caps(storage: Path):
    selections = select_inputs(
        CATALOG["CDC deadboard"],
        [make_run(1)],
        IoV(26, 1, 26, 5),
        VOCABULARY,
        path_template_lister(storage),
        expert_config={"max_files_per_run": 1},
    )
    assert len(selections["mumu_tight_or_highm_calib"].files) == 1


def test_empty_input_names_filter(storage: Path):
    with pytest.raises(EmptyInputError, match="CDC deadboard.*mumu_tight_or_highm_calib.*'On'"):
        select_inputs(
            CATALOG["CDC deadboard"],
            [make_run(1, solenoid_field="Off"), make_run(2, solenoid_field="Off")],
            IoV(26, 1, 26, 5),
            VOCABULARY,
            path_template_lister(storage),
        )


def test_filter_override_replaces_list(storage: Path):
    selections = select_inputs(
        CATALOG["CDC deadboard"],
        [make_run(1, solenoid_field="Off")],
        IoV(26, 1, 26, 5),
        VOCABULARY,
        path_template_lister(storage),
        filter_overrides={"mumu_tight_or_highm_calib": ["mumu_tight_or_highm_calib", "Off"]},
    )
    assert selections["mumu_tight_or_highm_calib"].runs_kept == 1


def test_not_data_tag_drops_files_not_runs(storage: Path):
    settings = CATALOG["KLM channel status"]
    for run in range(1, 4):
        raw = storage / "raw" / "e0026" / f"r{run:05d}"
        raw.mkdir(parents=True)
        (raw / "raw_0.root").write_bytes(b"x")
    runs = [
        make_run(1, skims=("random_calib", "hadron_calib")),
        make_run(2, run_type="beam"),
        make_run(3, run_type="cosmic"),
    ]
    selections = select_inputs(settings, runs, IoV(26, 1, 26, 3), VOCABULARY, path_template_lister(storage))
    physics = selections["raw_physics"]
    assert physics.runs_kept == 1
    assert [path.rsplit("/", 1)[-1] for path, _ in physics.files] == ["raw_0.root"]
    assert selections["raw_beam"].runs_kept == 1
    assert selections["raw_cosmic"].runs_kept == 1


def test_input_without_data_tag_reads_raw(storage: Path):
    raw = storage / "raw" / "e0026" / "r00001"
    raw.mkdir(parents=True)
    (raw / "full.root").write_bytes(b"x")
    selections = select_inputs(
        CATALOG["Example Complex"],
        [make_run(1)],
        IoV(26, 1, 26, 1),
        VOCABULARY,
        path_template_lister(storage),
    )
    assert [path for path, _ in selections["physics"].files] == [str(raw / "full.root")]


def static_source(runs, tags, files_per_run=3, events=None):
    """Return a source with ``files_per_run`` files per run for each tag; ``events`` per file index."""
    from b2cal.filesources import FileEntry, StaticFileSource

    files = {}
    for run in runs:
        for tag in tags:
            files[(tag, run.key)] = [
                FileEntry(
                    f"/site/{tag}/e{run.experiment:04d}/r{run.run:05d}/f{index}.root",
                    None if events is None else events[index],
                )
                for index in range(files_per_run)
            ]
    return StaticFileSource(files, "test site")


def test_skims_come_from_the_source_not_the_registry():
    settings = CATALOG["CDC deadboard"]
    # The registry lists the skim for run 1 only, but the site has it for run 2 only.
    runs = [make_run(1, skims=("mumu_tight_or_highm_calib",)), make_run(2, skims=())]
    source = static_source([runs[1]], ["mumu_tight_or_highm_calib"])
    selection = select_inputs(settings, runs, IoV(26, 1, 26, 2), VOCABULARY, source)[
        "mumu_tight_or_highm_calib"
    ]
    assert [key for _, key in selection.files] == [(26, 2)] * 3
    assert selection.dropped_runs == {(26, 1): "mumu_tight_or_highm_calib"}
    step = selection.steps[-1]
    assert step.category == "Data Tag"
    assert step.runs_dropped == 1
    assert "test site" in step.detail


def test_funnel_counts_each_filter_in_order():
    settings = CATALOG["BeamSpot Calibrations"]
    runs = [
        make_run(1),
        make_run(2, run_type="cosmic"),
        make_run(3, quality={"overall": "BAD"}),
        make_run(4, solenoid_field="Off"),
        make_run(5, run_type="cosmic", solenoid_field="Off"),
        make_run(6),
    ]
    source = static_source([runs[0]], ["mumu_tight_or_highm_calib"])
    selection = select_inputs(settings, runs, IoV(26, 1, 26, 6), VOCABULARY, source)[
        "mumu_tight_or_highm_calib"
    ]
    funnel = [(step.label, step.category, step.runs_dropped, step.runs_left) for step in selection.steps]
    # The cosmic run with the magnet off counts for the run type only: the first failing check.
    assert funnel == [
        ("physics", "Run Type", 2, 4),
        ("On", "Magnet", 1, 3),
        ("Good Or Recoverable", "Data Quality Tag", 1, 2),
        ("mumu_tight_or_highm_calib", "Data Tag", 1, 1),
    ]
    assert selection.runs_kept == 1
    assert selection.dropped_by == {
        "physics": 2,
        "On": 1,
        "Good Or Recoverable": 1,
        "mumu_tight_or_highm_calib": 1,
    }
    summary = selection.to_dict()
    assert summary["steps"][0] == {
        "filter": "physics",
        "category": "Run Type",
        "runs_dropped": 2,
        "runs_left": 4,
    }
    assert summary["luminosity_kept_pb"] == 10.0


def test_caps_follow_basf2_order():
    settings = CATALOG["CDC deadboard"]
    runs = [make_run(1), make_run(2)]
    events = [10, 500, 0, 300, 900, 700, 200]
    source = static_source(runs, ["mumu_tight_or_highm_calib"], files_per_run=7, events=events)
    config = {"min_events_per_file": 100, "max_files_per_run": 4, "max_events_per_run": 1000}
    selection = select_inputs(settings, runs, IoV(26, 1, 26, 2), VOCABULARY, source, expert_config=config)[
        "mumu_tight_or_highm_calib"
    ]
    names = [path.rsplit("/", 1)[-1] for path, key in selection.files if key == (26, 1)]
    # f0 and f2 fall below the minimum, f6 is the fifth file left, and f1 + f3 + f4 pass 1000 events.
    assert names == ["f1.root", "f3.root", "f4.root"]
    caps = {step.label: step.files_dropped for step in selection.steps if step.category == "expert_config"}
    assert caps == {"min_events_per_file=100": 4, "max_files_per_run=4": 2, "max_events_per_run=1000": 2}
    assert selection.events_kept == 2 * 1700


def test_max_events_per_run_stops_once_reached():
    settings = CATALOG["CDC deadboard"]
    runs = [make_run(1)]
    source = static_source(runs, ["mumu_tight_or_highm_calib"], files_per_run=4, events=[400, 400, 400, 400])
    selection = select_inputs(
        settings, runs, IoV(26, 1, 26, 1), VOCABULARY, source, expert_config={"max_events_per_run": 1000}
    )["mumu_tight_or_highm_calib"]
    # Files are added while the total is below the cap, so the last one may pass it.
    assert len(selection.files) == 3
    assert selection.events_kept == 1200


def test_cap_that_empties_input_is_named():
    settings = CATALOG["CDC deadboard"]
    runs = [make_run(1)]
    source = static_source(runs, ["mumu_tight_or_highm_calib"], files_per_run=2, events=[5, 6])
    with pytest.raises(EmptyInputError, match="min_events_per_file=100") as error:
        select_inputs(
            settings, runs, IoV(26, 1, 26, 1), VOCABULARY, source, expert_config={"min_events_per_file": 100}
        )
    assert error.value.selection is not None
    assert error.value.selection.emptied_by.label == "min_events_per_file=100"


def test_unknown_event_counts_pass_and_warn():
    settings = CATALOG["CDC deadboard"]
    runs = [make_run(1)]
    source = static_source(runs, ["mumu_tight_or_highm_calib"], files_per_run=2)
    selection = select_inputs(
        settings, runs, IoV(26, 1, 26, 1), VOCABULARY, source, expert_config={"min_events_per_file": 100}
    )["mumu_tight_or_highm_calib"]
    assert len(selection.files) == 2
    assert selection.to_dict()["events_kept"] is None
    assert "2 files have no event count" in selection.warnings[0]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"max_files_per_run": 0}, "max_files_per_run=0"),
        ({"max_events_per_run": "many"}, "max_events_per_run='many'"),
        ({"min_events_per_file": -1}, "min_events_per_file=-1"),
        ({"max_files_per_run": True}, "max_files_per_run=True"),
        ({"payload_boundaries": [[26]]}, r"entry \[26\]"),
        ({"payload_boundaries": "26,5"}, "must be a list"),
    ],
)
def test_invalid_caps_rejected(config, message):
    with pytest.raises(ValueError, match=message):
        select_inputs(
            CATALOG["CDC deadboard"],
            [make_run(1)],
            IoV(26, 1, 26, 1),
            VOCABULARY,
            static_source([make_run(1)], ["mumu_tight_or_highm_calib"]),
            expert_config=config,
        )


def test_payload_boundaries_count_segments():
    settings = CATALOG["CDC deadboard"]
    runs = [make_run(run) for run in range(1, 9)]
    source = static_source(runs[:5], ["mumu_tight_or_highm_calib"], files_per_run=1)
    config = {"payload_boundaries": [[26, 4], [26, 7], [27, 1]]}
    selection = select_inputs(settings, runs, IoV(26, 1, 26, 8), VOCABULARY, source, expert_config=config)[
        "mumu_tight_or_highm_calib"
    ]
    segments = [(segment.start, segment.runs, segment.files) for segment in selection.segments]
    assert segments == [((26, 1), 3, 3), ((26, 4), 2, 2), ((26, 7), 0, 0)]
    assert any("outside the bucket" in warning and "(27, 1)" in warning for warning in selection.warnings)
    assert any("starting at e26 r7 has no files" in warning for warning in selection.warnings)


def test_empty_bucket_error_says_so():
    with pytest.raises(EmptyInputError, match="the bucket has no runs"):
        select_inputs(CATALOG["CDC deadboard"], [], IoV(26, 1, 26, 5), VOCABULARY, static_source([], []))


def test_missing_skim_error_names_source(storage: Path):
    with pytest.raises(
        EmptyInputError, match=r"no run that passed the filters has mumu_tight_or_highm_calib files"
    ):
        select_inputs(
            CATALOG["CDC deadboard"], [make_run(1)], IoV(26, 1, 26, 1), VOCABULARY, static_source([], [])
        )


def test_legacy_file_lister_function_still_works():
    calls = []

    def list_files(tag: str, run: Run) -> list[str]:
        calls.append((tag, run.key))
        return [f"/x/{tag}/{run.run}.root"]

    selections = select_inputs(
        CATALOG["CDC deadboard"], [make_run(1)], IoV(26, 1, 26, 1), VOCABULARY, list_files
    )
    assert selections["mumu_tight_or_highm_calib"].files == [("/x/mumu_tight_or_highm_calib/1.root", (26, 1))]
    assert calls == [("mumu_tight_or_highm_calib", (26, 1))]


def test_filter_order_does_not_change_reason_label():
    run_filter = RunFilter(["Scan", "physics", "4S"], VOCABULARY)
    assert run_filter.reject_reason(make_run(1, beam_energy="Continuum")) == "Scan or 4S"
    assert run_filter.run_checks() == [("physics", "Run Type"), ("Scan or 4S", "Beam Energy")]
