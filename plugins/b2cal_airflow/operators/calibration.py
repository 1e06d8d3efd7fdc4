"""The operator that carries one calibration of a request from its dependencies to its closed ticket."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from b2cal.caf import caf_config_json, input_data_json
from b2cal.catalog import RAW_PHASE
from b2cal.cdst import cdst_output_folder
from b2cal.db import gate, inventory, store
from b2cal.db.engine import session_scope
from b2cal.explanations import publish_to_ticket, save_selections
from b2cal.filesources import FileSource, PathTemplateSource
from b2cal.remote import (
    CONFIG_FILES,
    JobBusyError,
    JobLaunch,
    JobPaths,
    JobSnapshot,
    SubmitDecision,
    decide_submission,
    job_folder,
    job_key,
)
from b2cal.runs import EmptyInputError, Run, input_data, select_inputs
from b2cal.runsync import load_runs
from b2cal.site_validation import validate_at_site
from b2cal.sites import SiteSettings, build_skim_source
from b2cal.tickets import DONE, TicketError
from b2cal.validation import CheckName, CheckResult, ValidationReport, read_local_iovs, validate_upload
from b2cal_airflow.hooks.b2cal import ConditionsDBHook, RunRegistryHook, TicketHook
from b2cal_airflow.hooks.rucio import RucioHook
from b2cal_airflow.hooks.site import SiteHook, SiteSession
from b2cal_airflow.hooks.site_validation import ValidationSession, site_errors
from b2cal_airflow.operators.base import RequestOperator, autopilot_enabled
from b2cal_airflow.operators.site_jobs import check_request_fields, clean_start_requested, job_environment
from b2cal_airflow.triggers.caf import CafJobTrigger, job_outcome
from b2cal_airflow.triggers.jira import JiraTicketsDoneTrigger

OUTPUT_FOLDER = "caf_outputdb_results"
#: The folder below the temporary folder that receives the copies of the sites' validation folders.
VALIDATION_COPIES = "b2cal-validation"


class CalibrationOperator(RequestOperator):
    """Run one calibration of a request, deferring at every wait.

    The steps: wait until the tickets of the calibration's dependencies are done, select the input
    files, start ``b2caf-prompt-run`` in the calibration's job folder, wait for the job, upload its
    output databases to the staging tag and check them, run the site's validation step when the site
    has one, then wait until the calibration's own ticket is done. Each
    wait is a trigger, so no worker slot is held. Every step can run again safely: the job folder is
    derived from the request and the calibration, so a retry attaches to the job it started, and the
    upload skips payloads and IoVs that already exist.

    :param calibration: the calibration's name; mapped over the request's calibrations.
    :param jira_conn_id: the Jira connection.
    :param conddb_conn_id: the conditions database connection.
    :param runregistry_conn_id: the run registry connection.
    :param ticket_poll_interval: seconds between two Jira searches while waiting for tickets.
    """

    template_fields: Sequence[str] = ("request_id", "calibration")
    ui_color = "#fef3c7"

    def __init__(
        self,
        *,
        calibration: str,
        jira_conn_id: str = "b2cal_jira",
        conddb_conn_id: str = "b2cal_conddb",
        runregistry_conn_id: str = "b2cal_runregistry",
        ticket_poll_interval: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.calibration = calibration
        self.jira_conn_id = jira_conn_id
        self.conddb_conn_id = conddb_conn_id
        self.runregistry_conn_id = runregistry_conn_id
        self.ticket_poll_interval = ticket_poll_interval

    def execute(self, context: Context) -> Any:
        spec, catalog = self.load()
        settings = catalog[self.calibration]
        deps = [dep for dep in settings.depends_on if dep in spec.calibrations]
        keys = self.ticket_keys()
        dep_keys = [keys[dep] for dep in deps]
        if dep_keys and not self._dependencies_ready(spec, deps, keys):
            self.log.info("Waiting for the tickets %s of %s", dep_keys, deps)
            self.update_progress(self.calibration, job_state="waiting_for_dependencies")
            self.defer(
                trigger=JiraTicketsDoneTrigger(
                    self.jira_conn_id,
                    dep_keys,
                    self._ticket_poll_interval(),
                    request_id=self.request_id,
                    db_conn_id=self.db_conn_id,
                ),
                method_name="start_job",
            )
        return self.start_job(context)

    def _dependencies_ready(self, spec: Any, deps: list[str], keys: dict[str, str]) -> bool:
        """Return whether every dependency's payloads are uploaded and its ticket is done.

        A dependency's ticket that is done before its payloads were uploaded was closed by mistake,
        because there was nothing to review. It is reopened with a comment, and the wait continues.
        """
        tree = TicketHook(self.jira_conn_id).get_tree()
        categories = tree.categories([keys[dep] for dep in deps])
        with session_scope(self.db_url) as session:
            uploaded = {
                dep: store.get_progress(session, spec.uid, dep).upload_state == "uploaded" for dep in deps
            }
        for dep in deps:
            if categories.get(keys[dep]) == DONE and not uploaded[dep]:
                self._reopen_early(spec, tree, dep, keys[dep])
        return all(categories.get(keys[dep]) == DONE and uploaded[dep] for dep in deps)

    def _reopen_early(self, spec: Any, tree: Any, calibration: str, key: str) -> None:
        """Reopen the ticket of a calibration whose payloads are not uploaded yet, with a comment why."""
        try:
            if not tree.reopen(key):
                return
        except TicketError as exc:
            raise AirflowException(
                f"{exc}; reopen it by hand, because {calibration!r} has not run yet"
            ) from None
        text = (
            f"Reopened by b2cal: this ticket was closed before the payloads of {calibration} were uploaded "
            f"to the staging tag {spec.staging_tag}, so there was nothing to review yet. The calibrations "
            "that depend on it wait until it is closed again after the upload."
        )
        tree.comment(key, text)
        self.log.warning("Reopened %s: it was closed before %s uploaded its payloads", key, calibration)
        with session_scope(self.db_url) as session:
            store.audit(
                session,
                "system",
                "reopen_ticket",
                request_uid=spec.uid,
                calibration=calibration,
                message=text,
                key=key,
            )

    def _mark_phase_running(self, spec: Any, phase: str) -> None:
        """Move the request to ``raw_phase`` or ``cdst_phase`` when the first job of that phase starts."""
        before = ("staging_tag_ready", "tickets_created") if phase == RAW_PHASE else ("cdst_produced",)
        with session_scope(self.db_url) as session:
            store.advance_request_state(session, spec.uid, before, f"{phase}_phase", first=self.calibration)

    def _all_done(self, keys: list[str]) -> bool:
        # Checked before deferring: a trigger that fires at once can race the scheduler's handling of
        # the deferring attempt, so a wait that is already over is not deferred at all.
        categories = TicketHook(self.jira_conn_id).get_tree().categories(keys)
        return all(categories.get(key) == DONE for key in keys)

    def _ticket_poll_interval(self) -> float:
        return float(TicketHook(self.jira_conn_id).extras.get("poll_interval", self.ticket_poll_interval))

    def start_job(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Start the calibration's job at its site, attach to it, or take its outcome when it ended.

        The job folder is derived from the request and the calibration. A running attempt is attached to
        and a succeeded one is taken, so a retried task never starts a second job. After a failed attempt
        the next one starts in the same folder and resumes from the CAF checkpoint, unless the DAG run's
        conf asks for a clean start (``clean_start``: ``true``, or a list of calibration names). A
        calibration that runs again after a rejected sign-off has the next attempt in its progress row;
        that attempt starts from scratch.
        """
        if event is not None and event.get("status") != "done":
            raise AirflowException(f"waiting for the dependencies failed: {event.get('reason')}")
        if event is not None:
            # A dependency ticket reopened after the trigger fired blocks the job again: look once more.
            return self.execute(context)
        spec, catalog = self.load()
        check_request_fields(spec)
        hook = SiteHook(spec.site)
        site = hook.site_settings
        job_dir = job_folder(site.work_root, spec.uid, self.calibration)
        with session_scope(self.db_url) as db:
            wanted_attempt = store.get_progress(db, spec.uid, self.calibration).attempt
            cdst_attempt = store.get_cdst_attempt(db, spec.uid)
        if catalog[self.calibration].phase != RAW_PHASE:
            # The cdst phase reads the output folder of the cDST production attempt the request uses.
            site = replace(site, cdst_root=cdst_output_folder(site.cdst_root, spec.uid, cdst_attempt))
        with hook.session() as session:
            snapshot = session.inspect(job_dir)
            try:
                decision = decide_submission(
                    snapshot,
                    clean_start=clean_start_requested(context, self.calibration),
                    attempt=wanted_attempt,
                )
            except JobBusyError as exc:
                raise AirflowException(str(exc)) from None
            if decision.action == "finished":
                assert decision.verdict is not None
                self.log.info("Attempt %s in %s succeeded before", decision.attempt, job_dir)
                return self.upload(context, job_outcome(site, job_dir, snapshot, decision.verdict))
            if decision.action == "attach":
                attempt, pid = snapshot.attempt, snapshot.pid
                self.log.info("Attaching to attempt %s in %s (pid %s)", attempt, job_dir, pid)
            else:
                self._start_attempt(session, spec, catalog, site, job_dir, snapshot, decision)
        self._mark_phase_running(spec, catalog[self.calibration].phase)
        self.defer(
            trigger=CafJobTrigger(
                site=spec.site,
                job_folder=job_dir,
                attempt=decision.attempt,
                poll_interval=site.poll_interval,
                request_id=spec.uid,
                calibration=self.calibration,
                db_conn_id=self.db_conn_id,
            ),
            method_name="upload",
        )

    def _start_attempt(
        self,
        session: SiteSession,
        spec: Any,
        catalog: Any,
        site: SiteSettings,
        job_dir: str,
        snapshot: JobSnapshot,
        decision: SubmitDecision,
    ) -> None:
        """Write the CAF files when the attempt needs new ones, and start the attempt at the site."""
        settings = catalog[self.calibration]
        files: dict[str, str] | None = None
        selections: dict[str, Any] = {}
        if not decision.resume or not all(snapshot.files.get(name) for name in CONFIG_FILES):
            lister = session if site.is_ssh else None
            selections = self._select_inputs(spec, catalog, site, lister=lister)
            files = {
                "input_data.json": input_data_json(input_data(selections)),
                "caf_config.json": caf_config_json(
                    caf_script=settings.script,
                    database_chain=[*site.database_chain, spec.staging_tag],
                    requested_iov=spec.bucket,
                    expert_config=spec.expert_config(catalog, self.calibration),
                ),
            }
        launch = JobLaunch(
            paths=JobPaths(job_dir, decision.attempt),
            argv=site.prompt_run_argv(),
            setup_command=site.setup_command(spec.release),
            env=job_environment(site),
            shell=site.remote_shell,
            clean_start=decision.verdict is not None and not decision.resume,
        )
        result = session.launch(launch, files)
        if result.attached:
            self.log.info("Another start claimed attempt %s in %s; attaching to it", result.attempt, job_dir)
            return

        how = "the first attempt"
        if decision.verdict is not None:
            how = "resuming from the CAF checkpoint" if decision.resume else "a clean start"
            how += f" after attempt {decision.attempt - 1}: {decision.verdict.reason}"
        self.log.info(
            "Started attempt %s of %s in %s at %s (pid %s), %s",
            result.attempt,
            self.calibration,
            job_dir,
            site.name,
            result.pid,
            how,
        )
        changes: dict[str, Any] = {
            "attempt": result.attempt,
            "job_id": job_key(spec.uid, self.calibration, result.attempt),
            "job_state": "running",
            "job_detail": {
                "site": site.name,
                "job_folder": job_dir,
                "attempt": result.attempt,
                "pid": result.pid,
            },
            "started_at": datetime.now(UTC),
            "ended_at": None,
        }
        if selections:
            changes["inputs"] = {name: selection.to_dict() for name, selection in selections.items()}
        self.update_progress(self.calibration, **changes)
        lines = [f"Attempt {result.attempt} started at {site.name} in {job_dir} (pid {result.pid}), {how}."]
        lines += [selection.explain() for selection in selections.values()]
        self._comment("\n".join(lines))

    def fetch_outputs(self, event: dict[str, Any]) -> Path:
        """Return the local folder that holds the job's output databases, copied from an SSH site first.

        The copy goes to ``<temp>/b2cal-outputs/<site>/<request>/<job>/`` and replaces an older copy.
        """
        job_dir = str(event.get("job_folder", ""))
        if event.get("transport") != "ssh":
            return Path(job_dir)
        site = str(event.get("site", ""))
        local = Path(tempfile.gettempdir(), "b2cal-outputs", site.lower(), *PurePosixPath(job_dir).parts[-2:])
        with SiteHook(site).session() as session:
            session.fetch_folder(f"{job_dir}/{OUTPUT_FOLDER}", local / OUTPUT_FOLDER)
        self.log.info("Copied %s/%s from %s to %s", job_dir, OUTPUT_FOLDER, site, local)
        return local

    def _select_inputs(self, spec: Any, catalog: Any, site: SiteSettings, lister: Any = None) -> Any:
        """Select the calibration's input files at ``site``, and store and publish the explanation.

        :param lister: lists the site's folders; the local file system when ``None``.
        """
        settings = catalog[self.calibration]
        runs = self._bucket_runs(spec)
        with session_scope(self.db_url) as session:
            # The bucket's skim quota, when one was chosen: skim inputs read only those runs.
            skim_runs = inventory.bucket_skim_runs(session, spec.bucket)
        try:
            with self._input_source(site, settings.phase, lister) as source:
                self.log.info("Selecting the inputs of %s from %s", self.calibration, source.description)
                selections = select_inputs(
                    settings,
                    runs,
                    spec.bucket,
                    catalog.vocabulary,
                    source,
                    filter_overrides=spec.filter_overrides.get(self.calibration),
                    expert_config=spec.expert_config(catalog, self.calibration),
                    skim_runs=skim_runs or None,
                )
        except EmptyInputError as exc:
            inputs = {exc.selection.input_name: exc.selection.to_dict()} if exc.selection else {}
            self.update_progress(self.calibration, job_state="no_input", inputs=inputs)
            # The same inputs would be selected again, so the task fails without retries, and the
            # ticket gets one comment. Clearing the task once the files are there selects them again.
            self._comment(f"No job was started: {exc}")
            raise AirflowFailException(
                f"{exc}; clear this task in Airflow once the input files are at the site"
            ) from None
        self._explain(spec, selections)
        return selections

    @contextmanager
    def _input_source(self, site: SiteSettings, phase: str, lister: Any) -> Iterator[FileSource]:
        """Yield the source of the input files: the site's skim source, or its cDST folders.

        A ``rucio`` site reads its skims from the replicas at its RSE, through a client of the Rucio
        hook that is closed afterwards. The cdst phase reads ``cdst_root`` at every site: cDST
        production writes the files there, and their Rucio datasets hold a whole bucket, not one run.
        """
        if phase != RAW_PHASE:
            yield PathTemplateSource(site.cdst_root, site.path_template, lister=lister)
            return
        if site.file_source != "rucio":
            yield build_skim_source(site, lister=lister)
            return
        hook = RucioHook(site.rucio_conn_id)
        try:
            yield build_skim_source(site, rucio_client=hook.get_conn(), rucio_scope=hook.scope)
        finally:
            hook.close()

    def _bucket_runs(self, spec: Any) -> list[Run]:
        """Return the bucket's runs collected in the plugin database, or from the run registry."""
        with session_scope(self.db_url) as session:
            runs = load_runs(session, spec.bucket)
        if runs:
            return runs
        self.log.info("No collected runs in bucket %s; reading them from the run registry", spec.bucket)
        registry = RunRegistryHook(self.runregistry_conn_id).get_conn()
        filters: dict[str, Any] = {"min_experiment": spec.bucket.exp_low}
        if not spec.bucket.is_open_ended:
            filters["max_experiment"] = spec.bucket.exp_high
        return [Run.from_registry(record) for record in registry.iter_runs(**filters)]

    def _explain(self, spec: Any, selections: Any) -> None:
        """Store the selection funnels and write them into the ticket's description."""
        with session_scope(self.db_url) as session:
            save_selections(session, spec.uid, self.calibration, selections)
        key = self.ticket_keys().get(self.calibration)
        if key:
            try:
                publish_to_ticket(TicketHook(self.jira_conn_id).get_conn(), key, selections, spec.bucket)
            except Exception as exc:  # noqa: BLE001 - a lost description must not fail the calibration
                self.log.warning("Could not write the input selection into %s: %s", key, exc)

    def upload(self, context: Context, event: dict[str, Any]) -> Any:
        """Upload the job's output databases to the staging tag, check them, then wait for the ticket."""
        spec, catalog = self.load()
        if event.get("status") != "succeeded":
            reason = event.get("reason")
            tail = event.get("log_tail", "")
            self.update_progress(
                self.calibration,
                job_state="failed",
                job_detail={"reason": reason},
                ended_at=datetime.now(UTC),
            )
            self._comment(f"The job failed: {reason}\n\nEnd of the log:\n{{noformat}}\n{tail}\n{{noformat}}")
            raise AirflowException(f"calibration {self.calibration!r} failed: {reason}\n{tail}")
        self.update_progress(self.calibration, job_state="succeeded", ended_at=datetime.now(UTC))
        ticket_key = self.ticket_keys()[self.calibration]
        tree = TicketHook(self.jira_conn_id).get_tree()
        with session_scope(self.db_url) as session:
            uploaded_before = (
                store.get_progress(session, spec.uid, self.calibration).upload_state == "uploaded"
            )
        if not uploaded_before:
            # A ticket closed before the payloads exist would let this calibration pass unreviewed.
            self._reopen_early(spec, tree, self.calibration, ticket_key)
        folder = self.fetch_outputs(event)
        client = ConditionsDBHook(self.conddb_conn_id).get_conn()
        totals = {"uploaded_payloads": 0, "skipped_payloads": 0, "created_iovs": 0, "skipped_iovs": 0}
        databases = sorted((folder / OUTPUT_FOLDER).glob("*/database.txt"))
        if not databases:
            raise AirflowException(
                f"the job in {folder} succeeded but wrote no {OUTPUT_FOLDER}/*/database.txt"
            )
        for database in databases:
            result = client.upload_database_folder(database.parent, spec.staging_tag)
            for key in totals:
                totals[key] += int(getattr(result, key))
        self.update_progress(self.calibration, upload_state="uploaded", upload_detail=totals)
        self.log.info("Uploaded the outputs of %s to %s: %s", self.calibration, spec.staging_tag, totals)
        # Read before the payload checks replace the stored results, so a passed validation is kept.
        previous_validation = self._stored_validation(spec)
        checks = self._check_upload(spec, catalog, client, [database.parent for database in databases])
        validation = self._validate_at_site(spec, event, previous_validation)
        if validation is not None:
            checks.results.append(validation)
            self._save_checks(spec, checks)
        self._comment(
            f"Payloads uploaded to the staging tag {spec.staging_tag}: {json.dumps(totals)}\n\n"
            + checks.to_comment(spec.staging_tag)
        )
        if autopilot_enabled() and not checks.failed:
            tree.transition_to(ticket_key)
            self.log.info("Autopilot closed %s", ticket_key)
        self.update_progress(self.calibration, ticket_state="waiting_for_expert")
        if self._all_done([ticket_key]):
            return self.finish(context, {"status": "done", "keys": [ticket_key]})
        self.defer(
            trigger=JiraTicketsDoneTrigger(
                self.jira_conn_id,
                [ticket_key],
                self._ticket_poll_interval(),
                request_id=self.request_id,
                db_conn_id=self.db_conn_id,
            ),
            method_name="finish",
        )

    def _check_upload(self, spec: Any, catalog: Any, client: Any, folders: list[Path]) -> ValidationReport:
        """Run the automatic checks of the uploaded payloads and store their results."""
        local = read_local_iovs(folders)
        downloads = client.download_payloads((item.name, item.checksum) for item in local)
        report = validate_upload(
            client,
            self.calibration,
            catalog[self.calibration].produced_payloads,
            spec.bucket,
            local,
            spec.staging_tag,
            spec.running_tag,
            expert_config=spec.expert_config(catalog, self.calibration),
            download=downloads,
        )
        self._save_checks(spec, report)
        if report.failed:
            problems = "; ".join(result.message for result in report.failed)
            self.log.warning("Checks of %s failed: %s", self.calibration, problems)
        return report

    def _save_checks(self, spec: Any, report: ValidationReport) -> None:
        with session_scope(self.db_url) as session:
            attempt = store.get_progress(session, spec.uid, self.calibration).attempt
            gate.save_checks(session, spec.uid, self.calibration, report.results, attempt=attempt)

    def _stored_validation(self, spec: Any) -> CheckResult | None:
        with session_scope(self.db_url) as session:
            results = gate.load_checks(session, spec.uid).get(self.calibration, [])
        return next((result for result in results if result.name == CheckName.SITE_VALIDATION), None)

    def _validate_at_site(
        self, spec: Any, event: dict[str, Any], previous: CheckResult | None
    ) -> CheckResult | None:
        """Run the site's validation step and attach its files to the ticket; ``None`` without a step.

        A failed run becomes a failed check and raises nothing, so the calibration's job is not run
        again. A passed result of the same attempt is kept without running the step again.
        """
        hook = SiteHook(spec.site)
        site = hook.site_settings
        if site.validation is None:
            return None
        job_dir = str(event.get("job_folder", ""))
        attempt = int(event.get("attempt") or 1)
        key = self.ticket_keys().get(self.calibration)
        local_dir = Path(
            tempfile.gettempdir(),
            VALIDATION_COPIES,
            site.site.lower(),
            *PurePosixPath(job_dir).parts[-2:],
            f"attempt-{attempt}",
        )
        with ValidationSession(site) as session:
            result = validate_at_site(
                session,
                TicketHook(self.jira_conn_id).get_tree().api,
                site.validation,
                job_dir=job_dir,
                attempt=attempt,
                ticket_key=key,
                local_dir=local_dir,
                setup_command=site.setup_command(spec.release),
                env=job_environment(site),
                previous=previous,
                site_errors=site_errors(),
            )
        log_method = self.log.info if result.status == "passed" else self.log.warning
        log_method(
            "Site validation of %s (attempt %s, ticket %s): %s",
            self.calibration,
            attempt,
            key,
            result.message,
        )
        return result

    def finish(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Record that the expert closed the ticket."""
        if event.get("status") != "done":
            raise AirflowException(f"waiting for the ticket failed: {event.get('reason')}")
        self.update_progress(self.calibration, ticket_state="done")
        self.log.info("Ticket of %s is done", self.calibration)
        return {"calibration": self.calibration, "ticket": event.get("keys", [None])[0]}

    def _comment(self, text: str) -> None:
        key = self.ticket_keys().get(self.calibration)
        if key:
            try:
                TicketHook(self.jira_conn_id).get_tree().comment(key, text)
            except Exception as exc:  # noqa: BLE001 - a lost comment must not fail the calibration
                self.log.warning("Could not comment on %s: %s", key, exc)
