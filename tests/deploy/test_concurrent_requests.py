"""A prompt request at BNL and a reprocessing request at DESY, run at the same time on the
production-shaped stack: CeleryExecutor with two workers, PostgreSQL and Redis."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest
from deploy_support import (
    all_tickets,
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
from b2cal.production_stack import seed_running_tag
from b2cal.stack import DAG_ID, RUNNING_TAG, Stack
from b2cal.tickets import parent_label, request_label

pytestmark = pytest.mark.slow

CATALOG = load_packaged_release()
# Both phases, a dependency in each, and cDST production in between.
CALIBRATIONS = ["CDC badwire", "CDC dedx Hadron Calibrations"]
EXPECTED = CATALOG.closure(CALIBRATIONS)
REPROCESSING_RUNNING_TAG = "b2cal_reprocessing_running"

PROMPT = {
    **sample_conf("dp-e26", CALIBRATIONS, bucket=[26, 0, 26, 100]),
    "site": "BNL",
    "kind": "prompt",
}
REPROCESSING = {
    **sample_conf("dr-e25", CALIBRATIONS, bucket=[25, 0, 25, 100]),
    "site": "DESY",
    "kind": "reprocessing",
    "running_tag": REPROCESSING_RUNNING_TAG,
}
REQUESTS = {"prompt": PROMPT, "reprocessing": REPROCESSING}


def expected_payloads() -> list[str]:
    return sorted(payload for name in EXPECTED for payload in CATALOG[name].produced_payloads)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def runs(production_stack: Stack) -> dict[str, dict]:
    """Trigger both requests at once and wait for both; return each run's id, state and times."""
    seed_running_tag(production_stack, REPROCESSING_RUNNING_TAG)
    run_ids = {kind: trigger(production_stack, conf) for kind, conf in REQUESTS.items()}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            kind: pool.submit(wait_for_run, production_stack, run_id, timeout=900)
            for kind, run_id in run_ids.items()
        }
        states = {kind: future.result() for kind, future in futures.items()}
    result = {}
    for kind, run_id in run_ids.items():
        run = production_stack.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}").json()
        result[kind] = {
            "run_id": run_id,
            "state": states[kind],
            "start": run["start_date"],
            "end": run["end_date"],
        }
    return result


def test_both_requests_succeed(runs):
    assert runs["prompt"]["state"] == "success"
    assert runs["reprocessing"]["state"] == "success"


def test_requests_ran_at_same_time(runs):
    prompt, reprocessing = runs["prompt"], runs["reprocessing"]
    assert parse_time(prompt["start"]) < parse_time(reprocessing["end"])
    assert parse_time(reprocessing["start"]) < parse_time(prompt["end"])


def test_both_celery_workers_ran_tasks(production_stack, runs):
    for name in ("celery-worker-1", "celery-worker-2"):
        worker_log = (production_stack.logs / f"{name}.log").read_text(errors="replace")
        assert "execute_workload" in worker_log and "received" in worker_log, name


def test_each_request_has_own_tickets(production_stack, runs):
    keys = {}
    for kind, conf in REQUESTS.items():
        issues = tickets_by_label(production_stack, conf["request_id"])
        summaries = sorted(issue["fields"]["summary"].split("] ", 1)[1] for issue in issues)
        assert summaries == sorted(EXPECTED), kind
        for issue in issues:
            other = REQUESTS["reprocessing" if kind == "prompt" else "prompt"]
            assert request_label(other["request_id"]) not in issue["fields"]["labels"], issue["key"]
        keys[kind] = {issue["key"] for issue in issues}
    assert not keys["prompt"] & keys["reprocessing"]
    parents = {parent_label(conf["request_id"]) for conf in REQUESTS.values()}
    # Each request also has one parent ticket, which carries its own label.
    everything = all_tickets(production_stack)
    calibration_tickets = [issue for issue in everything if not parents & set(issue["fields"]["labels"])]
    assert len(calibration_tickets) == len(keys["prompt"]) + len(keys["reprocessing"])
    assert len(everything) - len(calibration_tickets) <= len(REQUESTS)


def test_jobs_stay_at_their_site(production_stack, runs):
    config = production_stack.config
    for kind, conf in REQUESTS.items():
        folders = job_folders(production_stack, conf["site"], conf["request_id"])
        # One job per calibration plus cDST production, each started once.
        assert len(folders) == len(EXPECTED) + 1, kind
        assert all(folder.name == "attempt-1" for folder in folders), kind
        other_site = "DESY" if conf["site"] == "BNL" else "BNL"
        assert not (config.work_root(other_site) / conf["request_id"]).exists(), kind


def test_job_inputs_come_from_own_bucket(production_stack, runs):
    for conf in REQUESTS.values():
        experiment = conf["bucket"][0]
        for folder in job_folders(production_stack, conf["site"], conf["request_id"]):
            input_file = folder / "input_data.json"
            if not input_file.exists():
                continue  # cDST production has no input list
            entries = [entry for files in json.loads(input_file.read_text()).values() for entry in files]
            assert entries, folder
            assert {exp for _, (exp, _) in entries} == {experiment}, folder


def test_cdst_files_stay_at_their_site(production_stack, runs):
    config = production_stack.config
    for kind, conf in REQUESTS.items():
        files = sorted(config.cdst_root(conf["site"]).rglob("*.root"))
        assert files, kind
        experiments = {Path(path).relative_to(config.cdst_root(conf["site"])).parts[1] for path in files}
        assert experiments == {f"e{conf['bucket'][0]:04d}"}, kind


def test_tags_hold_only_own_payloads(production_stack, runs):
    state = conddb_state(production_stack)
    for kind, conf in REQUESTS.items():
        first = (conf["bucket"][0], conf["bucket"][1])
        for tag in (conf["staging_tag"], conf["running_tag"]):
            rows = tag_rows(state, tag)
            assert sorted(row[0] for row in rows) == expected_payloads(), (kind, tag)
            assert {(row[2], row[3]) for row in rows} == {first}, (kind, tag)
            assert {(row[4], row[5]) for row in rows} == {(-1, -1)}, (kind, tag)
    assert PROMPT["running_tag"] == RUNNING_TAG


def test_no_upload_or_iov_duplicated(production_stack, runs):
    state = conddb_state(production_stack)
    assert duplicated_payloads(state) == []
    assert duplicated_iovs(state) == []


def test_plugin_database_keeps_each_request(production_stack, runs):
    url = production_stack.config.plugin_db
    assert url.startswith("postgresql")
    with session_scope(url) as session:
        for kind, conf in REQUESTS.items():
            row = store.get_request(session, conf["request_id"])
            assert row.site == conf["site"], kind
            assert row.kind == conf["kind"], kind
            work_root = production_stack.config.work_root(conf["site"])
            assert sorted(item.calibration for item in row.progress) == sorted(EXPECTED), kind
            for item in row.progress:
                # The job id is the job's key: its folder below the site's work root.
                assert item.job_id, (kind, item.calibration)
                assert item.job_id.startswith(f"{conf['request_id']}/"), (kind, item.calibration)
                assert (work_root / item.job_id).is_dir(), (kind, item.calibration)
                assert item.ticket_state == "done", (kind, item.calibration)
