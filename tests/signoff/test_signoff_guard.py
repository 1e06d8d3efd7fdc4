"""The API server's sign-off guard: managers pass, everyone else gets 403, every attempt is audited."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from b2cal.catalog import load_packaged_release
from b2cal.db import gate, store
from b2cal.db.engine import session_scope, upgrade
from b2cal.db.models import AuditEntry
from b2cal.request import parse_request
from b2cal_airflow.auth import EXPERT_ROLE, MANAGER_ROLE, VIEWER_ROLE
from b2cal_airflow.signoff_guard import SignOffGuardMiddleware

CATALOG = load_packaged_release()
SIGN_OFF_PATH = "/api/v2/dags/b2cal_processing_request/dagRuns/run-1/taskInstances/sign_off/-1/hitlDetails"


@dataclass
class Role:
    name: str


@dataclass
class User:
    username: str
    roles: list[Role]
    id: int = 1

    def get_id(self) -> int:
        return self.id

    def get_name(self) -> str:
        return self.username


USERS = {
    "manager": User("manager", [Role("User"), Role(MANAGER_ROLE)], 2),
    "expert": User("expert", [Role("Viewer"), Role(EXPERT_ROLE)], 3),
    "viewer": User("viewer", [Role("Viewer"), Role(VIEWER_ROLE)], 4),
    "admin": User("admin", [Role("Admin")], 1),
}


@dataclass
class Inner:
    """The application behind the guard: records what reached it and returns ``status``."""

    calls: list[tuple[str, str, bytes]] = field(default_factory=list)
    status: int = 200

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.calls.append((scope["method"], scope["path"], body))
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"ok": true}'})


@pytest.fixture
def db_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'guard.db'}"
    upgrade(url)
    conf = {
        "request_id": "r1",
        "site": "BNL",
        "release": CATALOG.release,
        "bucket": [26, 100, 26, 200],
        "calibrations": ["CDC badwire"],
        "staging_tag": "staging_r1",
        "running_tag": "running",
        "requested_by": "manager",
    }
    with session_scope(url) as session:
        store.import_catalog(session, CATALOG, source="test")
        store.save_request(session, parse_request(conf, CATALOG), CATALOG).dag_run_id = "run-1"
    return url


def guarded(db_url: str) -> tuple[SignOffGuardMiddleware, Inner]:
    inner = Inner()

    async def resolve(scope: dict[str, Any]) -> User | None:
        headers = dict(scope["headers"])
        token = headers.get(b"authorization", b"").decode().removeprefix("Bearer ")
        return USERS.get(token)

    return SignOffGuardMiddleware(inner, database_url=lambda: db_url, resolve_user=resolve), inner


def send(app: Any, method: str, path: str, user: str | None, body: dict | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        headers = {"Authorization": f"Bearer {user}"} if user else {}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return await client.request(method, path, json=body, headers=headers)

    return asyncio.run(go())


def audit_rows(db_url: str) -> list[AuditEntry]:
    with session_scope(db_url) as session:
        return list(
            session.scalars(
                select(AuditEntry)
                .where(AuditEntry.action.in_((gate.ACTION_AUTHORISED, gate.ACTION_REFUSED)))
                .order_by(AuditEntry.id)
            )
        )


def test_manager_is_admitted_and_recorded(db_url: str) -> None:
    app, inner = guarded(db_url)
    response = send(
        app, "PATCH", SIGN_OFF_PATH, "manager", {"chosen_options": ["Approve"], "params_input": {}}
    )
    assert response.status_code == 200
    assert inner.calls == [("PATCH", SIGN_OFF_PATH, b'{"chosen_options":["Approve"],"params_input":{}}')]
    [entry] = audit_rows(db_url)
    assert (entry.actor, entry.action, entry.request_uid) == ("manager", gate.ACTION_AUTHORISED, "r1")
    assert entry.detail["user_id"] == "2"
    assert entry.detail["run_id"] == "run-1"
    assert "['Approve']" in entry.message
    with session_scope(db_url) as session:
        assert gate.is_authorised_responder(
            session, uid="r1", user_id="2", user_name="manager", run_id="run-1", task_id="sign_off"
        )
        assert not gate.is_authorised_responder(
            session, uid="r1", user_id="2", user_name="manager", run_id="run-2", task_id="sign_off"
        )


@pytest.mark.parametrize("user", ["expert", "viewer", "admin"])
def test_others_are_refused_and_audited(db_url: str, user: str) -> None:
    app, inner = guarded(db_url)
    response = send(app, "PATCH", SIGN_OFF_PATH, user, {"chosen_options": ["Approve"]})
    assert response.status_code == 403
    assert MANAGER_ROLE in response.json()["detail"]
    assert inner.calls == []
    [entry] = audit_rows(db_url)
    assert (entry.actor, entry.action, entry.request_uid) == (user, gate.ACTION_REFUSED, "r1")
    assert entry.detail["roles"] == sorted(role.name for role in USERS[user].roles)
    with session_scope(db_url) as session:
        assert not gate.is_authorised_responder(
            session, uid="r1", user_id=str(USERS[user].id), user_name=user, run_id="run-1", task_id="sign_off"
        )


@pytest.mark.parametrize(
    ("method", "path", "user"),
    [
        ("GET", SIGN_OFF_PATH, "viewer"),
        ("PATCH", SIGN_OFF_PATH.replace("sign_off", "other_task"), "viewer"),
        ("PATCH", SIGN_OFF_PATH.replace("b2cal_processing_request", "other_dag"), "viewer"),
        ("PATCH", SIGN_OFF_PATH, None),
    ],
)
def test_other_requests_pass_untouched(db_url: str, method: str, path: str, user: str | None) -> None:
    app, inner = guarded(db_url)
    response = send(app, method, path, user, {"chosen_options": ["Approve"]} if method == "PATCH" else None)
    assert response.status_code == 200
    assert len(inner.calls) == 1
    assert audit_rows(db_url) == []


def test_audit_failure_keeps_responses_out(tmp_path) -> None:
    app, inner = guarded(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    response = send(app, "PATCH", SIGN_OFF_PATH, "manager", {"chosen_options": ["Approve"]})
    assert response.status_code == 503
    assert "could not be audited" in json.loads(response.text)["detail"]
    refused = send(app, "PATCH", SIGN_OFF_PATH, "viewer", {"chosen_options": ["Approve"]})
    assert refused.status_code == 403
    assert inner.calls == []


def test_plugin_tables_are_created_when_missing(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    app, inner = guarded(url)
    response = send(app, "PATCH", SIGN_OFF_PATH, "manager", {"chosen_options": ["Approve"]})
    assert response.status_code == 200
    [entry] = audit_rows(url)
    assert entry.request_uid is None
    assert entry.detail["run_id"] == "run-1"


def accepted_rows(db_url: str) -> list[AuditEntry]:
    with session_scope(db_url) as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.action == gate.ACTION_ACCEPTED)))


def test_accepted_response_is_recorded_with_its_content(db_url: str) -> None:
    app, _ = guarded(db_url)
    body = {"chosen_options": ["Reject"], "params_input": {"reopen": ["CDC badwire"], "comment": "drift"}}
    assert send(app, "PATCH", SIGN_OFF_PATH, "manager", body).status_code == 200
    [entry] = accepted_rows(db_url)
    assert (entry.actor, entry.request_uid) == ("manager", "r1")
    assert entry.detail["chosen_options"] == ["Reject"]
    assert entry.detail["params_input"] == body["params_input"]
    assert (entry.detail["run_id"], entry.detail["task_id"], entry.detail["user_id"]) == (
        "run-1",
        "sign_off",
        "2",
    )


def test_response_airflow_refuses_is_not_recorded_as_accepted(db_url: str) -> None:
    app, inner = guarded(db_url)
    inner.status = 409
    assert send(app, "PATCH", SIGN_OFF_PATH, "manager", {"chosen_options": ["Approve"]}).status_code == 409
    assert accepted_rows(db_url) == []
    assert [entry.action for entry in audit_rows(db_url)] == [gate.ACTION_AUTHORISED]
