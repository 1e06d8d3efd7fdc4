"""Operators for the request-wide steps: validation, staging tag, ticket tree, cDST production.

The sign-off operators live in :mod:`b2cal_airflow.operators.signoff`; the report and the running
update are imported here too, for DAGs that import them from this module.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from b2cal.catalog import CDST_PHASE, RAW_PHASE
from b2cal.cdst import CDST_JOB, cdst_output_folder
from b2cal.db import inventory, store
from b2cal.db.engine import session_scope, upgrade
from b2cal.remote import JobBusyError, JobLaunch, JobPaths, decide_submission, job_folder
from b2cal.request import RequestError, parse_request
from b2cal.sites import SiteSettings
from b2cal_airflow.hooks.b2cal import ConditionsDBHook, SiteHook
from b2cal_airflow.operators.base import RequestOperator
from b2cal_airflow.operators.signoff import RunningUpdateOperator, SignOffReportOperator
from b2cal_airflow.operators.site_jobs import check_request_fields, job_environment
from b2cal_airflow.operators.tickets import CreateTicketTreeOperator
from b2cal_airflow.triggers.caf import CafJobTrigger, job_outcome

__all__ = [
    "CdstProductionOperator",
    "CreateTicketTreeOperator",
    "PrepareRequestOperator",
    "PrepareStagingTagOperator",
    "RunningUpdateOperator",
    "SignOffReportOperator",
]

PREPARED_ACTION = "prepare_staging_tag"


class PrepareRequestOperator(RequestOperator):
    """Validate the request in the DAG run's params, store it and return the calibrations of each phase.

    The return value holds ``request_id`` and, under ``raw`` and ``cdst``, the calibration names of each
    phase in dependency order. An invalid request fails the task without retries, because every retry
    would read the same params. Database and connection errors propagate unchanged, so those retry.

    When Airflow knows the user who started the run (the form and Airflow's own trigger dialog both
    start runs as the logged-in user), that user is recorded as the requester, whatever the params'
    ``requested_by`` says; a run started by a task keeps ``requested_by``.
    """

    def __init__(self, *, request_id: str = "{{ params.request_id }}", **kwargs: Any) -> None:
        super().__init__(request_id=request_id, **kwargs)

    def execute(self, context: Context) -> dict[str, Any]:
        conf = dict(context["params"])
        starter = getattr(context.get("dag_run"), "triggering_user_name", None)
        if starter and starter != conf.get("requested_by"):
            self.log.info(
                "The run was started by %s, who is recorded as the requester instead of %r",
                starter,
                conf.get("requested_by"),
            )
            conf["requested_by"] = starter
        upgrade(self.db_url)
        with session_scope(self.db_url) as session:
            try:
                if isinstance(conf.get("site"), str):
                    # Airflow's trigger form takes the site in any case; the inventory has one spelling.
                    conf["site"] = inventory.canonical_site(session, conf["site"])
                catalog = store.load_catalog(session, str(conf.get("release")))
                site_releases = inventory.available_releases(session, str(conf.get("site")))
                spec = parse_request(conf, catalog, site_releases=site_releases)
            except (RequestError, store.NotFoundError) as exc:
                raise AirflowFailException(f"invalid processing request: {exc}") from None
            row = store.save_request(session, spec, catalog)
            row.dag_run_id = context["run_id"]
        phases = catalog.phases(spec.calibrations)
        if spec.added_dependencies:
            self.log.info("Added the dependencies %s to the selection", list(spec.added_dependencies))
        self.log.info(
            "Request %s: %d raw-phase and %d cdst-phase calibrations",
            spec.uid,
            len(phases[RAW_PHASE]),
            len(phases[CDST_PHASE]),
        )
        return {"request_id": spec.uid, RAW_PHASE: phases[RAW_PHASE], CDST_PHASE: phases[CDST_PHASE]}


class PrepareStagingTagOperator(RequestOperator):
    """Create the request's staging global tag, or empty it when it exists."""

    def __init__(self, *, conddb_conn_id: str = "b2cal_conddb", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conddb_conn_id = conddb_conn_id

    def execute(self, context: Context) -> str:
        spec, _ = self.load()
        client = ConditionsDBHook(self.conddb_conn_id).get_conn()
        with session_scope(self.db_url) as session:
            prepared = store.has_action(session, spec.uid, PREPARED_ACTION)
        if prepared and client.get_global_tag(spec.staging_tag) is not None:
            # A rerun of the same request keeps what its first run uploaded; uploads skip what exists.
            self.log.info(
                "Staging global tag %s was prepared by this request before; keeping it", spec.staging_tag
            )
            return spec.staging_tag
        client.prepare_staging_tag(
            spec.staging_tag, f"Staging tag of processing request {spec.uid} ({spec.bucket})"
        )
        self.log.info("Staging global tag %s is ready and empty", spec.staging_tag)
        with session_scope(self.db_url) as session:
            store.audit(session, "system", PREPARED_ACTION, request_uid=spec.uid, message=spec.staging_tag)
            store.set_request_state(session, spec.uid, "staging_tag_ready", staging_tag=spec.staging_tag)
        return spec.staging_tag


class CdstProductionOperator(RequestOperator):
    """Run cDST production for the bucket at the site and wait for it without holding a worker slot.

    The command comes from the site connection's extra ``cdst_command``, a list of arguments in
    which ``{raw_root}``, ``{cdst_root}``, ``{bucket}``, ``{request_id}`` and ``{attempt}`` are
    replaced. ``{cdst_root}`` is the attempt's output folder (:func:`b2cal.cdst.cdst_output_folder`):
    the site's ``cdst_root`` for attempt 1, a new folder below it for each later attempt. Without the
    extra the development stand-in ``b2cal dev-cdst-production`` runs.

    The job runs detached in the job folder ``cdst-production`` of the request, as a calibration's job
    does: a retried task attaches to a running attempt or takes a succeeded one, and starts the next
    attempt only after a failed one. The request's ``cdst_attempt`` in the plugin database is the
    lowest attempt the task may take. A rejection at sign-off raises it, so that cDST production runs
    again on the new raw-phase payloads. The task records the attempt it runs there, so that the cdst-phase
    calibrations and the Rucio registration read that attempt's folder.
    """

    def execute(self, context: Context) -> None:
        spec, _ = self.load()
        check_request_fields(spec)
        hook = SiteHook(spec.site)
        site = hook.site_settings
        job_dir = job_folder(site.work_root, spec.uid, CDST_JOB)
        with session_scope(self.db_url) as db:
            stored_attempt = store.get_cdst_attempt(db, spec.uid)
        with hook.session() as session:
            snapshot = session.inspect(job_dir, caf=False)
            try:
                decision = decide_submission(
                    snapshot, "exit_status", clean_start=True, attempt=stored_attempt
                )
            except JobBusyError as exc:
                raise AirflowException(str(exc)) from None
            attempt = decision.attempt
            if decision.action == "finished":
                assert decision.verdict is not None
                self._record_attempt(attempt)
                return self.execute_complete(context, job_outcome(site, job_dir, snapshot, decision.verdict))
            if decision.action == "start":
                output = cdst_output_folder(site.cdst_root, spec.uid, attempt)
                launch = JobLaunch(
                    paths=JobPaths(job_dir, attempt),
                    argv=cdst_command(site, spec, attempt),
                    setup_command=site.setup_command(spec.release),
                    env=job_environment(site),
                    shell=site.remote_shell,
                )
                result = session.launch(launch)
                attempt = result.attempt
                self.log.info(
                    "Started attempt %s of cDST production in %s on site %s (pid %s), writing %s",
                    attempt,
                    job_dir,
                    site.name,
                    result.pid,
                    output,
                )
            else:
                self.log.info("Attaching to attempt %s of cDST production in %s", attempt, job_dir)
        self._record_attempt(attempt)
        self.set_state("cdst_production", job_folder=job_dir, attempt=attempt)
        self.defer(
            trigger=CafJobTrigger(
                site=spec.site,
                job_folder=job_dir,
                attempt=attempt,
                poll_interval=site.poll_interval,
                judge="exit_status",
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> None:
        if event.get("status") != "succeeded":
            raise AirflowException(
                f"cDST production failed: {event.get('reason')}\n{event.get('log_tail', '')}"
            )
        attempt = event.get("attempt")
        self.set_state("cdst_produced", attempt=attempt)
        self.log.info("cDST production of request %s finished (attempt %s)", self.request_id, attempt)

    def _record_attempt(self, attempt: int) -> None:
        """Store the attempt that runs, whose output folder the later steps read."""
        with session_scope(self.db_url) as db:
            store.set_cdst_attempt(db, self.request_id, attempt, reason="cDST production runs this attempt")


def cdst_command(site: SiteSettings, spec: Any, attempt: int = 1) -> list[str]:
    """Return the command line of one attempt of a request's cDST production at a site."""
    if site.cdst_command is not None:
        template = site.cdst_command
    else:
        program = "b2cal" if site.is_ssh else str(Path(sys.executable).parent / "b2cal")
        template = [program, "dev-cdst-production", "--raw-root", "{raw_root}", "--cdst-root", "{cdst_root}"]
        template += ["--bucket", "{bucket}"]
    values = {
        "raw_root": site.storage_root,
        "cdst_root": cdst_output_folder(site.cdst_root, spec.uid, attempt),
        "bucket": spec.bucket.as_text(),
        "request_id": spec.uid,
        "attempt": attempt,
    }
    return [str(part).format(**values) for part in template]
