"""Run collection against the development run registry: pages, retries, upstream changes, lost runs."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from sqlalchemy import func, select

from b2cal.db.engine import session_scope
from b2cal.db.runmodels import CollectedRun, RunChange
from b2cal.devservices.config import DevServicesConfig
from b2cal.devservices.server import DevServices
from b2cal.iov import IoV
from b2cal.runregistry import RunRegistry, RunRegistryError
from b2cal.runs import Run
from b2cal.runsync import CollectionScope, RunSyncError, collect_runs, load_runs, run_changes, run_columns


class CountingSession(requests.Session):
    """A session that counts the GET requests it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    def get(self, url: str | bytes, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.gets += 1
        return super().get(url, **kwargs)


def registry_client(services: DevServices, page_size: int = 25, **kwargs: Any) -> RunRegistry:
    return RunRegistry(
        services.runregistry_url,
        api_key=DevServicesConfig().runregistry_api_key,
        timeout=10,
        backoff_seconds=0.0,
        page_size=page_size,
        **kwargs,
    )


def collect(db_url: str, registry: RunRegistry, scope: CollectionScope | None = None, **kwargs: Any):
    with session_scope(db_url) as session:
        return collect_runs(session, registry, scope or CollectionScope(), **kwargs)


def stored(db_url: str) -> dict[tuple[int, int], CollectedRun]:
    with session_scope(db_url) as session:
        return {(row.experiment, row.run): row for row in session.scalars(select(CollectedRun))}


def test_collects_every_page(services, registry_state, db_url):
    session = CountingSession()
    report = collect(db_url, registry_client(services, page_size=25, session=session))
    expected = registry_state.runs
    assert report.fetched == len(expected)
    assert report.new == len(expected)
    assert session.gets == -(-len(expected) // 25)
    rows = stored(db_url)
    assert sorted(rows) == [(record["experiment"], record["run"]) for record in expected]


def test_stored_columns_and_flags_match_the_filters(services, registry_state, db_url):
    collect(db_url, registry_client(services))
    rows = stored(db_url)
    for record in registry_state.runs:
        row = rows[(record["experiment"], record["run"])]
        run = Run.from_registry(record)
        tags = run.quality_tags()
        assert row.record == record
        assert row.run_type == record["run_type"]
        assert row.detectors == record["detectors"]
        assert row.quality == record["quality"]
        assert row.solenoid_field == record["solenoid_field"]
        assert row.recorded_luminosity == record["recorded_luminosity"]
        assert row.good == (record["quality"]["overall"] == "GOOD")
        assert row.good_or_recoverable == (record["quality"]["overall"] in ("GOOD", "RECOVERABLE"))
        assert row.long_run == (run.duration_s >= 1800)
        assert row.bad_for_alignment == any(record["quality"][d] == "BAD" for d in ("PXD", "SVD", "CDC"))
        assert row.magnet_on == (record["solenoid_field"] == "On")
        assert row.quality_tags == sorted(tags)
    assert any(row.bad_for_alignment for row in rows.values())
    assert any(not row.magnet_on for row in rows.values())


def test_second_collection_changes_nothing(services, registry_state, db_url):
    registry = registry_client(services)
    collect(db_url, registry)
    report = collect(db_url, registry)
    assert (report.new, report.changed, report.missing, report.unchanged) == (
        0,
        0,
        0,
        len(registry_state.runs),
    )
    with session_scope(db_url) as session:
        assert session.scalar(select(func.count()).select_from(RunChange).where(RunChange.kind != "new")) == 0


def test_server_errors_are_retried(services, registry_state, db_url, caplog):
    registry_state.faults.fail_next(2, 503, "/rest/v1/runs/")
    with caplog.at_level("WARNING", logger="b2cal.runregistry"):
        report = collect(db_url, registry_client(services, max_attempts=3))
    assert report.new == len(registry_state.runs)
    retries = [record.getMessage() for record in caplog.records if "attempt" in record.getMessage()]
    assert len(retries) == 2
    assert "attempt 1/3" in retries[0]


def test_persistent_errors_store_nothing(services, registry_state, db_url):
    registry_state.faults.fail_next(3, 503, "/rest/v1/runs/")
    with pytest.raises(RunRegistryError, match="after 2 attempts"):
        collect(db_url, registry_client(services, max_attempts=2))
    assert stored(db_url) == {}


def test_upstream_change_is_updated_and_logged(services, registry_state, db_url, caplog):
    registry = registry_client(services)
    collect(db_url, registry)
    target = next(record for record in registry_state.runs if record["quality"]["overall"] == "GOOD")
    exp, run = target["experiment"], target["run"]
    quality = {**target["quality"], "CDC": "BAD", "overall": "BAD"}
    response = requests.patch(
        f"{services.runregistry_url}/_dev/runs/{exp}/{run}",
        json={"quality": quality, "recorded_luminosity": 1.5},
        timeout=10,
    )
    assert response.status_code == 200

    with caplog.at_level("INFO", logger="b2cal.runsync"):
        report = collect(db_url, registry)
    assert (report.changed, report.new, report.missing) == (1, 0, 0)
    assert report.changes == [
        {"experiment": exp, "run": run, "kind": "changed", "fields": ["quality", "recorded_luminosity"]}
    ]
    row = stored(db_url)[(exp, run)]
    assert row.good is False
    assert row.bad_for_alignment is True
    assert row.recorded_luminosity == 1.5
    assert row.changed_at is not None
    assert f"Run e{exp} r{run} changed upstream: quality, recorded_luminosity" in caplog.text
    with session_scope(db_url) as session:
        log = run_changes(session, exp, run)
    assert [entry["kind"] for entry in log] == ["new", "changed"]
    assert log[1]["changes"]["recorded_luminosity"] == [target["recorded_luminosity"], 1.5]


def test_vanished_run_is_flagged_not_deleted(services, registry_state, db_url):
    registry = registry_client(services)
    collect(db_url, registry)
    gone = registry_state.runs[10]
    exp, run = gone["experiment"], gone["run"]
    assert requests.delete(f"{services.runregistry_url}/_dev/runs/{exp}/{run}", timeout=10).status_code == 204

    report = collect(db_url, registry)
    assert report.missing == 1
    rows = stored(db_url)
    assert rows[(exp, run)].missing_since is not None
    assert len(rows) == len(registry_state.runs) + 1
    with session_scope(db_url) as session:
        bucket = IoV(exp, 0, exp, -1)
        assert (exp, run) not in [item.key for item in load_runs(session, bucket)]
        assert (exp, run) in [item.key for item in load_runs(session, bucket, include_missing=True)]

    # A second collection does not flag it again; its return clears the flag.
    assert collect(db_url, registry).missing == 0
    registry_state.reset()
    report = collect(db_url, registry)
    assert report.reappeared == 1
    assert stored(db_url)[(exp, run)].missing_since is None
    with session_scope(db_url) as session:
        assert [entry["kind"] for entry in run_changes(session, exp, run)] == ["new", "missing", "reappeared"]


def test_narrow_scope_flags_only_its_runs(services, registry_state, db_url):
    registry = registry_client(services)
    collect(db_url, registry)
    first = registry_state.runs[0]
    requests.delete(f"{services.runregistry_url}/_dev/runs/{first['experiment']}/{first['run']}", timeout=10)
    last_experiment = registry_state.runs[-1]["experiment"]
    assert first["experiment"] != last_experiment

    report = collect(db_url, registry, CollectionScope(min_experiment=last_experiment))
    assert report.missing == 0
    assert report.fetched == sum(
        1 for record in registry_state.runs if record["experiment"] == last_experiment
    )
    assert stored(db_url)[(first["experiment"], first["run"])].missing_since is None


def test_empty_answer_is_an_error_unless_allowed(services, registry_state, db_url, config):
    registry = registry_client(services)
    experiment = registry_state.runs[0]["experiment"]
    scope = CollectionScope(min_experiment=experiment, max_experiment=experiment)
    collect(db_url, registry, scope)
    for record in registry_state.runs:
        if record["experiment"] == experiment:
            registry_state.remove_run(experiment, record["run"])
    with pytest.raises(RunSyncError, match="returned no runs"):
        collect(db_url, registry, scope)
    report = collect(db_url, registry, scope, allow_empty=True)
    assert report.missing == config.runs_per_experiment


def test_records_outside_scope_are_rejected(db_url):
    class Registry:
        def iter_runs(self, **filters: Any) -> list[dict[str, Any]]:
            return [{"experiment": 30, "run": 1, "run_type": "physics"}]

    with pytest.raises(RunSyncError, match="outside the collection scope min_experiment=26"):
        collect(db_url, Registry(), CollectionScope(min_experiment=26, max_experiment=26))  # type: ignore[arg-type]


def test_scope_rejects_bad_values():
    with pytest.raises(ValueError, match="min_experiment=-1"):
        CollectionScope(min_experiment=-1)
    with pytest.raises(ValueError, match="above max_experiment=24"):
        CollectionScope(min_experiment=25, max_experiment=24)


def test_unusable_record_is_named():
    with pytest.raises(ValueError, match="'run': 'seven'"):
        run_columns({"experiment": 26, "run": "seven"})


def test_dev_registry_rejects_bad_changes(services, registry_state):
    base = services.runregistry_url
    assert (
        requests.patch(f"{base}/_dev/runs/99/1", json={"run_type": "cosmic"}, timeout=10).status_code == 404
    )
    first = registry_state.runs[0]
    url = f"{base}/_dev/runs/{first['experiment']}/{first['run']}"
    response = requests.patch(url, json={"run": 5, "colour": "red"}, timeout=10)
    assert response.status_code == 400
    assert "colour" in response.json()["detail"]
    assert requests.delete(f"{base}/_dev/runs/99/1", timeout=10).status_code == 404
