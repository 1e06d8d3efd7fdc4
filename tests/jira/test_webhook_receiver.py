"""The plugin's Jira webhook receiver: signed calls are recorded, everything else is rejected."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from jira_support import make_plugin_db
from sqlalchemy import select

from b2cal.db.engine import session_scope
from b2cal.db.models import AuditEntry
from b2cal.ticket_events import EVENT_ACTION, sign
from b2cal_airflow.www import webhooks

SECRET = "receiver-secret"


def payload(key: str = "CAL-2", event: str = "jira:issue_updated") -> bytes:
    return json.dumps(
        {
            "timestamp": 1,
            "webhookEvent": event,
            "user": {"name": "cdc-expert"},
            "issue": {
                "id": "10001",
                "key": key,
                "fields": {"status": {"name": "Closed", "statusCategory": {"key": "done"}}},
            },
            "changelog": {"items": [{"field": "status", "fromString": "Open", "toString": "Closed"}]},
        }
    ).encode()


@pytest.fixture
def db_url(tmp_path: Any) -> str:
    return make_plugin_db(tmp_path / "b2cal.db", "req-1", {"CDC Tracking": "CAL-1", "CDC badwire": "CAL-2"})


def client_for(db_url: str, secret: str) -> TestClient:
    app = FastAPI()
    app.include_router(webhooks.router, prefix="/b2cal")
    app.state.jira_webhook_secret = lambda: secret
    app.state.b2cal_settings = type("Settings", (), {"db_url": staticmethod(lambda: db_url)})()
    return TestClient(app)


def events(db_url: str) -> list[AuditEntry]:
    with session_scope(db_url) as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.action == EVENT_ACTION)))


def test_signed_event_is_recorded_for_its_request(db_url: str) -> None:
    body = payload()
    response = client_for(db_url, SECRET).post(
        "/b2cal/webhooks/jira",
        content=body,
        headers={"X-Hub-Signature": sign(SECRET, body), "X-Atlassian-Webhook-Identifier": "delivery-1"},
    )
    assert response.status_code == 202
    assert response.json() == {"status": "accepted", "issue": "CAL-2", "requests": ["req-1"]}
    [entry] = events(db_url)
    assert entry.request_uid == "req-1"
    assert entry.calibration == "CDC badwire"
    assert entry.detail["status_category"] == "done"
    assert entry.detail["delivery"] == "delivery-1"
    assert "Open -> Closed" in entry.message


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing"),
        ({"X-Hub-Signature": sign("another-secret", payload())}, "does not match"),
        ({"X-Hub-Signature": "sha1=0123"}, "form"),
    ],
)
def test_unsigned_or_wrongly_signed_call_is_rejected_and_logged(
    db_url: str, headers: dict[str, str], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="b2cal_airflow.www.webhooks")
    response = client_for(db_url, SECRET).post("/b2cal/webhooks/jira", content=payload(), headers=headers)
    assert response.status_code == 401
    assert reason in response.json()["detail"]
    assert events(db_url) == []
    assert any("Rejected a Jira webhook call" in record.getMessage() for record in caplog.records)
    assert all(SECRET not in record.getMessage() for record in caplog.records)


def test_no_secret_configured_rejects_every_call(db_url: str) -> None:
    body = payload()
    response = client_for(db_url, "").post(
        "/b2cal/webhooks/jira", content=body, headers={"X-Hub-Signature": sign("", body)}
    )
    assert response.status_code == 401
    assert "no webhook secret" in response.json()["detail"]


def test_other_events_and_unknown_tickets_are_ignored(db_url: str) -> None:
    client = client_for(db_url, SECRET)
    created = payload(event="jira:issue_created")
    response = client.post(
        "/b2cal/webhooks/jira", content=created, headers={"X-Hub-Signature": sign(SECRET, created)}
    )
    assert response.json()["status"] == "ignored"
    other = payload(key="OPS-9")
    response = client.post(
        "/b2cal/webhooks/jira", content=other, headers={"X-Hub-Signature": sign(SECRET, other)}
    )
    assert response.json() == {"status": "accepted", "issue": "OPS-9", "requests": []}
    assert events(db_url) == []


def test_signed_but_invalid_body_is_400(db_url: str) -> None:
    body = b"not json"
    response = client_for(db_url, SECRET).post(
        "/b2cal/webhooks/jira", content=body, headers={"X-Hub-Signature": sign(SECRET, body)}
    )
    assert response.status_code == 400


def test_mounted_in_the_plugin_app() -> None:
    from b2cal_airflow.www.app import create_app

    paths = {getattr(route, "path", "") for route in create_app().routes}
    assert "/webhooks/jira" in paths
