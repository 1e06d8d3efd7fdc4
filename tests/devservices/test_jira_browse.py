"""Check the development Jira's ``/browse/{key}`` pages, where the product's ticket links lead."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import pytest
import requests

from b2cal.devservices.config import DevServicesConfig
from b2cal.devservices.jira_model import EPIC_LINK_FIELD
from b2cal.devservices.server import DevServices

EXPERT = "cdc-calibration-expert"
README = Path(__file__).resolve().parents[2] / "README.md"
HOSTILE_SUMMARY = "Calibrate <b>CDC</b> & check"
HOSTILE_DESCRIPTION = "<script>alert('x')</script>\n{code}print(1){code} *bold* <img src=x onerror=alert(1)>"
HOSTILE_COMMENT = "Looks fine <a href='javascript:alert(1)'>here</a>"


class JiraClient:
    """Calls the development Jira's REST API v2 as one user."""

    def __init__(self, url: str, username: str, password: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.auth = (username, password)

    def post(self, path: str, body: Any, expected: int = 201) -> Any:
        response = self.session.post(f"{self.url}/rest/api/2/{path}", json=body, timeout=10)
        assert response.status_code == expected, response.text
        return response.json() if response.content else None

    def create(self, summary: str, issuetype: str = "Task", **fields: Any) -> str:
        body = {"project": {"key": "CAL"}, "issuetype": {"name": issuetype}, "summary": summary, **fields}
        return str(self.post("issue", {"fields": body})["key"])

    def link(self, blocker: str, blocked: str) -> None:
        body = {"type": {"name": "Blocks"}, "inwardIssue": {"key": blocker}, "outwardIssue": {"key": blocked}}
        self.post("issueLink", body)


@pytest.fixture
def bot(services: DevServices, config: DevServicesConfig) -> JiraClient:
    services.jira_state.reset()
    return JiraClient(services.jira_url, config.jira_bot_username, config.jira_bot_password)


@pytest.fixture
def expert(services: DevServices, config: DevServicesConfig) -> JiraClient:
    return JiraClient(services.jira_url, EXPERT, config.jira_expert_password)


@pytest.fixture
def tree(bot: JiraClient, expert: JiraClient, services: DevServices) -> dict[str, str]:
    """Create an epic with two tasks, the first blocking the second, with a comment and an attachment."""
    epic = bot.create("Prompt calibration of bucket 26", issuetype="Epic")
    first = bot.create(
        HOSTILE_SUMMARY,
        description=HOSTILE_DESCRIPTION,
        labels=["b2cal", "req-42"],
        components=[{"name": "cdc"}, {"name": "tracking"}],
        assignee={"name": EXPERT},
        **{EPIC_LINK_FIELD: epic},
    )
    second = bot.create("Calibrate ECL energy", **{EPIC_LINK_FIELD: epic})
    bot.link(first, second)
    expert.post(f"issue/{first}/comment", {"body": HOSTILE_COMMENT})
    upload = bot.session.post(
        f"{services.jira_url}/rest/api/2/issue/{first}/attachments",
        files={"file": ("validation <1>.txt", b"chi2 fine\n", "text/plain")},
        headers={"X-Atlassian-Token": "no-check"},
        timeout=10,
    )
    assert upload.status_code == 200, upload.text
    return {"epic": epic, "first": first, "second": second}


def browse(services: DevServices, key: str) -> requests.Response:
    """Fetch a browse page without any login, as a browser following a ticket link does."""
    return requests.get(f"{services.jira_url}/browse/{key}", timeout=10)


def text(fragment: str) -> str:
    """Return the text of an HTML fragment: tags removed, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def element(page: str, pattern: str) -> str:
    """Return the text of the first group of ``pattern`` in the page."""
    match = re.search(pattern, page, re.S)
    assert match, f"no match of {pattern!r} in the page"
    return text(match.group(1))


def field(page: str, name: str) -> str:
    """Return the text of the field row ``name`` of an issue page."""
    match = re.search(rf'<tr id="field-{name}">(.*?)</tr>', page, re.S)
    assert match, f"no field row {name!r} in the page"
    return text(match.group(1))


def section(page: str, name: str) -> str:
    """Return the HTML of the section with the id ``name``."""
    match = re.search(rf'<section id="{name}">(.*?)</section>', page, re.S)
    assert match, f"no section {name!r} in the page"
    return match.group(1)


def test_browse_page_shows_fields(services: DevServices, tree: dict[str, str]) -> None:
    response = browse(services, tree["first"])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert element(page, r'<span id="issue-key">(.*?)</span>') == tree["first"]
    assert element(page, r'<h1 id="summary">(.*?)</h1>') == HOSTILE_SUMMARY
    assert field(page, "type") == "Type Task"
    assert field(page, "status") == "Status Open (category To Do, key new)"
    assert field(page, "resolution") == "Resolution Unresolved"
    assert field(page, "assignee") == f"Assignee Cdc Calibration Expert ({EXPERT})"
    assert field(page, "reporter") == "Reporter B2Cal Bot (b2cal-bot)"
    assert field(page, "epic") == f"Epic Link {tree['epic']} Prompt calibration of bucket 26"
    assert f'href="/browse/{tree["epic"]}"' in page
    assert field(page, "components") == "Components cdc, tracking"
    assert field(page, "labels") == "Labels b2cal, req-42"
    assert re.fullmatch(r"Created \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", field(page, "created"))


def test_browse_page_shows_links_both_ways(services: DevServices, tree: dict[str, str]) -> None:
    blocker = section(browse(services, tree["first"]).text, "links")
    assert text(blocker) == f"Issue links blocks {tree['second']} Calibrate ECL energy (Open)"
    assert f'href="/browse/{tree["second"]}"' in blocker

    blocked = section(browse(services, tree["second"]).text, "links")
    assert text(blocked) == f"Issue links is blocked by {tree['first']} {HOSTILE_SUMMARY} (Open)"
    assert f'href="/browse/{tree["first"]}"' in blocked


def test_browse_epic_lists_its_issues(services: DevServices, tree: dict[str, str]) -> None:
    issues = section(browse(services, tree["epic"]).text, "epic-issues")
    assert f'href="/browse/{tree["first"]}"' in issues
    assert f'href="/browse/{tree["second"]}"' in issues
    assert "Calibrate ECL energy" in text(issues)


def test_browse_page_shows_comments_and_attachments(services: DevServices, tree: dict[str, str]) -> None:
    page = browse(services, tree["first"]).text
    comments = section(page, "comments")
    assert "Comments (1)" in text(comments)
    assert re.search(
        rf"Cdc Calibration Expert \({EXPERT}\) at \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC", text(comments)
    )
    assert HOSTILE_COMMENT in text(comments)

    attachments = section(page, "attachments")
    assert "validation &lt;1&gt;.txt" in attachments
    assert "10 bytes, text/plain" in text(attachments)
    assert "/secure/attachment/" in attachments


def test_browse_page_escapes_ticket_text(services: DevServices, tree: dict[str, str]) -> None:
    page = browse(services, tree["first"]).text
    assert "<script>" not in page
    assert "<img" not in page
    assert "<b>CDC</b>" not in page
    assert "<a href='javascript" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "&lt;a href=&#x27;javascript:alert(1)&#x27;&gt;" in page
    description = re.search(r"<pre>(.*?)</pre>", section(page, "description"), re.S)
    assert description is not None
    assert html.unescape(description.group(1)) == HOSTILE_DESCRIPTION


def test_browse_transition_command_matches_readme(services: DevServices, bot: JiraClient) -> None:
    key = bot.create("Calibrate TOP")
    page = browse(services, key).text
    pre = re.search(r'<pre id="transition-command">(.*?)</pre>', page, re.S)
    assert pre is not None
    command = " ".join(html.unescape(pre.group(1)).replace("\\\n", " ").split())
    block = re.search(r"```\n(curl -u .*?/transitions)\n```", README.read_text(), re.S)
    assert block, "README.md has no curl command that changes a ticket's status"
    documented = " ".join(block.group(1).replace("\\\n", " ").split())
    assert command.replace(services.jira_url, "http://127.0.0.1:8091").replace(key, "CAL-2") == documented
    assert "31 Close Issue Closed" in text(section(page, "transitions"))

    bot.post(f"issue/{key}/transitions", {"transition": {"id": "31"}}, expected=204)
    closed = browse(services, key).text
    assert field(closed, "status") == "Status Closed (category Done, key done)"
    assert field(closed, "resolution") == "Resolution Fixed"
    assert "61 Reopen Issue Reopened" in text(section(closed, "transitions"))


def test_browse_needs_no_login_unlike_rest(services: DevServices, bot: JiraClient) -> None:
    key = bot.create("Calibrate KLM")
    assert browse(services, key).status_code == 200
    rest = requests.get(f"{services.jira_url}/rest/api/2/issue/{key}", timeout=10)
    assert rest.status_code == 401


@pytest.mark.parametrize("key", ["CAL-999", "NOPE-1"])
def test_browse_unknown_key_gives_404_page(services: DevServices, bot: JiraClient, key: str) -> None:
    response = browse(services, key)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert f"Issue {key} does not exist" in text(response.text)


def test_browse_unknown_key_is_escaped(services: DevServices, bot: JiraClient) -> None:
    response = browse(services, "%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E")
    assert response.status_code == 404
    assert "<img" not in response.text
    assert "Issue <img src=x onerror=alert(1)> does not exist" in text(response.text)


def test_browse_page_on_cloud(services: DevServices, bot: JiraClient) -> None:
    epic = bot.create("Bucket 27", issuetype="Epic")
    services.jira_state.set_deployment("Cloud")
    try:
        state = services.jira_state
        account = state.user_json(EXPERT, state.view(services.jira_url))["accountId"]
        key = bot.create("Calibrate ARICH", parent={"key": epic}, assignee={"accountId": account})
        page = browse(services, key).text
    finally:
        services.jira_state.set_deployment("Server")
    assert field(page, "assignee") == f"Assignee Cdc Calibration Expert ({account})"
    assert field(page, "parent") == f"Parent {epic} Bucket 27"
    assert f'href="/browse/{epic}"' in page
