"""The reading pages and the sign-off page, on a request whose progress is written into the database."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree

import pytest
from fastapi import HTTPException
from sqlalchemy import select

from b2cal.catalog import load_packaged_release
from b2cal.db import gate, store
from b2cal.db.engine import session_scope
from b2cal.db.models import AuditEntry, CalibrationCheck
from b2cal.iov import IoV
from b2cal.reports import BucketDurations
from b2cal.request import RequestSpec
from b2cal_airflow.www import charts
from b2cal_airflow.www.airflow_api import AirflowAPIError
from b2cal_airflow.www.context import current_user, duration_text

UID = "prompt-e0026-r00000"
START = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
CHAIN = ["CDC Tracking", "CDC badwire"]


def chain_spec(uid: str, bucket: IoV, staging_tag: str) -> RequestSpec:
    """Return a prompt request at BNL for :data:`CHAIN` of the packaged release."""
    return RequestSpec(
        uid=uid,
        kind="prompt",
        site="BNL",
        release=load_packaged_release().release,
        bucket=bucket,
        calibrations=tuple(CHAIN),
        staging_tag=staging_tag,
        running_tag="b2cal_prompt_running",
        requested_by="manager",
    )


def seed_request(db_url: str, *, merged: bool = False) -> None:
    """Store a request for CDC badwire (and CDC Tracking) with a known history.

    CDC Tracking runs 1 h to 3 h and its ticket is done at 5 h; CDC badwire waits for it, runs
    5 h to 6 h and waits for its expert from then on.
    """
    catalog = load_packaged_release()
    spec = chain_spec(UID, IoV(26, 0, 26, 60), "staging_prompt_e0026")
    history = [
        (1, "CDC Tracking", {"job_state": "running"}),
        (3, "CDC Tracking", {"job_state": "succeeded"}),
        (3, "CDC Tracking", {"ticket_state": "waiting_for_expert"}),
        (5, "CDC Tracking", {"ticket_state": "done"}),
        (5, "CDC badwire", {"job_state": "running"}),
        (6, "CDC badwire", {"job_state": "succeeded"}),
    ]
    with session_scope(db_url) as session:
        row = store.save_request(session, spec, catalog)
        row.created_at = START
        row.dag_run_id = "b2cal__prompt-e0026-r00000__20261102T080000"
        for name, key in zip(CHAIN, ("CAL-1", "CAL-2"), strict=True):
            store.update_progress(session, UID, name, ticket_key=key, ticket_state="new")
        session.flush()
        for entry in session.scalars(select(AuditEntry)):
            entry.at = START
        for hours, name, changes in history:
            session.add(
                AuditEntry(
                    at=START + timedelta(hours=hours),
                    actor="system",
                    action="update_progress",
                    request_uid=UID,
                    calibration=name,
                    detail=changes,
                )
            )
        tracking = store.get_progress(session, UID, "CDC Tracking")
        tracking.job_state, tracking.ticket_state = "succeeded", "done"
        tracking.upload_state, tracking.upload_detail = (
            "uploaded",
            {"uploaded_payloads": 2, "created_iovs": 2},
        )
        badwire = store.get_progress(session, UID, "CDC badwire")
        badwire.job_state, badwire.ticket_state = "succeeded", "waiting_for_expert"
        badwire.started_at = START + timedelta(hours=5)
        badwire.inputs = {"mumu_tight_or_highm_calib": {"runs_kept": 40, "runs_considered": 61, "files": 80}}
        session.add(
            CalibrationCheck(
                request_id=row.id,
                calibration="CDC badwire",
                name="payloads_present",
                status="passed",
                message="ok",
            )
        )
        if merged:
            row.state = "merged"
            session.add(
                AuditEntry(
                    at=START + timedelta(days=2),
                    actor="system",
                    action="request_state",
                    request_uid=UID,
                    message="merged",
                )
            )


def test_requests_page_shows_each_request_with_its_progress(pages, db_url):
    seed_request(db_url)

    response = pages.client.get("/")

    assert response.status_code == 200
    row = response.text.split(f'data-request="{UID}"', 1)[1].split("</tr>", 1)[0]
    assert "1 of 2 done" in row
    assert 'class="s-done"' in row
    assert 'class="s-waiting_for_expert"' in row
    assert 'data-live="on"' in response.text, "a running request keeps the table reloading"
    assert pages.client.get("/requests-table").text.count(f'data-request="{UID}"') == 1


def test_requests_page_stops_reloading_when_every_request_is_over(pages, db_url):
    seed_request(db_url, merged=True)

    assert 'data-live="off"' in pages.client.get("/").text


def test_bucket_page_shows_tickets_experts_jobs_checks_and_links(pages, db_url):
    seed_request(db_url)

    response = pages.client.get(f"/requests/{UID}")

    assert response.status_code == 200
    badwire = response.text.split('<tr data-calibration="CDC badwire"', 1)[1].split("</tr>", 1)[0]
    assert 'href="http://jira.test/browse/CAL-2"' in badwire
    assert "cdc.expert" in badwire or load_packaged_release()["CDC badwire"].expert_username in badwire
    assert (
        'data-state="waiting_for_expert"' in response.text.split('<tr data-calibration="CDC badwire"', 1)[1]
    )
    assert "40/61 runs, 80 files" in badwire
    assert "payloads_present: passed" in badwire
    assert (
        "/dags/b2cal_processing_request/runs/b2cal__prompt-e0026-r00000__20261102T080000/tasks/raw_phase/mapped/1"
        in badwire
    )
    tracking = response.text.split('<tr data-calibration="CDC Tracking"', 1)[1].split("</tr>", 1)[0]
    assert "2 payloads, 2 IoVs new" in tracking
    assert 'id="audit"' in response.text


def test_bucket_page_names_a_failed_dependency(pages, db_url):
    seed_request(db_url)
    with session_scope(db_url) as session:
        tracking = store.get_progress(session, UID, "CDC Tracking")
        tracking.job_state, tracking.ticket_state, tracking.upload_state = "failed", "new", "pending"
        badwire = store.get_progress(session, UID, "CDC badwire")
        badwire.job_state, badwire.ticket_state = "waiting_for_dependencies", "new"

    response = pages.client.get(f"/requests/{UID}")

    badwire_row = response.text.split('<tr data-calibration="CDC badwire"', 1)[1].split("</tr>", 1)[0]
    assert "Waits for CDC Tracking, which failed" in badwire_row
    tracking_row = response.text.split('<tr data-calibration="CDC Tracking"', 1)[1].split("</tr>", 1)[0]
    assert "blocked-by" not in tracking_row


def test_bucket_page_without_failed_dependency(pages, db_url):
    seed_request(db_url)

    response = pages.client.get(f"/requests/{UID}")

    assert "blocked-by" not in response.text


def test_bucket_timeline_marks_states_and_the_critical_path(pages, db_url):
    seed_request(db_url, merged=True)

    response = pages.client.get(f"/requests/{UID}")

    svg = response.text.split('class="chart timeline"', 1)[1].split("</svg>", 1)[0]
    assert 'data-calibration="CDC Tracking" data-state="done" data-critical="true"' in svg
    assert 'data-calibration="CDC badwire" data-state="waiting_for_expert" data-critical="true"' in svg
    assert "running for 2.0 h" in svg, "CDC Tracking ran from 1 h to 3 h"
    assert "queued for 5.0 h" in svg, "CDC badwire waited 5 h for its dependency"
    assert "CDC Tracking → CDC badwire" in response.text
    assert 'data-live="off"' in response.text


def test_bucket_durations_use_the_last_run_and_the_merge(pages, db_url, cached_runs):
    seed_request(db_url, merged=True)
    last_stop = max(
        datetime.fromisoformat(run["stop_time"].replace("Z", "+00:00"))
        for run in cached_runs
        if run["experiment"] == 26 and run["run"] <= 60
    )
    expected = (START + timedelta(days=2) - last_stop).total_seconds() / 86400

    data = pages.client.get(f"/api/requests/{UID}").json()

    assert data["durations"]["bucket_days"] == pytest.approx(2.0)
    assert data["durations"]["data_to_calibrated_days"] == pytest.approx(expected)
    assert data["durations"]["finished"] is True
    assert data["timeline"]["critical_path"] == CHAIN
    page = pages.client.get("/durations").text
    row = page.split(f'<tr data-request="{UID}"', 1)[1].split("</tr>", 1)[0]
    assert "<td>2.0</td>" in row
    assert f"<td>{expected:.1f}</td>" in row
    assert 'class="duration-bar"' in page


def label_boxes(svg: str) -> tuple[float, float, list[tuple[str, float, float]]]:
    """Return the chart's width and height and, per sloped label, its text and estimated left and bottom.

    A character of a request id is taken as 0.65 em wide, as wide as a digit of DejaVu Sans.
    """
    root = ElementTree.fromstring(svg)
    _, _, width, height = (float(value) for value in root.get("viewBox").split())
    boxes = []
    for text in root.iter("{http://www.w3.org/2000/svg}text"):
        transform = text.get("transform") or ""
        if not transform.startswith("rotate("):
            continue
        angle = math.radians(float(transform.removeprefix("rotate(").split()[0]))
        length = len(text.text) * 0.65 * float(text.get("font-size"))
        assert text.get("text-anchor") == "end", "the label ends under its bars"
        x, y = float(text.get("x")), float(text.get("y"))
        boxes.append((text.text, x - length * math.cos(angle), y - length * math.sin(angle)))
    return width, height, boxes


@pytest.mark.parametrize("count", [1, 12, 40])
def test_duration_labels_fit_the_chart(count):
    rows = [
        BucketDurations(
            request_uid=f"reprocessing-e0026-r{index:05d}-proc16",
            bucket=f"26,{index},26,{index}",
            started_at=START,
            data_taken_until=START,
            calibrated_at=None,
            bucket_days=2.0,
            data_to_calibrated_days=3.0,
        )
        for index in range(count)
    ]

    width, height, boxes = label_boxes(str(charts.durations_svg(rows)))

    assert [name for name, _, _ in boxes] == [row.request_uid for row in rows]
    for name, left, bottom in boxes:
        assert left >= 0, f"{name} starts {-left:.0f} px left of the chart"
        assert bottom <= height, f"{name} ends {bottom - height:.0f} px below the chart"
        assert left < width


def test_bucket_live_part_is_the_changing_section(pages, db_url):
    seed_request(db_url)

    response = pages.client.get(f"/requests/{UID}/live")

    assert response.status_code == 200
    assert response.text.lstrip().startswith('<div id="bucket-live"')
    assert 'id="audit"' not in response.text


def test_runs_page_lists_the_bucket_runs_with_flags(pages, db_url, cached_runs):
    seed_request(db_url)
    expected = [run for run in cached_runs if run["experiment"] == 26 and run["run"] <= 60]

    response = pages.client.get(f"/requests/{UID}/runs")

    assert response.status_code == 200
    body = response.text.split('id="runs"', 1)[1].split("</table>", 1)[0]
    assert body.count("<tr>") == len(expected) + 1
    assert f"<td>{expected[0]['run']}</td>" in body
    assert 'class="flag-' in body


def test_unknown_request_is_404(pages):
    response = pages.client.get("/requests/no-such-request")

    assert response.status_code == 404
    assert "no-such-request" in response.text


def test_catalog_page_draws_the_graph_with_the_longest_chain(pages):
    response = pages.client.get("/catalog?release=release-11-00-00")

    assert response.status_code == 200
    svg = response.text.split('class="chart graph"', 1)[1].split("</svg>", 1)[0]
    catalog = load_packaged_release()
    assert svg.count('class="node"') == len(catalog)
    edges = sum(len(catalog[name].depends_on) for name in catalog.names)
    assert svg.count('class="edge"') == edges
    assert 'data-from="BeamSpot Calibrations" data-to="BoostVector Calibrations"' in svg
    chain = response.text.split('id="longest-chain">', 1)[1].split("</span>", 1)[0]
    assert chain.endswith("eCMS Calibrations")


def test_catalog_diff_lists_added_removed_and_changed(pages):
    response = pages.client.get("/catalog/diff?old=release-11-00-00&new=release-11-01-00")

    assert response.status_code == 200
    assert "<li>SVD occupancy</li>" in response.text.split('id="added"', 1)[1].split("</ul>", 1)[0]
    assert "<li>Example Complex</li>" in response.text.split('id="removed"', 1)[1].split("</ul>", 1)[0]
    changed = response.text.split('id="changed"', 1)[1].split("</table>", 1)[0]
    assert "CDC badwire" in changed
    assert "expert_config" in changed
    assert "KLM time" in changed
    assert "klm.expert2" in changed
    api = pages.client.get("/api/catalog/diff?old=release-11-00-00&new=release-11-01-00").json()
    assert api["added"] == ["SVD occupancy"]
    assert api["removed"] == ["Example Complex"]
    assert sorted(api["changed"]) == ["CDC badwire", "KLM time"]


def test_docs_are_served_once_built(pages, tmp_path):
    missing = pages.client.get("/b2cal/docs/index.html")
    assert missing.status_code == 404
    assert "make docs" in missing.text

    (tmp_path / "docs" / "index.html").write_text("<h1>b2cal documentation</h1>")

    assert pages.client.get("/b2cal/docs/").text == "<h1>b2cal documentation</h1>"


def test_missing_docs_page_links_to_the_pages(pages, tmp_path):
    (tmp_path / "docs" / "index.html").write_text("<h1>b2cal documentation</h1>")

    missing = pages.client.get("/b2cal/docs/nope.html", headers={"accept": "text/html"})

    assert missing.status_code == 404
    assert 'href="/b2cal/static/b2cal.css"' in missing.text
    assert 'href="/b2cal/durations"' in missing.text
    assert "/docs/static/" not in missing.text
    assert "/docs/durations" not in missing.text


def test_anonymous_visitors_are_sent_to_the_login(pages):
    def anonymous() -> None:
        raise HTTPException(status_code=401, detail="Not authenticated")

    pages.app.dependency_overrides[current_user] = anonymous

    page = pages.client.get(f"/requests/{UID}", follow_redirects=False)
    api = pages.client.get("/api/requests", follow_redirects=False)

    assert page.status_code == 303
    assert "/auth/login/?next=" in page.headers["location"]
    assert api.status_code == 401
    assert api.json() == {"detail": "Not authenticated"}


def test_invalid_login_token_sends_to_the_login(pages, monkeypatch):
    from airflow.api_fastapi.core_api import security

    async def invalid_token(*args: object) -> None:
        raise HTTPException(status_code=403, detail="Invalid JWT token")

    monkeypatch.setattr(security, "get_user", invalid_token)
    pages.app.dependency_overrides.pop(current_user)

    page = pages.client.get(f"/requests/{UID}", follow_redirects=False)
    api = pages.client.get("/api/requests", follow_redirects=False)

    assert page.status_code == 303
    assert "/auth/login/?next=" in page.headers["location"]
    assert api.status_code == 401


def test_users_without_a_product_role_are_refused(pages):
    pages.app.dependency_overrides[current_user] = lambda: type(
        "Stranger", (), {"username": "stranger", "roles": [], "perms": set()}
    )()

    response = pages.client.get("/")

    assert response.status_code == 403
    assert "stranger" in response.text


# --- sign-off -------------------------------------------------------------------------------------------

SIGNOFF = f"/requests/{UID}/signoff"
WAITING = {
    "response_received": False,
    "body": "## Sign-off\nEvery check passed.",
    "options": ["Approve", "Reject"],
    "params": {"reopen": {"value": [], "source": "task"}, "comment": {"value": "", "source": "task"}},
}


def test_manager_approves_through_the_approval_task(pages, db_url):
    seed_request(db_url)
    pages.airflow.hitl = dict(WAITING)
    page = pages.client.get(SIGNOFF)
    assert 'id="approve-button"' in page.text
    assert "Every check passed." in page.text
    token = pages.csrf(SIGNOFF)

    response = pages.client.post(
        SIGNOFF, data={"csrf_token": token, "decision": "approve", "comment": "fine"}, follow_redirects=False
    )

    assert response.status_code == 303
    assert pages.airflow.answers == [
        {
            "dag_id": "b2cal_processing_request",
            "run_id": "b2cal__prompt-e0026-r00000__20261102T080000",
            "task_id": "sign_off",
            "option": "Approve",
            "params": {"reopen": [], "comment": "fine"},
        }
    ]
    with session_scope(db_url) as session:
        entry = session.scalar(select(AuditEntry).where(AuditEntry.action == "sign_off_response"))
        assert (entry.actor, entry.message, entry.detail["decision"]) == ("manager", "fine", "approve")
        assert store.get_request(session, UID).state == "submitted", "the DAG's tasks set the state"
    assert 'id="decision-done"' in pages.client.get(SIGNOFF).text


def test_reject_needs_a_comment(pages, db_url):
    seed_request(db_url)
    pages.airflow.hitl = dict(WAITING)
    token = pages.csrf(SIGNOFF)

    response = pages.client.post(SIGNOFF, data={"csrf_token": token, "decision": "reject", "comment": " "})

    assert response.status_code == 422
    assert "Say why" in response.text
    assert pages.airflow.answers == []


def test_reject_with_a_comment_records_it(pages, db_url):
    seed_request(db_url)
    pages.airflow.hitl = dict(WAITING)
    token = pages.csrf(SIGNOFF)

    pages.client.post(
        SIGNOFF,
        data={
            "csrf_token": token,
            "decision": "reject",
            "comment": "CDC payload odd",
            "reopen": "CAL-2\nCDC Tracking",
        },
    )

    [answer] = pages.airflow.answers
    assert answer["option"] == "Reject"
    assert answer["params"] == {"reopen": ["CAL-2", "CDC Tracking"], "comment": "CDC payload odd"}
    with session_scope(db_url) as session:
        entry = session.scalar(select(AuditEntry).where(AuditEntry.action == "sign_off_response"))
        assert entry.detail["reopen"] == ["CAL-2", "CDC Tracking"]


def test_approving_with_tickets_to_reopen_is_refused(pages, db_url):
    seed_request(db_url)
    pages.airflow.hitl = dict(WAITING)
    token = pages.csrf(SIGNOFF)

    response = pages.client.post(
        SIGNOFF, data={"csrf_token": token, "decision": "approve", "reopen": "CAL-2"}
    )

    assert response.status_code == 422
    assert "go with a rejection" in response.text
    assert pages.airflow.answers == []


def test_a_task_without_parameters_gets_none(pages, db_url):
    seed_request(db_url)
    pages.airflow.hitl = {key: value for key, value in WAITING.items() if key != "params"}
    token = pages.csrf(SIGNOFF)
    assert 'id="reopen"' not in pages.client.get(SIGNOFF).text

    pages.client.post(SIGNOFF, data={"csrf_token": token, "decision": "approve", "comment": "fine"})

    assert pages.airflow.answers[0]["params"] == {}


@pytest.mark.parametrize("name", ["viewer", "expert"])
def test_viewers_and_experts_see_the_sign_off_read_only(pages, db_url, name):
    seed_request(db_url)
    pages.airflow.hitl = dict(WAITING)
    pages.login(name)

    page = pages.client.get(SIGNOFF)
    refused = pages.client.post(
        SIGNOFF, data={"decision": "approve"}, headers={"Authorization": "Bearer token-of-" + name}
    )

    assert page.status_code == 200
    assert 'id="read-only"' in page.text
    assert 'id="approve-button"' not in page.text
    assert refused.status_code == 403
    assert pages.airflow.answers == []


def test_sign_off_read_only_for_admin(pages, db_url):
    seed_request(db_url)
    pages.airflow.hitl = dict(WAITING)
    pages.login("admin")

    page = pages.client.get(SIGNOFF)
    refused = pages.client.post(
        SIGNOFF, data={"decision": "approve"}, headers={"Authorization": "Bearer token-of-admin"}
    )

    assert 'id="approve-button"' not in page.text
    assert "Only users with the Calibration Manager role can approve or reject" in page.text
    assert refused.status_code == 403
    assert "Calibration Manager role may sign off" in refused.text
    assert pages.airflow.answers == []


def test_unknown_decision_is_an_input_error(pages, db_url):
    seed_request(db_url)
    pages.airflow.hitl = dict(WAITING)
    token = pages.csrf(SIGNOFF)

    response = pages.client.post(SIGNOFF, data={"csrf_token": token, "decision": "maybe"})

    assert response.status_code == 422
    assert "decision &#39;maybe&#39; is unknown" in response.text
    assert 'id="approve-button"' in response.text, "the manager can correct the answer"
    assert pages.airflow.answers == []


def test_sign_off_without_csrf_token_is_refused(pages, db_url):
    seed_request(db_url)
    pages.airflow.hitl = dict(WAITING)

    response = pages.client.post(SIGNOFF, data={"decision": "approve"})

    assert response.status_code == 403
    assert pages.airflow.answers == []


def test_airflow_refusing_the_answer_is_shown(pages, db_url):
    seed_request(db_url)
    pages.airflow.hitl = dict(WAITING)
    pages.airflow.refuse = AirflowAPIError(403, "the user may not respond to this task")
    token = pages.csrf(SIGNOFF)

    response = pages.client.post(SIGNOFF, data={"csrf_token": token, "decision": "approve"})

    assert response.status_code == 403
    assert "the user may not respond to this task" in response.text
    with session_scope(db_url) as session:
        assert session.scalar(select(AuditEntry).where(AuditEntry.action == "sign_off_response")) is None


RUN_ID = "b2cal__prompt-e0026-r00000__20261102T080000"
AIRFLOW_CONFLICT = (
    "Human-in-the-loop detail has already been updated for Task Instance with id 0199 "
    "and is not allowed to write again."
)


def decide_round(db_url: str, decision: str, user: str, *, run_id: str = RUN_ID) -> None:
    """Store a clean readiness report for ``run_id`` and the decision the DAG recorded on it."""
    with session_scope(db_url) as session:
        row = gate.add_round(
            session,
            UID,
            clean=True,
            staging_fingerprint="f" * 64,
            report={"blockers": []},
            report_text="Every check passed.",
            dag_run_id=run_id,
        )
        gate.record_decision(
            session, row, decision=decision, user=user, at=START + timedelta(days=1), comment="checked"
        )


@pytest.mark.parametrize(("option", "shown"), [("Approve", "Approved"), ("Reject", "Rejected")])
def test_past_decision_reads_as_participle(pages, db_url, option, shown):
    seed_request(db_url)
    decide_round(db_url, option, "manager")
    pages.airflow.hitl = {
        **WAITING,
        "response_received": True,
        "chosen_options": [option],
        "responded_by_user": {"id": "1", "name": "manager"},
        "responded_at": "2026-11-03T08:00:00.123456Z",
    }

    page = pages.client.get(SIGNOFF).text

    readiness = page.split('id="readiness">', 1)[1].split("</p>", 1)[0]
    assert f"{shown} by manager" in readiness
    done = page.split('id="decision-done">', 1)[1].split("</p>", 1)[0]
    assert done == f"{shown} by manager at 2026-11-03 08:00 UTC."
    decisions = page.split('id="decisions"', 1)[1].split("</table>", 1)[0]
    assert f"<td>{shown}</td>" in decisions
    assert f"{option} by" not in page


def test_page_approval_is_one_decision(pages, db_url):
    seed_request(db_url)
    pages.airflow.hitl = dict(WAITING)
    token = pages.csrf(SIGNOFF)
    form = {"csrf_token": token, "decision": "approve", "comment": "checked"}
    assert pages.client.post(SIGNOFF, data=form, follow_redirects=False).status_code == 303
    # The sign-off task, resumed by Airflow, records the decision on its round.
    decide_round(db_url, "Approve", "manager")

    page = pages.client.get(SIGNOFF).text

    table = page.split('<table id="decisions">', 1)[1].split("</table>", 1)[0]
    assert table.count("<tr><td") == 1
    assert "Approved" in table


def test_second_approval_says_who_signed_off(pages, db_url):
    seed_request(db_url)
    pages.airflow.hitl = dict(WAITING)
    token = pages.csrf(SIGNOFF)
    form = {"csrf_token": token, "decision": "approve", "comment": "fine"}
    first = pages.client.post(SIGNOFF, data=form, follow_redirects=False)
    assert first.status_code == 303

    again = pages.client.post(SIGNOFF, data=form, follow_redirects=False)

    assert again.status_code == 409
    message = again.text.split('id="signed-off">', 1)[1].split("</p>", 1)[0]
    assert f"Request {UID} was already signed off: Approved by manager at " in message
    assert "Your approval was not sent." in message
    assert f'href="/b2cal/requests/{UID}"' in message, "the message links back to the bucket page"
    assert len(pages.airflow.answers) == 1
    with session_scope(db_url) as session:
        entries = session.scalars(select(AuditEntry).where(AuditEntry.action == "sign_off_response"))
        assert len(list(entries)) == 1


def test_airflow_conflict_names_stored_decision(pages, db_url):
    seed_request(db_url)
    decide_round(db_url, "Reject", "other.manager")
    pages.airflow.hitl = dict(WAITING)
    pages.airflow.refuse = AirflowAPIError(409, AIRFLOW_CONFLICT)
    token = pages.csrf(SIGNOFF)

    response = pages.client.post(SIGNOFF, data={"csrf_token": token, "decision": "approve"})

    assert response.status_code == 409
    message = response.text.split('id="signed-off">', 1)[1].split("</p>", 1)[0]
    assert "already signed off: Rejected by other.manager at 2026-11-03 08:00 UTC" in message
    assert f'href="/b2cal/requests/{UID}"' in message
    assert "Human-in-the-loop" not in response.text
    assert 'id="signoff-error"' not in response.text


def test_airflow_conflict_without_stored_decision(pages, db_url):
    seed_request(db_url)
    decide_round(db_url, "Approve", "manager", run_id="b2cal__an-earlier-run")
    pages.airflow.hitl = dict(WAITING)
    pages.airflow.refuse = AirflowAPIError(409, AIRFLOW_CONFLICT)
    token = pages.csrf(SIGNOFF)

    response = pages.client.post(
        SIGNOFF, data={"csrf_token": token, "decision": "reject", "comment": "payload odd"}
    )

    assert response.status_code == 409
    message = response.text.split('id="signed-off">', 1)[1].split("</p>", 1)[0]
    assert "was already signed off, so your rejection was not sent" in message
    assert "no record of the decision yet" in message, "a decision on another run does not count"
    assert f'href="/b2cal/requests/{UID}"' in message
    assert "Human-in-the-loop" not in response.text


def test_sign_off_page_without_a_waiting_task(pages, db_url):
    seed_request(db_url)

    response = pages.client.get(SIGNOFF)

    assert response.status_code == 200
    assert "does not wait for a sign-off" in response.text
    assert "No readiness report yet" in response.text


def sign_off_entries(db_url: str) -> dict[str, int]:
    """Return how many audit entries each sign-off action has."""
    counted = {"sign_off_response": 0, gate.ACTION_AUTHORISED: 0, gate.ACTION_REFUSED: 0}
    with session_scope(db_url) as session:
        for entry in session.scalars(select(AuditEntry).where(AuditEntry.action.in_(list(counted)))):
            counted[entry.action] += 1
    return counted


NOTHING_AUDITED = {"sign_off_response": 0, "sign_off_authorised": 0, "sign_off_refused": 0}


@pytest.mark.parametrize("reopen", ["NoSuchCalib", "CAL-2, NoSuchCalib"])
def test_reject_with_unknown_reopen_entry(pages, db_url, reopen):
    seed_request(db_url)
    pages.airflow.hitl = dict(WAITING)
    token = pages.csrf(SIGNOFF)

    response = pages.client.post(
        SIGNOFF,
        data={"csrf_token": token, "decision": "reject", "comment": "bad", "reopen": reopen},
        follow_redirects=False,
    )

    assert response.status_code == 422
    field = response.text.split('id="reopen"', 1)[1].split("</div>", 1)[0]
    assert "&#39;NoSuchCalib&#39; is neither a ticket key nor a calibration of the request" in field
    assert 'id="reopen-error"' in field, "the message stands next to the reopen field"
    assert "CAL-1, CAL-2" in field, "the message names the accepted ticket keys"
    assert "NoSuchCalib</textarea>" in field, "the manager can correct the entry"
    assert 'id="signoff-error"' not in response.text, "the message is shown once"
    assert pages.airflow.answers == []
    assert sign_off_entries(db_url) == NOTHING_AUDITED


def test_reject_with_mixed_case_ticket_key(pages, db_url):
    seed_request(db_url)
    pages.airflow.hitl = dict(WAITING)
    token = pages.csrf(SIGNOFF)

    response = pages.client.post(
        SIGNOFF,
        data={"csrf_token": token, "decision": "reject", "comment": "bad", "reopen": "cal-1"},
        follow_redirects=False,
    )

    assert response.status_code == 303
    [answer] = pages.airflow.answers
    assert answer["params"]["reopen"] == ["cal-1"]


AIRFLOW_NO_QUESTION = (
    "Human-in-the-loop detail does not exist for Task Instance with id 0199e2c4-7a51-7c3e-9a52-6f0d3b1f4c21"
)


@pytest.mark.parametrize(("decision", "attempt"), [("approve", "approval"), ("reject", "rejection")])
def test_sign_off_before_airflow_waits(pages, db_url, decision, attempt):
    seed_request(db_url)
    with session_scope(db_url) as session:
        store.get_request(session, UID).state = "cdst_produced"
    # The token is the session's, so a form loaded while Airflow waited still carries a valid one.
    pages.airflow.hitl = dict(WAITING)
    token = pages.csrf(SIGNOFF)
    # Airflow has no human-in-the-loop detail yet, and a response would get its 404.
    pages.airflow.hitl = None
    pages.airflow.refuse = AirflowAPIError(404, AIRFLOW_NO_QUESTION)
    form = {"csrf_token": token, "decision": decision, "comment": "bad"}

    response = pages.client.post(SIGNOFF, data=form, follow_redirects=False)

    assert response.status_code == 409
    message = response.text.split('id="signoff-error">', 1)[1].split("</p>", 1)[0]
    assert f"Airflow is not waiting for a sign-off of request {UID} now" in message
    assert f"your {attempt} was not sent" in message
    assert "The request is cdst_produced." in message
    assert "after the readiness report" in message
    assert "Human-in-the-loop" not in response.text
    assert pages.airflow.answers == []
    assert sign_off_entries(db_url) == NOTHING_AUDITED


def test_airflow_stops_waiting_before_the_response(pages, db_url):
    seed_request(db_url)
    pages.airflow.hitl = dict(WAITING)
    pages.airflow.refuse = AirflowAPIError(404, AIRFLOW_NO_QUESTION)
    token = pages.csrf(SIGNOFF)

    response = pages.client.post(SIGNOFF, data={"csrf_token": token, "decision": "approve"})

    assert response.status_code == 409
    assert f"Airflow is not waiting for a sign-off of request {UID} now" in response.text
    assert "Human-in-the-loop" not in response.text
    assert sign_off_entries(db_url) == NOTHING_AUDITED


def test_airflow_failing_to_show_the_task(pages, db_url, monkeypatch):
    seed_request(db_url)
    pages.airflow.hitl = dict(WAITING)
    token = pages.csrf(SIGNOFF)

    async def failing(*args, **kwargs):
        raise AirflowAPIError(500, "database is locked")

    monkeypatch.setattr(pages.airflow, "hitl_detail", failing)

    response = pages.client.post(SIGNOFF, data={"csrf_token": token, "decision": "approve"})

    assert response.status_code == 502
    assert "Airflow did not show the sign-off task (500): database is locked" in response.text
    assert pages.airflow.answers == []
    assert sign_off_entries(db_url) == NOTHING_AUDITED


def test_sign_off_page_numbers_rounds_per_request(pages, db_url):
    seed_request(db_url)
    spec = chain_spec("prompt-e0026-r00001", IoV(26, 61, 26, 90), "staging_prompt_e0026_b")
    with session_scope(db_url) as session:
        store.save_request(session, spec, load_packaged_release())
    with session_scope(db_url) as session:
        # Another request's round comes first, so this request's rounds have the ids 2 and 3.
        gate.add_round(
            session, spec.uid, clean=True, staging_fingerprint="e" * 64, report={}, report_text="other"
        )
    decide_round(db_url, "Reject", "manager")
    with session_scope(db_url) as session:
        gate.add_round(
            session,
            UID,
            clean=True,
            staging_fingerprint="f" * 64,
            report={"blockers": []},
            report_text="Every check passed.",
            dag_run_id=RUN_ID,
        )

    page = pages.client.get(SIGNOFF).text

    readiness = page.split('id="readiness">', 1)[1].split("</p>", 1)[0]
    assert "Round 2, report state: open" in readiness
    decisions = page.split('id="decisions"', 1)[1].split("</table>", 1)[0]
    assert "Reject round 1: checked" in decisions


def test_sign_off_page_renders_report_markdown(pages, db_url):
    seed_request(db_url)
    text = (
        "## Readiness of prompt-e0026-r00000\n\n"
        "| Item | State |\n|---|---|\n| Tickets | done |\n\n"
        "> **Rejected response:** <script>alert(1)</script>\n"
    )
    with session_scope(db_url) as session:
        gate.add_round(
            session,
            UID,
            clean=True,
            staging_fingerprint="f" * 64,
            report={"blockers": []},
            report_text=text,
            dag_run_id=RUN_ID,
        )

    page = pages.client.get(SIGNOFF).text

    report = page.split('id="report-text">', 1)[1].split("</div>", 1)[0]
    assert "<h2>Readiness of prompt-e0026-r00000</h2>" in report
    assert "<td>Tickets</td>" in report
    assert "<strong>Rejected response:</strong>" in report
    assert "<script>" not in report
    assert "&lt;script&gt;" in report
    assert "| Item |" not in report


@pytest.mark.parametrize(
    ("days", "text"),
    [
        (2.4, "2.40 days"),
        (1.0, "1.00 days"),
        (5.5 / 24, "5.5 hours"),
        (12 / 1440, "12 minutes"),
        (0.0, "0 minutes"),
    ],
)
def test_duration_text_picks_readable_unit(days, text):
    assert duration_text(days) == text
