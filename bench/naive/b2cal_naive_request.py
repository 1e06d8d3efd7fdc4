"""The calibration loop built the naive way: the baseline of the benchmarks, not part of the product.

It does what the product's ``b2cal_processing_request`` does, with the designs the product avoids:

* one DAG per processing request, generated at parse time from the plugin database, so every parse
  of this file opens the database and grows with the number of requests;
* poke-mode sensors that hold a worker slot for the whole wait and ask Jira once per ticket per poke;
* a job task that starts the calibration job and waits for it in the task process, the way an
  ``SSHOperator`` keeps its session open for the length of the job;
* tickets created one call at a time, one more call per "blocks" link.

Only requests whose id starts with ``naive-`` get a DAG. The library calls (input selection, CAF
files, uploads, running update) are the product's, so the two loops differ only in orchestration.
"""

from __future__ import annotations

import os
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow.providers.standard.operators.python import PythonOperator
from airflow.providers.standard.sensors.python import PythonSensor
from airflow.sdk import DAG

from b2cal.caf import build_prompt_run_command, judge_job, write_caf_config, write_input_data
from b2cal.catalog import CDST_PHASE, RAW_PHASE, Catalog
from b2cal.db import models, store
from b2cal.db.engine import session_scope
from b2cal.iov import IoV
from b2cal.jobs import LocalJob, job_key, start_local_job
from b2cal.request import RequestSpec
from b2cal.runs import Run, input_data, path_template_lister, select_inputs
from b2cal.tickets import TicketTree

PREFIX = "naive-"
POKE_INTERVAL = float(os.environ.get("B2CAL_NAIVE_POKE_INTERVAL", "4"))
POOL = os.environ.get("B2CAL_NAIVE_POOL", "default_pool")
# Rendered at run time into the ticket keys that create_tickets returned.
TICKET_KEYS = "{{ ti.xcom_pull(task_ids='create_tickets') }}"


def _load(uid: str) -> tuple[RequestSpec, Catalog]:
    with session_scope(os.environ["B2CAL_DB_URL"]) as session:
        row = store.get_request(session, uid)
        catalog = store.load_catalog(session, row.release)
        spec = RequestSpec(
            uid=row.uid,
            kind=row.kind,
            site=row.site,
            release=row.release,
            bucket=IoV(row.exp_low, row.run_low, row.exp_high, row.run_high),
            calibrations=tuple(row.calibrations),
            staging_tag=row.staging_tag,
            running_tag=row.running_tag,
            requested_by=row.requested_by,
        )
    return spec, catalog


def _jira() -> Any:
    from b2cal_airflow.hooks.b2cal import TicketHook

    return TicketHook().get_conn()


def _conddb() -> Any:
    from b2cal_airflow.hooks.b2cal import ConditionsDBHook

    return ConditionsDBHook().get_conn()


def _create_tickets(uid: str) -> dict[str, str]:
    """Create one ticket per call, then one call per link."""
    from b2cal_airflow.hooks.b2cal import TicketHook

    spec, catalog = _load(uid)
    jira = _jira()
    project = TicketHook().project
    keys = {}
    for name in spec.calibrations:
        fields = {
            "project": {"key": project},
            "summary": f"[{uid}] {name}",
            "issuetype": {"name": "Task"},
            "labels": [f"b2cal-{uid}"],
        }
        keys[name] = jira.issue_create(fields=fields)["key"]
    for name in spec.calibrations:
        for dep in catalog[name].depends_on:
            if dep in keys:
                link = {
                    "type": {"name": "Blocks"},
                    "inwardIssue": {"key": keys[dep]},
                    "outwardIssue": {"key": keys[name]},
                }
                jira.create_issue_link(link)
    _conddb().prepare_staging_tag(spec.staging_tag, f"Staging tag of the naive request {uid}")
    return keys


def tickets_done(keys: list[str]) -> bool:
    """Ask Jira for each ticket on its own."""
    jira = _jira()
    return all(
        jira.issue(key, fields="status")["fields"]["status"]["statusCategory"]["key"] == "done"
        for key in keys
    )


def _select_inputs(spec: RequestSpec, catalog: Catalog, name: str, site: dict[str, Any]) -> Any:
    from b2cal_airflow.hooks.b2cal import RunRegistryHook

    settings = catalog[name]
    registry = RunRegistryHook().get_conn()
    runs = [Run.from_registry(record) for record in registry.iter_runs(min_experiment=spec.bucket.exp_low)]
    root = site["storage_root"] if settings.phase == RAW_PHASE else site["cdst_root"]
    return select_inputs(
        settings, runs, spec.bucket, catalog.vocabulary, path_template_lister(root, site["path_template"])
    )


def _wait_holding(job: LocalJob) -> None:
    # The task stays in its worker slot for the whole job, as an SSH session held open would.
    while job.exit_status is None and job.is_alive():
        time.sleep(1)


def run_calibration(uid: str, name: str, ti: Any) -> None:
    """Start the job, wait for it in this task, upload its outputs and close the ticket."""
    from b2cal_airflow.hooks.b2cal import SiteHook

    spec, catalog = _load(uid)
    settings = catalog[name]
    site = SiteHook(spec.site).settings
    folder = Path(site["work_root"]) / job_key(uid, name)
    if not LocalJob(folder).started:
        selections = _select_inputs(spec, catalog, name, site)
        folder.mkdir(parents=True, exist_ok=True)
        write_input_data(folder / "input_data.json", input_data(selections))
        write_caf_config(
            folder / "caf_config.json",
            caf_script=settings.script,
            database_chain=[*site["database_chain"], spec.staging_tag],
            requested_iov=spec.bucket,
            expert_config=spec.expert_config(catalog, name),
        )
    argv = build_prompt_run_command(
        site["backend"],
        "caf_config.json",
        "input_data.json",
        backend_options=site["backend_options"],
        options=site["prompt_run_options"],
    )
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **site["env"]}
    job = start_local_job(folder, argv, env=env)
    _wait_holding(job)
    verdict = judge_job(folder, process_alive=False, log_text=job.log_text())
    if verdict.state != "succeeded":
        raise RuntimeError(f"job of {name} failed: {verdict.reason}")
    client = _conddb()
    for database in sorted((folder / "caf_outputdb_results").glob("*/database.txt")):
        client.upload_database_folder(database.parent, spec.staging_tag)
    keys = ti.xcom_pull(task_ids="create_tickets")
    TicketTree(_jira()).transition_to(keys[name])


def _produce_cdsts(uid: str) -> None:
    """Run cDST production and wait for it in this task."""
    from b2cal_airflow.hooks.b2cal import SiteHook

    spec, _ = _load(uid)
    site = SiteHook(spec.site).settings
    folder = Path(site["work_root"]) / job_key(uid, "cdst-production")
    argv = [
        str(Path(sys.executable).parent / "b2cal"),
        "dev-cdst-production",
        "--raw-root",
        site["storage_root"],
        "--cdst-root",
        site["cdst_root"],
        "--bucket",
        spec.bucket.as_text(),
    ]
    job = start_local_job(folder, argv, env=site["env"])
    _wait_holding(job)
    if job.exit_status != 0:
        raise RuntimeError(f"cDST production failed with exit status {job.exit_status}")


def _merge(uid: str) -> None:
    """Validate the staging tag and merge it into the running tag."""
    spec, _ = _load(uid)
    client = _conddb()
    client.set_global_tag_state(spec.staging_tag, "TESTING")
    client.set_global_tag_state(spec.staging_tag, "VALIDATED")
    client.running_update(spec.staging_tag, spec.running_tag, spec.bucket.first, dry_run=False)


def _task_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")


def build_dag(
    uid: str, catalog_names: list[str], depends_on: dict[str, list[str]], phases: dict[str, str]
) -> DAG:
    """Build the DAG of one request: a sensor, a job task and a sensor per calibration."""
    with DAG(
        dag_id=f"b2cal_naive_{_task_id(uid)}",
        schedule=None,
        start_date=datetime(2026, 1, 1, tzinfo=UTC),
        catchup=False,
        is_paused_upon_creation=False,
        max_active_tasks=64,
        tags=["b2cal-benchmark-baseline"],
        default_args={"pool": POOL, "retries": 0},
    ) as dag:
        create_tickets = PythonOperator(
            task_id="create_tickets", python_callable=_create_tickets, op_args=[uid]
        )
        cdst_production = PythonOperator(
            task_id="cdst_production", python_callable=_produce_cdsts, op_args=[uid]
        )
        running_update = PythonOperator(task_id="running_update", python_callable=_merge, op_args=[uid])
        create_tickets >> cdst_production
        first: dict[str, Any] = {}
        last: dict[str, Any] = {}
        for name in catalog_names:
            stem = _task_id(name)
            first[name] = PythonSensor(
                task_id=f"wait_dependencies_{stem}",
                python_callable=_dependencies_done,
                op_args=[depends_on[name], TICKET_KEYS],
                mode="poke",
                poke_interval=POKE_INTERVAL,
                timeout=3600,
            )
            job = PythonOperator(task_id=f"job_{stem}", python_callable=run_calibration, op_args=[uid, name])
            last[name] = PythonSensor(
                task_id=f"wait_ticket_{stem}",
                python_callable=_dependencies_done,
                op_args=[[name], TICKET_KEYS],
                mode="poke",
                poke_interval=POKE_INTERVAL,
                timeout=3600,
            )
            first[name] >> job >> last[name]
        for name in catalog_names:
            upstream = [last[dep] for dep in depends_on[name] if dep in last]
            if phases[name] == CDST_PHASE:
                upstream.append(cdst_production)
            else:
                create_tickets >> first[name]
                last[name] >> cdst_production
            for task in upstream:
                task >> first[name]
            last[name] >> running_update
    return dag


def _dependencies_done(deps: list[str], keys_text: str) -> bool:
    import ast

    keys = ast.literal_eval(keys_text)
    return tickets_done([keys[dep] for dep in deps if dep in keys])


def _active_requests() -> list[tuple[str, list[str], dict[str, list[str]], dict[str, str]]]:
    # The naive part: a database query at every parse of this file.
    url = os.environ.get("B2CAL_DB_URL")
    if not url:
        return []
    found = []
    with session_scope(url) as session:
        rows = session.query(models.ProcessingRequest).filter(models.ProcessingRequest.uid.like(f"{PREFIX}%"))
        for row in rows.all():
            catalog = store.load_catalog(session, row.release)
            names = list(row.calibrations)
            found.append(
                (
                    row.uid,
                    names,
                    {name: list(catalog[name].depends_on) for name in names},
                    {name: catalog[name].phase for name in names},
                )
            )
    return found


for _uid, _names, _depends_on, _phases in _active_requests():
    globals()[f"dag_{_task_id(_uid)}"] = build_dag(_uid, _names, _depends_on, _phases)
