"""Page data: calibration states, timelines, critical paths, durations, catalog diffs, plans, proposals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from b2cal.catalog import load_packaged_release, load_release
from b2cal.iov import IoV
from b2cal.reports import (
    ProgressEvent,
    RunSummary,
    bucket_durations,
    build_timeline,
    calibration_state,
    critical_path,
    dependency_notes,
    diff_catalogs,
    longest_chain,
    plan_preview,
    propose_buckets,
    state_counts,
)
from b2cal.request import parse_request
from b2cal.runs import Run

T0 = datetime(2026, 11, 2, tzinfo=UTC)
CATALOG = load_packaged_release()


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


@pytest.mark.parametrize(
    ("job", "ticket", "state"),
    [
        ("pending", None, "queued"),
        ("waiting_for_dependencies", "new", "queued"),
        ("running", "new", "running"),
        ("succeeded", "new", "waiting_for_expert"),
        ("succeeded", "waiting_for_expert", "waiting_for_expert"),
        ("failed", "new", "failed"),
        ("no_input", "new", "failed"),
        ("succeeded", "done", "done"),
        ("failed", "done", "done"),
        ("cancelled", None, "cancelled"),
        ("cancelled", "new", "cancelled"),
        ("cancelled", "waiting_for_expert", "cancelled"),
        ("cancelled", "done", "done"),
    ],
)
def test_calibration_state(job, ticket, state):
    assert calibration_state(job, ticket) == state


def test_state_counts_cover_every_state():
    counts = state_counts([("running", None), ("succeeded", "done"), ("succeeded", "done")])

    assert counts == {
        "queued": 0,
        "running": 1,
        "waiting_for_expert": 0,
        "done": 2,
        "failed": 0,
        "cancelled": 0,
    }


def test_state_counts_of_cancelled_request():
    counts = state_counts([("cancelled", "new"), ("cancelled", None), ("succeeded", "done")])

    assert counts["cancelled"] == 2
    assert counts["queued"] == 0
    assert counts["done"] == 1


def test_timeline_ends_cancelled_calibrations_as_cancelled():
    events = [
        ProgressEvent(at(1), "a", {"job_state": "running"}),
        ProgressEvent(at(2), "a", {"job_state": "cancelled"}),
        ProgressEvent(at(2), "b", {"job_state": "cancelled"}),
        ProgressEvent(at(1), "c", {"ticket_state": "done"}),
        ProgressEvent(at(2), "c", {"job_state": "cancelled"}),
    ]
    depends_on = {"a": (), "b": ("a",), "c": ()}
    timeline = build_timeline(list(depends_on), {}, depends_on, events, start=T0, end=at(3))
    rows = {row.calibration: row for row in timeline.rows}

    assert [(s.state, s.start, s.end) for s in rows["a"].segments] == [
        ("queued", T0, at(1)),
        ("running", at(1), at(2)),
        ("cancelled", at(2), at(3)),
    ]
    assert rows["b"].state == "cancelled"
    assert rows["c"].state == "done", "a done ticket stays done"
    assert timeline.waiting_seconds()["cancelled"] == 2 * 3600


def diamond_timeline(end: datetime):
    """a, b and c start at once; d needs b and c. b finishes last, so the path is b → d."""
    events = [
        ProgressEvent(at(1), "a", {"job_state": "running"}),
        ProgressEvent(at(2), "a", {"job_state": "succeeded"}),
        ProgressEvent(at(3), "a", {"ticket_state": "done"}),
        ProgressEvent(at(1), "b", {"job_state": "running"}),
        ProgressEvent(at(4), "b", {"job_state": "succeeded"}),
        ProgressEvent(at(6), "b", {"ticket_state": "done"}),
        ProgressEvent(at(1), "c", {"job_state": "running"}),
        ProgressEvent(at(2), "c", {"job_state": "succeeded"}),
        ProgressEvent(at(2.5), "c", {"ticket_state": "done"}),
        ProgressEvent(at(6), "d", {"job_state": "running"}),
        ProgressEvent(at(7), "d", {"job_state": "succeeded"}),
        ProgressEvent(at(2), "other", {"job_state": "running"}),
    ]
    depends_on = {"a": (), "b": ("a",), "c": (), "d": ("b", "c")}
    phases = dict.fromkeys(depends_on, "raw")
    return build_timeline(list(depends_on), phases, depends_on, events, start=T0, end=end)


def test_timeline_segments_follow_the_recorded_changes():
    timeline = diamond_timeline(end=at(8))
    rows = {row.calibration: row for row in timeline.rows}

    assert [(s.state, s.start, s.end) for s in rows["b"].segments] == [
        ("queued", T0, at(1)),
        ("running", at(1), at(4)),
        ("waiting_for_expert", at(4), at(6)),
        ("done", at(6), at(8)),
    ]
    assert rows["d"].state == "waiting_for_expert"
    assert rows["d"].seconds_in("queued") == 6 * 3600
    assert rows["b"].done_at == at(6) and rows["d"].done_at is None
    assert "other" not in rows


def test_critical_path_follows_the_dependency_that_finished_last():
    timeline = diamond_timeline(end=at(8))

    assert timeline.critical_path == ["a", "b", "d"]
    assert [row.calibration for row in timeline.rows if row.critical] == ["a", "b", "d"]


def test_critical_path_before_anything_started_is_the_longest_chain():
    depends_on = {"a": (), "b": ("a",), "c": (), "d": ("b",)}
    timeline = build_timeline(list(depends_on), {}, depends_on, [], start=T0, end=at(1))

    assert timeline.critical_path == ["a", "b", "d"]
    assert all(row.state == "queued" for row in timeline.rows)


def test_critical_path_of_nothing_is_empty():
    assert critical_path([], {}, end=T0) == []


def test_events_outside_the_timeline_are_clipped():
    events = [ProgressEvent(T0 - timedelta(hours=1), "a", {"job_state": "running"})]
    timeline = build_timeline(["a"], {}, {"a": ()}, events, start=T0, end=at(2))

    assert [(s.state, s.start) for s in timeline.rows[0].segments] == [("running", T0)]


def test_waiting_seconds_sum_the_states():
    timeline = diamond_timeline(end=at(8))

    waiting = timeline.waiting_seconds()

    assert waiting["running"] == (1 + 3 + 1 + 1) * 3600
    assert sum(waiting.values()) == 4 * 8 * 3600


def test_longest_chain_of_the_real_catalog():
    chain = longest_chain({name: CATALOG[name].depends_on for name in CATALOG.names})

    assert len(chain) == len(CATALOG.critical_chain())
    assert chain[-1] == "eCMS Calibrations"
    for parent, child in zip(chain, chain[1:], strict=False):
        assert parent in CATALOG[child].depends_on


def test_bucket_durations_finished_and_running():
    taken = T0 - timedelta(days=3)
    done = bucket_durations(
        "r", "26,0,26,10", started_at=T0, data_taken_until=taken, calibrated_at=at(48), now=at(99)
    )
    running = bucket_durations(
        "r", "26,0,26,10", started_at=T0, data_taken_until=None, calibrated_at=None, now=at(12)
    )

    assert (done.bucket_days, done.data_to_calibrated_days, done.finished) == (2.0, 5.0, True)
    assert (running.bucket_days, running.data_to_calibrated_days, running.finished) == (0.5, None, False)
    assert done.stopped
    assert not running.stopped


@pytest.mark.parametrize("state", ["cancelled", "failed", "rejected"])
def test_bucket_durations_stop_when_request_ended(state):
    taken = T0 - timedelta(days=3)
    ended = bucket_durations(
        "r",
        "26,0,26,10",
        started_at=T0,
        data_taken_until=taken,
        calibrated_at=None,
        now=at(999),
        ended_at=at(24),
        end_state=state,
    )

    assert ended.bucket_days == 1.0
    assert ended.data_to_calibrated_days == 4.0
    assert ended.end_state == state
    assert ended.ended_at == at(24)
    assert ended.stopped
    assert not ended.finished


def test_bucket_durations_merge_wins_over_end():
    merged = bucket_durations(
        "r",
        "26,0,26,10",
        started_at=T0,
        data_taken_until=None,
        calibrated_at=at(48),
        now=at(99),
        ended_at=at(24),
        end_state="rejected",
    )

    assert merged.bucket_days == 2.0
    assert merged.end_state is None
    assert merged.ended_at is None
    assert merged.finished


def changed_release():
    data = CATALOG.to_dict()
    data["basf2_release"] = "release-12-00-00"
    data["calibrations"] = [item for item in data["calibrations"] if item["name"] != "Example Simple"]
    for item in data["calibrations"]:
        if item["name"] == "Example Complex":
            item["depends_on"] = []
        if item["name"] == "CDC badwire":
            item["expert_config"] = {"min_hits": 50}
    data["calibrations"].append({**data["calibrations"][0], "name": "ARICH new"})
    data["input_data_filters"]["Data Tag"] = [*data["input_data_filters"]["Data Tag"], "new_calib"]
    return load_release(data)


def test_diff_catalogs_lists_added_removed_and_changed_settings():
    diff = diff_catalogs(CATALOG, changed_release())

    assert diff.added == ["ARICH new"]
    assert diff.removed == ["Example Simple"]
    assert sorted(diff.changed) == ["CDC badwire", "Example Complex"]
    [change] = diff.changed["CDC badwire"]
    assert (change.key, change.old, change.new) == ("expert_config", {}, {"min_hits": 50})
    assert diff.vocabulary_added == {"Data Tag": ["new_calib"]}
    assert not diff.is_empty
    assert diff_catalogs(CATALOG, CATALOG).is_empty


def run(number: int, **fields) -> Run:
    values = {
        "experiment": 26,
        "run": number,
        "run_type": "physics",
        "quality": {"overall": "GOOD"},
        "duration_s": 3600.0,
        "recorded_luminosity": 100.0,
        "skims": ("mumu_tight_or_highm_calib", "hadron_calib"),
    }
    values.update(fields)
    return Run(**values)


def request_conf(**changes):
    conf = {
        "request_id": "plan-test",
        "release": CATALOG.release,
        "site": "BNL",
        "bucket": [26, 1, 26, 10],
        "calibrations": ["CDC badwire"],
        "staging_tag": "staging",
        "running_tag": "running",
        "requested_by": "manager",
    }
    conf.update(changes)
    return conf


def test_plan_preview_counts_runs_per_input_and_plans_the_tickets():
    spec = parse_request(request_conf(), CATALOG)
    runs = [run(1), run(2), run(3, skims=("hadron_calib",)), run(4, quality={"overall": "BAD"}), run(99)]

    plan = plan_preview(spec, CATALOG, runs)

    assert plan.calibrations == ["CDC Tracking", "CDC badwire"]
    assert plan.added_dependencies == ["CDC Tracking"]
    assert plan.levels == [["CDC Tracking"], ["CDC badwire"]]
    assert plan.bucket_runs == 4, "run 99 lies outside the bucket"
    [badwire] = [ticket for ticket in plan.tickets if ticket.calibration == "CDC badwire"]
    assert badwire.blocked_by == ("CDC Tracking",) and badwire.level == 1
    assert badwire.assignee == CATALOG["CDC badwire"].expert_username
    [count] = plan.inputs["CDC badwire"]
    assert (count.runs_considered, count.runs_kept, count.luminosity_pb) == (4, 2, 200.0)
    assert count.dropped_by == {"Good": 1, "mumu_tight_or_highm_calib": 1}
    assert plan.to_dict()["inputs"]["CDC badwire"][0]["runs_kept"] == 2


def test_plan_preview_applies_filter_overrides_and_warns_about_empty_inputs():
    conf = request_conf(
        filter_overrides={"CDC badwire": {"mumu_tight_or_highm_calib": ["cosmic_calib", "Good"]}}
    )
    spec = parse_request(conf, CATALOG)

    plan = plan_preview(spec, CATALOG, [run(1), run(2)])

    assert plan.inputs["CDC badwire"][0].runs_kept == 0
    assert any("CDC badwire input 'mumu_tight_or_highm_calib' keeps no run" in item for item in plan.warnings)


def test_plan_preview_warns_about_a_bucket_without_runs():
    plan = plan_preview(parse_request(request_conf(), CATALOG), CATALOG, [])

    assert plan.bucket_runs == 0
    assert plan.warnings[0].startswith("no run of bucket")


def test_dependency_notes_say_which_choice_needs_each_addition():
    notes = dependency_notes(CATALOG, ["CDC badwire", "caf_svd_time"])

    assert notes == {"CDC Tracking": ["CDC badwire", "caf_svd_time"]}


def summary(
    experiment: int, number: int, luminosity: float = 4000.0, run_type: str = "physics"
) -> RunSummary:
    return RunSummary(experiment, number, run_type, luminosity, at(number), at(number + 1))


def test_propose_buckets_cuts_by_luminosity_and_never_spans_experiments():
    runs = [summary(25, n) for n in (1, 2, 3, 4)] + [summary(25, 5, 50000.0, "beam")]
    runs += [summary(26, n) for n in (1, 2, 3)]

    buckets = propose_buckets(runs, target_luminosity_pb=10000.0, requested={"old": IoV(25, 0, 25, 2)})

    assert [(b.iov.as_list(), b.complete) for b in buckets] == [
        ([25, 1, 25, 3], True),
        ([25, 4, 25, 5], True),
        ([26, 1, 26, 3], True),
    ]
    assert buckets[0].luminosity_pb == 12000.0 and buckets[0].requests == ("old",)
    assert buckets[1].luminosity_pb == 4000.0, "beam runs do not count towards a bucket's luminosity"
    assert buckets[1].runs == 2 and buckets[1].physics_runs == 1


def test_the_last_bucket_is_incomplete_while_data_taking_goes_on():
    buckets = propose_buckets([summary(26, n) for n in (1, 2, 3, 4)], target_luminosity_pb=10000.0)

    assert [(b.iov.as_list(), b.complete) for b in buckets] == [
        ([26, 1, 26, 3], True),
        ([26, 4, 26, 4], False),
    ]
    assert buckets[1].start_time == at(4) and buckets[1].stop_time == at(5)


def test_stored_buckets_are_proposed_as_stored():
    runs = [summary(26, n) for n in range(1, 10)]
    stored = {"e0026r00002-e0026r00005": IoV(26, 2, 26, 5)}

    buckets = propose_buckets(runs, target_luminosity_pb=10000.0, stored=stored)

    assert [(b.iov.as_list(), b.complete, b.stored_name) for b in buckets] == [
        ([26, 1, 26, 1], True, None),
        ([26, 2, 26, 5], True, "e0026r00002-e0026r00005"),
        ([26, 6, 26, 8], True, None),
        ([26, 9, 26, 9], False, None),
    ]
    assert buckets[1].runs == 4
    assert buckets[1].luminosity_pb == 16000.0


def test_stored_bucket_keeps_its_range_and_completeness():
    runs = [summary(26, n) for n in (3, 4)]
    stored = {"e0026r00001-e0026r00006": IoV(26, 1, 26, 6)}

    [bucket] = propose_buckets(runs, target_luminosity_pb=10000.0, stored=stored)

    assert bucket.iov == IoV(26, 1, 26, 6)
    assert bucket.complete
    assert bucket.stored_name == "e0026r00001-e0026r00006"


def test_propose_buckets_rejects_a_bad_target():
    with pytest.raises(ValueError, match="positive luminosity"):
        propose_buckets([], target_luminosity_pb=0)
