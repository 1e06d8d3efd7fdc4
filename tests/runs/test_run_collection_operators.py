"""The run collection operators against the development run registry, and the run collection DAG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowException

from b2cal.buckets import list_buckets
from b2cal.db.engine import session_scope
from b2cal_airflow.operators.runs import CollectRunsOperator, ProposeBucketOperator

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def connections(services, config, db_url, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_B2CAL_RUNREGISTRY",
        json.dumps(
            {"conn_type": "http", "host": services.runregistry_url, "password": config.runregistry_api_key}
        ),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_B2CAL_DB", json.dumps({"conn_type": "generic", "extra": {"url": db_url}})
    )
    return db_url


def test_collect_then_propose(connections, registry_state):
    collected = CollectRunsOperator(task_id="collect_runs", min_experiment="", max_experiment="").execute({})
    assert collected["new"] == len(registry_state.runs)
    again = CollectRunsOperator(task_id="collect_runs").execute({})
    assert (again["new"], again["changed"], again["unchanged"]) == (0, 0, len(registry_state.runs))

    proposal = ProposeBucketOperator(task_id="propose", target_luminosity_pb="3000").execute({})
    assert proposal is not None
    assert proposal["complete"] is True
    assert proposal["stored"] is True
    assert proposal["luminosity_pb"] >= 3000
    with session_scope(connections) as session:
        assert [bucket.name for bucket in list_buckets(session)] == [proposal["name"]]
    following = ProposeBucketOperator(task_id="propose", target_luminosity_pb="3000").execute({})
    assert following is not None
    assert following["iov"][:2] > proposal["iov"][2:]


def test_incomplete_proposal_is_not_stored(connections, registry_state):
    CollectRunsOperator(task_id="collect_runs").execute({})
    proposal = ProposeBucketOperator(task_id="propose", target_luminosity_pb="1e9").execute({})
    assert proposal is not None
    assert proposal["complete"] is True  # the first experiment ends before 1e9 pb^-1
    crossing = ProposeBucketOperator(
        task_id="propose", target_luminosity_pb="1e9", cross_experiments="true", store_complete=False
    ).execute({})
    assert crossing is not None
    assert crossing["complete"] is False
    assert crossing["stored"] is False


def test_bad_parameters_are_named(connections):
    with pytest.raises(AirflowException, match="min_experiment='twenty' is not an integer"):
        CollectRunsOperator(task_id="collect_runs", min_experiment="twenty").execute({})
    with pytest.raises(AirflowException, match="target_luminosity_pb='lots' is not a number"):
        ProposeBucketOperator(task_id="propose", target_luminosity_pb="lots").execute({})


def test_registry_failure_fails_the_task(connections, registry_state):
    registry_state.faults.fail_next(10, 503, "/rest/v1/runs/")
    with pytest.raises(AirflowException, match="run collection for all runs failed"):
        CollectRunsOperator(task_id="collect_runs").execute({})


def test_dag_structure():
    # tests/dags/test_dagbag.py parses every DAG file with network and database access blocked.
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "b2cal_run_collection.py"))
    assert bag.import_errors == {}
    dag = bag.dags["b2cal_run_collection"]
    assert sorted(dag.task_ids) == ["collect_runs", "propose_bucket"]
    assert dag.get_task("propose_bucket").upstream_task_ids == {"collect_runs"}
    assert str(dag.schedule) == "@daily"
    assert sorted(dag.params.keys()) == [
        "cross_experiments",
        "max_experiment",
        "min_experiment",
        "target_luminosity_pb",
    ]
