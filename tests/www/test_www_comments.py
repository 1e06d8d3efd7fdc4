"""Comments on a calibration's ticket from the bucket page: roles, checks, Jira and the audit log."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from test_www_pages import UID, seed_request

from b2cal.db.engine import session_scope
from b2cal.db.models import AuditEntry
from b2cal_airflow.www import comments

BUCKET = f"/requests/{UID}"
COMMENT = f"/requests/{UID}/comment"


@pytest.fixture
def posted(monkeypatch) -> list[tuple[str, str]]:
    """Record the comments sent to Jira instead of sending them."""
    sent: list[tuple[str, str]] = []
    monkeypatch.setattr(comments, "post_to_ticket", lambda key, text: sent.append((key, text)))
    return sent


def comment_entries(db_url: str) -> list[AuditEntry]:
    with session_scope(db_url) as session:
        query = select(AuditEntry).where(AuditEntry.action == comments.COMMENT_ACTION).order_by(AuditEntry.id)
        entries = list(session.scalars(query))
        session.expunge_all()
    return entries


def post_comment(pages, calibration: str, text: str):
    token = pages.csrf(BUCKET)
    data = {"csrf_token": token, "calibration": calibration, "comment": text}
    return pages.client.post(COMMENT, data=data, follow_redirects=False)


@pytest.mark.parametrize("name", ["manager", "expert"])
def test_comment_goes_to_ticket_and_audit(pages, db_url, posted, name):
    seed_request(db_url)
    pages.login(name)

    response = post_comment(pages, "CDC badwire", "The wire map looks off in layer 3")

    assert response.status_code == 303
    assert response.headers["location"].endswith(f"/requests/{UID}#comment-section")
    [(key, text)] = posted
    assert key == "CAL-2"
    assert text.startswith("The wire map looks off in layer 3")
    assert f"— {name}, on the bucket page of request {UID}" in text
    [entry] = comment_entries(db_url)
    assert (entry.actor, entry.calibration, entry.message) == (
        name,
        "CDC badwire",
        "The wire map looks off in layer 3",
    )
    assert entry.detail["key"] == "CAL-2"


def test_repeated_comment_is_posted_once(pages, db_url, posted):
    seed_request(db_url)

    first = post_comment(pages, "CDC badwire", "Checked")
    second = post_comment(pages, "CDC badwire", "Checked")

    assert (first.status_code, second.status_code) == (303, 303)
    assert len(posted) == 1
    assert len(comment_entries(db_url)) == 1


def test_viewer_cannot_comment(pages, db_url, posted):
    seed_request(db_url)
    pages.login("viewer")

    page = pages.client.get(BUCKET).text
    response = pages.client.post(COMMENT, data={"calibration": "CDC badwire", "comment": "hi"})

    assert 'id="comment-form"' not in page
    assert response.status_code == 403
    assert posted == []
    assert comment_entries(db_url) == []


def test_comment_without_csrf_token_is_refused(pages, db_url, posted):
    seed_request(db_url)

    response = pages.client.post(COMMENT, data={"calibration": "CDC badwire", "comment": "hi"})

    assert response.status_code == 403
    assert "security token" in response.text
    assert posted == []


@pytest.mark.parametrize(
    ("calibration", "text", "field", "message"),
    [
        ("CDC badwire", "", "comment", "comment is missing"),
        ("CDC badwire", "x" * (comments.MAX_COMMENT_CHARS + 1), "comment", "shorten it to at most 5000"),
        ("No Such Calib", "hi", "calibration", "&#39;No Such Calib&#39; has no ticket"),
    ],
)
def test_invalid_comment_is_shown_at_its_field(pages, db_url, posted, calibration, text, field, message):
    seed_request(db_url)

    response = post_comment(pages, calibration, text)

    assert response.status_code == 422
    error = response.text.split(f'data-error-for="{field}">', 1)[1].split("</p>", 1)[0]
    assert message in error
    assert posted == []
    assert comment_entries(db_url) == []


def test_jira_failure_records_nothing(pages, db_url, monkeypatch):
    seed_request(db_url)

    def refuse(key: str, text: str) -> None:
        raise ConnectionError("Jira is down")

    monkeypatch.setattr(comments, "post_to_ticket", refuse)

    response = post_comment(pages, "CDC badwire", "Checked")

    assert response.status_code == 502
    assert "Jira did not take the comment on CAL-2: Jira is down" in response.text
    assert "Checked</textarea>" in response.text
    assert comment_entries(db_url) == []
