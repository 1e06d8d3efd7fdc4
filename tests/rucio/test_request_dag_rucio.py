"""The Rucio steps of the request DAG, run by ``dag.test()`` against a real Rucio server on SQLite.

Each test runs ``register_cdst``, ``stage_cdst`` and ``archive_cdst`` of the real DAG file in a fresh
interpreter with its own Airflow home and metadata database, so that Airflow's global settings of
this process stay as they are. The request is stored in a plugin database of the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rucio_support import connection_json, write_run_files

from b2cal.iov import IoV
from b2cal.rucio import Did, cdst_container_name
from b2cal_airflow.hooks.rucio import RucioHook

ROOT = Path(__file__).resolve().parents[2]
RUCIO_TASKS = ["register_cdst", "stage_cdst", "archive_cdst"]
BUCKET = [26, 1, 26, 10]

RUN_SUBSET = """
import json, sys
from airflow.utils import db
db.resetdb()
from airflow.dag_processing.dagbag import DagBag
dag = DagBag(dag_folder=sys.argv[1]).dags["b2cal_processing_request"]
task_ids = json.loads(sys.argv[2])
subset = dag.partial_subset(task_ids=task_ids, include_upstream=False, include_downstream=False)
run = subset.test(run_conf={"request_id": sys.argv[3]})
states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
print(json.dumps({"run": str(run.state), "tasks": states}))
"""


def store_request(url: str, request_id: str) -> None:
    """Store a BNL request for the bucket in the plugin database at ``url``."""
    from b2cal.catalog import load_packaged_release
    from b2cal.db import store
    from b2cal.db.engine import session_scope, upgrade
    from b2cal.request import parse_request

    upgrade(url)
    catalog = load_packaged_release()
    conf = {
        "request_id": request_id,
        "site": "BNL",
        "release": catalog.release,
        "bucket": BUCKET,
        "calibrations": [],
        "staging_tag": "staging_dag_test",
        "running_tag": "running_dag_test",
        "requested_by": "manager",
    }
    with session_scope(url) as session:
        store.import_catalog(session, catalog, source="test")
        store.save_request(session, parse_request(conf, catalog), catalog)


def run_rucio_steps(tmp_path: Path, server, request_id: str, **site_extra: str) -> dict:
    """Run the DAG's Rucio steps for a stored request at BNL and return the run and task states."""
    url = f"sqlite:///{tmp_path / 'plugin.db'}"
    store_request(url, request_id)
    write_run_files(tmp_path / "cdst", "hadron_calib", 26, [1, 2], 1, "_cdst.root")

    site = {
        "work_root": str(tmp_path / "work"),
        "storage_root": str(tmp_path / "raw"),
        "cdst_root": str(tmp_path / "cdst"),
        **site_extra,
    }

    home = tmp_path / "airflow"
    home.mkdir()
    # The subprocess resets its metadata database, so it must never inherit another one.
    inherited = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW__DATABASE__")}
    env = {
        **inherited,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW_CONN_B2CAL_DB": json.dumps({"conn_type": "generic", "extra": {"url": url}}),
        "AIRFLOW_CONN_B2CAL_SITE_BNL": json.dumps({"conn_type": "generic", "extra": site}),
        "AIRFLOW_CONN_RUCIO_DEFAULT": connection_json(server, poll_interval=0.5),
    }

    dag_file = str(ROOT / "dags" / "b2cal_processing_request.py")
    result = subprocess.run(
        [sys.executable, "-c", RUN_SUBSET, dag_file, json.dumps(RUCIO_TASKS), request_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_site_without_rse_skips_rucio_steps(rucio_server, tmp_path, unique):
    outcome = run_rucio_steps(tmp_path, rucio_server, f"dag-norse-{unique}")
    assert outcome["tasks"] == {task_id: "skipped" for task_id in RUCIO_TASKS}
    assert outcome["run"] == "success"


def test_rucio_site_stages_and_archives(rucio_conn, tmp_path, unique):
    request_id = f"dag-rse-{unique}"
    outcome = run_rucio_steps(tmp_path, rucio_conn, request_id, rucio_rse="BNL-DISK")
    assert outcome["tasks"] == {task_id: "success" for task_id in RUCIO_TASKS}
    assert outcome["run"] == "success"

    container = Did("b2cal", cdst_container_name(request_id, IoV.from_list(BUCKET)))
    rules = {rule["rse_expression"]: rule for rule in RucioHook().list_did_rules(container)}
    assert sorted(rules) == ["BNL-DISK", "DESY-DISK"]
    assert rules["BNL-DISK"]["state"] == "OK"
    assert rules["BNL-DISK"]["locks_ok_cnt"] == 2
    assert rules["DESY-DISK"]["activity"] == "Data Consolidation"


def test_empty_archive_skips_archive_step(rucio_server, tmp_path, unique):
    outcome = run_rucio_steps(
        tmp_path, rucio_server, f"dag-noarch-{unique}", rucio_rse="BNL-DISK", cdst_archive_rse=""
    )
    assert outcome["tasks"] == {
        "register_cdst": "success",
        "stage_cdst": "success",
        "archive_cdst": "skipped",
    }
    assert outcome["run"] == "success"
