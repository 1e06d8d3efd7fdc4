"""Every DAG file imports cleanly, with no network or database access at parse time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PARSE = """
import json, socket, sys
calls = []
def refuse(self, address, *args):
    calls.append(repr(address))
    raise OSError("network access at DAG parse time")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
import b2cal.db.engine as engine
def no_database(*args, **kwargs):
    calls.append("plugin database")
    raise RuntimeError("plugin database access at DAG parse time")
engine.get_engine = no_database
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags.get("b2cal_processing_request")
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dags": sorted(bag.dags),
    "calls": calls,
    "tasks": sorted(dag.task_ids) if dag else [],
    "params": sorted(dag.params.keys()) if dag else [],
    "upstream": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks} if dag else {},
    "trigger_rules": {t.task_id: getattr(t.trigger_rule, "value", t.trigger_rule) for t in dag.tasks}
    if dag else {},
}))
"""


def parse_dags(tmp_path: Path) -> dict:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
    }
    result = subprocess.run(
        [sys.executable, "-c", PARSE, str(ROOT / "dags")], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_dags_import_without_io(tmp_path):
    parsed = parse_dags(tmp_path)
    assert parsed["errors"] == {}
    assert "b2cal_processing_request" in parsed["dags"]
    assert parsed["calls"] == []


def test_request_dag_steps(tmp_path):
    parsed = parse_dags(tmp_path)
    for task_id in (
        "validate_request",
        "prepare_staging_tag",
        "create_ticket_tree",
        "raw_phase",
        "cdst_production",
        "register_cdst",
        "stage_cdst",
        "archive_cdst",
        "cdst_phase",
        "readiness_report",
        "sign_off",
        "running_update",
    ):
        assert task_id in parsed["tasks"]
    assert {"request_id", "bucket", "calibrations", "staging_tag", "running_tag"} <= set(parsed["params"])


def test_request_dag_cdst_rucio_steps(tmp_path):
    parsed = parse_dags(tmp_path)
    upstream = parsed["upstream"]
    rules = parsed["trigger_rules"]
    assert upstream["register_cdst"] == ["cdst_production"]
    assert upstream["stage_cdst"] == ["register_cdst"]
    assert upstream["archive_cdst"] == ["register_cdst"]
    assert "stage_cdst" in upstream["cdst_phase"]
    assert "archive_cdst" not in upstream["readiness_report"]
    # A skipped registration skips both rules, and the calibrations and the report still run.
    assert rules["stage_cdst"] == "all_success"
    assert rules["archive_cdst"] == "all_success"
    assert rules["cdst_phase"] == "none_failed"
    assert rules["readiness_report"] == "none_failed"
