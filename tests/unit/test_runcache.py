"""The runs the pages read: storing registry records, collecting from a registry, reading a bucket."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from b2cal.db import runcache
from b2cal.db.engine import get_engine, session_scope, upgrade
from b2cal.iov import IoV


def record(experiment: int, run: int, **fields: Any) -> dict[str, Any]:
    values = {
        "experiment": experiment,
        "run": run,
        "run_type": "physics",
        "start_time": f"2026-11-0{experiment - 20}T{run:02d}:00:00Z",
        "stop_time": f"2026-11-0{experiment - 20}T{run:02d}:30:00Z",
        "quality": {"overall": "GOOD", "CDC": "GOOD"},
        "recorded_luminosity": 10.0,
        "skims": ["hadron_calib"],
    }
    values.update(fields)
    return values


class Registry:
    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records
        self.calls: list[dict[str, Any]] = []

    def iter_runs(self, **filters: Any) -> Iterator[dict[str, Any]]:
        self.calls.append(filters)
        for item in self.records:
            if (
                not filters.get("min_experiment", 0)
                <= item["experiment"]
                <= filters.get("max_experiment", 99)
            ):
                continue
            if not filters.get("min_run", 0) <= item["run"] <= filters.get("max_run", 10**6):
                continue
            yield item


@pytest.fixture
def url(tmp_path) -> Iterator[str]:
    database = f"sqlite:///{tmp_path / 'runs.db'}"
    upgrade(database)
    yield database
    get_engine(database).dispose()


def test_store_runs_inserts_then_updates(url):
    with session_scope(url) as session:
        assert runcache.store_runs(session, [record(25, 1), record(25, 2)]) == 2
    with session_scope(url) as session:
        runcache.store_runs(
            session, [record(25, 1), record(25, 2, quality={"overall": "BAD"}, recorded_luminosity=3.0)]
        )
    with session_scope(url) as session:
        rows = runcache.records_in(session, IoV(25, 0, 25, -1))
        assert [(row.run, row.overall_quality, row.recorded_luminosity) for row in rows] == [
            (1, "GOOD", 10.0),
            (2, "BAD", 3.0),
        ]


def test_store_runs_names_an_unusable_record(url):
    with session_scope(url) as session, pytest.raises(ValueError, match="'experiment' and 'run'"):
        runcache.store_runs(session, [{"run": 3}])


def test_bucket_reads_respect_both_ends(url):
    with session_scope(url) as session:
        runcache.store_runs(session, [record(25, 5), record(25, 9), record(26, 1), record(26, 7)])
    with session_scope(url) as session:
        assert [(r.experiment, r.run) for r in runcache.runs_in(session, IoV(25, 6, 26, 1))] == [
            (25, 9),
            (26, 1),
        ]
        assert len(runcache.runs_in(session, IoV(25, 9))) == 3
        assert len(runcache.runs_in(session, IoV(25, 0, 25, -1))) == 2
        until = runcache.data_taken_until(session, IoV(25, 0, 25, -1))
        assert until.replace(tzinfo=UTC) == datetime(2026, 11, 5, 9, 30, tzinfo=UTC)
        assert [item.run for item in runcache.run_summaries(session)] == [5, 9, 1, 7]


def test_refresh_fetches_from_the_latest_cached_experiment(url):
    registry = Registry([record(25, 1), record(26, 1), record(26, 2)])
    with session_scope(url) as session:
        assert runcache.last_fetched(session) is None
        assert runcache.refresh_runs(session, registry) == 3
    with session_scope(url) as session:
        runcache.refresh_runs(session, registry)
        assert runcache.last_fetched(session) is not None
    assert registry.calls == [{}, {"min_experiment": 26}]


def test_refresh_of_a_bucket_asks_for_its_run_range(url):
    registry = Registry([record(26, 1), record(26, 5), record(26, 9)])
    with session_scope(url) as session:
        stored = runcache.refresh_runs(session, registry, IoV(26, 2, 26, 8))
    assert stored == 1
    assert registry.calls == [{"min_experiment": 26, "max_experiment": 26, "min_run": 2, "max_run": 8}]
    with session_scope(url) as session:
        assert [item.run for item in runcache.run_summaries(session)] == [5]


def test_runs_the_registry_dropped_are_left_out(url):
    with session_scope(url) as session:
        runcache.store_runs(session, [record(25, 1), record(25, 2)])
    with session_scope(url) as session:
        runcache.refresh_runs(session, Registry([record(25, 2)]), IoV(25, 0, 25, -1))
    with session_scope(url) as session:
        assert [item.run for item in runcache.records_in(session, IoV(25, 0, 25, -1))] == [2]
        assert [item.run for item in runcache.runs_in(session, IoV(25, 0, 25, -1))] == [2]


def test_last_stop_per_request_in_one_query(url):
    from b2cal.db.models import ProcessingRequest

    with session_scope(url) as session:
        runcache.store_runs(session, [record(25, 5), record(25, 9), record(26, 1), record(26, 7)])
        for uid, bucket in (
            ("closed", (25, 6, 26, 1)),
            ("to-exp-end", (25, 0, 25, -1)),
            ("open", (26, 2, -1, -1)),
        ):
            session.add(
                ProcessingRequest(
                    uid=uid,
                    kind="prompt",
                    site="BNL",
                    release="r",
                    exp_low=bucket[0],
                    run_low=bucket[1],
                    exp_high=bucket[2],
                    run_high=bucket[3],
                    calibrations=[],
                    staging_tag=uid,
                    running_tag="run",
                    requested_by="manager",
                )
            )
    with session_scope(url) as session:
        found = runcache.data_taken_until_by_request(session)
        expected = {
            uid: runcache.data_taken_until(session, IoV(*bucket))
            for uid, bucket in (
                ("closed", (25, 6, 26, 1)),
                ("to-exp-end", (25, 0, 25, -1)),
                ("open", (26, 2)),
            )
        }
    assert {uid: value.replace(tzinfo=None) for uid, value in found.items()} == {
        uid: value.replace(tzinfo=None) for uid, value in expected.items()
    }
    assert found["closed"].hour == 1
    assert found["to-exp-end"].hour == 9
    assert found["open"].hour == 7


def test_version_changes_only_with_new_or_changed_runs(url):
    with session_scope(url) as session:
        runcache.store_runs(session, [record(25, 1)])
        first = runcache.version(session)
    with session_scope(url) as session:
        runcache.store_runs(session, [record(25, 1)])
        assert runcache.version(session) == first
        runcache.store_runs(session, [record(25, 1), record(25, 2)])
        assert runcache.version(session) != first
