"""A processing request for the whole real catalog, run through a real Airflow."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from atlassian import Jira
from server_rules import require

from b2cal.catalog import load_packaged_release
from b2cal.conddb import ConditionsDB
from b2cal.db import store
from b2cal.db.engine import session_scope
from b2cal.devservices.config import DevServicesConfig
from b2cal.e2e import sample_conf, trigger, wait_for_run
from b2cal.iov import IoV
from b2cal.rucio import Did, bucket_label, cdst_container_name, rucio_metadata
from b2cal.stack import DAG_ID, Stack
from b2cal.tickets import TicketTree, request_label

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_packaged_release()
CONF = sample_conf("it-full-catalog")
DEV = DevServicesConfig.from_env()
BUCKET = IoV.from_list(CONF["bucket"])
CONTAINER = Did("b2cal", cdst_container_name(CONF["request_id"], BUCKET))


def jira(stack: Stack) -> Jira:
    return Jira(
        f"http://127.0.0.1:{stack.config.jira_port}",
        username=DEV.jira_bot_username,
        password=DEV.jira_bot_password,
    )


def conddb(stack: Stack) -> ConditionsDB:
    return ConditionsDB(f"http://127.0.0.1:{stack.config.conddb_port}", token=DEV.conddb_token)


def request_tickets(stack: Stack) -> dict[str, dict]:
    """Return the request's tickets keyed by calibration, with links and resolution date."""
    tree = TicketTree(jira(stack))
    issues = tree.search(
        f'labels = "{request_label(CONF["request_id"])}"', fields="summary,issuelinks,resolutiondate,status"
    )
    by_name = {}
    for issue in issues:
        name = issue["fields"]["summary"].split("] ", 1)[1]
        by_name[name] = issue
    return by_name


def parse_jira_time(value: str) -> datetime:
    """Parse Jira's ``2026-12-04T16:20:00.000+0000`` time format."""
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z")


def iov_rows(stack: Stack, tag: str) -> list[tuple]:
    return sorted((p.name, p.iov_id, p.iov.as_text()) for p in conddb(stack).global_tag_payloads(tag))


def snapshot(stack: Stack) -> dict:
    jobs_root = stack.config.site_root / "jobs" / CONF["request_id"]
    return {
        "tickets": sorted(issue["key"] for issue in request_tickets(stack).values()),
        "job_pids": sorted(path.read_text() for path in jobs_root.glob("*/attempt-*/job.pid")),
        "staging": iov_rows(stack, CONF["staging_tag"]),
        "running": iov_rows(stack, CONF["running_tag"]),
    }


@pytest.fixture(scope="module")
def first_run(stack: Stack) -> dict:
    run_id = trigger(stack, CONF)
    state = wait_for_run(stack, run_id)
    return {"run_id": run_id, "state": state, "snapshot": snapshot(stack)}


@pytest.fixture(scope="module")
def rucio(stack: Stack) -> Iterator[Any]:
    """Return a Rucio hook connected to the stack's Rucio server, as the tasks are."""
    require(
        stack.rucio is not None,
        "the stack runs without Rucio: create .venv-rucio with 'make rucio-server-venv'",
    )
    from b2cal_airflow.hooks.rucio import RucioHook

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_RUCIO_DEFAULT", stack.env["AIRFLOW_CONN_RUCIO_DEFAULT"])
        hook = RucioHook()
        yield hook
        hook.close()


def container_rules(rucio: Any, rse: str) -> list[dict]:
    """Return the rules of the request's cDST container at ``rse``."""
    return [rule for rule in rucio.list_did_rules(CONTAINER) if rule["rse_expression"] == rse]


def cdst_files(stack: Stack) -> list[Path]:
    """Return the cDST files that the request's production wrote at BNL for the bucket."""
    paths = sorted(stack.config.cdst_root("BNL").glob("*/e*/r*/*_cdst.root"))
    return [
        path for path in paths if BUCKET.contains(int(path.parent.parent.name[1:]), int(path.parent.name[1:]))
    ]


def task_instances(stack: Stack, run_id: str) -> list[dict]:
    response = stack.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=500")
    response.raise_for_status()
    return list(response.json()["task_instances"])


def test_request_succeeds(first_run):
    assert first_run["state"] == "success"


def test_cdst_container_registered(stack, first_run, rucio):
    files = cdst_files(stack)
    assert files, "cDST production wrote no files for the bucket"
    client = rucio.get_conn()
    registered = list(client.list_files(CONTAINER.scope, CONTAINER.name))
    assert len(registered) == len(files)
    assert sorted(item["name"].rsplit("/", 1)[1] for item in registered) == sorted(
        path.name for path in files
    )
    style = rucio.settings.metadata_style
    expected = rucio_metadata({"request_id": CONF["request_id"], "bucket": bucket_label(BUCKET)}, style)
    metadata = client.get_metadata(CONTAINER.scope, CONTAINER.name)
    for key, value in expected.items():
        assert metadata[key] == value, key


def test_stage_rule_locks_every_file(stack, first_run, rucio):
    rules = container_rules(rucio, "BNL-DISK")
    assert len(rules) == 1
    assert rules[0]["state"] == "OK"
    assert rules[0]["locks_ok_cnt"] == len(cdst_files(stack))
    assert rules[0]["activity"] == "Production Input"


def test_archive_rule_added_to_desy(first_run, rucio):
    rules = container_rules(rucio, "DESY-DISK")
    assert len(rules) == 1
    assert rules[0]["activity"] == "Data Consolidation"
    assert rules[0]["expires_at"] is None


def test_stage_ends_before_cdst_phase(stack, first_run):
    instances = task_instances(stack, first_run["run_id"])
    by_task = {item["task_id"]: item for item in instances if item["map_index"] < 0}
    for task_id in ("register_cdst", "stage_cdst", "archive_cdst"):
        assert by_task[task_id]["state"] == "success", task_id
    staged = datetime.fromisoformat(by_task["stage_cdst"]["end_date"])
    cdst_phase = [item for item in instances if item["task_id"] == "cdst_phase"]
    assert len(cdst_phase) == len(CATALOG.phases()["cdst"])
    assert cdst_phase
    for item in cdst_phase:
        started = datetime.fromisoformat(item["start_date"])
        assert staged <= started, f"cdst_phase[{item['map_index']}] started at {started}, staged at {staged}"


def test_one_ticket_per_calibration(stack, first_run):
    tickets = request_tickets(stack)
    assert sorted(tickets) == sorted(CATALOG.names)
    assert len(first_run["snapshot"]["tickets"]) == len(CATALOG)


def test_links_point_from_dependency_to_dependent(stack, first_run):
    tickets = request_tickets(stack)
    key_of = {name: issue["key"] for name, issue in tickets.items()}
    for name, issue in tickets.items():
        blocked_by = {
            link["inwardIssue"]["key"]
            for link in issue["fields"]["issuelinks"]
            if link["type"]["name"] == "Blocks" and "inwardIssue" in link
        }
        blocks = {
            link["outwardIssue"]["key"]
            for link in issue["fields"]["issuelinks"]
            if link["type"]["name"] == "Blocks" and "outwardIssue" in link
        }
        assert blocked_by == {key_of[dep] for dep in CATALOG[name].depends_on}, name
        assert blocks == {key_of[other] for other in CATALOG.dependents(name)}, name


def test_no_job_starts_before_dependency_tickets_done(stack, first_run):
    tickets = request_tickets(stack)
    with session_scope(stack.env["B2CAL_DB_URL"]) as session:
        rows = store.get_request(session, CONF["request_id"]).progress
        progress = {item.calibration: item for item in rows}
    checked = 0
    for name in CATALOG.names:
        started = progress[name].started_at
        assert started is not None, name
        if started.tzinfo is None:
            started = started.replace(tzinfo=UTC)
        for dep in CATALOG[name].depends_on:
            resolved = parse_jira_time(tickets[dep]["fields"]["resolutiondate"])
            assert resolved <= started, f"{name} started at {started} before {dep} was done at {resolved}"
            checked += 1
    assert checked == sum(len(CATALOG[name].depends_on) for name in CATALOG.names)


def test_staging_tag_holds_every_payload(stack, first_run):
    payloads = conddb(stack).global_tag_payloads(CONF["staging_tag"])
    expected = sorted(p for name in CATALOG.names for p in CATALOG[name].produced_payloads)
    assert sorted(item.name for item in payloads) == expected
    for item in payloads:
        assert item.iov.as_list() == [CONF["bucket"][0], CONF["bucket"][1], -1, -1], item


def test_running_tag_has_bucket_iovs(stack, first_run):
    payloads = conddb(stack).global_tag_payloads(CONF["running_tag"])
    expected = sorted(p for name in CATALOG.names for p in CATALOG[name].produced_payloads)
    assert sorted(item.name for item in payloads) == expected
    assert all(item.iov.first == (CONF["bucket"][0], CONF["bucket"][1]) for item in payloads)
    assert all(item.iov.is_open_ended for item in payloads)


def test_rerun_creates_no_second_ticket_job_or_iov(stack, first_run):
    run_id = trigger(stack, CONF)
    assert wait_for_run(stack, run_id) == "success"
    again = snapshot(stack)
    assert again["tickets"] == first_run["snapshot"]["tickets"]
    assert again["job_pids"] == first_run["snapshot"]["job_pids"]
    assert again["staging"] == first_run["snapshot"]["staging"]
    assert again["running"] == first_run["snapshot"]["running"]
    assert len(again["job_pids"]) == len(CATALOG) + 1
    assert Path(stack.config.site_root / "jobs" / CONF["request_id"]).is_dir()


def test_rerun_adds_no_second_rule(stack, first_run, rucio):
    # Runs after the rerun above, whose register, stage and archive tasks ran a second time.
    assert len(container_rules(rucio, "BNL-DISK")) == 1
    assert len(container_rules(rucio, "DESY-DISK")) == 1
    assert len(list(rucio.get_conn().list_files(CONTAINER.scope, CONTAINER.name))) == len(cdst_files(stack))
