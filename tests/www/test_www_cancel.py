"""Cancelling a request from its bucket page: Airflow's runs marked failed, the state and the audit log."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select
from test_www_pages import RUN_ID, UID, seed_request

from b2cal.db import store
from b2cal.db.engine import session_scope
from b2cal.db.models import AuditEntry
from b2cal_airflow.www.airflow_api import AirflowAPIError
from b2cal_airflow.www.cancel import MAX_NOTE_CHARS, MAX_REASON_CHARS, CancelRunsError, fail_runs, run_note

BUCKET = f"/requests/{UID}"
CANCEL = f"/requests/{UID}/cancel"
RERUN_ID = f"{RUN_ID}__rerun"
DAG_ID = "b2cal_processing_request"


def cancel_entries(db_url: str) -> list[AuditEntry]:
    """Return the request's cancellation entries of the audit log, oldest first."""
    with session_scope(db_url) as session:
        query = select(AuditEntry).where(AuditEntry.action == "cancel_request").order_by(AuditEntry.id)
        entries = list(session.scalars(query))
        session.expunge_all()
    return entries


def request_state(db_url: str) -> str:
    with session_scope(db_url) as session:
        return store.get_request(session, UID).state


def post_cancel(pages, reason: str, **headers: str):
    """Send the cancel form of the bucket page with the manager's CSRF token."""
    token = pages.csrf(BUCKET)
    return pages.client.post(
        CANCEL, data={"csrf_token": token, "reason": reason}, headers=headers, follow_redirects=False
    )


def test_manager_cancels_request(pages, db_url):
    seed_request(db_url)
    pages.airflow.runs = {RUN_ID: {"state": "running"}}
    page = pages.client.get(BUCKET)
    assert 'id="cancel-form"' in page.text

    response = post_cancel(pages, "wrong bucket boundaries")

    assert response.status_code == 303
    assert response.headers["location"] == f"/b2cal/requests/{UID}"
    [update] = pages.airflow.run_updates
    assert update["dag_id"] == DAG_ID
    assert update["run_id"] == RUN_ID
    assert update["state"] == "failed"
    assert "wrong bucket boundaries" in update["note"]
    assert request_state(db_url) == "cancelled"
    [entry] = cancel_entries(db_url)
    assert entry.actor == "manager"
    assert entry.message == "wrong bucket boundaries"
    assert entry.detail["dag_run_id"] == RUN_ID
    assert entry.detail["marked_failed"] == [RUN_ID]
    assert "without_dag_run" not in entry.detail
    with session_scope(db_url) as session:
        state_entry = session.scalar(
            select(AuditEntry).where(AuditEntry.action == "request_state", AuditEntry.message == "cancelled")
        )
        assert state_entry is not None
        assert state_entry.actor == "manager"


def test_bucket_page_shows_cancellation(pages, db_url):
    seed_request(db_url)
    pages.airflow.runs = {RUN_ID: {"state": "running"}}
    post_cancel(pages, "wrong bucket boundaries")

    page = pages.client.get(BUCKET)

    assert page.status_code == 200
    assert '<span class="state" id="request-state">cancelled</span>' in page.text
    assert 'id="cancellation"' in page.text
    assert "Cancelled by manager" in page.text
    assert '<span id="cancel-reason">wrong bucket boundaries</span>' in page.text
    assert 'id="cancel-form"' not in page.text, "a cancelled request offers no second cancellation"


@pytest.mark.parametrize(
    ("main_state", "rerun_state", "expected"),
    [
        ("success", "running", [RERUN_ID]),
        ("running", "queued", [RUN_ID, RERUN_ID]),
        ("running", "failed", [RUN_ID]),
    ],
)
def test_cancel_fails_rerun_run(pages, db_url, main_state, rerun_state, expected):
    seed_request(db_url)
    pages.airflow.runs = {RUN_ID: {"state": main_state}, RERUN_ID: {"state": rerun_state}}

    response = post_cancel(pages, "superseded by a reprocessing")

    assert response.status_code == 303
    assert [update["run_id"] for update in pages.airflow.run_updates] == expected
    assert {update["state"] for update in pages.airflow.run_updates} == {"failed"}
    [entry] = cancel_entries(db_url)
    assert entry.detail["marked_failed"] == expected
    finished = {
        run: state for run, state in ((RUN_ID, main_state), (RERUN_ID, rerun_state)) if run not in expected
    }
    assert entry.detail["already_finished"] == finished
    assert request_state(db_url) == "cancelled"


@pytest.mark.parametrize("name", ["viewer", "expert"])
def test_viewers_and_experts_cannot_cancel(pages, db_url, name):
    seed_request(db_url)
    pages.airflow.runs = {RUN_ID: {"state": "running"}}
    pages.login(name)

    page = pages.client.get(BUCKET)
    rejected = pages.client.post(
        CANCEL, data={"reason": "not mine to cancel"}, headers={"Authorization": "Bearer token-of-" + name}
    )

    assert page.status_code == 200
    assert 'id="cancel-form"' not in page.text
    assert rejected.status_code == 403
    assert pages.airflow.run_updates == []
    assert request_state(db_url) == "submitted"
    assert cancel_entries(db_url) == []


def test_cancel_form_hidden_for_finished_request(pages, db_url):
    seed_request(db_url, merged=True)

    page = pages.client.get(BUCKET)

    assert page.status_code == 200
    assert 'id="cancel-form"' not in page.text


def test_cancel_without_csrf_token_rejected(pages, db_url):
    seed_request(db_url)
    pages.airflow.runs = {RUN_ID: {"state": "running"}}

    response = pages.client.post(CANCEL, data={"reason": "wrong bucket boundaries"})

    assert response.status_code == 403
    assert "security token" in response.text
    assert pages.airflow.run_updates == []
    assert request_state(db_url) == "submitted"
    assert cancel_entries(db_url) == []


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("  ", "reason is missing"),
        ("x" * (MAX_REASON_CHARS + 1), f"shorten it to at most {MAX_REASON_CHARS}"),
    ],
)
def test_invalid_reason_changes_nothing(pages, db_url, reason, message):
    seed_request(db_url)
    pages.airflow.runs = {RUN_ID: {"state": "running"}}

    response = post_cancel(pages, reason)

    assert response.status_code == 422
    assert 'data-error-for="reason"' in response.text
    assert message in response.text
    assert 'id="cancel-section" open' in response.text, "the form with the error is unfolded"
    assert pages.airflow.run_updates == []
    assert request_state(db_url) == "submitted"
    assert cancel_entries(db_url) == []


def test_second_cancel_is_conflict(pages, db_url):
    seed_request(db_url)
    pages.airflow.runs = {RUN_ID: {"state": "running"}}
    token = pages.csrf(BUCKET)
    first = pages.client.post(CANCEL, data={"csrf_token": token, "reason": "first"}, follow_redirects=False)
    assert first.status_code == 303

    second = pages.client.post(CANCEL, data={"csrf_token": token, "reason": "second"})

    assert second.status_code == 409
    assert "was already cancelled by manager" in second.text
    assert "(reason: &#39;first&#39;). Nothing was changed." in second.text
    assert f'href="/b2cal/requests/{UID}" id="bucket-link"' in second.text
    assert len(pages.airflow.run_updates) == 1
    assert [entry.message for entry in cancel_entries(db_url)] == ["first"]


def test_cancel_finished_request_is_conflict(pages, db_url):
    seed_request(db_url, merged=True)
    pages.airflow.runs = {RUN_ID: {"state": "success"}}
    token = pages.csrf("/requests/new")

    response = pages.client.post(CANCEL, data={"csrf_token": token, "reason": "too late"})

    assert response.status_code == 409
    assert f"Request {UID} is already merged, so it cannot be cancelled." in response.text
    assert 'id="bucket-link"' in response.text
    assert pages.airflow.run_updates == []
    assert request_state(db_url) == "merged"
    assert cancel_entries(db_url) == []


@pytest.mark.parametrize(("airflow_status", "page_status"), [(500, 502), (403, 403)])
def test_airflow_error_keeps_state(pages, db_url, airflow_status, page_status):
    seed_request(db_url)
    pages.airflow.runs = {RUN_ID: {"state": "running"}}
    pages.airflow.run_update_error = AirflowAPIError(airflow_status, "Airflow could not update the run")

    response = post_cancel(pages, "wrong bucket boundaries")

    assert response.status_code == page_status
    assert 'id="cancel-error"' in response.text
    assert f"({airflow_status}): Airflow could not update the run" in response.text
    assert "The request was not cancelled." in response.text
    assert "wrong bucket boundaries</textarea>" in response.text, "the reason is kept for a second try"
    assert request_state(db_url) == "submitted"
    assert cancel_entries(db_url) == []


def test_request_without_run_id_is_cancelled(pages, db_url):
    seed_request(db_url)
    with session_scope(db_url) as session:
        store.get_request(session, UID).dag_run_id = None

    response = post_cancel(pages, "submitted by mistake")

    assert response.status_code == 303
    assert pages.airflow.run_updates == []
    assert request_state(db_url) == "cancelled"
    [entry] = cancel_entries(db_url)
    assert entry.detail["dag_run_id"] is None
    assert entry.detail["without_dag_run"] == "the request has no DAG run id"
    assert "Cancelled in the plugin database only" in pages.client.get(BUCKET).text


def test_request_with_run_unknown_to_airflow(pages, db_url):
    seed_request(db_url)
    pages.airflow.runs = {}

    response = post_cancel(pages, "Airflow database was reset")

    assert response.status_code == 303
    assert pages.airflow.run_updates == []
    assert request_state(db_url) == "cancelled"
    [entry] = cancel_entries(db_url)
    assert entry.detail["dag_run_id"] == RUN_ID
    assert entry.detail["marked_failed"] == []
    assert entry.detail["without_dag_run"] == f"Airflow has no run {RUN_ID}"


def test_unknown_request_cancel_is_404(pages, db_url):
    token = pages.csrf("/requests/new")

    response = pages.client.post(
        "/requests/no-such-request/cancel", data={"csrf_token": token, "reason": "x"}
    )

    assert response.status_code == 404
    assert pages.airflow.run_updates == []


class RerunRejectingAirflow:
    """Airflow with a running run and rerun that accepts the first update and rejects the second."""

    def __init__(self) -> None:
        self.updated: list[str] = []

    async def get_run(self, dag_id: str, run_id: str) -> dict[str, str]:
        return {"dag_run_id": run_id, "state": "running"}

    async def set_run_state(self, dag_id: str, run_id: str, state: str, note: str = "") -> dict[str, str]:
        if run_id == RERUN_ID:
            raise AirflowAPIError(500, "database is locked")
        self.updated.append(run_id)
        return {"dag_run_id": run_id, "state": state}


def test_fail_runs_names_runs_failed_before_error():
    airflow = RerunRejectingAirflow()

    with pytest.raises(CancelRunsError) as caught:
        asyncio.run(fail_runs(airflow, DAG_ID, RUN_ID, "note"))  # type: ignore[arg-type]

    assert airflow.updated == [RUN_ID]
    assert caught.value.run_id == RERUN_ID
    assert caught.value.marked_failed == [RUN_ID]
    assert caught.value.error.status == 500


def test_run_note_fits_airflow_limit():
    note = run_note("manager", "x" * MAX_REASON_CHARS)

    assert len(note) == MAX_NOTE_CHARS
    assert note.startswith("Cancelled by manager")
    assert note.endswith("…")
    assert run_note("manager", "short") == "Cancelled by manager on the calibration pages: short"


def test_cancel_stops_a_job_that_just_started(pages, db_url, tmp_path, monkeypatch):
    """A job whose trigger has not run yet is stopped by the page, not left to finish."""
    import json
    import sys
    from pathlib import Path

    from b2cal.jobs import LocalTransport
    from b2cal.remote import JobLaunch, JobPaths, job_folder, launch_job

    seed_request(db_url)
    with session_scope(db_url) as session:
        site = store.get_request(session, UID).site
        badwire = store.get_progress(session, UID, "CDC badwire")
        badwire.job_state, badwire.ticket_state, badwire.attempt = "running", "new", 1
    work_root = tmp_path / "jobs"
    extra = {"work_root": str(work_root), "storage_root": str(tmp_path / "storage")}
    monkeypatch.setenv(
        f"AIRFLOW_CONN_B2CAL_SITE_{site.upper()}", json.dumps({"conn_type": "generic", "extra": extra})
    )
    folder = job_folder(str(work_root), UID, "CDC badwire")
    launch = JobLaunch(paths=JobPaths(folder, 1), argv=[sys.executable, "-c", "import time; time.sleep(60)"])
    asyncio.run(launch_job(LocalTransport(), launch))
    pages.airflow.runs = {RUN_ID: {"state": "running"}}

    assert post_cancel(pages, "started on the wrong bucket").status_code == 303

    assert (Path(folder) / "attempt-1" / "job.cancelled").exists()
    with session_scope(db_url) as session:
        assert store.get_progress(session, UID, "CDC badwire").job_state == "cancelled"
        assert store.get_progress(session, UID, "CDC Tracking").job_state == "succeeded"
        stop = session.scalar(select(AuditEntry).where(AuditEntry.action == "stop_request_work"))
        assert stop is not None
        assert stop.detail["stopped_jobs"] == ["CDC badwire"]


def test_signoff_page_of_cancelled_request_expects_no_report(pages, db_url):
    seed_request(db_url)
    pages.airflow.runs = {RUN_ID: {"state": "running"}}
    assert post_cancel(pages, "wrong bucket boundaries").status_code == 303

    page = pages.client.get(f"/requests/{UID}/signoff").text

    readiness = page.split('id="readiness">', 1)[1].split("</p>", 1)[0]
    assert readiness == "No readiness report: the request was cancelled, so it is not signed off."
