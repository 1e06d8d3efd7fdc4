"""Rules moved by Rucio's own daemons with the mock transfer tool, on a Rucio server with PostgreSQL.

Here daemons write to the database while the trigger polls the server. On SQLite both would fail with
"database is locked".
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rucio_support import run_trigger, write_run_files

from b2cal.iov import IoV
from b2cal.rucio import RegistrationPlan, RuleRequest, RuleWatch, plan_cdst_registration
from b2cal_airflow.hooks.rucio import RucioHook
from b2cal_airflow.triggers.rucio import RucioRulesTrigger, RucioRuleTrigger


def cdst_plan(root: Path, request_id: str, runs: list[int], per_run: int = 1) -> RegistrationPlan:
    write_run_files(root, "hadron_calib", 26, runs, per_run, "_cdst.root")
    return plan_cdst_registration(
        root, request_id=request_id, bucket=IoV(26, 1, 26, 999), scope="b2cal", rse="BNL-DISK"
    )


def test_conveyor_moves_rule_to_ok(rucio_postgres_conn, tmp_path, unique):
    server = rucio_postgres_conn
    plan = cdst_plan(tmp_path, f"conv-{unique}", [1, 2, 3])
    hook = RucioHook()
    hook.register(plan)
    rule = hook.ensure_rule(RuleRequest(plan.container, "DESY-DISK", activity="Data Consolidation"))
    assert hook.get_rule(rule["id"])["state"] == "REPLICATING"

    async def transfer() -> None:
        await asyncio.sleep(0.3)
        await asyncio.to_thread(server.run_transfers)

    event = run_trigger(RucioRuleTrigger(rule["id"], expected_files=3, poll_interval=0.3), transfer)
    assert event["status"] == "success"
    assert event["rules"][0]["locks_ok"] == 3
    states = {
        replica["name"]: replica["states"].get("DESY-DISK")
        for replica in hook.get_conn().list_replicas([record.did.as_dict() for record in plan.files])
    }
    assert set(states.values()) == {"AVAILABLE"}


def test_continuous_daemons_move_rule_to_ok(rucio_postgres_conn, tmp_path, unique):
    server = rucio_postgres_conn
    plan = cdst_plan(tmp_path, f"loop-{unique}", [4, 5])
    hook = RucioHook()
    hook.register(plan)
    rule = hook.ensure_rule(RuleRequest(plan.container, "DESY-DISK"))
    server.start_daemons(interval=0.5, repair=False)
    try:
        event = run_trigger(RucioRuleTrigger(rule["id"], poll_interval=0.3), timeout=90)
    finally:
        assert server.stop_daemons()
    assert event["status"] == "success"
    assert event["rules"][0]["expected_locks"] == 2


def test_stuck_rule_recovers_through_repairer(rucio_postgres_conn, tmp_path, unique, capsys):
    server = rucio_postgres_conn
    plan = cdst_plan(tmp_path, f"stuck-{unique}", [6, 7, 8])
    hook = RucioHook()
    hook.register(plan)
    rule = hook.ensure_rule(RuleRequest(plan.container, "DESY-DISK"))
    client = hook.get_conn()
    client.update_replicas_states("DESY-DISK", [{**plan.files[0].did.as_dict(), "state": "U"}])
    assert hook.get_rule(rule["id"])["state"] == "STUCK"

    async def repair() -> None:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(server.run_transfers, True)

    event = run_trigger(RucioRuleTrigger(rule["id"], poll_interval=0.3, stuck_grace_period=120), repair)
    assert event["status"] == "success"
    assert event["rules"][0]["locks_ok"] == 3
    output = capsys.readouterr().out
    assert "STUCK: 0/3 locks OK, 2 replicating, 1 stuck" in output
    assert "Waiting: 0 of 1 rules OK, 1 stuck within the grace period" in output


def test_attached_file_waits_for_judge(rucio_postgres_conn, tmp_path, unique, capsys):
    server = rucio_postgres_conn
    request_id = f"late-{unique}"
    hook = RucioHook()
    first = cdst_plan(tmp_path, request_id, [1, 2])
    hook.register(first)
    dataset = first.datasets[0].did
    rule = hook.ensure_rule(RuleRequest(dataset, "DESY-DISK"))
    server.run_transfers()
    assert hook.get_rule(rule["id"])["locks_ok_cnt"] == 2

    hook.register(cdst_plan(tmp_path, request_id, [3]))
    stale = hook.get_rule(rule["id"])
    assert stale["state"] == "OK"
    assert stale["locks_ok_cnt"] == 2
    assert hook.count_files(dataset) == 3

    async def evaluate() -> None:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(server.run_transfers)

    watch = RuleWatch(did=str(dataset), rse_expression="DESY-DISK")
    event = run_trigger(RucioRulesTrigger([watch.to_dict()], poll_interval=0.3), evaluate)
    assert event["status"] == "success"
    assert event["rules"][0]["locks_ok"] == 3
    assert event["rules"][0]["expected_locks"] == 3
    assert "waiting for the judge to lock newly attached files" in capsys.readouterr().out


def test_json_metadata(rucio_postgres_conn, tmp_path, unique):
    plan = cdst_plan(tmp_path, f"meta-{unique}", [9])
    hook = RucioHook()
    hook.register(plan)
    client = hook.get_conn()
    record = plan.files[0]
    meta = client.get_metadata(record.did.scope, record.did.name, plugin="JSON")
    assert meta["experiment"] == 26
    assert meta["run"] == 9
    assert meta["bucket"] == "e0026r00001-e0026r00999"
    assert meta["request_id"] == f"meta-{unique}"
    container = client.get_metadata(plan.container.scope, plan.container.name, plugin="JSON")
    assert container["request_id"] == f"meta-{unique}"


def test_concurrent_registration_and_rules(rucio_postgres_conn, tmp_path, unique):
    plan = cdst_plan(tmp_path, f"race-{unique}", [1, 2, 3, 4], per_run=2)

    def register_and_replicate(_: int) -> str:
        hook = RucioHook()
        try:
            hook.register(plan)
            return hook.ensure_rule(RuleRequest(plan.container, "DESY-DISK"))["id"]
        finally:
            hook.close()

    with ThreadPoolExecutor(max_workers=4) as pool:
        rule_ids = list(pool.map(register_and_replicate, range(4)))
    assert len(set(rule_ids)) == 1
    hook = RucioHook()
    replicas = list(hook.get_conn().list_replicas([record.did.as_dict() for record in plan.files]))
    assert len(replicas) == 8
    assert len(hook.list_did_rules(plan.container)) == 1
    assert hook.count_files(plan.container) == 8
