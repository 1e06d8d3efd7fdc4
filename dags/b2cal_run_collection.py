"""Collect the run registry's runs into the plugin database every day, and cut the next bucket.

The first task reads ``/rest/v1/runs/`` for the experiment range in the params (all experiments
when empty), page by page, and upserts every run with the flags the input data filters use. A run
that changed upstream is updated and the change logged; a run that the registry no longer returns
is flagged as missing, never deleted.

The second task proposes the bucket after the latest stored one: the runs up to the good physics
run that brings the recorded luminosity to the target. A proposal that reaches the target is stored
as an open bucket; one that does not yet is only reported. A bucket stops at an experiment's end
unless ``cross_experiments`` is set, and its notes record the boundary either way.

Trigger it by hand to collect at once, for example after the registry corrected some runs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, Param

from b2cal.buckets import DEFAULT_TARGET_PB
from b2cal_airflow.operators.runs import CollectRunsOperator, ProposeBucketOperator

with DAG(
    dag_id="b2cal_run_collection",
    description="Collect runs from the run registry and propose the next bucket",
    schedule="@daily",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["b2cal", "runs"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    params={
        "min_experiment": Param(None, type=["null", "integer"], minimum=0, description="First experiment"),
        "max_experiment": Param(None, type=["null", "integer"], minimum=0, description="Last experiment"),
        "target_luminosity_pb": Param(
            DEFAULT_TARGET_PB,
            type="number",
            exclusiveMinimum=0,
            description="Good physics luminosity of a bucket, in pb^-1",
        ),
        "cross_experiments": Param(
            False, type="boolean", description="Let a bucket continue into the next experiment"
        ),
    },
    doc_md=__doc__,
) as dag:
    collect = CollectRunsOperator(
        task_id="collect_runs",
        min_experiment="{{ params.min_experiment if params.min_experiment is not none else '' }}",
        max_experiment="{{ params.max_experiment if params.max_experiment is not none else '' }}",
    )
    propose = ProposeBucketOperator(
        task_id="propose_bucket",
        target_luminosity_pb="{{ params.target_luminosity_pb }}",
        cross_experiments="{{ params.cross_experiments }}",
    )

    collect >> propose
