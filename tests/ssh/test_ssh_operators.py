"""The calibration and cDST production operators at an SSH site, with the development services.

Each operator runs with a minimal context, as the rucio operator tests do: a deferring operator raises
TaskDeferred, the test runs the trigger it carries, as the triggerer would, and passes the event to the
method the operator named. The services (Jira, conditions database, run registry) run in this process,
the jobs and the site validation program at the loopback sshd.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, TaskDeferred
from conftest import first_event, run_async, set_site

from b2cal.catalog import Catalog, load_packaged_release
from b2cal.conddb import ConditionsDB
from b2cal.db import gate, store
from b2cal.db.engine import session_scope, upgrade
from b2cal.devservices.config import DevServicesConfig
from b2cal.devservices.server import DevServices, start_services
from b2cal.devtools.sshd import LoopbackSSHD
from b2cal.iov import IoV
from b2cal.jira_api import SERVER, JiraApi
from b2cal.readiness import BlockerKind, build_report
from b2cal.request import RequestSpec
from b2cal.sites import SiteSettings
from b2cal.validation import CheckName, CheckResult
from b2cal_airflow.operators.calibration import CalibrationOperator
from b2cal_airflow.operators.request import CdstProductionOperator, CreateTicketTreeOperator
from b2cal_airflow.triggers.caf import CafJobTrigger

CALIBRATION = "CDC deadboard"
CATALOG = load_packaged_release()
BUCKET = IoV(26, 0, 26, 100)
INJECTIONS = ("x; touch {marker}", "$(touch {marker})", "x\ntouch {marker}", "../../etc", "/etc/passwd")


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServices]:
    """Run Jira, the conditions database and the run registry with a small storage tree of experiment 26."""
    config = DevServicesConfig(
        jira_experts=tuple(sorted({s.expert_username for s in CATALOG.calibrations.values()})),
        experiments=(26,),
        runs_per_experiment=12,
        files_per_skim=1,
    )
    handle = start_services(
        jira_port=0,
        conddb_port=0,
        runregistry_port=0,
        state_dir=tmp_path_factory.mktemp("services"),
        config=config,
    )
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Create the plugin database once, with the packaged catalog, and return its URL."""
    url = f"sqlite:///{tmp_path_factory.mktemp('plugin-db') / 'b2cal.db'}"
    upgrade(url)
    with session_scope(url) as session:
        store.import_catalog(session, CATALOG, source="packaged")
    return url


@pytest.fixture
def site(
    monkeypatch, services: DevServices, sshd: LoopbackSSHD, database: str, tmp_path: Path
) -> SiteSettings:
    """Point every connection at the services and the site DESY at the loopback sshd; return DESY."""
    config = services.config
    db_url = database
    connections = {
        "B2CAL_DB": {"conn_type": "generic", "extra": {"url": db_url}},
        "B2CAL_JIRA": {
            "conn_type": "jira",
            "host": services.jira_url,
            "login": config.jira_bot_username,
            "password": config.jira_bot_password,
            "extra": {"project": config.jira_projects[0], "poll_interval": 0.5},
        },
        "B2CAL_CONDDB": {"conn_type": "http", "host": services.conddb_url, "password": config.conddb_token},
        "B2CAL_RUNREGISTRY": {
            "conn_type": "http",
            "host": services.runregistry_url,
            "password": config.runregistry_api_key,
        },
    }
    for name, value in connections.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{name}", json.dumps(value))
    monkeypatch.setenv("AIRFLOW_VAR_B2CAL_AUTOPILOT", "false")
    assert services.storage_root is not None
    return set_site(monkeypatch, "DESY", sshd, tmp_path, storage_root=str(services.storage_root))


def db_url() -> str:
    return json.loads(os.environ["AIRFLOW_CONN_B2CAL_DB"])["extra"]["url"]


def save_request(catalog: Catalog = CATALOG, **fields: Any) -> RequestSpec:
    """Store a request of the site DESY for ``CDC deadboard``, with ``fields`` changed."""
    uid = f"ssh-{uuid.uuid4().hex[:8]}"
    values: dict[str, Any] = {
        "uid": uid,
        "kind": "prompt",
        "site": "DESY",
        "release": catalog.release,
        "bucket": BUCKET,
        "calibrations": (CALIBRATION,),
        "staging_tag": f"staging_{uid.replace('-', '_')}",
        "running_tag": "b2cal_prompt_running",
        "requested_by": "manager",
    }
    values.update(fields)
    spec = RequestSpec(**values)
    with session_scope(db_url()) as session:
        store.save_request(session, spec, catalog)
    return spec


def context(conf: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"dag_run": SimpleNamespace(conf=conf or {}), "params": {}, "run_id": "test"}


def calibration_operator(spec: RequestSpec) -> CalibrationOperator:
    return CalibrationOperator(task_id="raw_phase", request_id=spec.uid, calibration=CALIBRATION)


def deferred_job(operator: CalibrationOperator, ctx: dict[str, Any]) -> CafJobTrigger:
    with pytest.raises(TaskDeferred) as caught:
        operator.execute(ctx)
    assert caught.value.method_name == "upload"
    trigger = caught.value.trigger
    assert isinstance(trigger, CafJobTrigger)
    return trigger


def conddb(services: DevServices) -> ConditionsDB:
    return ConditionsDB(services.conddb_url, token=services.config.conddb_token)


def prepare_tickets_and_tag(spec: RequestSpec, services: DevServices) -> str:
    """Create the request's ticket and staging tag as the earlier steps do, and return the ticket key."""
    keys = CreateTicketTreeOperator(task_id="tickets", request_id=spec.uid).execute(context())
    conddb(services).prepare_staging_tag(spec.staging_tag, "staging tag of an SSH operator test")
    return keys[CALIBRATION]


def progress(spec: RequestSpec) -> Any:
    with session_scope(db_url()) as session:
        row = store.get_progress(session, spec.uid, CALIBRATION)
        session.expunge(row)
        return row


def progress_of(spec: RequestSpec, calibration: str) -> Any:
    with session_scope(db_url()) as session:
        row = store.get_progress(session, spec.uid, calibration)
        session.expunge(row)
        return row


def jira_comments(services: DevServices, key: str) -> list[str]:
    from atlassian import Jira

    config = services.config
    client = Jira(services.jira_url, username=config.jira_bot_username, password=config.jira_bot_password)
    return [comment["body"] for comment in client.issue_get_comments(key)["comments"]]


class TestCalibrationOverSsh:
    def test_job_runs_and_payloads_reach_the_staging_tag(
        self, site: SiteSettings, services: DevServices
    ) -> None:
        spec = save_request()
        key = prepare_tickets_and_tag(spec, services)
        operator = calibration_operator(spec)

        trigger = deferred_job(operator, context())
        event = run_async(first_event(trigger))
        with pytest.raises(TaskDeferred) as caught:
            operator.upload(context(), event)

        assert caught.value.method_name == "finish"
        assert event["status"] == "succeeded", event["reason"]
        assert trigger.site == "DESY"
        assert trigger.attempt == 1
        payloads = conddb(services).global_tag_payloads(spec.staging_tag)
        assert {payload.name for payload in payloads} == {"CDCBadBoards"}
        row = progress(spec)
        assert row.job_state == "succeeded"
        assert row.attempt == 1
        assert row.job_id.endswith("/attempt-1")
        assert row.upload_state == "uploaded"
        with session_scope(db_url()) as session:
            assert store.get_request(session, spec.uid).state == "raw_phase"
        assert any(
            comment.startswith("Attempt 1 started at DESY") for comment in jira_comments(services, key)
        )

    def test_trigger_reports_progress_to_the_plugin_database(self, site: SiteSettings) -> None:
        spec = save_request()
        trigger = deferred_job(calibration_operator(spec), context())

        run_async(first_event(trigger))

        detail = progress(spec).job_detail
        assert detail["site"] == "DESY"
        assert detail["states"] == {CALIBRATION: "completed"}
        assert detail["subjobs_total"] >= 1
        assert detail["subjobs_done"] == detail["subjobs_total"]

    def test_retried_task_attaches_to_its_job(self, site: SiteSettings) -> None:
        spec = save_request()
        first = deferred_job(calibration_operator(spec), context())

        second = deferred_job(calibration_operator(spec), context())

        assert second.serialize() == first.serialize()
        attempts = sorted(path.name for path in Path(first.job_folder).glob("attempt-*"))
        assert attempts == ["attempt-1"]
        event = run_async(first_event(second))
        assert event["status"] == "succeeded", event["reason"]

    def test_failed_calibration_then_clean_start(
        self, monkeypatch, site: SiteSettings, sshd: LoopbackSSHD, services: DevServices, tmp_path: Path
    ) -> None:
        spec = save_request()
        key = prepare_tickets_and_tag(spec, services)
        failing_env = {**site.env, "B2CAL_FAKE_FAIL": f"{CALIBRATION}:algorithms"}
        set_site(monkeypatch, "DESY", sshd, tmp_path, storage_root=site.storage_root, env=failing_env)
        operator = calibration_operator(spec)

        event = run_async(first_event(deferred_job(operator, context())))
        with pytest.raises(AirflowException) as failure:
            operator.upload(context(), event)

        assert "'CDC deadboard' is failed" in str(failure.value)
        assert "CDC deadboard failed!" in str(failure.value)
        assert progress(spec).job_state == "failed"
        assert any("End of the log" in comment for comment in jira_comments(services, key))

        set_site(monkeypatch, "DESY", sshd, tmp_path, storage_root=site.storage_root)
        trigger = deferred_job(operator, context({"clean_start": [CALIBRATION]}))
        assert trigger.attempt == 2
        discarded = Path(trigger.job_folder) / "attempt-2" / "discarded-calibration_results"
        assert discarded.is_dir()
        assert run_async(first_event(trigger))["status"] == "succeeded"
        assert progress(spec).attempt == 2

    def test_rerun_after_rejection_starts_the_next_attempt(self, site: SiteSettings) -> None:
        spec = save_request()
        first = deferred_job(calibration_operator(spec), context())
        assert run_async(first_event(first))["status"] == "succeeded"
        with session_scope(db_url()) as session:
            store.update_progress(session, spec.uid, CALIBRATION, attempt=2, job_state="pending")

        rerun = deferred_job(calibration_operator(spec), context({"clean_start": [CALIBRATION]}))

        assert rerun.attempt == 2
        assert (Path(rerun.job_folder) / "attempt-2" / "discarded-caf_outputdb_results").is_dir()
        assert run_async(first_event(rerun))["status"] == "succeeded"


def close_ticket(key: str) -> None:
    """Close a ticket as an expert would, through the Jira connection of the tasks."""
    from b2cal_airflow.hooks.b2cal import TicketHook

    assert TicketHook().get_tree().transition_to(key)


def ticket_category(key: str) -> str:
    from b2cal_airflow.hooks.b2cal import TicketHook

    return TicketHook().get_tree().categories([key])[key]


def reopen_audits(spec: RequestSpec) -> list[tuple[str | None, str | None]]:
    from sqlalchemy import select

    from b2cal.db.models import AuditEntry

    with session_scope(db_url()) as session:
        entries = session.scalars(
            select(AuditEntry).where(AuditEntry.request_uid == spec.uid, AuditEntry.action == "reopen_ticket")
        ).all()
        return [(entry.calibration, (entry.detail or {}).get("key")) for entry in entries]


class TestTicketClosedEarly:
    def test_dependency_closed_before_upload_is_reopened(
        self, site: SiteSettings, services: DevServices
    ) -> None:
        spec = save_request(calibrations=("CDC Tracking", "CDC badwire"))
        keys = CreateTicketTreeOperator(task_id="tickets", request_id=spec.uid).execute(context())
        dependency = keys["CDC Tracking"]
        close_ticket(dependency)
        dependent = CalibrationOperator(task_id="raw_phase", request_id=spec.uid, calibration="CDC badwire")

        with pytest.raises(TaskDeferred) as caught:
            dependent.execute(context())

        assert caught.value.method_name == "start_job"
        assert ticket_category(dependency) != "done"
        assert any(text.startswith("Reopened by b2cal") for text in jira_comments(services, dependency))
        assert reopen_audits(spec) == [("CDC Tracking", dependency)]
        assert progress_of(spec, "CDC badwire").job_state == "waiting_for_dependencies"

        # Once the payloads are uploaded, closing the ticket releases the dependent.
        with session_scope(db_url()) as session:
            store.update_progress(session, spec.uid, "CDC Tracking", upload_state="uploaded")
        close_ticket(dependency)
        assert dependent._dependencies_ready(spec, ["CDC Tracking"], keys)
        assert ticket_category(dependency) == "done"
        assert len(reopen_audits(spec)) == 1

    def test_own_ticket_closed_before_upload_waits_for_review(
        self, site: SiteSettings, services: DevServices
    ) -> None:
        spec = save_request()
        key = prepare_tickets_and_tag(spec, services)
        close_ticket(key)
        operator = calibration_operator(spec)

        run_to_upload(operator)

        assert ticket_category(key) != "done"
        assert any(text.startswith("Reopened by b2cal") for text in jira_comments(services, key))
        assert progress(spec).upload_state == "uploaded"
        # A retry after the upload leaves the ticket that the expert closed since then as it is.
        close_ticket(key)
        assert ticket_category(key) == "done"
        assert operator.execute(context()) == {"calibration": CALIBRATION, "ticket": key}
        assert ticket_category(key) == "done"
        assert reopen_audits(spec) == [(CALIBRATION, key)]


class TestCdstProductionOverSsh:
    def test_cdst_production_judged_by_exit_status(self, site: SiteSettings) -> None:
        spec = save_request()
        operator = CdstProductionOperator(task_id="cdst_production", request_id=spec.uid)

        with pytest.raises(TaskDeferred) as caught:
            operator.execute(context())
        trigger = caught.value.trigger
        event = run_async(first_event(trigger))
        operator.execute_complete(context(), event)

        assert trigger.judge == "exit_status"
        assert event["status"] == "succeeded", event["reason"]
        assert any(Path(site.cdst_root).rglob("*_cdst.root")) or any(Path(site.cdst_root).rglob("*.root"))
        # A retry after success takes the outcome without starting cDST production again.
        operator.execute(context())
        assert sorted(path.name for path in Path(trigger.job_folder).glob("attempt-*")) == ["attempt-1"]

    def test_new_cdst_attempt_writes_a_new_folder(
        self, monkeypatch: pytest.MonkeyPatch, site: SiteSettings, sshd: LoopbackSSHD, tmp_path: Path
    ) -> None:
        # The production takes two seconds, so that a retry finds its attempt still running.
        slow = ["/bin/sh", "-c", 'sleep 2 && exec "$@"', "cdst", "b2cal", "dev-cdst-production"]
        slow += ["--raw-root", "{raw_root}", "--cdst-root", "{cdst_root}", "--bucket", "{bucket}"]
        site = set_site(
            monkeypatch, "DESY", sshd, tmp_path, storage_root=site.storage_root, cdst_command=slow
        )
        spec = save_request()
        operator = CdstProductionOperator(task_id="cdst_production", request_id=spec.uid)
        with pytest.raises(TaskDeferred) as caught:
            operator.execute(context())
        first = caught.value.trigger
        assert run_async(first_event(first))["status"] == "succeeded"
        first_files = sorted(Path(site.cdst_root).glob("*/e*/r*/*_cdst.root"))
        assert first_files

        # A rejection of a raw-phase calibration raises the request's cDST production attempt.
        with session_scope(db_url()) as session:
            store.set_cdst_attempt(session, spec.uid, 2, actor="manager")
        with pytest.raises(TaskDeferred) as caught:
            operator.execute(context())
        second = caught.value.trigger
        with pytest.raises(TaskDeferred) as caught:
            operator.execute(context())
        retry = caught.value.trigger
        event = run_async(first_event(second))

        assert second.attempt == 2
        assert retry.attempt == 2
        assert retry.job_folder == second.job_folder == first.job_folder
        assert event["status"] == "succeeded", event["reason"]
        attempt_folders = sorted(path.name for path in Path(second.job_folder).glob("attempt-*"))
        assert attempt_folders == ["attempt-1", "attempt-2"]
        output = Path(site.cdst_root, "attempts", spec.uid, "attempt-2")
        assert sorted(path.relative_to(output) for path in output.glob("*/e*/r*/*_cdst.root")) == sorted(
            path.relative_to(site.cdst_root) for path in first_files
        )
        assert sorted(Path(site.cdst_root).glob("*/e*/r*/*_cdst.root")) == first_files
        with session_scope(db_url()) as session:
            assert store.get_cdst_attempt(session, spec.uid) == 2

        # Once attempt 2 succeeded, a retry takes its outcome and starts nothing.
        operator.execute(context())
        assert sorted(path.name for path in Path(second.job_folder).glob("attempt-*")) == attempt_folders


# The site validation step

STEP = {"command": "b2val-prompt-run", "options": ["--plots", "2"], "timeout": 60}
ATTACH_ROUTE = "POST /rest/api/2/issue/{id_or_key}/attachments"


def with_validation(
    monkeypatch: pytest.MonkeyPatch, site: SiteSettings, sshd: LoopbackSSHD, root: Path, **overrides: Any
) -> SiteSettings:
    """Give the site DESY the validation step, keeping its storage."""
    return set_site(
        monkeypatch, "DESY", sshd, root, storage_root=site.storage_root, validation=STEP, **overrides
    )


def jira_api(services: DevServices) -> JiraApi:
    from atlassian import Jira

    config = services.config
    client = Jira(services.jira_url, username=config.jira_bot_username, password=config.jira_bot_password)
    return JiraApi(client, mode=SERVER)


def stored_validation(spec: RequestSpec) -> CheckResult:
    with session_scope(db_url()) as session:
        results = gate.load_checks(session, spec.uid)[CALIBRATION]
    [result] = [item for item in results if item.name == CheckName.SITE_VALIDATION]
    return result


def uploads(services: DevServices) -> int:
    return services.jira_state.request_counts().get(ATTACH_ROUTE, 0)


def run_to_upload(operator: CalibrationOperator) -> dict[str, Any]:
    """Run the job to its end and pass its event to ``upload``, which defers to the ticket wait."""
    event = run_async(first_event(deferred_job(operator, context())))
    assert event["status"] == "succeeded", event["reason"]
    with pytest.raises(TaskDeferred) as caught:
        operator.upload(context(), event)
    assert caught.value.method_name == "finish"
    return event


def retry(operator: CalibrationOperator) -> None:
    """Run the task again, as a retry does: it finds the job finished, uploads and checks again."""
    with pytest.raises(TaskDeferred) as caught:
        operator.execute(context())
    assert caught.value.method_name == "finish"


def report_blockers(spec: RequestSpec, key: str, services: DevServices) -> list[Any]:
    """Return the blockers of the request's readiness report, with its one ticket done."""
    with session_scope(db_url()) as session:
        checks = gate.load_checks(session, spec.uid)
    staging = conddb(services).global_tag_payloads(spec.staging_tag)
    report = build_report(
        request_uid=spec.uid,
        bucket=spec.bucket,
        release=spec.release,
        site=spec.site,
        staging_tag=spec.staging_tag,
        running_tag=spec.running_tag,
        manager=spec.requested_by,
        calibrations=[CALIBRATION],
        catalog=CATALOG,
        ticket_keys={CALIBRATION: key},
        ticket_categories={key: "done"},
        checks=checks,
        staging=staging,
        running=[],
        staging_state="OPEN",
        running_state="RUNNING",
    )
    return report.blockers


class TestSiteValidationOverSsh:
    def test_outputs_are_attached_once(
        self,
        monkeypatch: pytest.MonkeyPatch,
        site: SiteSettings,
        sshd: LoopbackSSHD,
        services: DevServices,
        tmp_path: Path,
    ) -> None:
        with_validation(monkeypatch, site, sshd, tmp_path)
        spec = save_request()
        key = prepare_tickets_and_tag(spec, services)
        operator = CalibrationOperator(task_id="raw_phase", request_id=spec.uid, calibration=CALIBRATION)

        event = run_to_upload(operator)

        folder = Path(event["job_folder"]) / "validation" / "attempt-1"
        listed = ["summary.txt", "CDC deadboard_payloads_1.png", "CDC deadboard_payloads_2.png"]
        listed.append("validation_report.pdf")
        attachments = jira_api(services).attachments(key)
        assert sorted(item["filename"] for item in attachments) == sorted(listed)
        sizes = {item["filename"]: item["size"] for item in attachments}
        assert sizes["summary.txt"] == (folder / "summary.txt").stat().st_size
        result = stored_validation(spec)
        assert result.status == "passed", result.message
        assert "4 files attached to" in result.message
        assert result.detail["attempt"] == 1
        assert report_blockers(spec, key, services) == []

        # A retry of the upload keeps the passed result: nothing runs and nothing is attached again.
        log_written = (folder / "validation.log").stat().st_mtime_ns
        posted = uploads(services)
        retry(operator)
        assert uploads(services) == posted
        assert (folder / "validation.log").stat().st_mtime_ns == log_written
        assert len(jira_api(services).attachments(key)) == 4

        # Without the stored result, the successful run at the site is reused and no file is attached twice.
        with session_scope(db_url()) as session:
            gate.clear_checks(session, spec.uid, [CALIBRATION])
        retry(operator)
        result = stored_validation(spec)
        assert result.status == "passed", result.message
        assert result.detail["reused_run"] is True
        assert result.detail["attached"] == []
        assert sorted(result.detail["already_attached"]) == sorted(listed)
        assert uploads(services) == posted
        assert (folder / "validation.log").stat().st_mtime_ns == log_written
        assert len(jira_api(services).attachments(key)) == 4

    def test_failed_run_is_a_failed_check_that_blocks(
        self,
        monkeypatch: pytest.MonkeyPatch,
        site: SiteSettings,
        sshd: LoopbackSSHD,
        services: DevServices,
        tmp_path: Path,
    ) -> None:
        failing = {**site.env, "B2CAL_FAKE_VALIDATION_FAIL": "3"}
        with_validation(monkeypatch, site, sshd, tmp_path, env=failing)
        spec = save_request()
        key = prepare_tickets_and_tag(spec, services)
        operator = CalibrationOperator(task_id="raw_phase", request_id=spec.uid, calibration=CALIBRATION)

        event = run_to_upload(operator)

        result = stored_validation(spec)
        assert result.status == "failed"
        assert "b2val-prompt-run failed with exit status 3" in result.message
        assert "[ERROR] validation of" in result.message
        assert jira_api(services).attachments(key) == []
        blockers = [
            item for item in report_blockers(spec, key, services) if item.kind == BlockerKind.CHECK_FAILED
        ]
        assert len(blockers) == 1
        assert "check site_validation of CDC deadboard failed" in blockers[0].message
        assert sorted(path.name for path in Path(event["job_folder"]).glob("attempt-*")) == ["attempt-1"]

        # Once the site is fixed, the next pass moves the failed run aside and runs the step again.
        with_validation(monkeypatch, site, sshd, tmp_path)
        retry(operator)
        assert stored_validation(spec).status == "passed"
        validation = Path(event["job_folder"]) / "validation"
        assert len(list(validation.glob("attempt-1.failed-*"))) == 1
        assert len(jira_api(services).attachments(key)) == 4
        assert report_blockers(spec, key, services) == []
        assert sorted(path.name for path in Path(event["job_folder"]).glob("attempt-*")) == ["attempt-1"]


FIELDS = (
    "uid",
    "kind",
    "site",
    "release",
    "staging_tag",
    "running_tag",
    "requested_by",
    "calibrations",
    "filter_overrides",
    "expert_config_overrides",
)


def malicious(field: str, payload: str) -> Any:
    if field == "calibrations":
        return (payload,)
    if field == "filter_overrides":
        return {CALIBRATION: {"mumu_tight_or_highm_calib": [payload]}}
    if field == "expert_config_overrides":
        return {CALIBRATION: {"note": payload}}
    return payload


class TestInjection:
    @pytest.mark.parametrize("field", FIELDS)
    @pytest.mark.parametrize("template", INJECTIONS)
    def test_request_field_never_reaches_the_site(
        self, field: str, template: str, site: SiteSettings, sshd: LoopbackSSHD, tmp_path: Path
    ) -> None:
        # A short path, because a calibration name has at most 64 characters.
        marker = Path(tempfile.gettempdir()) / f"b2cal-injected-{uuid.uuid4().hex[:6]}"
        payload = template.format(marker=marker)
        catalog, calibration = CATALOG, CALIBRATION
        if field == "release":
            # The request must find a catalog of its release; import one under the hostile name.
            catalog = dataclasses.replace(CATALOG, release=payload)
        if field == "calibrations":
            # A release whose prompt script declares a hostile calibration name.
            calibration = payload
            hostile = dataclasses.replace(CATALOG[CALIBRATION], name=payload)
            catalog = dataclasses.replace(
                CATALOG, release=f"release-hostile-{uuid.uuid4().hex[:6]}", calibrations={payload: hostile}
            )
        if catalog is not CATALOG:
            with session_scope(db_url()) as session:
                store.import_catalog(session, catalog, source="test")
        spec = save_request(catalog, **{field: malicious(field, payload)})
        logins = sshd.accepted_logins()

        with pytest.raises(AirflowException) as caught:
            CalibrationOperator(task_id="raw_phase", request_id=spec.uid, calibration=calibration).execute(
                context()
            )

        message = str(caught.value)
        label = {"uid": "request_id", "expert_config_overrides": "expert_config"}.get(field, field)
        assert label in message
        assert "was not sent to site" in message
        assert sshd.accepted_logins() == logins
        assert not marker.exists()
        assert not Path(site.work_root).exists()

    def test_cdst_production_rejects_a_hostile_request(self, site: SiteSettings, sshd: LoopbackSSHD) -> None:
        spec = save_request(staging_tag="tag;reboot")
        logins = sshd.accepted_logins()

        with pytest.raises(AirflowException, match="staging_tag"):
            CdstProductionOperator(task_id="cdst_production", request_id=spec.uid).execute(context())

        assert sshd.accepted_logins() == logins
