"""Serve a read-only HTML page per issue at ``/browse/{key}``, where real Jira shows an issue.

The product links every ticket to ``<jira url>/browse/<key>``, so these pages make those links work
with the development Jira. A page shows the fields an expert needs, the issue links, comments and
attachments, and how to change the status through the REST API. It needs no login, unlike the REST
API, because the service binds to the loopback interface only and contains development data. Every
value from an issue is HTML-escaped, and descriptions and comments are shown as plain text, without
rendering their wiki markup or ADF formatting.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

from b2cal.devservices.config import DEFAULT_JIRA_PASSWORD
from b2cal.devservices.jira_model import EPIC_LINK_FIELD, STATUSES, Issue, JiraError, View
from b2cal.devservices.jira_store import JiraState

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 60em; padding: 0 1em; color: #172b4d; }
h1 { font-size: 1.4em; }
table.fields th { text-align: left; padding-right: 1.5em; vertical-align: top; white-space: nowrap; }
pre { white-space: pre-wrap; background: #f4f5f7; padding: 0.6em; }
.comment { border-top: 1px solid #dfe1e6; margin-top: 0.8em; }
.meta { color: #5e6c84; }
"""


def add_browse_routes(app: FastAPI, state: JiraState, base: Callable[[Request], str]) -> None:
    """Add ``GET /browse/{key}``, which shows an issue as HTML or returns a 404 page naming the key."""

    @app.get("/browse/{key}", response_class=HTMLResponse)
    async def browse(request: Request, key: str) -> HTMLResponse:
        view = state.view(base(request))
        try:
            issue = state.get(key)
        except JiraError:
            return HTMLResponse(_not_found_page(key), status_code=404)
        return HTMLResponse(issue_page(state, issue, view))


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def _not_found_page(key: str) -> str:
    return _page(
        f"{key}: issue not found - b2cal development Jira",
        f'<h1 id="not-found">Issue {escape(key)} does not exist</h1>\n'
        "<p>The development Jira has no issue with this key. It may have been created by a demo whose "
        "saved state was deleted, or the key may be misspelled.</p>",
    )


def _browse_link(key: str, summary: str | None = None) -> str:
    link = f'<a href="/browse/{quote(key)}">{escape(key)}</a>'
    return f"{link} {escape(summary)}" if summary else link


def _user(value: dict[str, Any] | None, missing: str = "Unassigned") -> str:
    if not value:
        return missing
    name = value.get("name") or value.get("accountId") or ""
    return f"{escape(str(value.get('displayName', name)))} ({escape(str(name))})"


def _time(value: str | None) -> str:
    if not value:
        return ""
    try:
        moment = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z")
    except ValueError:
        return escape(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _status(status: dict[str, Any]) -> str:
    category = status["statusCategory"]
    return (
        f'<span class="status">{escape(status["name"])}</span> '
        f'<span class="meta">(category {escape(category["name"])}, key {escape(category["key"])})</span>'
    )


def _names(values: Iterable[str]) -> str:
    return escape(", ".join(values)) or "None"


def _field_rows(state: JiraState, issue: dict[str, Any]) -> str:
    fields = issue["fields"]
    rows = [
        ("type", "Type", escape(fields["issuetype"]["name"])),
        ("status", "Status", _status(fields["status"])),
        ("resolution", "Resolution", escape((fields.get("resolution") or {}).get("name") or "Unresolved")),
        ("priority", "Priority", escape(fields["priority"]["name"])),
        ("assignee", "Assignee", _user(fields.get("assignee"))),
        ("reporter", "Reporter", _user(fields.get("reporter"))),
    ]
    parent = fields.get("parent")
    if parent:
        rows.append(("parent", "Parent", _browse_link(parent["key"], parent["fields"]["summary"])))
    epic = fields.get(EPIC_LINK_FIELD)
    if epic:
        rows.append(("epic", "Epic Link", _browse_link(epic, _summary_of(state, epic))))
    rows += [
        ("components", "Components", _names(item["name"] for item in fields["components"])),
        ("labels", "Labels", _names(fields["labels"])),
        ("created", "Created", _time(fields["created"])),
        ("updated", "Updated", _time(fields["updated"])),
        ("resolved", "Resolved", _time(fields.get("resolutiondate")) or "Not resolved"),
    ]
    cells = "\n".join(
        f'<tr id="field-{name}"><th>{label}</th><td>{value}</td></tr>' for name, label, value in rows
    )
    return f'<table class="fields">\n{cells}\n</table>'


def _summary_of(state: JiraState, key: str) -> str | None:
    try:
        return state.get(key).summary
    except JiraError:
        return None


def _links_section(issue: dict[str, Any]) -> str:
    items = []
    for link in issue["fields"]["issuelinks"]:
        # The issue posted as inwardIssue lists the other one under outwardIssue: "this blocks other".
        if "outwardIssue" in link:
            relation, other = link["type"]["outward"], link["outwardIssue"]
        else:
            relation, other = link["type"]["inward"], link["inwardIssue"]
        items.append(
            f'<li class="link">{escape(relation)} {_browse_link(other["key"], other["fields"]["summary"])} '
            f'<span class="meta">({escape(other["fields"]["status"]["name"])})</span></li>'
        )
    for subtask in issue["fields"].get("subtasks", []):
        items.append(
            f'<li class="link">has sub-task {_browse_link(subtask["key"], subtask["fields"]["summary"])} '
            f'<span class="meta">({escape(subtask["fields"]["status"]["name"])})</span></li>'
        )
    content = "<ul>\n" + "\n".join(items) + "\n</ul>" if items else "<p>No links.</p>"
    return f'<section id="links">\n<h2>Issue links</h2>\n{content}\n</section>'


def _epic_children_section(state: JiraState, issue: dict[str, Any]) -> str:
    if issue["fields"]["issuetype"]["name"] != "Epic":
        return ""
    children = [other for other in state.issues() if issue["key"] in (other.epic, other.parent)]
    items = [
        f'<li class="child">{_browse_link(other.key, other.summary)} '
        f'<span class="meta">({escape(other.status)})</span></li>'
        for other in children
    ]
    content = "<ul>\n" + "\n".join(items) + "\n</ul>" if items else "<p>No issues in this epic.</p>"
    return f'<section id="epic-issues">\n<h2>Issues in this epic</h2>\n{content}\n</section>'


def _description_section(issue: dict[str, Any]) -> str:
    description = issue["fields"].get("description")
    content = f"<pre>{escape(description)}</pre>" if description else "<p>No description.</p>"
    return f'<section id="description">\n<h2>Description</h2>\n{content}\n</section>'


def _comments_section(issue: dict[str, Any]) -> str:
    comments = issue["fields"]["comment"]["comments"]
    items = [
        f'<div class="comment" id="comment-{escape(comment["id"])}">\n'
        f'<p class="meta">{_user(comment.get("author"), "Unknown user")} at {_time(comment["created"])}</p>\n'
        f"<pre>{escape(comment['body'] or '')}</pre>\n</div>"
        for comment in comments
    ]
    content = "\n".join(items) if items else "<p>No comments.</p>"
    return f'<section id="comments">\n<h2>Comments ({len(comments)})</h2>\n{content}\n</section>'


def _attachments_section(issue: dict[str, Any], bot: str) -> str:
    attachments = issue["fields"]["attachment"]
    items = [
        f'<li class="attachment"><a href="{escape(item["content"])}">{escape(item["filename"])}</a> '
        f'<span class="meta">{item["size"]} bytes, {escape(item["mimeType"])}, '
        f"{_user(item.get('author'), 'Unknown user')}, {_time(item['created'])}</span></li>"
        for item in attachments
    ]
    if not items:
        return '<section id="attachments">\n<h2>Attachments</h2>\n<p>No attachments.</p>\n</section>'
    return (
        '<section id="attachments">\n<h2>Attachments</h2>\n<ul>\n' + "\n".join(items) + "\n</ul>\n"
        "<p>Downloading needs the REST API's login, e.g. "
        f"<code>curl -u {escape(bot)}:PASSWORD URL</code>.</p>\n</section>"
    )


def _transition_section(state: JiraState, issue: Issue, view: View) -> str:
    bot = state.config.jira_bot_username
    # Print the bot's password only while it is the published default; an overridden one stays secret.
    if state.config.jira_bot_password == DEFAULT_JIRA_PASSWORD:
        password = DEFAULT_JIRA_PASSWORD
    else:
        password = "$B2CAL_DEV_JIRA_PASSWORD"

    transitions = state.transitions(issue)
    url = f"{view.base_url}/rest/api/2/issue/{issue.key}/transitions"
    rows = "\n".join(
        f'<tr class="transition"><td>{escape(item.id)}</td><td>{escape(item.name)}</td>'
        f"<td>{escape(item.to)}</td></tr>"
        for item in transitions
    )
    # The example closes the issue, as the README's command does (id 31 from Open), and falls back to
    # another done transition or, once the issue is done, to the first one available.
    closing = [item for item in transitions if STATUSES[item.to].category == "done"]
    closing.sort(key=lambda item: item.to != "Closed")
    examples = closing or list(transitions)

    command = ""
    if examples:
        example = examples[0]
        body = json.dumps({"transition": {"id": example.id}})
        command = (
            f"<p>Transition {escape(example.id)} ({escape(example.name)}) "
            f"moves it to {escape(example.to)}:</p>\n"
            f'<pre id="transition-command">curl -u {escape(bot)}:{escape(password)} '
            f"-H 'Content-Type: application/json' \\\n  -d '{escape(body)}' {escape(url)}</pre>"
        )

    return (
        '<section id="transitions">\n<h2>Change the status</h2>\n'
        "<p>This page is read-only. Change the status through the REST API with "
        f"<code>POST {escape(url)}</code> and the id of one of the transitions available now "
        "(<code>GET</code> on the same URL lists them):</p>\n"
        f"<table>\n<tr><th>Id</th><th>Transition</th><th>Leads to</th></tr>\n{rows}\n</table>\n{command}\n"
        "</section>"
    )


def issue_page(state: JiraState, issue: Issue, view: View) -> str:
    """Return the HTML page of an issue, built from its REST v2 representation."""
    data = state.issue_json(issue, view)
    summary = data["fields"]["summary"]
    sections = [
        f'<p class="meta">{escape(data["fields"]["project"]["name"])} / '
        f'<span id="issue-key">{escape(issue.key)}</span></p>',
        f'<h1 id="summary">{escape(summary)}</h1>',
        _field_rows(state, data),
        _description_section(data),
        _links_section(data),
        _epic_children_section(state, data),
        _comments_section(data),
        _attachments_section(data, state.config.jira_bot_username),
        _transition_section(state, issue, view),
    ]
    return _page(
        f"[{issue.key}] {summary} - b2cal development Jira", "\n".join(part for part in sections if part)
    )
