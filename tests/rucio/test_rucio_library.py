"""Unit tests of b2cal.rucio: names, plans, metadata, rule reuse and rule judgement. No server needed."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from rucio_support import write_run_files

from b2cal.iov import IoV
from b2cal.rucio import (
    RUCIO_DATE_FORMAT,
    Did,
    RucioPlanError,
    RuleRequest,
    RuleWatch,
    assess_rules,
    bucket_label,
    cdst_container_name,
    cdst_dataset_name,
    cdst_file_name,
    file_checksums,
    find_reusable_rule,
    judge_rule,
    lifetime_to_extend,
    lifetime_to_shorten,
    listing_filters,
    plan_cdst_registration,
    plan_skim_registration,
    rucio_metadata,
    site_rse,
    skim_dataset_name,
    superseded_cdst_containers,
)

RULE_ID = "0123456789abcdef0123456789abcdef"


def rule(**changes: object) -> dict:
    values = {
        "id": RULE_ID,
        "scope": "b2cal",
        "name": "cdst/r1/e0026r00001-e0026r00010",
        "account": "root",
        "rse_expression": "DESY-DISK",
        "copies": 1,
        "state": "REPLICATING",
        "locks_ok_cnt": 0,
        "locks_replicating_cnt": 5,
        "locks_stuck_cnt": 0,
        "activity": "Data Consolidation",
        "grouping": "DATASET",
        "created_at": datetime(2026, 12, 4, 12, 0, 0),
        "expires_at": None,
        "error": None,
    }
    values.update(changes)
    return values


class TestNames:
    def test_bucket_label_closed(self):
        assert bucket_label(IoV(26, 1, 26, 400)) == "e0026r00001-e0026r00400"

    def test_bucket_label_open_ended(self):
        assert bucket_label(IoV(26, 1, -1, -1)) == "e0026r00001-open"

    def test_bucket_label_whole_experiment(self):
        assert bucket_label(IoV(26, 1, 27, -1)) == "e0026r00001-e0027"

    def test_cdst_names_nest(self):
        bucket = IoV(26, 1, 26, 400)
        assert cdst_file_name("p-1", "hadron_calib", 26, 12, "a_cdst.root") == (
            "cdst/p-1/hadron_calib/e0026/r00012/a_cdst.root"
        )
        assert (
            cdst_dataset_name("p-1", bucket, "hadron_calib")
            == "cdst/p-1/e0026r00001-e0026r00400/hadron_calib"
        )
        assert cdst_container_name("p-1", bucket) == "cdst/p-1/e0026r00001-e0026r00400"

    def test_later_cdst_attempt_names_carry_it(self):
        bucket = IoV(26, 1, 26, 400)
        assert cdst_file_name("p-1", "hadron_calib", 26, 12, "a_cdst.root", attempt=2) == (
            "cdst/p-1/attempt-2/hadron_calib/e0026/r00012/a_cdst.root"
        )
        assert (
            cdst_dataset_name("p-1", bucket, "hadron_calib", attempt=2)
            == "cdst/p-1/attempt-2/e0026r00001-e0026r00400/hadron_calib"
        )
        assert cdst_container_name("p-1", bucket, attempt=2) == "cdst/p-1/attempt-2/e0026r00001-e0026r00400"
        assert cdst_container_name("p-1", bucket, attempt=1) == cdst_container_name("p-1", bucket)

    def test_superseded_containers_are_the_earlier_attempts(self):
        bucket = IoV(26, 1, 26, 400)
        assert superseded_cdst_containers("p-1", bucket, 1) == []
        assert superseded_cdst_containers("p-1", bucket, 3) == [
            "cdst/p-1/e0026r00001-e0026r00400",
            "cdst/p-1/attempt-2/e0026r00001-e0026r00400",
        ]
        with pytest.raises(RucioPlanError, match="attempt 0 is invalid"):
            superseded_cdst_containers("p-1", bucket, 0)

    def test_invalid_cdst_attempt_fails(self):
        with pytest.raises(RucioPlanError, match="attempt 0 is invalid"):
            cdst_container_name("p-1", IoV(26, 1, 26, 2), attempt=0)

    def test_skim_dataset_name(self):
        assert skim_dataset_name("bhabha_all_calib", 26, 7) == "skim/bhabha_all_calib/e0026/r00007"

    def test_name_part_rejects_slash(self):
        with pytest.raises(RucioPlanError, match="request id 'a/b'"):
            cdst_container_name("a/b", IoV(26, 1, 26, 2))

    def test_site_rse(self):
        assert site_rse("bnl") == "BNL-DISK"
        assert site_rse("CNAF") == "CNAF-DISK"

    def test_did_parse_with_default_scope(self):
        assert Did.parse("x/y", default_scope="b2cal") == Did("b2cal", "x/y")
        assert str(Did.parse("data:x")) == "data:x"

    def test_did_parse_without_scope_fails(self):
        with pytest.raises(RucioPlanError, match="no scope"):
            Did.parse("x")

    def test_did_rejects_bad_scope(self):
        with pytest.raises(RucioPlanError, match="scope 'a b'"):
            Did("a b", "x")


class TestMetadata:
    VALUES = {"experiment": 26, "run": 12, "bucket": "e0026r00001-e0026r00010", "request_id": "p1"}

    def test_json_keeps_keys(self):
        assert rucio_metadata(self.VALUES, "json") == self.VALUES

    def test_columns_map_to_did_columns(self):
        assert rucio_metadata(self.VALUES, "columns") == {
            "project": "26",
            "run_number": 12,
            "version": "e0026r00001-e0026r00010",
            "campaign": "p1",
        }

    def test_columns_reject_long_value(self):
        with pytest.raises(RucioPlanError, match="50 characters of Rucio's 'campaign' column"):
            rucio_metadata({"request_id": "x" * 51}, "columns")

    def test_unknown_style(self):
        with pytest.raises(RucioPlanError, match="style 'xml'"):
            rucio_metadata({}, "xml")


class TestPlans:
    def test_cdst_plan_groups_by_skim_within_bucket(self, tmp_path: Path):
        write_run_files(tmp_path, "hadron_calib", 26, [1, 2, 500], 2, "_cdst.root")
        write_run_files(tmp_path, "mumu_calib", 26, [3], 1, "_cdst.root")
        (tmp_path / "hadron_calib" / "e0026" / "r00001" / "notes.txt").write_text("not a cDST")
        plan = plan_cdst_registration(
            tmp_path, request_id="p1", bucket=IoV(26, 1, 26, 400), scope="b2cal", rse="BNL-DISK"
        )
        assert plan.summary() == {
            "rse": "BNL-DISK",
            "container": "b2cal:cdst/p1/e0026r00001-e0026r00400",
            "datasets": {
                "b2cal:cdst/p1/e0026r00001-e0026r00400/hadron_calib": 4,
                "b2cal:cdst/p1/e0026r00001-e0026r00400/mumu_calib": 1,
            },
            "files": 5,
        }
        first = plan.datasets[0].files[0]
        assert first.did.name == "cdst/p1/hadron_calib/e0026/r00001/f0_cdst.root"
        assert first.metadata["experiment"] == 26
        assert first.metadata["run"] == 1
        assert first.metadata["request_id"] == "p1"
        assert plan.container_metadata["experiment"] == 26

    def test_cdst_plan_of_a_later_attempt(self, tmp_path: Path):
        write_run_files(tmp_path, "hadron_calib", 26, [1, 2], 1, "_cdst.root")
        plan = plan_cdst_registration(
            tmp_path, request_id="p1", bucket=IoV(26, 1, 26, 400), scope="b2cal", rse="BNL-DISK", attempt=3
        )
        assert plan.summary()["container"] == "b2cal:cdst/p1/attempt-3/e0026r00001-e0026r00400"
        assert [record.did.name for record in plan.files] == [
            "cdst/p1/attempt-3/hadron_calib/e0026/r00001/f0_cdst.root",
            "cdst/p1/attempt-3/hadron_calib/e0026/r00002/f0_cdst.root",
        ]

    def test_cdst_plan_without_files_fails(self, tmp_path: Path):
        write_run_files(tmp_path, "hadron_calib", 26, [900], 1, "_cdst.root")
        with pytest.raises(RucioPlanError, match="no cDST files of bucket 26,1,26,400"):
            plan_cdst_registration(
                tmp_path, request_id="p1", bucket=IoV(26, 1, 26, 400), scope="b2cal", rse="X"
            )

    def test_skim_plan_one_dataset_per_run(self, tmp_path: Path):
        write_run_files(tmp_path, "bhabha_all_calib", 26, [5, 6], 2, ".root")
        write_run_files(tmp_path, "cosmic_calib", 26, [5], 1, ".root")
        plan = plan_skim_registration(
            tmp_path, runs=IoV(26, 0, 26, -1), scope="b2cal", rse="KEK-DISK", data_tags=["bhabha_all_calib"]
        )
        assert [str(dataset.did) for dataset in plan.datasets] == [
            "b2cal:skim/bhabha_all_calib/e0026/r00005",
            "b2cal:skim/bhabha_all_calib/e0026/r00006",
        ]
        assert plan.container is None
        assert len(plan.files) == 4

    def test_checksums_match_known_values(self, tmp_path: Path):
        path = tmp_path / "f"
        path.write_bytes(b"Wikipedia")
        size, adler32, md5 = file_checksums(path)
        assert size == 9
        assert adler32 == "11e60398"
        assert md5 == hashlib.md5(b"Wikipedia").hexdigest()


class TestRuleReuse:
    def test_same_key_is_reused_whatever_the_activity(self):
        request = RuleRequest(Did("b2cal", rule()["name"]), "DESY-DISK", activity="Express")
        assert find_reusable_rule([rule()], request, "root") is not None

    def test_other_copies_or_account_is_not_reused(self):
        request = RuleRequest(Did("b2cal", rule()["name"]), "DESY-DISK", copies=2)
        assert find_reusable_rule([rule()], request, "root") is None
        request = RuleRequest(Did("b2cal", rule()["name"]), "DESY-DISK")
        assert find_reusable_rule([rule()], request, "jdoe") is None

    def test_lifetime_raised_never_shortened(self):
        now = datetime(2026, 12, 4, 12, 0, 0)
        request = RuleRequest(Did("b2cal", "x"), "DESY-DISK", lifetime=86400)
        assert lifetime_to_extend(rule(expires_at=now + timedelta(hours=1)), request, now) == (True, 86400)
        assert lifetime_to_extend(rule(expires_at=now + timedelta(days=5)), request, now) == (False, None)
        assert lifetime_to_extend(rule(expires_at=None), request, now) == (False, None)
        forever = RuleRequest(Did("b2cal", "x"), "DESY-DISK")
        assert lifetime_to_extend(rule(expires_at=now + timedelta(days=5)), forever, now) == (True, None)

    def test_lifetime_shortened_never_raised(self):
        now = datetime(2026, 12, 4, 12, 0, 0)
        week = 7 * 86400
        assert lifetime_to_shorten(rule(expires_at=None), week, now)
        assert lifetime_to_shorten(rule(expires_at=now + timedelta(days=30)), week, now)
        assert not lifetime_to_shorten(rule(expires_at=now + timedelta(days=2)), week, now)
        # The end that the same lifetime gave a minute ago is kept.
        assert not lifetime_to_shorten(rule(expires_at=now + timedelta(seconds=week - 60)), week, now)
        with pytest.raises(RucioPlanError, match="lifetime 0 is invalid"):
            lifetime_to_shorten(rule(), 0, now)

    def test_request_rejects_bad_values(self):
        with pytest.raises(RucioPlanError, match="copies 0"):
            RuleRequest(Did("b2cal", "x"), "DESY-DISK", copies=0)
        with pytest.raises(RucioPlanError, match="grouping 'SOME'"):
            RuleRequest(Did("b2cal", "x"), "DESY-DISK", grouping="SOME")
        with pytest.raises(RucioPlanError, match="lifetime -1"):
            RuleRequest(Did("b2cal", "x"), "DESY-DISK", lifetime=-1)


class TestJudgement:
    def test_ok_with_all_locks_is_done(self):
        progress = judge_rule(rule(state="OK", locks_ok_cnt=5, locks_replicating_cnt=0), expected_files=5)
        assert progress.verdict == "ok"

    def test_ok_with_old_count_keeps_waiting(self):
        progress = judge_rule(rule(state="OK", locks_ok_cnt=4, locks_replicating_cnt=0), expected_files=5)
        assert progress.verdict == "waiting"
        assert "waiting for the judge" in progress.summary()

    def test_expected_locks_count_copies(self):
        progress = judge_rule(
            rule(state="OK", copies=2, locks_ok_cnt=5, locks_replicating_cnt=0), expected_files=5
        )
        assert progress.expected_locks == 10
        assert progress.verdict == "waiting"

    def test_stuck_and_suspended_are_stuck(self):
        assert judge_rule(rule(state="STUCK"), None).verdict == "stuck"
        assert judge_rule(rule(state="SUSPENDED"), None).verdict == "stuck"

    def test_stuck_fails_only_after_grace(self):
        stuck = judge_rule(rule(state="STUCK", locks_ok_cnt=3, locks_replicating_cnt=0, locks_stuck_cnt=2), 5)
        since: dict[str, float] = {}
        first = assess_rules([stuck], since, now=100.0, grace_period=60.0)
        assert not first.failed
        later = assess_rules([stuck], since, now=170.0, grace_period=60.0)
        assert later.failed
        assert "2 stuck" in later.message
        assert "stuck for 70 s" in later.message

    def test_recovery_clears_stuck_clock(self):
        since: dict[str, float] = {}
        assess_rules([judge_rule(rule(state="STUCK"), None)], since, now=0.0, grace_period=60.0)
        assess_rules([judge_rule(rule(state="REPLICATING"), None)], since, now=30.0, grace_period=60.0)
        outcome = assess_rules([judge_rule(rule(state="STUCK"), None)], since, now=70.0, grace_period=60.0)
        assert not outcome.failed

    def test_all_ok_is_done(self):
        done = judge_rule(rule(state="OK", locks_ok_cnt=5, locks_replicating_cnt=0), None)
        assert assess_rules([done, done], {}, 0.0, 60.0).done


class TestBatching:
    def test_groups_by_account_and_scope(self):
        rules = [
            rule(id="a" * 32, created_at=datetime(2026, 12, 4, 12, 0, 5)),
            rule(id="b" * 32, created_at=datetime(2026, 12, 4, 12, 0, 1)),
            rule(id="c" * 32, scope="other"),
        ]
        filters, singles = listing_filters(rules)
        assert filters == [
            {
                "account": "root",
                "scope": "b2cal",
                "created_after": datetime(2026, 12, 4, 12, 0, 0).strftime(RUCIO_DATE_FORMAT),
            }
        ]
        assert singles == ["c" * 32]

    def test_watch_round_trip_and_stub(self):
        watch = RuleWatch.for_rule(rule(), expected_files=5)
        assert RuleWatch.from_dict(watch.to_dict()) == watch
        assert watch.rule_stub() == {
            "id": RULE_ID,
            "account": "root",
            "scope": "b2cal",
            "created_at": "Fri, 04 Dec 2026 12:00:00 UTC",
        }

    def test_watch_needs_rule_or_did_with_expression(self):
        with pytest.raises(RucioPlanError, match="needs a rule id"):
            RuleWatch(did="b2cal:x")
        with pytest.raises(RucioPlanError, match="rule id 'abc' is invalid"):
            RuleWatch(rule_id="abc")
