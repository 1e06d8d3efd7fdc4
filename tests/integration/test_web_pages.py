"""The calibration pages inside a real Airflow API server, driven by headless Chromium through Playwright.

A calibration manager logs in through Airflow's own login page, submits a request through the form
(after seeing a validation error), follows its bucket page and signs it off; a viewer is refused.
Playwright drives Debian's Chromium (``make system-packages``); it never downloads a browser.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from server_rules import require
from sqlalchemy import select

from b2cal.db import store
from b2cal.db.engine import session_scope
from b2cal.db.models import AuditEntry
from b2cal.e2e import SIGN_OFF_DELAY_S, task_states, wait_for_run
from b2cal.production_stack import seed_running_tag
from b2cal.stack import DAG_ID, Stack

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REQUEST_ID = "web-e0026-r00000"
RUNNING_TAG = "b2cal_web_pages_running"
STAGING_TAG = "staging_web_e0026"
BADWIRE_FILTER = "filters::CDC badwire::mumu_tight_or_highm_calib"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, started once for the module."""
    require(Path(CHROMIUM).is_file(), f"the browser tests need {CHROMIUM}; run `make system-packages`")
    require(
        importlib.util.find_spec("playwright") is not None, "the browser tests need the playwright package"
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def log_in(browser: Any, stack: Stack, username: str) -> Any:
    """Log in through Airflow's login page and return a browser page with the user's session."""
    context = browser.new_context(base_url=stack.config.api_url)
    context.set_default_timeout(60_000)
    page = context.new_page()
    page.goto("/auth/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", stack.passwords[username])
    page.locator("input[type=submit], button[type=submit]").first.click()
    page.wait_for_load_state()
    deadline = time.monotonic() + 30
    while not any(cookie["name"] == "_token" for cookie in context.cookies()):
        assert time.monotonic() < deadline, f"logging in as {username} set no _token cookie"
        page.wait_for_timeout(200)
    return page


def request_row(stack: Stack) -> Any:
    with session_scope(stack.env["B2CAL_DB_URL"]) as session:
        try:
            return store.get_request(session, REQUEST_ID)
        except store.NotFoundError:
            return None


def wait_for_sign_off(stack: Stack, run_id: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = task_states(stack, run_id)
        if states.get("sign_off") == "awaiting_input":
            return
        failed = sorted(key for key, value in states.items() if value == "failed")
        assert not failed, f"tasks failed before the sign-off: {failed}"
        time.sleep(3)
    raise AssertionError(f"run {run_id} did not reach the sign-off within {timeout} s")


@pytest.fixture(scope="module")
def submitted(browser: Any, stack: Stack) -> dict[str, Any]:
    """Submit a request for CDC badwire through the form as the manager, after one refused try."""
    # A running tag of its own: other tests of the session merge the same bucket into the default one.
    seed_running_tag(stack, RUNNING_TAG)
    page = log_in(browser, stack, "manager")
    page.goto("/b2cal/requests/new")
    page.click("#choose-none")
    page.check("input[name=calibrations][value='CDC badwire']")
    note = page.locator("#dependency-note").inner_text()
    tracking_checked = page.is_checked("input[name=calibrations][value='CDC Tracking']")
    page.fill("#bucket", "26,0,26,100")
    page.fill("#request_id", REQUEST_ID)
    page.fill("#staging_tag", STAGING_TAG)
    page.fill("#running_tag", RUNNING_TAG)
    page.locator(".calibration", has=page.locator("input[value='CDC badwire']")).locator("summary").click()
    page.fill(f"textarea[name='{BADWIRE_FILTER}']", "Good\nmumu_calibb")
    page.click("#submit-button")
    page.wait_for_load_state()
    error = page.locator(f"[data-error-for='{BADWIRE_FILTER}']").inner_text()
    saved_after_error = request_row(stack) is not None

    page.fill(f"textarea[name='{BADWIRE_FILTER}']", "mumu_tight_or_highm_calib\nGood\nOn")
    page.click("#preview-button")
    page.wait_for_load_state()
    plan_levels = page.locator("#plan-levels").inner_text()
    plan_tickets = page.locator("#plan-tickets tbody tr").count()

    page.click("#submit-button")
    page.wait_for_url(f"**/b2cal/requests/{REQUEST_ID}")
    bucket_rows = page.locator("#calibrations tbody tr").count()
    row = request_row(stack)
    return {
        "page": page,
        "note": note,
        "tracking_checked": tracking_checked,
        "error": error,
        "saved_after_error": saved_after_error,
        "plan_levels": plan_levels,
        "plan_tickets": plan_tickets,
        "bucket_rows": bucket_rows,
        "run_id": row.dag_run_id if row else None,
    }


def test_pages_are_linked_from_the_airflow_navigation(stack):
    plugins = stack.api("GET", "/api/v2/plugins", username="admin").json()["plugins"]
    [b2cal] = [plugin for plugin in plugins if plugin["name"] == "b2cal"]
    views = {view["name"]: view for view in b2cal["external_views"]}

    assert views["Calibration requests"]["href"] == "/b2cal/"
    assert views["Calibration docs"]["href"] == "/b2cal/docs/index.html"


def test_anonymous_visitors_are_sent_to_airflows_login(stack):
    response = requests.get(f"{stack.config.api_url}/b2cal/", allow_redirects=False, timeout=30)

    assert response.status_code == 303
    assert "/auth/login/" in response.headers["location"]


def test_docs_are_served_by_the_plugin(stack):
    response = requests.get(f"{stack.config.api_url}/b2cal/docs/index.html", timeout=30)

    assert response.status_code == 200
    assert "guide-manager" in response.text


def test_picking_a_calibration_adds_its_dependency_and_says_so(submitted):
    assert submitted["tracking_checked"]
    assert "CDC Tracking" in submitted["note"]


def test_a_bad_filter_is_shown_next_to_its_field_and_nothing_is_saved(submitted):
    assert "mumu_calibb" in submitted["error"]
    assert submitted["saved_after_error"] is False


def test_the_preview_shows_the_order_and_the_ticket_tree(submitted):
    assert "CDC Tracking" in submitted["plan_levels"]
    assert "CDC badwire" in submitted["plan_levels"]
    assert submitted["plan_tickets"] == 2


def test_submitting_starts_the_run_as_the_manager(stack, submitted):
    assert submitted["bucket_rows"] == 2
    run = stack.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{submitted['run_id']}", username="admin").json()

    assert run["conf"]["request_id"] == REQUEST_ID
    assert run["conf"]["requested_by"] == "manager"
    assert run["triggering_user_name"] == "manager"


def test_the_bucket_page_updates_itself_while_the_run_goes_on(stack, submitted):
    page = submitted["page"]
    wait_for_sign_off(stack, submitted["run_id"])
    page.wait_for_function(
        "document.querySelectorAll('#calibrations tr[data-state=done]').length === 2", timeout=60_000
    )

    assert page.locator("#bucket-live").get_attribute("data-updated")
    assert page.locator(".chart.timeline .timeline-row").count() == 2
    assert page.locator("#critical-path").inner_text() == "CDC Tracking → CDC badwire"
    assert page.locator("#calibrations a", has_text="task log").count() == 2


def test_viewers_are_refused_the_form_and_the_sign_off(browser, stack, submitted):
    wait_for_sign_off(stack, submitted["run_id"])
    page = log_in(browser, stack, "viewer")

    form = page.goto("/b2cal/requests/new")
    assert form.status == 403
    signoff = page.goto(f"/b2cal/requests/{REQUEST_ID}/signoff")
    assert signoff.status == 200
    assert page.locator("#approve-button").count() == 0
    assert page.locator("#read-only").count() == 1
    token = stack.token("viewer")
    refused = requests.post(
        f"{stack.config.api_url}/b2cal/requests/{REQUEST_ID}/signoff",
        data={"decision": "approve"},
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        timeout=30,
    )
    assert refused.status_code == 403
    assert "may not sign off" in refused.json()["detail"]
    page.context.close()


def test_the_manager_signs_off_and_the_bucket_is_merged(browser, stack, submitted):
    wait_for_sign_off(stack, submitted["run_id"])
    time.sleep(SIGN_OFF_DELAY_S)
    page = log_in(browser, stack, "manager")
    page.goto(f"/b2cal/requests/{REQUEST_ID}/signoff")
    page.fill("#comment", "Checked the badwire payloads")
    page.click("#approve-button")
    page.wait_for_selector("#decision-done")

    assert wait_for_run(stack, submitted["run_id"], approve_as=None, timeout=600) == "success"
    with session_scope(stack.env["B2CAL_DB_URL"]) as session:
        decision = session.scalar(
            select(AuditEntry).where(
                AuditEntry.request_uid == REQUEST_ID, AuditEntry.action == "sign_off_response"
            )
        )
        assert (decision.actor, decision.message) == ("manager", "Checked the badwire payloads")
        assert store.get_request(session, REQUEST_ID).state == "merged"
    hitl = stack.api(
        "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{submitted['run_id']}/taskInstances/sign_off/-1/hitlDetails"
    ).json()
    assert hitl["chosen_options"] == ["Approve"]
    assert hitl["responded_by_user"]["name"] == "manager"
    page.context.close()
