"""Kill the scheduler, a Celery worker and the triggerer while a request runs, and check that the
request still completes with every ticket, job, upload and IoV made exactly once.

The components are killed with SIGKILL by process id, with their child processes, at several points of
the request; the offsets within each point are random. The seed is printed and can be set with
``B2CAL_CRASH_SEED`` to replay a failure.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from deploy_support import (
    conddb_state,
    duplicated_iovs,
    duplicated_payloads,
    job_folders,
    tag_rows,
    tickets_by_label,
)

from b2cal.catalog import load_packaged_release
from b2cal.db import store
from b2cal.db.engine import session_scope
from b2cal.e2e import sample_conf, trigger, wait_for_run
from b2cal.jobs import LocalJob
from b2cal.production_stack import seed_running_tag
from b2cal.stack import DAG_ID, Stack

pytestmark = pytest.mark.slow

log = logging.getLogger(__name__)

CATALOG = load_packaged_release()
CALIBRATIONS = ["CDC badwire", "CDC dedx Hadron Calibrations"]
EXPECTED = CATALOG.closure(CALIBRATIONS)
CONF = {
    **sample_conf("crash-e26", CALIBRATIONS, bucket=[26, 0, 26, 100]),
    "running_tag": "b2cal_crash_running",
}
SEED = int(os.environ.get("B2CAL_CRASH_SEED") or random.SystemRandom().randrange(1_000_000))

States = dict[str, str]


def _any(states: States, prefix: str, *wanted: str) -> bool:
    return any(key.startswith(prefix) and value in wanted for key, value in states.items())


@dataclass(frozen=True)
class CrashPoint:
    """A moment of the request, recognised from its task states, and the component killed there."""

    name: str
    reached: Callable[[States], bool]
    component: str


CRASH_POINTS = (
    CrashPoint(
        "ticket tree",
        lambda s: s.get("create_ticket_tree") in ("queued", "running", "success"),
        "scheduler",
    ),
    CrashPoint("raw-phase task running", lambda s: _any(s, "raw_phase[", "running"), "worker"),
    CrashPoint("raw-phase job deferred", lambda s: _any(s, "raw_phase[", "deferred"), "triggerer"),
    CrashPoint(
        "cDST production",
        lambda s: s.get("cdst_production") in ("queued", "running", "deferred", "success"),
        "scheduler",
    ),
    CrashPoint("cdst-phase task running", lambda s: _any(s, "cdst_phase[", "running"), "worker"),
    CrashPoint("cdst-phase job deferred", lambda s: _any(s, "cdst_phase[", "deferred"), "triggerer"),
)


def _states(stack: Stack, run_id: str, token: str) -> States:
    response = requests.get(
        f"{stack.config.api_url}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=500",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    response.raise_for_status()
    return {
        item["task_id"] if item["map_index"] < 0 else f"{item['task_id']}[{item['map_index']}]": item["state"]
        or "none"
        for item in response.json()["task_instances"]
    }


def _process_groups() -> dict[int, int]:
    """Return how many processes each process group has."""
    counts: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        group = int(fields[2])
        counts[group] = counts.get(group, 0) + 1
    return counts


def _busiest_worker(stack: Stack) -> str:
    # A worker that runs a task has a supervisor and a task process more than its idle pool.
    counts = _process_groups()
    workers = [name for name in stack.components if name.startswith("celery-worker-")]
    return max(workers, key=lambda name: counts.get(stack.processes[name].pid, 0))


def crash_through(stack: Stack, run_id: str, rng: random.Random, timeout: float = 600) -> list[str]:
    """Kill and restart a component at each crash point the run reaches; return the points crashed at."""
    token = stack.token("admin")
    crashed = []
    deadline = time.monotonic() + timeout
    for point in CRASH_POINTS:
        while time.monotonic() < deadline:
            states = _states(stack, run_id, token)
            if point.reached(states) or states.get("sign_off") not in (None, "none", "scheduled", "queued"):
                break
            time.sleep(0.3)
        if not point.reached(states):
            log.warning("Crash point %r was not reached (seed %s): %s", point.name, SEED, states)
            continue
        time.sleep(rng.uniform(0.0, 1.5))
        name = _busiest_worker(stack) if point.component == "worker" else point.component
        pid = stack.kill(name)
        log.info("Crash point %r: killed %s (pid %s)", point.name, name, pid)
        time.sleep(rng.uniform(1.0, 4.0))
        stack.start_component(name)
        crashed.append(point.name)
    return crashed


@pytest.fixture(scope="module")
def crashed_run(production_stack: Stack) -> dict:
    """Run one request while killing components at every crash point; return what happened."""
    print(f"crash test seed: {SEED} (set B2CAL_CRASH_SEED={SEED} to replay)")
    seed_running_tag(production_stack, CONF["running_tag"])
    run_id = trigger(production_stack, CONF)
    crashed = crash_through(production_stack, run_id, random.Random(SEED))
    state = wait_for_run(production_stack, run_id, timeout=900)
    return {"run_id": run_id, "state": state, "crashed": crashed}


def test_request_survives_crashes(crashed_run):
    assert crashed_run["state"] == "success", f"seed {SEED}"


def test_every_crash_point_was_hit(crashed_run):
    assert crashed_run["crashed"] == [point.name for point in CRASH_POINTS], f"seed {SEED}"


def test_one_ticket_per_calibration(production_stack, crashed_run):
    issues = tickets_by_label(production_stack, CONF["request_id"])
    summaries = sorted(issue["fields"]["summary"].split("] ", 1)[1] for issue in issues)
    assert summaries == sorted(EXPECTED)


def test_each_job_started_once(production_stack, crashed_run):
    folders = job_folders(production_stack, CONF["site"], CONF["request_id"])
    assert len(folders) == len(EXPECTED) + 1
    for folder in folders:
        job = LocalJob(folder)
        assert folder.name == "attempt-1", folder
        assert job.pid is not None, folder
        assert job.exit_status == 0, folder


def test_every_payload_uploaded_once(production_stack, crashed_run):
    state = conddb_state(production_stack)
    expected = sorted(payload for name in EXPECTED for payload in CATALOG[name].produced_payloads)
    first = (CONF["bucket"][0], CONF["bucket"][1])
    for tag in (CONF["staging_tag"], CONF["running_tag"]):
        rows = tag_rows(state, tag)
        assert sorted(row[0] for row in rows) == expected, tag
        assert {(row[2], row[3], row[4], row[5]) for row in rows} == {(*first, -1, -1)}, tag
    assert duplicated_payloads(state) == []
    assert duplicated_iovs(state) == []


def test_progress_complete_for_every_calibration(production_stack, crashed_run):
    with session_scope(production_stack.config.plugin_db) as session:
        row = store.get_request(session, CONF["request_id"])
        progress = {item.calibration: item for item in row.progress}
        assert sorted(progress) == sorted(EXPECTED)
        for name, item in progress.items():
            assert item.job_state == "succeeded", name
            assert item.upload_state == "uploaded", name
            assert item.ticket_state == "done", name
        assert row.state == "merged"
