"""The sign-off gate through a real Airflow: who may respond, approval with a failing conditions
database, and a rejection that reruns the named calibration and its dependent.

Both requests run "CDC badwire", which adds "CDC Tracking", and merge into a running tag of their
own, so that they do not depend on what the other end-to-end tests merged.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests
from atlassian import Jira
from sqlalchemy import select

from b2cal.catalog import load_packaged_release
from b2cal.conddb import ConditionsDB
from b2cal.db import gate, store
from b2cal.db.engine import session_scope
from b2cal.db.models import AuditEntry
from b2cal.devservices.config import DevServicesConfig
from b2cal.e2e import SIGN_OFF_DELAY_S, sample_conf, task_states, trigger, wait_for_run
from b2cal.stack import DAG_ID, Stack

pytestmark = pytest.mark.slow

CATALOG = load_packaged_release()
DEV = DevServicesConfig.from_env()
RUNNING_TAG = "b2cal_signoff_gate_running"
PAYLOADS = list(CATALOG["CDC Tracking"].produced_payloads)
CALIBRATIONS = ["CDC Tracking", "CDC badwire"]


def conddb(stack: Stack) -> ConditionsDB:
    return ConditionsDB(f"http://127.0.0.1:{stack.config.conddb_port}", token=DEV.conddb_token)


def hitl_path(run_id: str) -> str:
    return f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/sign_off/-1/hitlDetails"


def respond(
    stack: Stack, run_id: str, user: str, option: str, params: dict | None = None
) -> requests.Response:
    return stack.api(
        "PATCH",
        hitl_path(run_id),
        username=user,
        json={"chosen_options": [option], "params_input": params or {}},
    )


def wait_for_task(stack: Stack, run_id: str, task_id: str, state: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = task_states(stack, run_id)
        if states.get(task_id) == state:
            return
        failed = sorted(key for key, value in states.items() if value == "failed")
        assert not failed, f"run {run_id} has failed tasks {failed}"
        time.sleep(2)
    raise TimeoutError(f"{task_id} of {run_id} did not reach {state} within {timeout} s: {states}")


def audit(stack: Stack, uid: str, action: str) -> list[AuditEntry]:
    with session_scope(stack.env["B2CAL_DB_URL"]) as session:
        return list(
            session.scalars(
                select(AuditEntry)
                .where(AuditEntry.request_uid == uid, AuditEntry.action == action)
                .order_by(AuditEntry.id)
            )
        )


def running_iovs(stack: Stack) -> list[tuple[str, str]]:
    return sorted((item.name, item.iov.as_text()) for item in conddb(stack).global_tag_payloads(RUNNING_TAG))


@pytest.fixture(scope="module")
def running_tag(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Create a RUNNING tag whose CDC Tracking payloads are open-ended from run 26,0."""
    client = conddb(stack)
    if client.get_global_tag(RUNNING_TAG) is None:
        folder: Path = tmp_path_factory.mktemp("old-payloads")
        for name in PAYLOADS:
            (folder / f"dbstore_{name}_rev_1.root").write_bytes(f"{name} before the gate tests".encode())
        (folder / "database.txt").write_text("".join(f"dbstore/{name} 1 26,0,-1,-1\n" for name in PAYLOADS))
        client.create_global_tag(RUNNING_TAG, "Running tag of the sign-off gate tests")
        client.upload_database_folder(folder, RUNNING_TAG)
        client.set_global_tag_state(RUNNING_TAG, "RUNNING")
    return RUNNING_TAG


def request_conf(name: str, bucket: list[int]) -> dict[str, Any]:
    return {**sample_conf(name, ["CDC badwire"], bucket=bucket), "running_tag": RUNNING_TAG}


def wait_until_asked(stack: Stack, run_id: str) -> None:
    wait_for_task(stack, run_id, "sign_off", "awaiting_input")
    # Responding within a second of the task starting to wait can fail it in Airflow 3.3.2.
    time.sleep(SIGN_OFF_DELAY_S)


def test_only_managers_sign_off(stack: Stack, running_tag: str) -> None:
    conf = request_conf("it-gate-approve", [26, 10, 26, 60])
    run_id = trigger(stack, conf)
    wait_until_asked(stack, run_id)

    for user in ("expert", "viewer", "admin"):
        response = respond(stack, run_id, user, "Approve")
        assert response.status_code == 403, (user, response.text)
    refused = audit(stack, conf["request_id"], gate.ACTION_REFUSED)
    assert [entry.actor for entry in refused] == ["expert", "viewer", "admin"]
    assert task_states(stack, run_id)["sign_off"] == "awaiting_input"

    # The third IoV the running update adds to the running tag fails once on the server.
    tag_id = conddb(stack).get_global_tag(running_tag)["globalTagId"]
    fault = {"method": "POST", "path_prefix": f"/v2/globalTagPayload/{tag_id},", "after": 2, "status": 500}
    requests.post(
        f"http://127.0.0.1:{stack.config.conddb_port}/_dev/faults", json=fault, timeout=10
    ).raise_for_status()

    assert respond(stack, run_id, "manager", "Approve").status_code == 200
    assert respond(stack, run_id, "manager", "Approve").status_code == 409
    assert wait_for_run(stack, run_id, approve_as=None) == "success"

    update = stack.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/running_update").json()
    assert update["try_number"] == 2
    incomplete = audit(stack, conf["request_id"], "request_state")
    assert "running_update_incomplete" in [entry.message for entry in incomplete]
    assert running_iovs(stack) == sorted(
        [(name, "26,0,26,9") for name in PAYLOADS] + [(name, "26,10,-1,-1") for name in PAYLOADS]
    )
    with session_scope(stack.env["B2CAL_DB_URL"]) as session:
        round_row = gate.require_round(session, conf["request_id"])
        assert (round_row.state, round_row.decision, round_row.decided_by) == ("merged", "Approve", "manager")
        assert store.get_request(session, conf["request_id"]).state == "merged"
    [decision] = audit(stack, conf["request_id"], gate.ACTION_DECISION)
    assert decision.actor == "manager"

    events = stack.api("GET", f"/api/v2/assets/events?source_run_id={run_id}&limit=100").json()
    events = events["asset_events"]
    mine = [event for event in events if (event.get("extra") or {}).get("request_id") == conf["request_id"]]
    assert len(mine) == 1
    assert mine[0]["extra"]["bucket"] == conf["bucket"]
    assert mine[0]["extra"]["payloads"] == sorted(PAYLOADS)


def test_rejection_reruns_named_calibrations(stack: Stack, running_tag: str) -> None:
    conf = request_conf("it-gate-reject", [26, 61, 26, 100])
    uid = conf["request_id"]
    run_id = trigger(stack, conf)
    wait_until_asked(stack, run_id)
    with session_scope(stack.env["B2CAL_DB_URL"]) as session:
        keys = {item.calibration: item.ticket_key for item in store.get_request(session, uid).progress}

    params = {"reopen": [keys["CDC Tracking"]], "comment": "The T0 constants drift after run 80"}
    assert respond(stack, run_id, "manager", "Reject", params).status_code == 200
    assert wait_for_run(stack, run_id, approve_as=None) == "success"
    states = task_states(stack, run_id)
    assert states["running_update"] == "skipped"
    assert states["handle_rejection"] == "success"
    assert states["rerun_request"] == "success"

    jira = Jira(
        f"http://127.0.0.1:{stack.config.jira_port}",
        username=DEV.jira_bot_username,
        password=DEV.jira_bot_password,
    )
    comments = [comment["body"] for comment in jira.issue_get_comments(keys["CDC Tracking"])["comments"]]
    assert any(
        "Rejected at sign-off by manager: The T0 constants drift after run 80" in text for text in comments
    )
    dependent = [comment["body"] for comment in jira.issue_get_comments(keys["CDC badwire"])["comments"]]
    assert any("Reopened because CDC Tracking was rejected" in text for text in dependent)
    with session_scope(stack.env["B2CAL_DB_URL"]) as session:
        progress = {item.calibration: item.attempt for item in store.get_request(session, uid).progress}
    assert progress == dict.fromkeys(CALIBRATIONS, 2)
    [prepared] = audit(stack, uid, "prepare_rerun")
    assert prepared.detail["rerun"] == CALIBRATIONS

    rerun_id = f"{run_id}__rerun"
    rerun = stack.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{rerun_id}").json()
    # CDC Tracking is a raw-phase calibration, so the cDSTs are produced again with its new payloads.
    assert rerun["conf"]["clean_start"] == [*CALIBRATIONS, "cdst-production"]
    assert wait_for_run(stack, rerun_id) == "success"
    jobs = stack.config.site_root / "jobs" / uid
    for name in ("CDC_Tracking", "CDC_badwire", "cdst-production"):
        attempts = sorted(path.name for path in jobs.glob(f"{name}-*/attempt-*"))
        assert attempts == ["attempt-1", "attempt-2"], name
    if stack.rucio is not None:
        # The first attempt's cDSTs were made with the rejected payloads: their stage rule at BNL-DISK
        # and their archive rule at DESY-DISK now end.
        [expired] = audit(stack, uid, "cdst_rules_expired")
        assert expired.detail["attempt"] == 2
        assert len(expired.detail["rules"]) == 2
    merged = conddb(stack).global_tag_payloads(running_tag)
    assert sorted(item.name for item in merged if item.iov.as_text() == "26,61,-1,-1") == sorted(PAYLOADS)
    with session_scope(stack.env["B2CAL_DB_URL"]) as session:
        assert gate.require_round(session, uid).state == "merged"
