from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from b2cal.catalog import (
    CDST_PHASE,
    RAW_PHASE,
    CatalogError,
    build_catalog,
    load_packaged_release,
    load_release,
    load_show_output,
    topological_levels,
)

VOCABULARY = {
    "Magnet": ["On", "Off", "Either"],
    "Run Type": ["physics", "cosmic"],
    "Data Tag": ["hadron_calib", "cosmic_calib"],
    "Data Quality Tag": ["Good"],
}


def settings(name: str, depends_on: list[str] | None = None, formats: list[str] | None = None, **extra):
    data = {
        "name": name,
        "expert_username": "expert",
        "subsystem": "cdc",
        "description": "test calibration",
        "input_data_formats": formats or ["raw"],
        "input_data_names": ["hadron_calib"],
        "input_data_filters": {"hadron_calib": ["hadron_calib", "physics", "Good"]},
        "depends_on": depends_on or [],
        "expert_config": {},
        "produced_payloads": [],
    }
    data.update(extra)
    return data


@pytest.fixture(scope="module")
def real():
    return load_packaged_release()


def test_real_catalog_size_and_roots(real):
    levels = real.levels()
    assert len(real) == 28
    assert len(levels[0]) == 16
    assert len(levels) == 5


def test_real_catalog_longest_chain(real):
    assert real.critical_chain() == [
        "CDC dedx",
        "CDC dedx Hadron Calibrations",
        "BeamSpot Calibrations",
        "BoostVector Calibrations",
        "eCMS Calibrations",
    ]


def test_real_catalog_phase_split(real):
    phases = real.phases()
    assert "CDC Tracking" in phases[RAW_PHASE]
    assert "BeamSpot Calibrations" in phases[CDST_PHASE]
    assert "ecl_cluster_energy" in phases[CDST_PHASE]
    assert sorted(phases[RAW_PHASE] + phases[CDST_PHASE]) == sorted(real.names)


def test_phase_order_respects_dependencies(real):
    for phase in real.phases().values():
        seen: set[str] = set()
        for name in phase:
            inside = [dep for dep in real[name].depends_on if dep in phase]
            assert set(inside) <= seen, f"{name} comes before its dependency"
            seen.add(name)


def test_closure_adds_transitive_dependencies(real):
    closed = real.closure(["eCMS Calibrations"])
    assert "CDC dedx" in closed
    assert "TOP pre-tracking calibration" in closed
    assert "CDC Tracking" not in closed
    assert real.added_by_closure(["eCMS Calibrations"]) == [n for n in closed if n != "eCMS Calibrations"]


def test_closure_rejects_unknown_name(real):
    with pytest.raises(CatalogError, match="'Nope' is not in the catalog"):
        real.closure(["Nope"])


def test_shared_file_loads_identically(real):
    shared = Path(__file__).resolve().parents[3] / "shared" / "catalog" / "prompt-calibrations.json"
    if not shared.exists():
        pytest.skip(f"{shared} is absent: the reference catalog ships beside the repository only")
    other = load_release(json.loads(shared.read_text()))
    assert other.names == real.names
    for name in real.names:
        assert other[name].depends_on == real[name].depends_on
        assert other[name].produced_payloads == real[name].produced_payloads
        assert other[name].input_data_filters == real[name].input_data_filters


def test_show_output_import():
    outputs = [json.dumps(settings("A")), json.dumps(settings("B", ["A"]))]
    catalog = load_show_output("release-test", outputs, VOCABULARY)
    assert catalog.levels() == [["A"], ["B"]]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (settings("x" * 65), "at most 64"),
        (settings("A", formats=["rawish"]), "input_data_formats"),
        (settings("A", input_data_filters={"other": ["Good"]}), "one filter list per input name"),
        (settings("A", input_data_filters={"hadron_calib": ["Purple"]}), "'Purple'"),
        (settings("A", depends_on=["Ghost"]), "'Ghost'"),
        (settings("A", expert_username="two words"), "expert_username"),
        (settings("A", expert_config=[1]), "expert_config"),
    ],
)
def test_invalid_settings_named(bad, message):
    with pytest.raises(CatalogError, match=message):
        build_catalog("release-test", VOCABULARY, [bad])


def test_not_prefix_allowed():
    good = settings("A", input_data_filters={"hadron_calib": ["NOT cosmic_calib", "Good"]})
    catalog = build_catalog("release-test", VOCABULARY, [good])
    assert catalog["A"].input_data_filters["hadron_calib"] == ("NOT cosmic_calib", "Good")


def test_empty_filters_mean_no_filter():
    catalog = build_catalog("release-test", VOCABULARY, [settings("A", input_data_filters={})])
    assert catalog["A"].input_data_filters == {}


def test_duplicate_name_rejected():
    with pytest.raises(CatalogError, match="appears twice"):
        build_catalog("release-test", VOCABULARY, [settings("A"), settings("A")])


def test_cycle_is_named():
    items = [settings("A", ["C"]), settings("B", ["A"]), settings("C", ["B"])]
    with pytest.raises(CatalogError, match=r"cycle (A -> C -> B -> A|B -> A -> C -> B|C -> B -> A -> C)"):
        build_catalog("release-test", VOCABULARY, items)


def test_raw_calibration_cannot_wait_for_cdst():
    items = [settings("Late", formats=["cdst"]), settings("Early", ["Late"])]
    with pytest.raises(CatalogError, match="raw-phase calibration can only depend"):
        build_catalog("release-test", VOCABULARY, items)


def test_missing_key_named():
    broken = settings("A")
    del broken["depends_on"]
    with pytest.raises(CatalogError, match="missing the settings depends_on"):
        build_catalog("release-test", VOCABULARY, [broken])


def test_topological_levels_keep_order():
    assert topological_levels({"b": [], "a": [], "c": ["a", "b"]}) == [["b", "a"], ["c"]]


def test_catalog_round_trip(real):
    again = load_release(copy.deepcopy(real.to_dict()))
    assert again.names == real.names
    assert again["CDC Tracking"].to_dict() == real["CDC Tracking"].to_dict()
