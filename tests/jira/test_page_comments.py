"""Comments that the pages write on tickets: on a cancelled request's open tickets and from a bucket page."""

from __future__ import annotations

import json

import pytest
from jira_support import DevJira, create_tickets, make_plugin_db

from b2cal.catalog import Catalog
from b2cal.db import store
from b2cal.db.engine import session_scope
from b2cal_airflow.www.cancel import stop_request_work
from b2cal_airflow.www.comments import post_to_ticket, ticket_text

REQUEST = "prompt-e0026-cancel"


@pytest.fixture
def jira_connection(dev_jira: DevJira, monkeypatch: pytest.MonkeyPatch) -> None:
    connection = {
        "conn_type": "jira",
        "host": dev_jira.url,
        "login": dev_jira.config.jira_bot_username,
        "password": dev_jira.config.jira_bot_password,
        "extra": {"project": "CAL"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_B2CAL_JIRA", json.dumps(connection))
    # No site connection: stopping the jobs fails, and the comments must still be written.
    monkeypatch.delenv("AIRFLOW_CONN_B2CAL_SITE_BNL", raising=False)


def comments_of(dev_jira: DevJira, key: str) -> list[str]:
    issue = dev_jira.client().issue(key, fields="comment")
    return [comment["body"] for comment in issue["fields"]["comment"]["comments"]]


def test_cancel_comments_on_open_tickets(dev_jira, jira_connection, catalog: Catalog, tmp_path):
    names = ["CDC Tracking", "CDC badwire"]
    keys = create_tickets(dev_jira, catalog, names, REQUEST)
    db_url = make_plugin_db(tmp_path / "plugin.db", REQUEST, {name: keys[name] for name in names})
    with session_scope(db_url) as session:
        store.update_progress(session, REQUEST, "CDC Tracking", job_state="succeeded")

    result = stop_request_work(db_url, REQUEST, "manager", "wrong run range")

    assert result["commented_tickets"] == [keys["CDC badwire"]]
    assert any("site BNL" in error for error in result["stop_errors"])
    [comment] = comments_of(dev_jira, keys["CDC badwire"])
    assert "cancelled by manager: wrong run range" in comment
    assert comments_of(dev_jira, keys["CDC Tracking"]) == []


def test_page_comment_reaches_the_ticket(dev_jira, jira_connection, catalog: Catalog):
    key = create_tickets(dev_jira, catalog, ["CDC Tracking"], REQUEST)["CDC Tracking"]

    post_to_ticket(key, ticket_text(REQUEST, "expert", "Residuals look fine"))

    [comment] = comments_of(dev_jira, key)
    assert comment.startswith("Residuals look fine")
    assert f"expert, on the bucket page of request {REQUEST}" in comment
