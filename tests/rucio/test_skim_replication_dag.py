"""The skim replication DAG parses without I/O and renders its templates as native values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PARSE = """
import json, socket, sys
calls = []
def refuse(self, address, *args):
    calls.append(repr(address))
    raise OSError("network access at DAG parse time")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags["b2cal_skim_replication"]
task = dag.get_task("replicate_skims")
params = dag.params.dump()
task.render_template_fields({"params": params}, dag.get_template_env(force_sandboxed=False))
print(json.dumps({
    "errors": {key: str(value) for key, value in bag.import_errors.items()},
    "calls": calls,
    "tasks": sorted(dag.task_ids),
    "upstream": sorted(task.upstream_task_ids),
    "trigger_rule": str(task.trigger_rule.value),
    "schedule": str(dag.schedule),
    "destinations": task.destinations,
    "lifetime": task.lifetime,
    "runs": task.runs,
    "quota_only": task.quota_only,
    "lookback_hours": task.lookback_hours,
}))
"""


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Parse the DAG file once in a fresh interpreter whose sockets refuse to connect."""
    tmp_path = tmp_path_factory.mktemp("airflow-home")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
    }
    result = subprocess.run(
        [sys.executable, "-c", PARSE, str(ROOT / "dags" / "b2cal_skim_replication.py")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_skim_dag_parses_without_io(parsed):
    assert parsed["errors"] == {}
    assert parsed["calls"] == []
    assert parsed["tasks"] == ["register_kek_skims", "replicate_skims"]
    assert parsed["upstream"] == ["register_kek_skims"]
    assert parsed["trigger_rule"] == "none_failed"
    assert parsed["schedule"] == "@hourly"


def test_skim_dag_renders_native_values(parsed):
    assert parsed["destinations"] == ["BNL-DISK"]
    assert parsed["lifetime"] == 60 * 86400
    assert parsed["runs"] == [0, 0, -1, -1]


def test_skim_dag_replicates_only_the_quota_by_default(parsed):
    assert parsed["quota_only"] is True
    assert parsed["lookback_hours"] is None


@pytest.mark.parametrize(
    ("value", "expected"), [(True, True), ("True", True), ("false", False), ("None", False), (False, False)]
)
def test_quota_flag_accepts_rendered_text(value, expected):
    from b2cal_airflow.operators.rucio import as_bool

    assert as_bool(value, "quota_only") is expected


def test_quota_flag_names_a_bad_value():
    from b2cal_airflow.operators.rucio import as_bool

    with pytest.raises(ValueError, match="quota_only 'sometimes' is not a flag"):
        as_bool("sometimes", "quota_only")
