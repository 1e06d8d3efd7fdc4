"""Check the generated run list, the run registry's HTTP contract and the site storage tree."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from b2cal.devservices.config import DevServicesConfig, catalog_data_tags
from b2cal.devservices.runregistry import DETECTORS, RUN_TYPES, generate_runs, write_storage_tree
from b2cal.devservices.server import DevServices

RECORD_FIELDS = {
    "experiment",
    "run",
    "start_time",
    "stop_time",
    "run_type",
    "all_detectors_running",
    "detectors",
    "solenoid_field",
    "beam_energy",
    "quality",
    "shifter_quality",
    "recorded_luminosity",
    "skims",
}


@pytest.fixture(scope="module")
def runs() -> list[dict[str, Any]]:
    return generate_runs(seed=7, experiments=(24, 25, 26), runs_per_experiment=150)


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_generation_is_deterministic() -> None:
    assert generate_runs(seed=3, runs_per_experiment=20) == generate_runs(seed=3, runs_per_experiment=20)
    assert generate_runs(seed=3, runs_per_experiment=20) != generate_runs(seed=4, runs_per_experiment=20)


def test_adding_an_experiment_keeps_the_others(runs: list[dict[str, Any]]) -> None:
    fewer = generate_runs(seed=7, experiments=(24, 25), runs_per_experiment=150)
    assert fewer == [record for record in runs if record["experiment"] in (24, 25)]


def test_records_have_every_field(runs: list[dict[str, Any]]) -> None:
    for record in runs:
        assert set(record) == RECORD_FIELDS
        assert set(record["quality"]) == {*DETECTORS, "overall"}
        assert record["run_type"] in RUN_TYPES
        assert record["solenoid_field"] in ("On", "Off")
        assert record["beam_energy"] in ("4S", "Continuum", "Scan", "No Beam", "")
        assert record["start_time"].endswith("Z")


def test_runs_ordered_without_overlap(runs: list[dict[str, Any]]) -> None:
    keys = [(record["experiment"], record["run"]) for record in runs]
    assert keys == sorted(set(keys))
    for previous, record in zip(runs, runs[1:], strict=False):
        assert parse(record["start_time"]) > parse(previous["stop_time"])


def test_run_durations(runs: list[dict[str, Any]]) -> None:
    for record in runs:
        duration = parse(record["stop_time"]) - parse(record["start_time"])
        assert timedelta(hours=1) <= duration <= timedelta(hours=8)


def test_experiments_do_not_overlap_in_time(runs: list[dict[str, Any]]) -> None:
    spans = {}
    for record in runs:
        start, stop = parse(record["start_time"]), parse(record["stop_time"])
        first, last = spans.get(record["experiment"], (start, stop))
        spans[record["experiment"]] = (min(first, start), max(last, stop))
    ordered = [spans[exp] for exp in sorted(spans)]
    for (_, end), (begin, _) in zip(ordered, ordered[1:], strict=False):
        assert begin - end > timedelta(days=7)


def test_run_type_mix(runs: list[dict[str, Any]]) -> None:
    counts = Counter(record["run_type"] for record in runs)
    assert counts["physics"] > 0.6 * len(runs)
    assert counts["cosmic"] > 0
    assert counts["beam"] > 0
    assert counts["debug"] > 0
    for experiment in (24, 25, 26):
        first = next(record for record in runs if record["experiment"] == experiment)
        assert first["run_type"] == "cosmic"
        assert first["run"] == 0


def test_cosmic_and_physics_runs_are_consistent(runs: list[dict[str, Any]]) -> None:
    vocabulary = set(catalog_data_tags())
    physics_skims: Counter[str] = Counter()
    for record in runs:
        assert set(record["skims"]) <= vocabulary
        if record["run_type"] == "cosmic":
            assert record["recorded_luminosity"] == 0
            assert record["beam_energy"] == "No Beam"
            assert set(record["skims"]) <= {"cosmic_calib"}
        if record["run_type"] == "physics":
            assert record["recorded_luminosity"] > 0
            physics_skims.update(record["skims"])
    physics = sum(1 for record in runs if record["run_type"] == "physics")
    field_off = sum(1 for r in runs if r["run_type"] == "physics" and r["solenoid_field"] == "Off")
    # Each experiment has a short block of field-off physics runs for alignment.
    assert 0 < field_off < 0.1 * physics
    assert physics_skims["cosmic_calib"] > 0
    assert physics_skims["hadron_calib"] > 0.9 * physics
    assert physics_skims["bhabha_all_calib"] < physics
    energies = Counter(record["beam_energy"] for record in runs if record["run_type"] == "physics")
    assert energies["4S"] > energies["Continuum"] > 0
    assert energies["Scan"] > 0


def test_quality_is_mostly_good(runs: list[dict[str, Any]]) -> None:
    physics = [record for record in runs if record["run_type"] == "physics"]
    good = sum(1 for record in physics if record["quality"]["overall"] == "GOOD")
    assert 0.5 * len(physics) < good < len(physics)
    for record in runs:
        assert record["all_detectors_running"] == (len(record["detectors"]) == len(DETECTORS))
        flags = {record["quality"][detector] for detector in record["detectors"]}
        if "BAD" in flags:
            assert record["quality"]["overall"] == "BAD"
        if flags == {"GOOD"}:
            assert record["quality"]["overall"] == "GOOD"


def get_runs(services: DevServices, config: DevServicesConfig, **params: Any) -> requests.Response:
    return requests.get(
        f"{services.runregistry_url}/rest/v1/runs/",
        params=params,
        headers={"Authorization": f"Api-Key {config.runregistry_api_key}"},
        timeout=10,
    )


def test_api_key_required(services: DevServices) -> None:
    url = f"{services.runregistry_url}/rest/v1/runs/"
    missing = requests.get(url, timeout=10)
    wrong = requests.get(url, headers={"Authorization": "Api-Key wrong"}, timeout=10)
    assert missing.status_code == 401
    assert "credentials" in missing.json()["detail"]
    assert wrong.status_code == 401
    assert wrong.json()["detail"] == "Invalid API key."


def test_pages_link_with_absolute_urls(services: DevServices, config: DevServicesConfig) -> None:
    first = get_runs(services, config, page_size=25, run_type="physics").json()
    assert first["previous"] is None
    assert first["next"].startswith(f"{services.runregistry_url}/rest/v1/runs/?")
    assert "run_type=physics" in first["next"]
    second = requests.get(
        first["next"], headers={"Authorization": f"Api-Key {config.runregistry_api_key}"}, timeout=10
    ).json()
    assert second["previous"] is not None
    assert second["results"][0] != first["results"][0]
    assert first["count"] == second["count"]


def test_filters(services: DevServices, config: DevServicesConfig) -> None:
    every = services.runregistry_state.runs
    body = get_runs(services, config, min_experiment=25, max_experiment=25, min_run=5, max_run=20).json()
    expected = [r for r in every if r["experiment"] == 25 and 5 <= r["run"] <= 20]
    assert body["results"] == expected
    assert body["count"] == len(expected)

    partial = get_runs(services, config, all_detectors_running="false", page_size=1000).json()
    assert partial["count"] == sum(1 for r in every if not r["all_detectors_running"])

    day = every[10]["start_time"][:10]
    same_day = get_runs(services, config, min_date=day, max_date=day, page_size=1000).json()["results"]
    assert same_day
    assert all(r["start_time"].startswith(day) for r in same_day)

    expanded = get_runs(services, config, expand="true", page_size=1).json()["results"][0]
    assert len(expanded["detector_status"]) == len(DETECTORS)


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({"min_run": "x"}, 400, "min_run"),
        ({"run_type": "calibration"}, 400, "run_type"),
        ({"all_detectors_running": "maybe"}, 400, "all_detectors_running"),
        ({"min_date": "yesterday"}, 400, "min_date"),
        ({"min_experimnet": 1}, 400, "detail"),
        ({"page_size": 5000}, 400, "page_size"),
        ({"page": 999}, 404, "detail"),
    ],
)
def test_invalid_requests(
    services: DevServices, config: DevServicesConfig, params: dict[str, Any], status: int, field: str
) -> None:
    response = get_runs(services, config, **params)
    assert response.status_code == status
    assert field in response.json()


def test_injected_failure_is_plain_text(services: DevServices, config: DevServicesConfig) -> None:
    services.runregistry_state.faults.fail_next(1, 503)
    failed = get_runs(services, config)
    assert failed.status_code == 503
    assert "injected" in failed.text
    assert get_runs(services, config).status_code == 200


def test_append_runs_continues_the_last_experiment(services: DevServices, config: DevServicesConfig) -> None:
    before = services.runregistry_state.runs
    response = requests.post(f"{services.runregistry_url}/_dev/runs", json={"count": 3}, timeout=10)
    assert response.status_code == 201
    new = response.json()
    assert len(new) == 3
    assert new[0]["experiment"] == before[-1]["experiment"]
    assert new[0]["run"] > before[-1]["run"]
    assert parse(new[0]["start_time"]) > parse(before[-1]["stop_time"])
    assert requests.post(f"{services.runregistry_url}/_dev/reset", timeout=10).status_code == 204
    assert services.runregistry_state.runs == before


def test_storage_tree_layout_and_idempotence(tmp_path: Path) -> None:
    runs = generate_runs(seed=1, experiments=(26,), runs_per_experiment=12)
    # Every run has its full raw data besides its skims.
    expected_files = sum(len(record["skims"]) + 1 for record in runs) * 3
    assert write_storage_tree(runs, tmp_path, files_per_skim=3) == expected_files
    physics = next(
        record for record in runs if record["run_type"] == "physics" and "hadron_calib" in record["skims"]
    )
    folder = tmp_path / "hadron_calib" / "e0026" / f"r{physics['run']:05d}"
    assert sorted(path.name for path in folder.iterdir()) == [
        f"hadron_calib_e0026_r{physics['run']:05d}_{number}.root" for number in (1, 2, 3)
    ]
    assert len(list(tmp_path.rglob("*.root"))) == expected_files
    assert len(list((tmp_path / "raw" / "e0026").iterdir())) == len(runs)

    assert write_storage_tree(runs, tmp_path, files_per_skim=3) == 0
    assert len(list(tmp_path.rglob("*.root"))) == expected_files
