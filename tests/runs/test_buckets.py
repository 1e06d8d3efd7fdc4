"""Bucket proposals from the accumulated luminosity of good physics runs, and stored buckets."""

from __future__ import annotations

import pytest

from b2cal.buckets import (
    BucketError,
    BucketRun,
    close_bucket,
    list_buckets,
    propose_bucket,
    propose_next_bucket,
    save_bucket,
)
from b2cal.db.engine import session_scope
from b2cal.iov import IoV
from b2cal.runsync import CollectionScope, sync_runs


def physics(exp: int, run: int, lumi: float, good: bool = True, run_type: str = "physics") -> BucketRun:
    return BucketRun(exp, run, run_type, lumi, good)


def test_cut_at_the_run_that_reaches_the_target():
    runs = [physics(26, run, 1000.0) for run in range(1, 20)]
    proposal = propose_bucket(runs, target_pb=4000.0)
    assert proposal is not None
    assert proposal.iov == IoV(26, 1, 26, 4)
    assert proposal.complete
    assert proposal.luminosity_pb == 4000.0
    assert proposal.notes == []


def test_only_good_physics_runs_count():
    runs = [
        physics(26, 1, 3000.0),
        physics(26, 2, 5000.0, good=False),
        physics(26, 3, 5000.0, run_type="cosmic"),
        physics(26, 4, 3000.0),
    ]
    proposal = propose_bucket(runs, target_pb=6000.0)
    assert proposal is not None
    assert proposal.iov == IoV(26, 1, 26, 4)
    assert proposal.runs == 4
    assert proposal.good_physics_runs == 2
    assert proposal.luminosity_pb == 6000.0


def test_stops_at_experiment_end_and_says_so():
    runs = [physics(25, 7, 2000.0), physics(25, 9, 2000.0), physics(26, 0, 9000.0)]
    proposal = propose_bucket(runs, target_pb=9000.0)
    assert proposal is not None
    assert proposal.iov == IoV(25, 7, 25, 9)
    assert proposal.complete
    assert not proposal.crosses_experiments
    assert "experiment 25 ended at 4.00 fb^-1 of 9.00 fb^-1" in proposal.notes[0]
    assert "e25 r9" in proposal.notes[0]


def test_crossing_experiments_is_noted():
    runs = [physics(25, 7, 2000.0), physics(26, 0, 2000.0), physics(26, 1, 9000.0)]
    proposal = propose_bucket(runs, target_pb=5000.0, cross_experiments=True)
    assert proposal is not None
    assert proposal.iov == IoV(25, 7, 26, 1)
    assert proposal.crosses_experiments
    assert proposal.experiments == [25, 26]
    assert "payload boundary at [26, 0]" in proposal.notes[0]


def test_incomplete_when_data_runs_out():
    proposal = propose_bucket([physics(26, 1, 100.0), physics(26, 2, 200.0)], target_pb=9000.0)
    assert proposal is not None
    assert not proposal.complete
    assert "only 0.30 fb^-1 of 9.00 fb^-1 so far" in proposal.notes[0]


def test_starts_after_the_previous_bucket():
    runs = [physics(26, run, 1000.0) for run in range(1, 10)]
    proposal = propose_bucket(runs, after=(26, 4), target_pb=2000.0)
    assert proposal is not None
    assert proposal.iov == IoV(26, 5, 26, 6)
    assert propose_bucket(runs, after=(26, 9)) is None


def test_target_must_be_positive():
    with pytest.raises(ValueError, match="target_pb is 0"):
        propose_bucket([physics(26, 1, 1.0)], target_pb=0)


def record(exp: int, run: int, lumi: float, overall: str = "GOOD", run_type: str = "physics") -> dict:
    return {
        "experiment": exp,
        "run": run,
        "start_time": f"2026-01-01T{run % 24:02d}:00:00Z",
        "stop_time": f"2026-01-01T{run % 24:02d}:50:00Z",
        "run_type": run_type,
        "solenoid_field": "On",
        "beam_energy": "4S",
        "quality": {"overall": overall},
        "recorded_luminosity": lumi,
    }


def test_stored_buckets_follow_each_other(db_url):
    records = [record(26, run, 1000.0) for run in range(1, 11)] + [record(26, 11, 50.0, overall="BAD")]
    with session_scope(db_url) as session:
        sync_runs(session, records, CollectionScope())
    with session_scope(db_url) as session:
        first = propose_next_bucket(session, target_pb=4000.0)
        assert first is not None
        save_bucket(session, first)
        # Storing the same proposal again returns the stored bucket.
        assert save_bucket(session, first).name == first.name
    with session_scope(db_url) as session:
        second = propose_next_bucket(session, target_pb=4000.0)
        assert second is not None
        assert second.iov == IoV(26, 5, 26, 8)
        save_bucket(session, second)
        close_bucket(session, first.name)
    with session_scope(db_url) as session:
        third = propose_next_bucket(session, target_pb=4000.0)
        assert third is not None
        assert not third.complete
        assert third.iov == IoV(26, 9, 26, 11)
        summaries = list_buckets(session)
        assert [(item.name, item.state, item.runs, item.luminosity_pb) for item in summaries] == [
            ("e0026r00001-e0026r00004", "closed", 4, 4000.0),
            ("e0026r00005-e0026r00008", "open", 4, 4000.0),
        ]
        assert [item.name for item in list_buckets(session, state="open")] == ["e0026r00005-e0026r00008"]
        assert summaries[0].closed_at is not None


def test_overlapping_bucket_is_rejected(db_url):
    records = [record(26, run, 1000.0) for run in range(1, 6)]
    with session_scope(db_url) as session:
        sync_runs(session, records, CollectionScope())
        proposal = propose_bucket([physics(26, run, 1000.0) for run in range(1, 6)], target_pb=3000.0)
        assert proposal is not None
        save_bucket(session, proposal)
        shifted = propose_bucket([physics(26, run, 1000.0) for run in range(2, 6)], target_pb=3000.0)
        assert shifted is not None
        with pytest.raises(BucketError, match="overlaps the stored bucket e0026r00001-e0026r00003"):
            save_bucket(session, shifted)
        with pytest.raises(BucketError, match="'e0026r00099-e0026r00100' is not stored"):
            close_bucket(session, "e0026r00099-e0026r00100")


def test_summary_counts_missing_runs(db_url):
    records = [record(26, run, 1000.0) for run in range(1, 5)]
    with session_scope(db_url) as session:
        sync_runs(session, records, CollectionScope())
        proposal = propose_next_bucket(session, target_pb=4000.0)
        assert proposal is not None
        save_bucket(session, proposal)
    with session_scope(db_url) as session:
        sync_runs(session, records[:3], CollectionScope())
    with session_scope(db_url) as session:
        (summary,) = list_buckets(session)
    assert summary.runs == 3
    assert summary.missing_runs == 1
    assert summary.luminosity_pb == 3000.0
    assert summary.to_dict()["iov"] == [26, 1, 26, 4]
