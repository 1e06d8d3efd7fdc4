"""Logins through Airflow's FAB auth manager against a real OpenLDAP directory, and the roles they give.

One set of Airflow components (API server, scheduler, DAG processor, triggerer) serves the whole
module. Setting it up and starting it took about 30 s on a 2-core machine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ldap_airflow_support import DAG_ID, LdapAirflow, directory_mapping
from slapd_directory import EXPERTS_GROUP, MANAGERS_GROUP, SlapdDirectory

from b2cal.ldapconfig import AuthSettings
from b2cal.roles import EXPERT_ROLE, MANAGER_ROLE, PRODUCT_ROLES, VIEWER_ROLE
from b2cal_airflow.auth import role_permissions

LDAP_TIMEOUT = 2
EXPECTED_ROLE = {"mona": MANAGER_ROLE, "erik": EXPERT_ROLE, "vera": VIEWER_ROLE}
HITL_PATH = "/api/v2/dags/{dag}/dagRuns/{run}/taskInstances/sign_off/-1/hitlDetails"

# Runs inside Airflow's environment: resolves each token to the auth manager's user object and
# reports what the product's helpers make of it.
HELPERS_SCRIPT = """
import asyncio, json, os, sys
from airflow.api_fastapi.app import init_auth_manager
from b2cal_airflow import auth
manager = init_auth_manager()
report = {}
for login, token in json.loads(sys.argv[1]).items():
    user = asyncio.run(manager.get_user_from_token(token))
    report[login] = {
        "roles": sorted(auth.user_roles(user)),
        "manager": auth.is_calibration_manager(user),
        "expert": auth.is_calibration_expert(user),
        "allowed": sorted(action.value for action in auth.ProductAction if auth.is_allowed(user, action)),
        "jira": auth.jira_username(user),
        "rerun_erik_calibration": auth.can_rerun(user, "erik.jira"),
        "fab_sign_off": manager.is_authorized_custom_view(
            method="POST", resource_name=auth.RESOURCE_SIGN_OFF, user=user
        ),
    }
print(json.dumps(report), flush=True)
os._exit(0)  # the auth manager leaves non-daemon threads behind
"""


@pytest.fixture(scope="module")
def airflow(slapd: SlapdDirectory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LdapAirflow]:
    """Start Airflow with LDAP logins against the session's slapd, and stop it by PID at the end."""
    mapping = directory_mapping(slapd, timeout_seconds=LDAP_TIMEOUT)
    auth = AuthSettings.from_mapping({"mode": "ldap", "ldap": mapping})
    instance = LdapAirflow(tmp_path_factory.mktemp("airflow-ldap"), auth, slapd.bind_password)
    try:
        instance.setup()
        instance.start()
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def up(airflow: LdapAirflow, directory: SlapdDirectory) -> LdapAirflow:
    """The module's Airflow, with the directory responding again after the test."""
    return airflow


def product_roles(roles: set[str]) -> set[str]:
    return roles & set(PRODUCT_ROLES)


@pytest.mark.parametrize("login", ["mona", "erik", "vera"])
def test_login_page_gives_directory_role(up: LdapAirflow, directory: SlapdDirectory, login: str) -> None:
    session, response = up.form_login(login, directory.password(login))
    assert response.status_code == 200
    assert "/auth/login" not in response.url
    assert "_token" in session.cookies
    assert product_roles(up.roles_of(login)) == {EXPECTED_ROLE[login]}


@pytest.mark.parametrize("login", ["mona", "erik", "vera"])
def test_token_login_gives_directory_role(up: LdapAirflow, directory: SlapdDirectory, login: str) -> None:
    token = up.token(login, directory.password(login))
    me = up.get(f"/auth/fab/v1/users/{login}", up.local_token()).json()
    assert token
    assert me["email"] == f"{login}@b2cal.test"
    assert product_roles({role["name"] for role in me["roles"]}) == {EXPECTED_ROLE[login]}


def test_product_roles_hold_their_permissions(up: LdapAirflow) -> None:
    admin = up.local_token()
    for role in PRODUCT_ROLES:
        response = up.get(f"/auth/fab/v1/roles/{role}", admin)
        assert response.status_code == 200, response.text
        stored = {(item["action"]["name"], item["resource"]["name"]) for item in response.json()["actions"]}
        assert stored == set(role_permissions(role)), role


def test_moved_user_gets_new_role_at_next_login(up: LdapAirflow, directory: SlapdDirectory) -> None:
    up.token("mia", directory.password("mia"))
    assert product_roles(up.roles_of("mia")) == {MANAGER_ROLE}

    directory.move_member("mia", MANAGERS_GROUP, EXPERTS_GROUP)
    try:
        assert product_roles(up.roles_of("mia")) == {MANAGER_ROLE}
        token = up.token("mia", directory.password("mia"))
        assert product_roles(up.roles_of("mia")) == {EXPERT_ROLE}
        # The run form is refused before its body is read: 403 for an expert, 422 for a manager.
        refused = up.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", token, json={})
        assert refused.status_code == 403
    finally:
        directory.move_member("mia", EXPERTS_GROUP, MANAGERS_GROUP)
    token = up.token("mia", directory.password("mia"))
    assert product_roles(up.roles_of("mia")) == {MANAGER_ROLE}
    assert up.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", token, json={}).status_code == 422


def assert_login_page_refuses(up: LdapAirflow, login: str, password: str, message: str) -> None:
    session, response = up.form_login(login, password)
    assert response.status_code == 200
    assert "/auth/login/" in response.url
    assert message in response.text
    assert "_token" not in session.cookies


def test_wrong_password_refused(up: LdapAirflow) -> None:
    assert_login_page_refuses(up, "mona", "not-her-password", "Invalid login")
    response = up.token_response("mona", "not-her-password")
    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid credentials"


def test_unknown_user_refused(up: LdapAirflow) -> None:
    assert_login_page_refuses(up, "nobody", "whatever", "Invalid login")
    response = up.token_response("nobody", "whatever")
    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid credentials"


def test_user_outside_product_groups_refused(up: LdapAirflow, directory: SlapdDirectory) -> None:
    assert_login_page_refuses(up, "otto", directory.password("otto"), "Invalid login")
    assert up.token_response("otto", directory.password("otto")).status_code == 401


def test_directory_down_refused_clearly(up: LdapAirflow, directory: SlapdDirectory) -> None:
    directory.pause()
    started = time.monotonic()
    response = up.token_response("vera", directory.password("vera"))
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert "did not respond" in response.json()["detail"]
    assert directory.url in response.json()["detail"]
    # FAB's attempt and the check that follows it each wait at most the LDAP timeout.
    assert elapsed < 4 * LDAP_TIMEOUT + 5
    assert_login_page_refuses(up, "vera", directory.password("vera"), "laboratory directory did not respond")
    # A local account in FAB's user table still logs in through the API while the directory is down.
    assert up.local_token()

    directory.resume()
    assert up.token("vera", directory.password("vera"))


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def test_only_managers_trigger_and_sign_off(up: LdapAirflow, directory: SlapdDirectory) -> None:
    tokens = {login: up.token(login, directory.password(login)) for login in ("mona", "erik", "vera")}
    runs = f"/api/v2/dags/{DAG_ID}/dagRuns"
    for login in ("vera", "erik"):
        assert up.call("POST", runs, tokens[login], json={"logical_date": None}).status_code == 403, login
    started = up.call("POST", runs, tokens["mona"], json={"logical_date": None})
    assert started.status_code == 200, started.text
    run_id = started.json()["dag_run_id"]
    task = f"{runs}/{run_id}/taskInstances/sign_off"

    def awaiting_input() -> bool:
        return up.get(task, tokens["vera"]).json().get("state") == "awaiting_input"

    wait_for(awaiting_input, 120, "the sign_off task waiting for input")
    # Airflow 3.3.2 fails the task when a response re-queues it before the scheduler has handled the
    # executor's report of the pause, so the test waits for that report, as a person's slower response would.
    scheduler_log = up.logs / "scheduler.log"
    paused_report = f"task_id=sign_off, run_id={run_id}"

    def pause_reported() -> bool:
        text = scheduler_log.read_text(errors="replace")
        return any(
            paused_report in line and "state=awaiting_input" in line
            for line in text.splitlines()
            if "TaskInstance Finished" in line
        )

    wait_for(pause_reported, 60, "the scheduler handling the pause of sign_off")
    hitl = HITL_PATH.format(dag=DAG_ID, run=run_id)
    assert up.get(hitl, tokens["vera"]).status_code == 200
    for login in ("vera", "erik"):
        response = up.call("PATCH", hitl, tokens[login], json={"chosen_options": ["Approve"]})
        assert response.status_code == 403, login
        marked = up.call("PATCH", task, tokens[login], json={"new_state": "success"})
        assert marked.status_code == 403, login
    approved = up.call("PATCH", hitl, tokens["mona"], json={"chosen_options": ["Approve"]})
    assert approved.status_code == 200, approved.text
    assert approved.json()["responded_by"]["name"] == "mona"

    def finished() -> str | None:
        state = up.get(f"{runs}/{run_id}", tokens["vera"]).json()["state"]
        return state if state in ("success", "failed") else None

    assert wait_for(finished, 120, "the run finishing") == "success"


def test_helpers_on_users_from_tokens(up: LdapAirflow, directory: SlapdDirectory) -> None:
    tokens = {login: up.token(login, directory.password(login)) for login in ("mona", "erik", "vera")}
    tokens["admin"] = up.local_token()
    report = up.python(HELPERS_SCRIPT, json.dumps(tokens))

    assert report["mona"]["manager"] is True
    assert report["mona"]["expert"] is False
    assert report["mona"]["allowed"] == sorted(
        ["read", "start_request", "cancel_request", "sign_off", "edit_sites", "comment"]
    )
    assert report["mona"]["fab_sign_off"] is True
    assert report["mona"]["rerun_erik_calibration"] is False

    assert report["erik"]["expert"] is True
    assert report["erik"]["manager"] is False
    assert report["erik"]["allowed"] == sorted(["read", "comment", "rerun_own_calibration", "close_ticket"])
    assert report["erik"]["jira"] == "erik.jira"
    assert report["erik"]["rerun_erik_calibration"] is True
    assert report["erik"]["fab_sign_off"] is False

    assert report["vera"]["allowed"] == ["read"]
    assert report["vera"]["jira"] == "vera"
    assert report["vera"]["fab_sign_off"] is False

    # FAB gives Airflow's Admin role every permission, so the local admin passes the product checks
    # without holding the Calibration Manager role.
    assert report["admin"]["manager"] is False
    assert "sign_off" in report["admin"]["allowed"]


def test_generated_config_has_no_password(up: LdapAirflow, directory: SlapdDirectory) -> None:
    text = Path(up.env["AIRFLOW__FAB__CONFIG_FILE"]).read_text()
    assert directory.bind_password not in text
    for login in EXPECTED_ROLE:
        assert directory.password(login) not in text
