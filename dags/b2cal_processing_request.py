"""Process one calibration request for one bucket, from the ticket tree to the running tag.

Triggered with the request as its conf. The run validates the request, prepares the bucket's staging
global tag and creates the Jira ticket tree. Then every raw-phase calibration runs as soon as the
tickets of its dependencies are done; cDST production follows; the cdst-phase calibrations run the
same way. Once every ticket is done and the staging tag passes its checks, the calibration manager
signs off and the staging tag is merged into the running tag, which emits an event of the
calibrated-bucket asset for mDST production. A rejection reopens the tickets the manager names and
starts a new run of the same request, in which those calibrations and their dependents run again. A
rejected raw-phase calibration also sends back cDST production and every cdst-phase calibration,
because the cDSTs are made with the raw-phase payloads.

The cDSTs are registered in Rucio at the site's RSE, and a rule there locks them before the
cdst-phase calibrations start. A second rule, which nothing waits for, copies them to the archive RSE
(``DESY-DISK`` unless the site's connection names another) for long-term storage. A site whose
connection has no extra ``rucio_rse`` skips these three steps and runs the calibrations on the files
as they are. See ``docs/rucio.rst``.

Each calibration is one instance of a mapped operator; its dependencies are waited for inside it by
a trigger, so the DAG follows whichever calibrations the request's basf2 release defines. See
``docs/design.rst`` for why mapping was chosen over generated task groups.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, Param, task

from b2cal.request import REQUEST_SCHEMA
from b2cal_airflow.operators.calibration import CalibrationOperator
from b2cal_airflow.operators.request import (
    CdstProductionOperator,
    CreateTicketTreeOperator,
    PrepareRequestOperator,
    PrepareStagingTagOperator,
)
from b2cal_airflow.operators.rucio import RucioAddRuleOperator, RucioRegisterCdstOperator
from b2cal_airflow.operators.signoff import (
    RejectSignOffOperator,
    RunningUpdateOperator,
    SignOffOperator,
    SignOffReportOperator,
)

DAG_ID = "b2cal_processing_request"
REQUEST_ID = "{{ params.request_id }}"
SAMPLE_REQUEST = {
    "request_id": "prompt-e0026-b01",
    "kind": "prompt",
    "site": "BNL",
    "release": "release-11-00-00",
    "bucket": [26, 0, 26, 100],
    "calibrations": [],
    "filter_overrides": {},
    "expert_config": {},
    "staging_tag": "staging_prompt_e0026_b01",
    "running_tag": "b2cal_prompt_running",
    "requested_by": "manager",
}

with DAG(
    dag_id=DAG_ID,
    description="Calibrate one bucket: tickets, jobs, uploads, expert sign-off, running update",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_tasks=64,
    is_paused_upon_creation=False,
    tags=["b2cal", "calibration"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    params={key: Param(SAMPLE_REQUEST[key], **schema) for key, schema in REQUEST_SCHEMA.items()},
    doc_md=__doc__,
) as dag:

    @task
    def calibrations_of(prepared: dict, phase: str) -> list[str]:
        """Return the calibrations of one phase, in dependency order."""
        return prepared[phase]

    prepare = PrepareRequestOperator(task_id="validate_request")
    staging_tag = PrepareStagingTagOperator(task_id="prepare_staging_tag", request_id=REQUEST_ID)
    tickets = CreateTicketTreeOperator(task_id="create_ticket_tree", request_id=REQUEST_ID)
    raw_phase = CalibrationOperator.partial(
        task_id="raw_phase", request_id=REQUEST_ID, map_index_template="{{ task.calibration }}"
    ).expand(calibration=calibrations_of.override(task_id="raw_calibrations")(prepare.output, "raw"))
    cdst_production = CdstProductionOperator(
        task_id="cdst_production", request_id=REQUEST_ID, trigger_rule="none_failed"
    )
    register_cdst = RucioRegisterCdstOperator(
        task_id="register_cdst", request_id=REQUEST_ID, only_rucio_sites=True
    )
    stage_cdst = RucioAddRuleOperator(
        task_id="stage_cdst",
        dids=[register_cdst.output["container"]],
        rse_expression=register_cdst.output["rse"],
        expected_files=register_cdst.output["files"],
        lifetime=30 * 86400,
        activity="Production Input",
        wait_for_completion=True,
    )
    archive_cdst = RucioAddRuleOperator(
        task_id="archive_cdst",
        dids=[register_cdst.output["container"]],
        rse_expression=register_cdst.output["archive_rse"],
        activity="Data Consolidation",
        skip_without_rse=True,
    )
    cdst_phase = CalibrationOperator.partial(
        task_id="cdst_phase",
        request_id=REQUEST_ID,
        map_index_template="{{ task.calibration }}",
        trigger_rule="none_failed",
    ).expand(calibration=calibrations_of.override(task_id="cdst_calibrations")(prepare.output, "cdst"))
    report = SignOffReportOperator(
        task_id="readiness_report", request_id=REQUEST_ID, trigger_rule="none_failed"
    )
    # The approval task shows only its own form fields, so it takes the request id from validation.
    validated_id = "{{ ti.xcom_pull(task_ids='validate_request')['request_id'] }}"
    sign_off = SignOffOperator(
        task_id="sign_off",
        request_id=validated_id,
        subject=f"Sign off the bucket of request {validated_id}",
        approve_task_ids=["running_update"],
        reject_task_ids=["handle_rejection"],
    )
    running_update = RunningUpdateOperator(task_id="running_update", request_id=REQUEST_ID)
    rejection = RejectSignOffOperator(
        task_id="handle_rejection", request_id=REQUEST_ID, rerun_task_ids=["rerun_request"]
    )
    rerun_request = TriggerDagRunOperator(
        task_id="rerun_request",
        trigger_dag_id=DAG_ID,
        trigger_run_id="{{ run_id }}__rerun",
        conf="{{ ti.xcom_pull(task_ids='handle_rejection') | tojson }}",
        logical_date=None,
        skip_when_already_exists=True,
    )

    prepare >> staging_tag >> tickets >> raw_phase >> cdst_production
    # Without Rucio at the site, register_cdst skips and so do the rules; cdst_phase runs anyway.
    cdst_production >> register_cdst >> stage_cdst >> cdst_phase >> report
    register_cdst >> archive_cdst
    report >> sign_off >> [running_update, rejection]
    rejection >> rerun_request
