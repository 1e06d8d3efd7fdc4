"""Drive one processing request through a running stack, as ``make e2e`` and the end-to-end tests do."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import requests

from b2cal.catalog import load_packaged_release
from b2cal.conddb import ConditionsDB
from b2cal.devservices.config import DevServicesConfig
from b2cal.stack import DAG_ID, RUNNING_TAG, Stack, StackConfig, running_stack
from b2cal.tickets import TicketTree, request_label

log = logging.getLogger(__name__)

TERMINAL = {"success", "failed"}
SIGN_OFF_DELAY_S = 4.0


def sample_conf(
    request_id: str, calibrations: Iterable[str] = (), bucket: list[int] | None = None
) -> dict[str, Any]:
    """Return a request conf for the packaged release and the generated runs of experiment 26."""
    return {
        "request_id": request_id,
        "kind": "prompt",
        "site": "BNL",
        "release": "release-11-00-00",
        "bucket": bucket or [26, 0, 26, 100],
        "calibrations": list(calibrations),
        "filter_overrides": {},
        "expert_config": {},
        "staging_tag": f"staging_{request_id.replace('-', '_')}",
        "running_tag": RUNNING_TAG,
        "requested_by": "manager",
    }


def trigger(stack: Stack, conf: dict[str, Any], username: str = "manager") -> str:
    """Start a DAG run for the request and return its run id."""
    response = stack.api(
        "POST",
        f"/api/v2/dags/{DAG_ID}/dagRuns",
        username=username,
        json={"logical_date": None, "conf": conf, "dag_run_id": f"{conf['request_id']}-{time.time_ns()}"},
    )
    if response.status_code >= 300:
        raise RuntimeError(f"triggering {DAG_ID} failed with HTTP {response.status_code}: {response.text}")
    return str(response.json()["dag_run_id"])


def task_states(stack: Stack, run_id: str) -> dict[str, str]:
    """Return the state of every task instance of a run, keyed ``task_id[map_index]``."""
    response = stack.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=500")
    response.raise_for_status()
    states = {}
    for item in response.json()["task_instances"]:
        key = item["task_id"] if item["map_index"] < 0 else f"{item['task_id']}[{item['map_index']}]"
        states[key] = item["state"] or "none"
    return states


def wait_for_run(
    stack: Stack, run_id: str, *, approve_as: str | None = "manager", timeout: float = 1500
) -> str:
    """Wait for a run to end, answering the sign-off as ``approve_as``; return the run's final state."""
    deadline = time.monotonic() + timeout
    approved = False
    awaiting_since: float | None = None
    last: dict[str, str] = {}
    while time.monotonic() < deadline:
        stack._check_alive()
        try:
            run = stack.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}").json()
            if run["state"] in TERMINAL:
                return str(run["state"])
            states = task_states(stack, run_id)
        except requests.RequestException as exc:
            # A busy API server may time out now and then; the run goes on regardless.
            log.warning("Reading run %s failed, trying again: %s", run_id, exc)
            time.sleep(2)
            continue
        failed = sorted(key for key, value in states.items() if value == "failed")
        if failed:
            # A failed calibration blocks its dependents until someone acts, so the run never ends.
            log.error("Run %s has failed tasks: %s", run_id, failed)
            return "failed"
        if states != last:
            log.info("Run %s: %s", run_id, _count(states))
            last = states
        if states.get("sign_off") == "awaiting_input" and awaiting_since is None:
            awaiting_since = time.monotonic()
        # Airflow 3.3.2 can fail a human-in-the-loop task answered within a second of it starting to
        # wait, so the answer comes a few seconds later, as a person's would.
        ready = awaiting_since is not None and time.monotonic() - awaiting_since >= SIGN_OFF_DELAY_S
        if approve_as and not approved and ready:
            response = stack.api(
                "PATCH",
                f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/sign_off/-1/hitlDetails",
                username=approve_as,
                json={"chosen_options": ["Approve"], "params_input": {}},
            )
            if response.status_code >= 300:
                raise RuntimeError(
                    f"sign-off as {approve_as} failed with HTTP {response.status_code}: {response.text}"
                )
            approved = True
            log.info("Signed off run %s as %s", run_id, approve_as)
        time.sleep(2)
    raise TimeoutError(f"run {run_id} did not finish within {timeout} s; last task states: {_count(last)}")


def _count(states: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    return counts


def check_running_tag(client: ConditionsDB, conf: dict[str, Any], expected: Iterable[str]) -> list[str]:
    """Return what is wrong with the running tag after the request; an empty list when all is right."""
    first = (conf["bucket"][0], conf["bucket"][1])
    payloads = client.global_tag_payloads(conf["running_tag"])
    problems = []
    for name in sorted(set(expected)):
        starts = [item.iov.first for item in payloads if item.name == name]
        if first not in starts:
            problems.append(f"payload {name} has no IoV starting at {first} in {conf['running_tag']}")
    return problems


def count_tickets(config: StackConfig, request_id: str) -> int:
    """Return how many Jira tickets carry the request's label."""
    from atlassian import Jira

    dev = DevServicesConfig.from_env()
    url = f"http://127.0.0.1:{config.jira_port}"
    client = Jira(url, username=dev.jira_bot_username, password=dev.jira_bot_password)
    found = TicketTree(client).find(request_label(request_id))
    return len({issue["key"] for issue in found.values()})


def run_e2e(config: StackConfig, calibrations: Iterable[str] = ()) -> dict[str, Any]:
    """Start a stack, run one request with the autopilot on, and return a summary."""
    config.autopilot = True
    catalog = load_packaged_release()
    request_id = f"e2e-{datetime.now(UTC):%Y%m%d%H%M%S}"
    conf = sample_conf(request_id, calibrations)
    started = time.monotonic()
    with running_stack(config) as stack:
        ready = time.monotonic()
        run_id = trigger(stack, conf)
        state = wait_for_run(stack, run_id)
        finished = time.monotonic()
        token = DevServicesConfig.from_env().conddb_token
        client = ConditionsDB(f"http://127.0.0.1:{config.conddb_port}", token=token)
        selected = catalog.closure(calibrations) if calibrations else catalog.names
        expected = [payload for name in selected for payload in catalog[name].produced_payloads]
        problems = check_running_tag(client, conf, expected) if state == "success" else [f"run ended {state}"]
        staging = client.global_tag_payloads(conf["staging_tag"])
        running = client.global_tag_payloads(conf["running_tag"])
        jobs = sorted((config.site_root / "jobs" / request_id).glob("*/attempt-*"))
        tickets = count_tickets(config, request_id)
    return {
        "ok": state == "success" and not problems,
        "request_id": request_id,
        "run_state": state,
        "calibrations": len(selected),
        "tickets": tickets,
        "jobs": len(jobs),
        "payloads_in_staging_tag": len(staging),
        "payload_iovs_in_running_tag": len(running),
        "expected_payloads": len(expected),
        "problems": problems,
        "wall_time_s": {"setup": round(ready - started, 1), "request": round(finished - ready, 1)},
    }
