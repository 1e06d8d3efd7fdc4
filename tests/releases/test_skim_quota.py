"""The calibration skim quota of a bucket, and input selection limited to it."""

from __future__ import annotations

import fnmatch
from datetime import UTC, datetime, timedelta

import pytest

from b2cal.catalog import load_packaged_release
from b2cal.db import inventory
from b2cal.db.engine import session_scope
from b2cal.db.runmodels import BucketRecord
from b2cal.devservices.runregistry import generate_runs
from b2cal.filesources import FileEntry, StaticFileSource, skim_dataset
from b2cal.iov import IoV
from b2cal.rucio import Did
from b2cal.runs import SKIM_QUOTA, Run, RunFilter, select_inputs
from b2cal.skimquota import (
    DEFAULT_QUOTA_PB,
    SkimConsumer,
    choose_bucket_quota,
    choose_skim_quota,
    skim_consumers,
    spread_order,
)
from b2cal_airflow.operators.rucio import RucioReplicateSkimsOperator

CATALOG = load_packaged_release()
RECORDS = generate_runs(experiments=(26,), runs_per_experiment=240)
RUNS = [Run.from_registry(record) for record in RECORDS]
BUCKET = IoV(26, 0, 26, -1)
MUMU = "mumu_tight_or_highm_calib"
START = datetime(2026, 3, 1, tzinfo=UTC)


def make_run(
    run: int, *, lumi: float = 100.0, quality: str = "GOOD", energy: str = "4S", skims=(MUMU,)
) -> Run:
    return Run(
        experiment=30,
        run=run,
        run_type="physics",
        beam_energy=energy,
        quality={"overall": quality},
        duration_s=3 * 3600,
        recorded_luminosity=lumi,
        skims=tuple(skims),
        start_time=START + timedelta(hours=4 * run),
    )


def consumer(name: str, *values: str) -> SkimConsumer:
    return SkimConsumer(name, "input", RunFilter([MUMU, *values], CATALOG.vocabulary))


def lumi_of(keys) -> float:
    """Sum the registry records' luminosity of ``keys``, without the quota's own numbers."""
    wanted = set(keys)
    return sum(
        record["recorded_luminosity"] for record in RECORDS if (record["experiment"], record["run"]) in wanted
    )


def test_quota_on_generated_runs_matches_independent_sum():
    quota = choose_bucket_quota(CATALOG, RUNS, BUCKET)

    assert set(quota.quotas) == set(skim_consumers(CATALOG))
    checked = 0
    for tag, skim in quota.quotas.items():
        if not skim.applied:
            continue
        chosen = skim.chosen_keys
        with_skim = [record for record in RECORDS if tag in record["skims"]]
        assert lumi_of(chosen) == pytest.approx(skim.chosen_pb)
        assert all(
            tag in record["skims"] for record in RECORDS if (record["experiment"], record["run"]) in chosen
        )
        if lumi_of(run.key for run in skim.runs) >= DEFAULT_QUOTA_PB:
            assert lumi_of(chosen) >= DEFAULT_QUOTA_PB
            assert len(chosen) < len(with_skim)
            checked += 1
    # Most skims of an experiment of 240 runs have more than 2 fb^-1.
    assert checked >= 5


def test_quota_first_choice_stops_at_target():
    skim = choose_bucket_quota(CATALOG, RUNS, BUCKET, data_tags=["hadron_calib"]).quotas["hadron_calib"]
    first = [run for run in skim.chosen if run.reason.startswith("rank ")]

    total = lumi_of(run.key for run in first)
    assert total >= DEFAULT_QUOTA_PB
    # The first choice stops at the run that reaches the quota, so without its largest run it falls short.
    assert total - max(run.luminosity_pb for run in first) < DEFAULT_QUOTA_PB


def test_quota_prefers_runs_every_input_accepts():
    runs = [make_run(run, quality="GOOD" if run % 2 else "RECOVERABLE") for run in range(1, 21)]
    consumers = [consumer("CDC", "Good"), consumer("TOP", "Good Or Recoverable")]

    skim = choose_skim_quota(MUMU, runs, consumers, target_pb=500.0)

    chosen = skim.chosen
    assert len(chosen) == 5
    assert all(run.key[1] % 2 == 1 for run in chosen)
    assert all(run.rank == 0 for run in chosen)
    assert skim.reached


def test_quota_spreads_runs_over_bucket():
    runs = [make_run(run) for run in range(1, 17)]

    skim = choose_skim_quota(MUMU, runs, [consumer("CDC", "Good")], target_pb=400.0)

    assert [run.key[1] for run in skim.chosen] == [1, 5, 9, 13]


def test_quota_covers_input_other_inputs_leave_short():
    runs = [make_run(run) for run in range(1, 31)]
    # Recoverable off-resonance runs: only the off-resonance input accepts them.
    runs += [make_run(run, energy="Continuum", lumi=50.0, quality="RECOVERABLE") for run in range(31, 41)]
    consumers = [
        consumer("eCMS 4S", "4S"),
        consumer("BeamSpot", "Good"),
        consumer("eCMS off", "Continuum", "Good Or Recoverable"),
    ]

    skim = choose_skim_quota(MUMU, runs, consumers, target_pb=300.0)

    continuum = [run for run in skim.chosen if run.key[1] > 30]
    assert sum(run.luminosity_pb for run in continuum) >= 300.0
    assert len(continuum) == 6
    assert all(run.reason == "added so that eCMS off / input reaches the quota" for run in continuum)
    assert any("eCMS off" in note for note in skim.notes)


def test_quota_short_bucket_keeps_everything_and_says_so():
    runs = [make_run(run) for run in range(1, 4)]

    skim = choose_skim_quota(MUMU, runs, [consumer("CDC", "Good")], target_pb=1000.0)

    assert len(skim.chosen) == 3
    assert not skim.reached
    assert "not reached" in skim.explain()


def test_quota_skim_without_luminosity_keeps_all_runs():
    runs = [make_run(run, lumi=0.0, skims=("cosmic_calib",)) for run in range(1, 6)]

    skim = choose_skim_quota("cosmic_calib", runs, [], target_pb=DEFAULT_QUOTA_PB)

    assert not skim.applied
    assert len(skim.chosen) == 5
    assert "does not apply" in skim.explain()


def test_quota_leaves_out_runs_no_input_accepts():
    runs = [make_run(1), make_run(2, quality="BAD")]

    skim = choose_skim_quota(MUMU, runs, [consumer("CDC", "Good")], target_pb=1000.0)

    assert [run.key for run in skim.runs] == [(30, 1)]
    assert "1 runs with the skim were left out" in skim.explain()


def test_quota_rejects_non_positive_target():
    with pytest.raises(ValueError, match="must be a positive luminosity"):
        choose_skim_quota(MUMU, [], [], target_pb=0)


def test_spread_order_covers_range():
    assert spread_order(8) == [0, 4, 2, 6, 1, 5, 3, 7]
    assert sorted(spread_order(5)) == [0, 1, 2, 3, 4]
    assert spread_order(5)[:2] == [0, 4]
    assert spread_order(0) == []


def test_select_inputs_reads_only_quota_runs():
    runs = [make_run(run) for run in range(1, 11)]
    files = {(MUMU, run.key): [FileEntry(f"/skims/{MUMU}/r{run.run}.root", size=10)] for run in runs}
    settings = CATALOG["CDC badwire"]
    quota = {MUMU: frozenset({(30, 2), (30, 5)})}

    selections = select_inputs(
        settings, runs, IoV(30, 0, 30, -1), CATALOG.vocabulary, StaticFileSource(files), skim_runs=quota
    )

    selection = selections[MUMU]
    assert sorted(selection.run_files) == [(30, 2), (30, 5)]
    step = next(step for step in selection.steps if step.category == SKIM_QUOTA)
    assert step.runs_dropped == 8
    assert step.runs_left == 2


def test_select_inputs_unlimited_tag_keeps_runs():
    tags = (MUMU, "hadron_calib", "cosmic_calib")
    runs = [make_run(run, skims=tags) for run in range(1, 5)]
    files = {(tag, run.key): [FileEntry(f"/skims/{tag}/r{run.run}.root")] for run in runs for tag in tags}
    settings = CATALOG["CDC Tracking"]

    selections = select_inputs(
        settings,
        runs,
        IoV(30, 0, 30, -1),
        CATALOG.vocabulary,
        StaticFileSource(files),
        skim_runs={MUMU: frozenset({(30, 1)})},
    )

    assert sorted(selections[MUMU].run_files) == [(30, 1)]
    assert len(selections["hadron_calib"].run_files) == 4


def test_quota_stored_and_read_back_for_open_buckets(plugin_db):
    quota = choose_bucket_quota(CATALOG, RUNS, BUCKET, data_tags=["hadron_calib", MUMU])
    with session_scope(plugin_db) as session:
        session.add(
            BucketRecord(
                name="e26-all", exp_low=26, run_low=0, exp_high=26, run_high=-1, target_luminosity_pb=1.0
            )
        )
        inventory.save_bucket_quota(session, quota)
        inventory.save_bucket_quota(session, quota)

    with session_scope(plugin_db) as session:
        rows = inventory.bucket_quotas(session, BUCKET)
        stored = inventory.bucket_skim_runs(session, BUCKET)
        to_replicate = inventory.quota_runs_to_replicate(session)

    assert [row.data_tag for row in rows] == ["hadron_calib", MUMU]
    assert stored == quota.runs_by_tag()
    assert to_replicate == quota.runs_by_tag()
    assert rows[0].explanation.startswith("hadron_calib: ")


class ListingHook:
    """The one call of the Rucio hook that dataset discovery makes, over a fixed list of datasets."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def list_datasets(self, scope: str, pattern: str, created_after: object = None) -> list[Did]:
        return [Did(scope, name) for name in self.names if fnmatch.fnmatchcase(name, pattern)]


def test_replication_takes_only_quota_runs(plugin_db):
    quota = choose_bucket_quota(CATALOG, RUNS, BUCKET, data_tags=[MUMU], target_pb=500.0)
    with session_scope(plugin_db) as session:
        session.add(
            BucketRecord(
                name="e26-all", exp_low=26, run_low=0, exp_high=26, run_high=-1, target_luminosity_pb=1.0
            )
        )
        inventory.save_bucket_quota(session, quota)
    names = [
        skim_dataset(tag, *run.key) for run in RUNS for tag in run.skims if tag in (MUMU, "hadron_calib")
    ]
    operator = RucioReplicateSkimsOperator(
        task_id="replicate_skims",
        destinations=["BNL-DISK"],
        data_tags=[MUMU, "hadron_calib"],
        lookback_hours=None,
        quota_only=True,
    )

    datasets = operator._find_datasets(ListingHook(names), "b2cal")

    expected = sorted(skim_dataset(MUMU, *key) for key in quota.quotas[MUMU].chosen_keys)
    assert sorted(did.name for did in datasets) == expected
    assert len(expected) < sum(1 for run in RUNS if MUMU in run.skims)


def test_replication_without_quota_option_takes_all(plugin_db):
    names = [skim_dataset(MUMU, *run.key) for run in RUNS if MUMU in run.skims]
    operator = RucioReplicateSkimsOperator(
        task_id="replicate_skims", destinations=["BNL-DISK"], data_tags=[MUMU], lookback_hours=None
    )

    assert len(operator._find_datasets(ListingHook(names), "b2cal")) == len(names)
