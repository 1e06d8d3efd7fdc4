"""The Rucio triggers, run directly with asyncio against a real Rucio server on SQLite.

Rules reach OK here by marking the destination replicas available through the API, the path that needs
no daemon; the conveyor path is in ``test_rucio_postgres.py``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from rucio_support import connection_json, run_trigger, write_run_files

from b2cal.iov import IoV
from b2cal.rucio import Did, RegistrationPlan, RuleRequest, RuleWatch, plan_cdst_registration
from b2cal_airflow.hooks.rucio import RucioHook
from b2cal_airflow.triggers.rucio import RucioRulesTrigger, RucioRuleTrigger, RulePoller


def mark(rse: str, dids: list[Did], state: str = "A") -> None:
    """Set the replica state of ``dids`` at ``rse``: A (available) or U (unavailable)."""
    RucioHook().get_conn().update_replicas_states(rse, [{**did.as_dict(), "state": state} for did in dids])


def register(root: Path, request_id: str, runs: list[int]) -> RegistrationPlan:
    """Register one cDST file per run at BNL-DISK and return the plan."""
    write_run_files(root, "hadron_calib", 26, runs, 1, "_cdst.root")
    plan = plan_cdst_registration(
        root, request_id=request_id, bucket=IoV(26, 1, 26, 999), scope="b2cal", rse="BNL-DISK"
    )
    RucioHook().register(plan)
    return plan


@pytest.fixture
def replicating(rucio_conn, tmp_path: Path, unique: str) -> tuple[RegistrationPlan, str]:
    """Return a plan of 3 files at BNL-DISK and the id of its REPLICATING rule to DESY-DISK."""
    plan = register(tmp_path, f"trig-{unique}", [1, 2, 3])
    rule = RucioHook().ensure_rule(RuleRequest(plan.container, "DESY-DISK"))
    return plan, rule["id"]


def files_of(plan: RegistrationPlan) -> list[Did]:
    return [record.did for record in plan.files]


class TestSerialization:
    def test_rules_trigger_round_trip(self):
        watch = RuleWatch(did="b2cal:cdst/x", rse_expression="DESY-DISK", expected_files=4).to_dict()
        trigger = RucioRulesTrigger(
            watches=[watch], rucio_conn_id="rucio_x", poll_interval=5, stuck_grace_period=60, max_attempts=7
        )
        classpath, kwargs = trigger.serialize()
        assert classpath == "b2cal_airflow.triggers.rucio.RucioRulesTrigger"
        assert json.loads(json.dumps(kwargs)) == kwargs
        rebuilt = RucioRulesTrigger(**kwargs)
        assert rebuilt.serialize() == (classpath, kwargs)
        assert rebuilt.watches == [watch]
        assert rebuilt.max_attempts == 7

    def test_rule_trigger_round_trip(self):
        trigger = RucioRuleTrigger(rule_id="a" * 32, expected_files=3, poll_interval=2, max_backoff=30)
        classpath, kwargs = trigger.serialize()
        assert classpath == "b2cal_airflow.triggers.rucio.RucioRuleTrigger"
        assert json.loads(json.dumps(kwargs)) == kwargs
        rebuilt = RucioRuleTrigger(**kwargs)
        assert rebuilt.serialize() == (classpath, kwargs)
        assert rebuilt.watches == [RuleWatch(rule_id="a" * 32, expected_files=3).to_dict()]

    def test_rules_trigger_needs_watches(self):
        with pytest.raises(ValueError, match="at least one rule"):
            RucioRulesTrigger(watches=[])

    def test_backoff_doubles_up_to_cap(self):
        trigger = RucioRuleTrigger(rule_id="a" * 32, poll_interval=10, max_backoff=60)
        assert [trigger.backoff(attempt) for attempt in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]


class TestRuleOk:
    def test_ok_after_replicas_marked_available(self, replicating, capsys):
        plan, rule_id = replicating

        async def transfer() -> None:
            await asyncio.sleep(0.6)
            await asyncio.to_thread(mark, "DESY-DISK", files_of(plan)[:2])
            await asyncio.sleep(0.6)
            await asyncio.to_thread(mark, "DESY-DISK", files_of(plan)[2:])

        event = run_trigger(RucioRuleTrigger(rule_id, poll_interval=0.2), transfer)
        assert event["status"] == "success"
        assert event["rules"][0]["state"] == "OK"
        assert event["rules"][0]["locks_ok"] == 3
        assert event["rules"][0]["expected_locks"] == 3
        output = capsys.readouterr().out
        assert "REPLICATING: 0/3 locks OK, 3 replicating, 0 stuck" in output
        assert "REPLICATING: 2/3 locks OK, 1 replicating, 0 stuck" in output

    def test_rule_by_did_and_expression(self, replicating):
        plan, rule_id = replicating
        mark("DESY-DISK", files_of(plan))
        watch = RuleWatch(did=str(plan.container), rse_expression="DESY-DISK")
        event = run_trigger(RucioRulesTrigger([watch.to_dict()], poll_interval=0.2))
        assert event["status"] == "success"
        assert event["rules"][0]["rule_id"] == rule_id
        assert event["rules"][0]["expected_locks"] == 3


class TestRuleFailures:
    def test_stuck_fails_after_grace_period(self, replicating):
        plan, rule_id = replicating
        mark("DESY-DISK", files_of(plan)[:1])
        mark("DESY-DISK", files_of(plan)[1:2], state="U")
        event = run_trigger(RucioRuleTrigger(rule_id, poll_interval=0.2, stuck_grace_period=1.0))
        assert event["status"] == "failed"
        assert "STUCK past the grace period" in event["message"]
        assert "1/3 locks OK, 1 replicating, 1 stuck" in event["message"]
        assert event["rules"][0]["state"] == "STUCK"

    def test_unknown_rule_fails_at_once(self, rucio_conn):
        rule_id = uuid.uuid4().hex
        event = run_trigger(RucioRuleTrigger(rule_id, poll_interval=0.2), timeout=20)
        assert event["status"] == "failed"
        assert f"rule {rule_id} not found" in event["message"]

    def test_unknown_did_fails_at_once(self, rucio_conn):
        watch = RuleWatch(did="b2cal:no/such/container", rse_expression="DESY-DISK")
        event = run_trigger(RucioRulesTrigger([watch.to_dict()], poll_interval=0.2), timeout=20)
        assert event["status"] == "failed"
        assert "DID b2cal:no/such/container not found" in event["message"]

    def test_did_without_rule_at_expression(self, replicating):
        plan, _ = replicating
        watch = RuleWatch(did=str(plan.container), rse_expression="KEK-DISK")
        event = run_trigger(RucioRulesTrigger([watch.to_dict()], poll_interval=0.2), timeout=20)
        assert event["status"] == "failed"
        assert "no replication rule for the RSE expression 'KEK-DISK'" in event["message"]

    def test_wrong_credentials_fail_at_once(self, replicating, rucio_server, monkeypatch):
        _, rule_id = replicating
        values = json.loads(connection_json(rucio_server))
        values["password"] = "wrong-password"
        monkeypatch.setenv("AIRFLOW_CONN_RUCIO_WRONG", json.dumps(values))
        event = run_trigger(
            RucioRuleTrigger(rule_id, rucio_conn_id="rucio_wrong", poll_interval=0.2), timeout=20
        )
        assert event["status"] == "failed"
        assert "rejected the credentials" in event["message"]

    def test_unreachable_gives_up_after_max_attempts(self, rucio_server, monkeypatch, capsys):
        values = json.loads(connection_json(rucio_server))
        values["host"] = "http://127.0.0.1:1"
        monkeypatch.setenv("AIRFLOW_CONN_RUCIO_DOWN", json.dumps(values))
        trigger = RucioRuleTrigger(
            uuid.uuid4().hex, rucio_conn_id="rucio_down", poll_interval=0.05, max_attempts=3
        )
        event = run_trigger(trigger, timeout=30)
        assert event["status"] == "failed"
        assert "attempt 3/3" in event["message"]
        output = capsys.readouterr().out
        assert "is unreachable (attempt 1/3)" in output
        assert "is unreachable (attempt 2/3)" in output


class TestServerRestart:
    def test_wait_survives_server_restart(self, replicating, rucio_server, capsys):
        plan, rule_id = replicating

        async def restart_then_transfer() -> None:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(rucio_server.stop_server)
            await asyncio.sleep(1.5)
            await asyncio.to_thread(rucio_server.start)
            await asyncio.to_thread(mark, "DESY-DISK", files_of(plan))

        trigger = RucioRuleTrigger(rule_id, poll_interval=0.2, max_attempts=100, max_backoff=0.5)
        try:
            event = run_trigger(trigger, restart_then_transfer, timeout=60)
        finally:
            if not rucio_server.ping():
                rucio_server.start()
        assert event["status"] == "success"
        output = capsys.readouterr().out
        assert "is unreachable (attempt 1/100)" in output
        assert "Rucio responds again" in output


class TestManyRules:
    def test_one_listing_call_per_poll(self, rucio_conn, tmp_path, unique):
        plan = register(tmp_path, f"many-{unique}", list(range(1, 13)))
        hook = RucioHook()
        rules = [hook.ensure_rule(RuleRequest(record.did, "DESY-DISK")) for record in plan.files]
        watches = [RuleWatch.for_rule(rule, expected_files=1) for rule in rules]
        poller = RulePoller("rucio_default", watches)
        try:
            first = poller.poll()
            assert poller.calls == 1
            assert [rule["id"] for rule in first] == [watch.rule_id for watch in watches]
            poller.poll()
            assert poller.calls == 2
        finally:
            poller.close()

    def test_watches_without_hints_cost_one_call_each_once(self, rucio_conn, tmp_path, unique):
        plan = register(tmp_path, f"hint-{unique}", [1, 2, 3, 4])
        hook = RucioHook()
        rules = [hook.ensure_rule(RuleRequest(record.did, "DESY-DISK")) for record in plan.files]
        poller = RulePoller(
            "rucio_default", [RuleWatch(rule_id=rule["id"], expected_files=1) for rule in rules]
        )
        try:
            poller.poll()
            assert poller.calls == 4
            poller.poll()
            assert poller.calls == 5
        finally:
            poller.close()

    def test_many_rules_wait_to_success(self, rucio_conn, tmp_path, unique):
        plan = register(tmp_path, f"wait-{unique}", list(range(1, 9)))
        hook = RucioHook()
        rules = [hook.ensure_rule(RuleRequest(record.did, "DESY-DISK")) for record in plan.files]

        async def transfer() -> None:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(mark, "DESY-DISK", files_of(plan))

        watches = [RuleWatch.for_rule(rule).to_dict() for rule in rules]
        event = run_trigger(RucioRulesTrigger(watches, poll_interval=0.2), transfer)
        assert event["status"] == "success"
        assert len(event["rules"]) == 8
        assert {rule["state"] for rule in event["rules"]} == {"OK"}
