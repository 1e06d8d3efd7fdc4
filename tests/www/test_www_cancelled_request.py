"""The reading pages of a cancelled request: calibration states, progress, durations."""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_www_pages import RUN_ID, START, UID, seed_request

from b2cal.db import store
from b2cal.db.engine import session_scope
from b2cal.db.models import AuditEntry

BUCKET = f"/requests/{UID}"
#: When the seeded request is cancelled: ten hours after it started.
CANCELLED_AT = START + timedelta(hours=10)


def seed_cancelled_request(db_url: str) -> None:
    """Store the request of :func:`seed_request` as a manager's cancellation leaves it.

    CDC Tracking is done. CDC badwire runs again from 8 h and is cancelled at 10 h, as the cancel
    form marks every calibration whose job has not ended.
    """
    seed_request(db_url)
    with session_scope(db_url) as session:
        row = store.get_request(session, UID)
        row.state = "cancelled"
        badwire = store.get_progress(session, UID, "CDC badwire")
        badwire.job_state, badwire.ticket_state = "cancelled", "new"
        history = [
            (8, "update_progress", "CDC badwire", "", {"job_state": "running"}),
            (10, "request_state", None, "cancelled", {}),
            (10, "cancel_request", None, "wrong bucket boundaries", {}),
            (10, "update_progress", "CDC badwire", "", {"job_state": "cancelled"}),
        ]
        for hours, action, calibration, message, detail in history:
            session.add(
                AuditEntry(
                    at=START + timedelta(hours=hours),
                    actor="manager",
                    action=action,
                    request_uid=UID,
                    calibration=calibration,
                    message=message,
                    detail=detail,
                )
            )


def test_api_counts_cancelled_calibrations(pages, db_url):
    seed_cancelled_request(db_url)

    data = pages.client.get(f"/api/requests/{UID}").json()

    assert data["counts"]["cancelled"] == 1
    assert data["counts"]["queued"] == 0
    assert data["counts"]["done"] == 1
    states = {item["calibration"]: item["state"] for item in data["progress"]}
    assert states == {"CDC Tracking": "done", "CDC badwire": "cancelled"}
    [listed] = pages.client.get("/api/requests").json()
    assert listed["counts"]["cancelled"] == 1


def test_bucket_page_shows_cancelled_calibration(pages, db_url):
    seed_cancelled_request(db_url)

    page = pages.client.get(BUCKET).text

    row = page.split('<tr data-calibration="CDC badwire"', 1)[1].split("</tr>", 1)[0]
    assert 'data-state="cancelled"' in row
    assert '<span class="pill s-cancelled">cancelled</span>' in row
    assert "1 of 2 done, 1 cancelled" in page
    bar = page.split('id="bucket-live"', 1)[1].split('class="bar"', 1)[1].split("</div>", 1)[0]
    assert 'class="s-cancelled"' in bar
    assert 'class="s-queued"' not in bar
    timeline_row = page.split('data-calibration="CDC badwire" data-state="', 1)[1]
    assert timeline_row.startswith("cancelled")


def test_requests_list_shows_cancelled_progress(pages, db_url):
    seed_cancelled_request(db_url)

    page = pages.client.get("/").text

    row = page.split(f'data-request="{UID}"', 1)[1].split("</tr>", 1)[0]
    assert "1 of 2 done, 1 cancelled" in row
    assert 'class="s-cancelled"' in row
    assert 'class="s-queued"' not in row


def test_durations_stop_at_cancellation(pages, db_url):
    seed_cancelled_request(db_url)
    expected_days = 10 / 24

    data = pages.client.get(f"/api/requests/{UID}").json()
    [listed] = pages.client.get("/api/durations").json()
    page = pages.client.get("/durations").text

    assert data["durations"]["bucket_days"] == pytest.approx(expected_days)
    assert data["durations"]["finished"] is False
    assert data["durations"]["end_state"] == "cancelled"
    assert data["durations"]["ended_at"] == CANCELLED_AT.isoformat()
    assert listed["bucket_days"] == pytest.approx(expected_days)
    assert listed["end_state"] == "cancelled"
    row = page.split(f'<tr data-request="{UID}"', 1)[1].split("</tr>", 1)[0]
    assert 'data-end-state="cancelled"' in row
    assert "never: cancelled 2026-11-02 18:00" in row
    assert f"<td>{expected_days:.1f}</td>" in row
    assert "not yet" not in row
    assert "so far" not in row


def test_bucket_page_durations_say_cancelled(pages, db_url):
    seed_cancelled_request(db_url)

    page = pages.client.get(BUCKET).text

    durations = page.split('id="bucket-durations"', 1)[1].split("</table>", 1)[0]
    assert "10.0 hours, until the request was cancelled" in durations
    assert "so far" not in durations


def test_failed_request_without_audit_stops_at_update(pages, db_url):
    seed_request(db_url)
    failed_at = START + timedelta(hours=6)
    with session_scope(db_url) as session:
        row = store.get_request(session, UID)
        row.state = "failed"
        row.updated_at = failed_at

    [listed] = pages.client.get("/api/durations").json()

    assert listed["bucket_days"] == pytest.approx(6 / 24)
    assert listed["end_state"] == "failed"
    assert listed["ended_at"] == failed_at.isoformat()


def test_cancel_form_leaves_calibration_cancelled(pages, db_url):
    seed_request(db_url)
    with session_scope(db_url) as session:
        badwire = store.get_progress(session, UID, "CDC badwire")
        badwire.job_state, badwire.ticket_state = "running", "new"
    pages.airflow.runs = {RUN_ID: {"state": "running"}}
    token = pages.csrf(BUCKET)
    response = pages.client.post(
        f"{BUCKET}/cancel",
        data={"csrf_token": token, "reason": "wrong bucket boundaries"},
        follow_redirects=False,
    )
    assert response.status_code == 303

    data = pages.client.get(f"/api/requests/{UID}").json()
    [listed] = pages.client.get("/api/durations").json()
    again = pages.client.get("/api/durations").json()[0]

    assert data["counts"]["cancelled"] == 1
    assert data["counts"]["queued"] == 0
    assert data["durations"]["end_state"] == "cancelled"
    assert listed["ended_at"] is not None
    assert again["bucket_days"] == listed["bucket_days"], "the clock stopped at the cancellation"
