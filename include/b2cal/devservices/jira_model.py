"""Define what the development Jira stores: statuses, workflows, issue types, issues, links, comments
and attachments."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from b2cal.devservices.persistence import decode_bytes, decode_time, encode_bytes, encode_time

SERVER = "Server"
CLOUD = "Cloud"
DEPLOYMENTS = (SERVER, CLOUD)

API = "/rest/api/2"
#: Maximum number of issues per bulk create, as documented for Jira Cloud. Jira Server documents no
#: limit, so the development service enforces the Cloud one to keep clients portable.
MAX_BULK_ISSUES = 50
#: Maximum ``maxResults`` of a Server search, the default of ``jira.search.views.default.max``.
MAX_SEARCH_RESULTS = 1000
#: Maximum ``maxResults`` of a Cloud ``search/jql`` page that reads more than issue ids.
MAX_CLOUD_SEARCH_RESULTS = 100
DEFAULT_SEARCH_RESULTS = 50
MAX_SUMMARY_LENGTH = 255
#: Maximum size of one attachment: 10 MiB, the default of Jira Server's ``jira.attachment.size``.
MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024
#: The Epic Link custom field of a Data Center site. Real sites give it another number; clients
#: must take the field id from their configuration.
EPIC_LINK_FIELD = "customfield_10008"


@dataclass(frozen=True)
class StatusCategory:
    """A status category: ``key`` is what JQL and clients should compare, ``name`` what users see."""

    id: int
    key: str
    name: str
    color: str


CATEGORIES = {
    "new": StatusCategory(2, "new", "To Do", "blue-gray"),
    "indeterminate": StatusCategory(4, "indeterminate", "In Progress", "yellow"),
    "done": StatusCategory(3, "done", "Done", "green"),
}


@dataclass(frozen=True)
class Status:
    """A workflow status and its category key."""

    id: str
    name: str
    category: str


STATUSES = {
    status.name: status
    for status in (
        Status("1", "Open", "new"),
        Status("3", "In Progress", "indeterminate"),
        Status("4", "Reopened", "new"),
        Status("5", "Resolved", "done"),
        Status("6", "Closed", "done"),
        Status("10000", "To Do", "new"),
        Status("10001", "In Review", "indeterminate"),
        Status("10002", "Done", "done"),
    )
}
INITIAL_STATUS = "Open"


@dataclass(frozen=True)
class Transition:
    """A workflow transition: its id, its name and the status it leads to."""

    id: str
    name: str
    to: str


START_PROGRESS = Transition("11", "Start Progress", "In Progress")
RESOLVE = Transition("21", "Resolve Issue", "Resolved")
CLOSE = Transition("31", "Close Issue", "Closed")
STOP_PROGRESS = Transition("41", "Stop Progress", "Open")
CLOSE_RESOLVED = Transition("51", "Close Issue", "Closed")
REOPEN = Transition("61", "Reopen Issue", "Reopened")

#: The transitions available from each status of the classic Jira Server workflow.
WORKFLOW: dict[str, tuple[Transition, ...]] = {
    "Open": (START_PROGRESS, RESOLVE, CLOSE),
    "In Progress": (STOP_PROGRESS, RESOLVE, CLOSE),
    "Reopened": (START_PROGRESS, RESOLVE, CLOSE),
    "Resolved": (CLOSE_RESOLVED, REOPEN),
    "Closed": (REOPEN,),
}

# A workflow in the style of a Cloud software project. Its ids differ from the classic ones, and
# id 21 leads to "In Progress" here but to "Resolved" there, so a client that hard-codes ids breaks.
_START_WORK = Transition("21", "Start work", "In Progress")
_BACK_TO_DO = Transition("11", "Back to To Do", "To Do")
_REVIEW = Transition("41", "Send to review", "In Review")
_FINISH = Transition("31", "Done", "Done")
_REOPEN_SIMPLE = Transition("51", "Reopen", "To Do")
SIMPLE_WORKFLOW: dict[str, tuple[Transition, ...]] = {
    "To Do": (_START_WORK, _FINISH),
    "In Progress": (_BACK_TO_DO, _REVIEW, _FINISH),
    "In Review": (_BACK_TO_DO, _FINISH),
    "Done": (_REOPEN_SIMPLE,),
}


@dataclass(frozen=True)
class Workflow:
    """A named workflow: its initial status and the transitions out of each status."""

    name: str
    initial: str
    transitions: Mapping[str, tuple[Transition, ...]]


WORKFLOWS = {
    "classic": Workflow("classic", INITIAL_STATUS, WORKFLOW),
    "simple": Workflow("simple", "To Do", SIMPLE_WORKFLOW),
}

#: Issue type name -> (id, whether it is a sub-task type).
ISSUE_TYPES: dict[str, tuple[str, bool]] = {
    "Task": ("10002", False),
    "Epic": ("10000", False),
    "Sub-task": ("10003", True),
}

#: Link type name -> (id, inward description, outward description).
LINK_TYPES: dict[str, tuple[str, str, str]] = {
    "Blocks": ("10000", "is blocked by", "blocks"),
    "Cloners": ("10001", "is cloned by", "clones"),
    "Duplicate": ("10002", "is duplicated by", "duplicates"),
    "Relates": ("10003", "relates to", "relates to"),
}

PRIORITIES = ("Highest", "High", "Medium", "Low", "Lowest")
DEFAULT_PRIORITY = "Medium"
DEFAULT_RESOLUTION = "Fixed"
RESOLUTIONS = ("Fixed", "Won't Fix", "Duplicate", "Incomplete", "Cannot Reproduce", "Done")


class JiraError(Exception):
    """An error response in Jira's format: ``{"errorMessages": [...], "errors": {field: message}}``."""

    def __init__(
        self, status: int, messages: list[str] | None = None, errors: dict[str, str] | None = None
    ) -> None:
        self.status = status
        self.messages = messages or []
        self.errors = errors or {}
        super().__init__("; ".join([*self.messages, *self.errors.values()]))

    def body(self) -> dict[str, Any]:
        """Return the JSON body of the error response."""
        return {"errorMessages": self.messages, "errors": self.errors}


@dataclass(frozen=True)
class View:
    """How a response is rendered: the base URL and the REST API version it was asked through."""

    base_url: str
    version: int = 2
    cloud: bool = False

    @property
    def api(self) -> str:
        """The URL prefix of the REST API version, e.g. ``http://127.0.0.1:8091/rest/api/2``."""
        return f"{self.base_url}/rest/api/{self.version}"

    @property
    def adf(self) -> bool:
        """Whether text fields are Atlassian Document Format (REST v3) rather than strings."""
        return self.version >= 3


@dataclass
class Comment:
    """A comment on an issue; ``body`` is a wiki markup string or an ADF document."""

    id: int
    author: str
    body: Any
    created: datetime


@dataclass
class Attachment:
    """A file attached to an issue, with its content."""

    id: int
    filename: str
    mime_type: str
    content: bytes
    author: str
    created: datetime

    @property
    def size(self) -> int:
        """The content's size in bytes."""
        return len(self.content)


@dataclass
class Issue:
    """An issue as the development Jira stores it."""

    id: int
    key: str
    project: str
    issuetype: str
    summary: str
    reporter: str
    created: datetime
    description: Any = None
    labels: list[str] = field(default_factory=list)
    components: list[str] = field(default_factory=list)
    assignee: str | None = None
    priority: str = DEFAULT_PRIORITY
    status: str = INITIAL_STATUS
    resolution: str | None = None
    resolved: datetime | None = None
    #: The parent of a sub-task, or on Cloud the epic of a standard issue.
    parent: str | None = None
    #: Data Center only: the epic named in the Epic Link field.
    epic: str | None = None
    updated: datetime | None = None
    comments: list[Comment] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    #: ``time.monotonic()`` from which a lagging Cloud search returns the issue.
    searchable_from: float = 0.0

    @property
    def number(self) -> int:
        """The number after the project key, used to sort keys numerically."""
        return int(self.key.rsplit("-", 1)[1])


def issue_to_record(issue: Issue) -> dict[str, Any]:
    """Return an issue with its comments and attachments as JSON-compatible data, for the state file."""
    return {
        "id": issue.id,
        "key": issue.key,
        "project": issue.project,
        "issuetype": issue.issuetype,
        "summary": issue.summary,
        "reporter": issue.reporter,
        "created": encode_time(issue.created),
        "description": issue.description,
        "labels": list(issue.labels),
        "components": list(issue.components),
        "assignee": issue.assignee,
        "priority": issue.priority,
        "status": issue.status,
        "resolution": issue.resolution,
        "resolved": encode_time(issue.resolved),
        "parent": issue.parent,
        "epic": issue.epic,
        "updated": encode_time(issue.updated),
        "comments": [
            {"id": item.id, "author": item.author, "body": item.body, "created": encode_time(item.created)}
            for item in issue.comments
        ],
        "attachments": [
            {
                "id": item.id,
                "filename": item.filename,
                "mime_type": item.mime_type,
                "content": encode_bytes(item.content),
                "author": item.author,
                "created": encode_time(item.created),
            }
            for item in issue.attachments
        ],
    }


def issue_from_record(record: dict[str, Any]) -> Issue:
    """Return the issue that :func:`issue_to_record` saved; a saved issue is searchable at once.

    :raises KeyError, TypeError, ValueError: when the record lacks a field or a value is invalid
    """
    if record["status"] not in STATUSES or record["issuetype"] not in ISSUE_TYPES:
        raise ValueError(f"issue {record['key']} has an unknown status or issue type")
    created = decode_time(record["created"])
    if created is None:
        raise ValueError(f"issue {record['key']} has no creation time")
    return Issue(
        id=int(record["id"]),
        key=str(record["key"]),
        project=str(record["project"]),
        issuetype=str(record["issuetype"]),
        summary=str(record["summary"]),
        reporter=str(record["reporter"]),
        created=created,
        description=record["description"],
        labels=[str(label) for label in record["labels"]],
        components=[str(name) for name in record["components"]],
        assignee=record["assignee"],
        priority=str(record["priority"]),
        status=str(record["status"]),
        resolution=record["resolution"],
        resolved=decode_time(record["resolved"]),
        parent=record["parent"],
        epic=record["epic"],
        updated=decode_time(record["updated"]),
        comments=[
            Comment(int(item["id"]), str(item["author"]), item["body"], _required_time(item["created"]))
            for item in record["comments"]
        ],
        attachments=[
            Attachment(
                int(item["id"]),
                str(item["filename"]),
                str(item["mime_type"]),
                decode_bytes(item["content"]),
                str(item["author"]),
                _required_time(item["created"]),
            )
            for item in record["attachments"]
        ],
    )


def _required_time(text: str) -> datetime:
    value = decode_time(text)
    if value is None:
        raise ValueError("a saved comment or attachment has no creation time")
    return value


@dataclass(frozen=True)
class IssueLink:
    """A link as posted: ``inward`` is the ``inwardIssue`` key, so for ``Blocks`` it blocks ``outward``."""

    id: int
    type: str
    inward: str
    outward: str


def account_id_of(username: str) -> str:
    """Return the stable Cloud account id of a development user: 24 hexadecimal digits."""
    return hashlib.sha1(f"b2cal-dev-account\0{username}".encode()).hexdigest()[:24]


def is_adf(value: Any) -> bool:
    """Return whether a value looks like an Atlassian Document Format document."""
    return isinstance(value, dict) and value.get("type") == "doc" and isinstance(value.get("content"), list)


def text_to_adf(text: str) -> dict[str, Any]:
    """Wrap plain text into a one-paragraph-per-block ADF document, as Cloud renders v2 text in v3."""
    paragraphs = [part for part in text.split("\n\n") if part]
    return {
        "type": "doc",
        "version": 1,
        "content": [
            {"type": "paragraph", "content": [{"type": "text", "text": part}]} for part in paragraphs
        ],
    }


def adf_to_text(document: Any) -> str:
    """Return the plain text of an ADF document."""
    parts: list[str] = []

    def walk(node: Any) -> None:
        if not isinstance(node, dict):
            return
        if node.get("type") == "text":
            parts.append(str(node.get("text", "")))
        elif node.get("type") == "hardBreak":
            parts.append("\n")
        for child in node.get("content", []) or []:
            walk(child)
        if node.get("type") in ("paragraph", "codeBlock", "heading"):
            parts.append("\n\n")

    walk(document)
    return "".join(parts).strip("\n")


def render_text(value: Any, view: View) -> Any:
    """Return a stored text value as the view's API version shows it: ADF on v3, a string on v2."""
    if value is None:
        return None
    if view.adf:
        return value if is_adf(value) else text_to_adf(str(value))
    return adf_to_text(value) if is_adf(value) else value
