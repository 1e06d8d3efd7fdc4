"""Deadline reminders: who is reminded, when, how often, and the Jira comment they get."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from atlassian import Jira
from signoff_support import CATALOG, CONFIG, Bucket
from sqlalchemy import update

from b2cal.db import gate
from b2cal.db.engine import session_scope
from b2cal.db.models import AuditEntry, SignOffRound
from b2cal.deadlines import SIGN_OFF, TICKET, DeadlineSettings, Wait, as_utc, due_reminders
from b2cal_airflow.operators.deadlines import DeadlineReminderOperator

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
SETTINGS = DeadlineSettings(timedelta(hours=72), timedelta(hours=24), timedelta(hours=24))


def ticket_wait(hours: float) -> Wait:
    return Wait("r1", TICKET, NOW - timedelta(hours=hours), "cdc-expert", "manager", "CDC Tracking", "CAL-1")


def test_settings_from_hours() -> None:
    settings = DeadlineSettings.from_mapping({"ticket_hours": 48, "sign_off_hours": 0.5})
    assert settings.ticket_wait == timedelta(hours=48)
    assert settings.sign_off_wait == timedelta(minutes=30)
    assert settings.repeat_every == timedelta(days=1)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"ticket_hours": 0}, "ticket_hours=0"),
        ({"repeat_hours": "1"}, "repeat_hours='1'"),
        ({"days": 1}, "unknown"),
    ],
)
def test_invalid_settings_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DeadlineSettings.from_mapping(data)


def test_reminder_due_only_after_the_deadline() -> None:
    assert due_reminders([ticket_wait(71)], SETTINGS, NOW, {}) == []
    [reminder] = due_reminders([ticket_wait(73)], SETTINGS, NOW, {})
    assert reminder.waited == timedelta(hours=73)
    sign_off = Wait("r1", SIGN_OFF, NOW - timedelta(hours=25), "manager", "manager")
    assert [item.wait.kind for item in due_reminders([sign_off], SETTINGS, NOW, {})] == [SIGN_OFF]


def test_reminder_repeats_once_a_period() -> None:
    wait = ticket_wait(100)
    assert due_reminders([wait], SETTINGS, NOW, {wait.key: NOW - timedelta(hours=2)}) == []
    assert len(due_reminders([wait], SETTINGS, NOW, {wait.key: NOW - timedelta(hours=25)})) == 1
    # A reminder about an earlier wait of the same ticket does not count for a new wait.
    assert len(due_reminders([wait], SETTINGS, NOW, {wait.key: NOW - timedelta(hours=101)})) == 1


def test_reminder_text_mentions_owner_and_manager() -> None:
    [reminder] = due_reminders([ticket_wait(80)], SETTINGS, NOW, {})
    text = reminder.jira_text()
    assert text.startswith("[~cdc-expert], the payloads of CDC Tracking have been waiting")
    assert "(80 hours)" in text
    assert "[~manager], for your information." in text
    own = Wait("r1", SIGN_OFF, NOW - timedelta(hours=30), "manager", "manager")
    [sign_off] = due_reminders([own], SETTINGS, NOW, {})
    assert "ready for sign-off" in sign_off.jira_text()
    assert "for your information" not in sign_off.jira_text()


def test_naive_times_count_as_utc() -> None:
    assert as_utc(datetime(2026, 1, 1, 12)) == datetime(2026, 1, 1, 12, tzinfo=UTC)


def backdate(bucket: Bucket, hours: float) -> None:
    """Move every audit entry and sign-off round of the bucket ``hours`` into the past."""
    earlier = datetime.now(UTC) - timedelta(hours=hours)
    with session_scope(bucket.db_url) as session:
        session.execute(update(AuditEntry).values(at=earlier))
        session.execute(update(SignOffRound).values(created_at=earlier))


def test_waits_come_from_the_plugin_database(bucket: Bucket) -> None:
    with session_scope(bucket.db_url) as session:
        waits = gate.list_waits(session, {CATALOG.release: CATALOG})
    assert sorted((wait.kind, wait.calibration, wait.owner) for wait in waits) == [
        (TICKET, "CDC Tracking", CATALOG["CDC Tracking"].expert_username),
        (TICKET, "CDC badwire", CATALOG["CDC badwire"].expert_username),
    ]
    assert {wait.ticket_key for wait in waits} == set(bucket.keys.values())


def test_operator_comments_once_per_period(bucket: Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_B2CAL_DEADLINES", json.dumps({"ticket_hours": 48, "repeat_hours": 12}))
    operator = DeadlineReminderOperator(task_id="send_reminders")
    assert operator.execute({}) == []

    backdate(bucket, 50)
    sent = operator.execute({})
    assert sorted(item["ticket"] for item in sent) == sorted(bucket.keys.values())
    client = Jira(
        bucket.services.jira_url, username=CONFIG.jira_bot_username, password=CONFIG.jira_bot_password
    )
    key = bucket.keys["CDC Tracking"]
    [comment] = client.issue_get_comments(key)["comments"]
    assert comment["body"].startswith(f"[~{CATALOG['CDC Tracking'].expert_username}], the payloads")
    assert "[~manager]" in comment["body"]
    assert operator.execute({}) == []
    with session_scope(bucket.db_url) as session:
        assert len(gate.last_reminders(session)) == 2


def test_operator_rejects_a_bad_variable(bucket: Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_B2CAL_DEADLINES", "{not json")
    with pytest.raises(ValueError, match="b2cal_deadlines"):
        DeadlineReminderOperator(task_id="send_reminders").execute({})
