"""Store the state of the development Jira: users, projects, workflows, issues, links, comments, attachments.

:class:`JiraState` validates requests the way Jira Server/Data Center or Jira Cloud does, depending
on its ``deployment``, and renders the REST representations of API v2 (both deployments) and v3
(Cloud only). :mod:`b2cal.devservices.jira` serves it over HTTP. Listeners registered with
:meth:`JiraState.add_listener` hear every created and updated issue; the webhook dispatcher is one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any
from urllib.parse import quote

from b2cal.devservices.common import FaultInjector, utc_now
from b2cal.devservices.config import DevServicesConfig
from b2cal.devservices.jira_model import (
    API,
    CATEGORIES,
    CLOUD,
    DEFAULT_PRIORITY,
    DEFAULT_RESOLUTION,
    DEFAULT_SEARCH_RESULTS,
    DEPLOYMENTS,
    EPIC_LINK_FIELD,
    INITIAL_STATUS,
    ISSUE_TYPES,
    LINK_TYPES,
    MAX_ATTACHMENT_BYTES,
    MAX_BULK_ISSUES,
    MAX_CLOUD_SEARCH_RESULTS,
    MAX_SEARCH_RESULTS,
    MAX_SUMMARY_LENGTH,
    PRIORITIES,
    RESOLUTIONS,
    SERVER,
    STATUSES,
    WORKFLOW,
    WORKFLOWS,
    Attachment,
    Comment,
    Issue,
    IssueLink,
    JiraError,
    Status,
    Transition,
    View,
    Workflow,
    account_id_of,
    is_adf,
    issue_from_record,
    issue_to_record,
    render_text,
)
from b2cal.devservices.jql import JqlError, Query, iter_clauses, matches, parse_jql

__all__ = [
    "API",
    "CATEGORIES",
    "CLOUD",
    "DEFAULT_SEARCH_RESULTS",
    "EPIC_LINK_FIELD",
    "INITIAL_STATUS",
    "ISSUE_TYPES",
    "LINK_TYPES",
    "MAX_ATTACHMENT_BYTES",
    "MAX_BULK_ISSUES",
    "MAX_CLOUD_SEARCH_RESULTS",
    "MAX_SEARCH_RESULTS",
    "SERVER",
    "STATUSES",
    "WORKFLOW",
    "WORKFLOWS",
    "Attachment",
    "Comment",
    "Issue",
    "IssueLink",
    "JiraError",
    "JiraState",
    "Status",
    "Transition",
    "View",
]

logger = logging.getLogger(__name__)

#: Called with the event name (``jira:issue_created`` or ``jira:issue_updated``), the issue, the
#: changelog items and the acting username, while the state's lock is held.
Listener = Callable[[str, Issue, list[dict[str, Any]], str], None]

_CREATE_FIELDS = {
    "summary",
    "description",
    "labels",
    "components",
    "assignee",
    "reporter",
    "issuetype",
    "project",
    "parent",
    "priority",
}
_EDIT_FIELDS = {"summary", "description", "labels", "components", "assignee", "priority"}


def _format_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.strftime("%Y-%m-%dT%H:%M:%S.000+0000")


class JiraState:
    """In-memory store of the development Jira: users, projects, issues, links and comments.

    Every public method takes the lock, so tests may call them from another thread while the server
    runs. ``deployment``, ``latency`` and ``search_lag`` may be changed while it runs.
    """

    def __init__(self, config: DevServicesConfig) -> None:
        self.config = config
        self.base_url: str | None = None
        self.faults = FaultInjector()
        self.deployment: str = getattr(config, "jira_deployment", SERVER)
        #: Seconds every REST request waits before it is served.
        self.latency: float = float(getattr(config, "jira_latency_seconds", 0.0))
        #: Cloud only: seconds after its creation before a search returns an issue.
        self.search_lag: float = float(getattr(config, "jira_search_lag_seconds", 0.0))
        self._workflows = {
            project: WORKFLOWS[name]
            for project, name in dict(getattr(config, "jira_workflows", ()) or ()).items()
        }
        self._lock = threading.RLock()
        self._users = config.jira_users()
        self._accounts = {account_id_of(name): name for name in self._users}
        self._listeners: list[Listener] = []
        self._requests: dict[str, int] = {}
        #: The webhook dispatcher, set by :func:`b2cal.devservices.jira.create_app`.
        self.webhooks: Any = None
        #: When a list, every REST exchange is appended to it (for contract tests).
        self.recorder: list[dict[str, Any]] | None = None
        self.reset()

    def reset(self) -> None:
        """Delete every issue, link and comment, restart the key numbering and clear the counters."""
        with self._lock:
            self._issues: dict[str, Issue] = {}
            self._ids: dict[int, str] = {}
            self._links: list[IssueLink] = []
            self._counters = {project: 0 for project in self.config.jira_projects}
            self._next_issue_id = 10000
            self._next_link_id = 20000
            self._next_comment_id = 30000
            self._next_attachment_id = 40000
            self._requests = {}
            self.faults.clear()

    def export_state(self) -> dict[str, Any]:
        """Return the issues, links, key counters and id sequences as JSON-compatible data.

        Users, projects, settings, faults and request counters come from the configuration or
        belong to one run, so they are left out.
        """
        with self._lock:
            return {
                "issues": [issue_to_record(issue) for issue in self.issues()],
                "links": [
                    {"id": link.id, "type": link.type, "inward": link.inward, "outward": link.outward}
                    for link in self._links
                ],
                "counters": dict(self._counters),
                "next_ids": {
                    "issue": self._next_issue_id,
                    "link": self._next_link_id,
                    "comment": self._next_comment_id,
                    "attachment": self._next_attachment_id,
                },
            }

    def restore_state(self, data: dict[str, Any]) -> None:
        """Replace the issues, links, key counters and id sequences with what :meth:`export_state` saved.

        :raises KeyError, TypeError, ValueError: when the data is incomplete, or names a project that
            the configuration lacks or an issue that does not exist
        """
        issues = [issue_from_record(record) for record in data["issues"]]
        links = [
            IssueLink(int(item["id"]), str(item["type"]), str(item["inward"]), str(item["outward"]))
            for item in data["links"]
        ]
        keys = {issue.key for issue in issues}
        unknown = sorted({issue.project for issue in issues} - set(self.config.jira_projects))
        if unknown:
            raise ValueError(f"the saved issues belong to projects {unknown} that the configuration lacks")
        for link in links:
            if link.type not in LINK_TYPES or not {link.inward, link.outward} <= keys:
                raise ValueError(f"link {link.id} has an unknown type or issue")
        next_ids = data["next_ids"]
        with self._lock:
            self.reset()
            self._issues = {issue.key: issue for issue in issues}
            self._ids = {issue.id: issue.key for issue in issues}
            self._links = links
            for project, count in data["counters"].items():
                if project in self._counters:
                    self._counters[project] = int(count)
            for issue in issues:
                # A key is never handed out twice, even if the saved counter lags behind the issues.
                self._counters[issue.project] = max(self._counters[issue.project], issue.number)
            self._next_issue_id = int(next_ids["issue"])
            self._next_link_id = int(next_ids["link"])
            self._next_comment_id = int(next_ids["comment"])
            self._next_attachment_id = int(next_ids["attachment"])

    @property
    def cloud(self) -> bool:
        """Whether the service behaves as Jira Cloud."""
        return self.deployment == CLOUD

    def set_deployment(self, deployment: str) -> None:
        """Switch between ``Server`` and ``Cloud`` behaviour."""
        if deployment not in DEPLOYMENTS:
            raise ValueError(f"deployment {deployment!r} is invalid: use one of {', '.join(DEPLOYMENTS)}")
        self.deployment = deployment

    # Listeners and counters

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` on every issue event."""
        self._listeners.append(listener)

    def _emit(self, event: str, issue: Issue, items: list[dict[str, Any]], user: str) -> None:
        for listener in self._listeners:
            try:
                listener(event, issue, items, user)
            except Exception:  # a failing listener must not fail the request that caused the event
                logger.exception("Listener of %s on %s failed", event, issue.key)

    def count_request(self, method: str, route: str) -> None:
        """Count one served REST request by method and route template."""
        with self._lock:
            name = f"{method} {route}"
            self._requests[name] = self._requests.get(name, 0) + 1

    def request_counts(self) -> dict[str, int]:
        """Return the number of served REST requests by ``"<method> <route>"``."""
        with self._lock:
            return dict(self._requests)

    # Users and projects

    def authenticate(self, username: str, password: str) -> bool:
        """Return whether the username exists and the password is its password."""
        expected = self._users.get(username)
        return expected is not None and expected == password

    def has_user(self, username: str) -> bool:
        """Return whether a user with this name exists."""
        return username in self._users

    def user_for_account(self, account_id: str) -> str | None:
        """Return the username of a Cloud account id, or ``None``."""
        return self._accounts.get(account_id)

    def usernames(self) -> list[str]:
        """Return every username."""
        return list(self._users)

    def user_json(self, username: str, view: View) -> dict[str, Any]:
        """Return the REST representation of a user: by ``name`` on Server, by ``accountId`` on Cloud."""
        common = {
            "emailAddress": f"{username}@example.invalid",
            "displayName": username.replace("-", " ").title(),
            "active": True,
            "timeZone": "UTC",
            "avatarUrls": {},
        }
        if view.cloud:
            account = account_id_of(username)
            return {
                "self": f"{view.api}/user?accountId={account}",
                "accountId": account,
                "accountType": "atlassian",
                **common,
            }
        return {"self": f"{view.api}/user?username={username}", "key": username, "name": username, **common}

    def find_users(self, query: str) -> list[str]:
        """Return the usernames whose e-mail address or display name starts with ``query``."""
        lowered = query.lower()
        return [
            name
            for name in self._users
            if f"{name}@example.invalid".startswith(lowered)
            or name.replace("-", " ").lower().startswith(lowered)
        ]

    def project_json(self, key: str, view: View) -> dict[str, Any]:
        """Return the REST representation of a project."""
        project_id = str(10000 + self.config.jira_projects.index(key))
        return {
            "self": f"{view.api}/project/{project_id}",
            "id": project_id,
            "key": key,
            "name": f"{key} calibration",
            "projectTypeKey": "software",
        }

    def find_project(self, reference: dict[str, Any] | None) -> str | None:
        """Return the key of the project a ``{"key": ...}`` or ``{"id": ...}`` reference names."""
        if not isinstance(reference, dict):
            return None
        if "key" in reference:
            key = str(reference["key"]).upper()
            return key if key in self._counters else None
        if "id" in reference:
            for index, key in enumerate(self.config.jira_projects):
                if str(reference["id"]) == str(10000 + index):
                    return key
        return None

    def workflow(self, project: str) -> Workflow:
        """Return the workflow of a project's issues."""
        return self._workflows.get(project, WORKFLOWS["classic"])

    # Issues

    def get(self, id_or_key: str) -> Issue:
        """Return the issue with this key or numeric id; raise a 404 :class:`JiraError` if none."""
        with self._lock:
            issue = self._lookup(id_or_key)
            if issue is None:
                raise JiraError(404, ["Issue Does Not Exist"])
            return issue

    def _lookup(self, id_or_key: str) -> Issue | None:
        text = str(id_or_key)
        if text.isdigit():
            key = self._ids.get(int(text))
            return self._issues.get(key) if key else None
        return self._issues.get(text.upper())

    def issues(self) -> list[Issue]:
        """Return every issue in creation order."""
        with self._lock:
            return sorted(self._issues.values(), key=lambda issue: issue.id)

    def create(self, body: Any, reporter: str, version: int = 2) -> Issue:
        """Validate a create request body and store the new issue.

        :param version: the REST API version the request came through; v3 takes ADF text fields
        :raises JiraError: with status 400 and one message per invalid field
        """
        with self._lock:
            if not isinstance(body, dict) or not isinstance(body.get("fields"), dict):
                raise JiraError(400, ["The request body must be a JSON object with a 'fields' object."])
            fields: dict[str, Any] = body["fields"]
            errors: dict[str, str] = {}
            allowed = _CREATE_FIELDS if self.cloud else _CREATE_FIELDS | {EPIC_LINK_FIELD}
            for name in sorted(set(fields) - allowed):
                errors[name] = (
                    f"Field '{name}' cannot be set. It is not on the appropriate screen, or unknown."
                )

            project = self.find_project(fields.get("project"))
            if "project" not in fields:
                errors["project"] = "project is required"
            elif project is None:
                errors["project"] = f"valid project is required; known projects: {', '.join(self._counters)}"

            issuetype = self._issue_type(fields.get("issuetype"))
            if "issuetype" not in fields:
                errors["issuetype"] = "issue type is required"
            elif issuetype is None:
                errors["issuetype"] = f"valid issue type is required; known types: {', '.join(ISSUE_TYPES)}"

            summary = fields.get("summary")
            summary_error = self._summary_error(summary)
            if summary_error:
                errors["summary"] = summary_error

            parent = self._check_parent(fields, issuetype, project, errors)
            epic = self._check_epic_link(fields, issuetype, project, errors)
            self._check_text_fields(fields, errors, version)
            assignee = self._check_user_field(fields, "assignee", errors)
            reporter_name = self._check_user_field(fields, "reporter", errors) or reporter
            priority = self._check_priority(fields.get("priority"), errors)

            update = body.get("update") or {}
            links = self._check_create_update(update, errors)
            if errors or project is None or issuetype is None or not isinstance(summary, str):
                raise JiraError(400, [], errors)

            self._counters[project] += 1
            now = utc_now()
            issue = Issue(
                id=self._next_issue_id,
                key=f"{project}-{self._counters[project]}",
                project=project,
                issuetype=issuetype,
                summary=summary,
                reporter=reporter_name,
                created=now,
                updated=now,
                description=fields.get("description"),
                labels=list(dict.fromkeys(fields.get("labels") or [])),
                components=self._component_names(fields.get("components")),
                assignee=assignee,
                priority=priority or DEFAULT_PRIORITY,
                status=self.workflow(project).initial,
                parent=parent,
                epic=epic,
                searchable_from=time.monotonic() + (self.search_lag if self.cloud else 0.0),
            )
            self._next_issue_id += 1
            self._issues[issue.key] = issue
            self._ids[issue.id] = issue.key
            for link_type, direction, other in links:
                if direction == "inward":
                    self._add_link(link_type, other, issue.key)
                else:
                    self._add_link(link_type, issue.key, other)
            self._emit("jira:issue_created", issue, [], reporter)
            return issue

    def _issue_type(self, reference: Any) -> str | None:
        if not isinstance(reference, dict):
            return None
        if "name" in reference:
            for name in ISSUE_TYPES:
                if name.lower() == str(reference["name"]).lower():
                    return name
        if "id" in reference:
            for name, (type_id, _) in ISSUE_TYPES.items():
                if type_id == str(reference["id"]):
                    return name
        return None

    @staticmethod
    def _summary_error(summary: Any) -> str | None:
        if summary is None or (isinstance(summary, str) and not summary.strip()):
            return "You must specify a summary of the issue."
        if not isinstance(summary, str):
            return f"Summary must be a string, got {type(summary).__name__}."
        if len(summary) > MAX_SUMMARY_LENGTH:
            return f"Summary must be less than {MAX_SUMMARY_LENGTH} characters, got {len(summary)}."
        if "\n" in summary or "\r" in summary:
            return "The summary is invalid because it contains newline characters."
        return None

    def _check_parent(
        self, fields: dict[str, Any], issuetype: str | None, project: str | None, errors: dict[str, str]
    ) -> str | None:
        if issuetype is None:
            return None
        is_subtask = ISSUE_TYPES[issuetype][1]
        reference = fields.get("parent")
        if reference is None and not is_subtask:
            return None
        if not isinstance(reference, dict) or not ({"key", "id"} & set(reference)):
            errors["parent"] = "Issue type is a sub-task but parent issue key or id not specified."
            return None
        parent = self._lookup(str(reference.get("key") or reference.get("id")))
        if parent is None:
            errors["parent"] = f"Could not find issue by id or key {reference!r}."
            return None
        if not is_subtask:
            # Cloud lets a standard issue name its epic as parent; Server knows parents of sub-tasks only.
            if not self.cloud:
                errors["parent"] = (
                    f"Only sub-tasks can have a parent; issue type {issuetype!r} cannot. Use issue type "
                    f"'Sub-task', or the Epic Link field {EPIC_LINK_FIELD} to name an epic."
                )
            elif parent.issuetype != "Epic" or issuetype == "Epic":
                errors["parent"] = (
                    f"Issue {parent.key} cannot be the parent of a {issuetype}: only an epic can."
                )
            else:
                return parent.key
            return None
        if ISSUE_TYPES[parent.issuetype][1] or parent.issuetype == "Epic":
            errors["parent"] = f"Issue {parent.key} ({parent.issuetype}) cannot be the parent of a sub-task."
            return None
        if project is not None and parent.project != project:
            errors["parent"] = f"Parent {parent.key} is in project {parent.project}, not in {project}."
            return None
        return parent.key

    def _check_epic_link(
        self, fields: dict[str, Any], issuetype: str | None, project: str | None, errors: dict[str, str]
    ) -> str | None:
        value = fields.get(EPIC_LINK_FIELD)
        if value is None or self.cloud:
            return None
        epic = self._lookup(str(value)) if isinstance(value, str) else None
        if epic is None or epic.issuetype != "Epic":
            errors[EPIC_LINK_FIELD] = (
                f"The issue {value!r} is not an epic; the Epic Link takes the key of an epic."
            )
            return None
        if issuetype in ("Epic", "Sub-task"):
            errors[EPIC_LINK_FIELD] = f"An issue of type {issuetype} cannot have an Epic Link."
            return None
        return epic.key

    def _check_text_fields(self, fields: dict[str, Any], errors: dict[str, str], version: int) -> None:
        description = fields.get("description")
        if description is not None:
            if version >= 3 and not is_adf(description):
                errors["description"] = (
                    "Operation value must be an Atlassian Document (see the Atlassian Document Format): "
                    "REST API v3 does not take strings."
                )
            elif version < 3 and not isinstance(description, str):
                errors["description"] = (
                    "Operation value must be a string: REST API v2 takes wiki markup text, "
                    "not Atlassian Document Format."
                )
        labels = fields.get("labels")
        if labels is not None:
            if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
                errors["labels"] = "labels must be a list of strings."
            else:
                for label in labels:
                    if not label or any(char.isspace() for char in label):
                        errors["labels"] = f"The label '{label}' contains spaces which is invalid."
                    elif len(label) > 255:
                        errors["labels"] = f"The label '{label[:20]}...' is longer than 255 characters."
        components = fields.get("components")
        if components is not None and (
            not isinstance(components, list)
            or not all(isinstance(item, dict) and isinstance(item.get("name"), str) for item in components)
        ):
            errors["components"] = 'components must be a list like [{"name": "CDC"}].'

    def _user_reference(self, reference: Any, name: str) -> tuple[str | None, str | None]:
        """Return ``(username, error)`` for a user reference of the deployment's kind."""
        if not isinstance(reference, dict):
            return None, f"{name} must be a JSON object."
        if self.cloud:
            if "accountId" not in reference:
                return None, (
                    f'{name} must be {{"accountId": "<id>"}} on Jira Cloud, which has no usernames.'
                )
            account = reference["accountId"]
            if account is None or account == "-1":
                return None, None
            username = self.user_for_account(str(account))
            if username is None:
                return None, f"User with accountId '{account}' does not exist."
            return username, None
        if "accountId" in reference and "name" not in reference:
            return (
                None,
                f'{name} must be {{"name": "<username>"}} on Jira Server; accountId is a Cloud field.',
            )
        username = reference.get("name")
        if username is None or username == "-1":
            return None, None
        if username not in self._users:
            return None, f"User '{username}' does not exist."
        return str(username), None

    def _check_user_field(self, fields: dict[str, Any], name: str, errors: dict[str, str]) -> str | None:
        reference = fields.get(name)
        if reference is None:
            return None
        username, error = self._user_reference(reference, name)
        if error:
            errors[name] = error
        return username

    @staticmethod
    def _check_priority(reference: Any, errors: dict[str, str]) -> str | None:
        if reference is None:
            return None
        name = reference.get("name") if isinstance(reference, dict) else None
        if name not in PRIORITIES:
            errors["priority"] = f"Priority {name!r} is not valid; use one of {', '.join(PRIORITIES)}."
            return None
        return str(name)

    @staticmethod
    def _component_names(components: Any) -> list[str]:
        return list(dict.fromkeys(item["name"] for item in components or []))

    def _check_create_update(self, update: Any, errors: dict[str, str]) -> list[tuple[str, str, str]]:
        """Validate ``update.issuelinks`` of a create request; other update operations are rejected."""
        if not isinstance(update, dict):
            errors["update"] = "update must be a JSON object."
            return []
        links: list[tuple[str, str, str]] = []
        for name in update:
            if name != "issuelinks":
                errors[name] = (
                    f"The update operation on '{name}' is not supported by the development Jira at create "
                    "time; set the value in 'fields' instead."
                )
        for operation in update.get("issuelinks", []):
            add = operation.get("add") if isinstance(operation, dict) else None
            if not isinstance(add, dict):
                errors["issuelinks"] = 'issuelinks operations must look like {"add": {"type": ..., ...}}.'
                continue
            link_type = self._link_type((add.get("type") or {}).get("name"))
            direction = None
            if "inwardIssue" in add:
                direction = "inward"
            elif "outwardIssue" in add:
                direction = "outward"
            other_ref = add.get("inwardIssue") or add.get("outwardIssue") or {}
            other = self._lookup(str(other_ref.get("key") or other_ref.get("id") or ""))
            if link_type is None:
                errors["issuelinks"] = (
                    f"No issue link type with name {(add.get('type') or {}).get('name')!r}."
                )
            elif direction is None or other is None:
                errors["issuelinks"] = f"Could not find the issue to link to: {other_ref!r}."
            else:
                links.append((link_type, direction, other.key))
        return links

    def edit(self, issue: Issue, body: Any, author: str, version: int = 2) -> None:
        """Apply an edit request (``fields`` and ``update.labels``) to an issue."""
        with self._lock:
            if not isinstance(body, dict):
                raise JiraError(400, ["The request body must be a JSON object."])
            fields = body.get("fields") or {}
            update = body.get("update") or {}
            errors: dict[str, str] = {}
            for name in sorted(set(fields) - _EDIT_FIELDS):
                errors[name] = (
                    f"Field '{name}' cannot be set. It is not on the appropriate screen, or unknown."
                )
            if "summary" in fields:
                summary_error = self._summary_error(fields["summary"])
                if summary_error:
                    errors["summary"] = summary_error
            self._check_text_fields(fields, errors, version)
            assignee = self._check_user_field(fields, "assignee", errors)
            priority = self._check_priority(fields.get("priority"), errors)
            label_operations = update.get("labels", []) if isinstance(update, dict) else None
            for name in update if isinstance(update, dict) else ["update"]:
                if name != "labels":
                    errors[name] = (
                        f"The update operation on '{name}' is not supported by the development Jira."
                    )
            if errors:
                raise JiraError(400, [], errors)

            if "summary" in fields:
                issue.summary = fields["summary"]
            if "description" in fields:
                issue.description = fields["description"]
            if "labels" in fields:
                issue.labels = list(dict.fromkeys(fields["labels"] or []))
            if "components" in fields:
                issue.components = self._component_names(fields["components"])
            if "assignee" in fields:
                issue.assignee = assignee
            if priority:
                issue.priority = priority
            for operation in label_operations or []:
                if "add" in operation and operation["add"] not in issue.labels:
                    issue.labels.append(operation["add"])
                if "remove" in operation and operation["remove"] in issue.labels:
                    issue.labels.remove(operation["remove"])
                if "set" in operation:
                    issue.labels = list(operation["set"])
            issue.updated = utc_now()
            self._emit("jira:issue_updated", issue, [], author)

    def assign(self, issue: Issue, body: Any, author: str) -> None:
        """Assign an issue from a ``PUT assignee`` body; ``None`` or ``"-1"`` unassigns it."""
        with self._lock:
            if not isinstance(body, dict):
                raise JiraError(400, ["The request body must be a JSON object."])
            username, error = self._user_reference(body, "assignee")
            if error:
                raise JiraError(400, [], {"assignee": error})
            old = issue.assignee
            issue.assignee = username
            issue.updated = utc_now()
            items = [{"field": "assignee", "fieldtype": "jira", "fromString": old, "toString": username}]
            self._emit("jira:issue_updated", issue, items, author)

    # Links

    def _link_type(self, name: Any) -> str | None:
        for link_type in LINK_TYPES:
            if isinstance(name, str) and link_type.lower() == name.lower():
                return link_type
        return None

    def link(self, body: Any) -> IssueLink:
        """Create a link from a ``POST issueLink`` body; an identical existing link is returned as is."""
        with self._lock:
            if not isinstance(body, dict):
                raise JiraError(400, ["The request body must be a JSON object."])
            type_name = (body.get("type") or {}).get("name")
            link_type = self._link_type(type_name)
            if link_type is None:
                raise JiraError(404, [f"No issue link type with name '{type_name}' found."])
            keys = []
            for side in ("inwardIssue", "outwardIssue"):
                reference = body.get(side)
                if not isinstance(reference, dict):
                    raise JiraError(400, [f'{side} is required, as {{"key": "CAL-1"}}.'])
                issue = self._lookup(str(reference.get("key") or reference.get("id") or ""))
                if issue is None:
                    raise JiraError(
                        404, [f"Issue {reference.get('key') or reference.get('id')!r} does not exist."]
                    )
                keys.append(issue.key)
            if keys[0] == keys[1]:
                raise JiraError(400, [f"An issue cannot be linked to itself ({keys[0]})."])
            return self._add_link(link_type, keys[0], keys[1])

    def _add_link(self, link_type: str, inward: str, outward: str) -> IssueLink:
        for existing in self._links:
            if (existing.type, existing.inward, existing.outward) == (link_type, inward, outward):
                return existing
        link = IssueLink(self._next_link_id, link_type, inward, outward)
        self._next_link_id += 1
        self._links.append(link)
        now = utc_now()
        self._issues[inward].updated = now
        self._issues[outward].updated = now
        return link

    def links(self) -> list[IssueLink]:
        """Return every link in creation order."""
        with self._lock:
            return list(self._links)

    # Workflow

    def transitions(self, issue: Issue) -> tuple[Transition, ...]:
        """Return the transitions available from the issue's status in its project's workflow."""
        return tuple(self.workflow(issue.project).transitions.get(issue.status, ()))

    def transition(self, issue: Issue, body: Any, author: str) -> Transition:
        """Move an issue along a transition given by id (or name) in a ``POST transitions`` body."""
        with self._lock:
            if not isinstance(body, dict) or not isinstance(body.get("transition"), dict):
                raise JiraError(400, ['The request body must contain "transition": {"id": "<id>"}.'])
            requested = body["transition"]
            available = self.transitions(issue)
            chosen = None
            for candidate in available:
                if "id" in requested and str(requested["id"]) == candidate.id:
                    chosen = candidate
                elif (
                    "id" not in requested and str(requested.get("name", "")).lower() == candidate.name.lower()
                ):
                    chosen = candidate
            if chosen is None:
                offered = ", ".join(f"{item.id} ({item.name})" for item in available)
                raise JiraError(
                    400,
                    [
                        f"Transition {requested.get('id', requested.get('name'))!r} is not valid for issue "
                        f"{issue.key} in status '{issue.status}'; available transitions: {offered}. "
                        "Look the id up with GET .../transitions."
                    ],
                )
            fields = body.get("fields") or {}
            resolution = (fields.get("resolution") or {}).get("name") if isinstance(fields, dict) else None
            if resolution is not None and resolution not in RESOLUTIONS:
                raise JiraError(400, [], {"resolution": f"Resolution {resolution!r} is not valid."})
            comment_bodies = []
            for operation in (body.get("update") or {}).get("comment", []):
                text = (operation.get("add") or {}).get("body") if isinstance(operation, dict) else None
                if isinstance(text, str) or is_adf(text):
                    comment_bodies.append(text)

            old = STATUSES[issue.status]
            issue.status = chosen.to
            new = STATUSES[chosen.to]
            now = utc_now()
            items: list[dict[str, Any]] = [
                {
                    "field": "status",
                    "fieldtype": "jira",
                    "from": old.id,
                    "fromString": old.name,
                    "to": new.id,
                    "toString": new.name,
                }
            ]
            if new.category == "done":
                issue.resolution = resolution or DEFAULT_RESOLUTION
                issue.resolved = now
                items.append(
                    {
                        "field": "resolution",
                        "fieldtype": "jira",
                        "fromString": None,
                        "toString": issue.resolution,
                    }
                )
            else:
                if issue.resolution:
                    items.append(
                        {
                            "field": "resolution",
                            "fieldtype": "jira",
                            "fromString": issue.resolution,
                            "toString": None,
                        }
                    )
                issue.resolution = None
                issue.resolved = None
            issue.updated = now
            for text in comment_bodies:
                self._add_comment(issue, author, text)
            self._emit("jira:issue_updated", issue, items, author)
            return chosen

    # Comments

    def add_comment(self, issue: Issue, body: Any, author: str, version: int = 2) -> Comment:
        """Add a comment from a ``POST comment`` body: a string on v2, an ADF document on v3."""
        with self._lock:
            text = body.get("body") if isinstance(body, dict) else None
            if version >= 3:
                if not is_adf(text):
                    raise JiraError(
                        400, [], {"comment": "Comment body must be an Atlassian Document on REST API v3."}
                    )
            elif not isinstance(text, str) or not text.strip():
                raise JiraError(400, [], {"comment": "Comment body can not be empty!"})
            comment = self._add_comment(issue, author, text)
            self._emit("jira:issue_updated", issue, [], author)
            return comment

    def _add_comment(self, issue: Issue, author: str, text: Any) -> Comment:
        comment = Comment(self._next_comment_id, author, text, utc_now())
        self._next_comment_id += 1
        issue.comments.append(comment)
        issue.updated = comment.created
        return comment

    # Attachments

    def add_attachment(
        self, issue: Issue, filename: str, content: bytes, mime_type: str | None, author: str
    ) -> Attachment:
        """Attach a file to an issue, as ``POST .../attachments`` does with one multipart ``file``.

        :raises JiraError: 400 for an empty file name, 413 for a file over :data:`MAX_ATTACHMENT_BYTES`.
        """
        name = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
        if not name:
            raise JiraError(400, ["The attachment has no file name."])
        if len(content) > MAX_ATTACHMENT_BYTES:
            raise JiraError(
                413,
                [f"The file {name} is {len(content)} bytes, more than the limit of {MAX_ATTACHMENT_BYTES}."],
            )
        with self._lock:
            attachment = Attachment(
                self._next_attachment_id,
                name,
                mime_type or "application/octet-stream",
                content,
                author,
                utc_now(),
            )
            self._next_attachment_id += 1
            issue.attachments.append(attachment)
            issue.updated = attachment.created
            items = [
                {
                    "field": "Attachment",
                    "fieldtype": "jira",
                    "from": None,
                    "fromString": None,
                    "to": str(attachment.id),
                    "toString": name,
                }
            ]
            self._emit("jira:issue_updated", issue, items, author)
            return attachment

    def attachment(self, attachment_id: str) -> tuple[Issue, Attachment]:
        """Return an attachment and its issue; raise a 404 :class:`JiraError` if there is none."""
        with self._lock:
            for issue in self._issues.values():
                for attachment in issue.attachments:
                    if str(attachment.id) == attachment_id:
                        return issue, attachment
        raise JiraError(404, [f"The attachment with id '{attachment_id}' does not exist."])

    def attachment_json(self, attachment: Attachment, view: View) -> dict[str, Any]:
        """Return the REST representation of an attachment, with the URL of its content.

        Server serves the content at ``/secure/attachment/<id>/<file name>``, Cloud at
        ``/rest/api/3/attachment/content/<id>``.
        """
        if view.cloud:
            content = f"{view.base_url}/rest/api/3/attachment/content/{attachment.id}"
        else:
            content = f"{view.base_url}/secure/attachment/{attachment.id}/{quote(attachment.filename)}"
        result: dict[str, Any] = {
            "self": f"{view.api}/attachment/{attachment.id}",
            "id": str(attachment.id),
            "filename": attachment.filename,
            "created": _format_time(attachment.created),
            "size": attachment.size,
            "mimeType": attachment.mime_type,
            "content": content,
        }
        if attachment.author in self._users:
            result["author"] = self.user_json(attachment.author, view)
        return result

    # Search

    def search(
        self,
        jql: str,
        validate: str = "strict",
        *,
        lagging: bool = False,
        reconcile: frozenset[int] = frozenset(),
    ) -> tuple[list[Issue], list[str]]:
        """Return the issues a query matches, in query order, and the query's warnings.

        :param validate: ``strict`` turns a reference to a missing issue, project or status into a
            400 error, as Jira does. With ``warn`` (or ``false``) it becomes a warning instead.
        :param lagging: leave out issues created less than ``search_lag`` seconds ago, as the Cloud
            search index does, except those whose id is in ``reconcile``
        """
        try:
            query = parse_jql(jql)
        except JqlError as error:
            raise JiraError(400, [str(error)]) from None
        with self._lock:
            problems = self._validate_references(query)
            if problems and validate.lower() in ("strict", "true"):
                raise JiraError(400, problems)
            now = time.monotonic()
            found = []
            for issue in sorted(self._issues.values(), key=lambda item: item.id):
                if lagging and issue.searchable_from > now and issue.id not in reconcile:
                    continue
                if matches(query.where, partial(self._field_values, issue), self._resolve):
                    found.append(issue)
            for order in reversed(query.order_by):
                found.sort(key=partial(self._sort_key, field_name=order.field), reverse=order.descending)
            return found, problems

    def issue_matches(self, query: Query, issue: Issue) -> bool:
        """Return whether one issue matches a parsed query."""
        with self._lock:
            return matches(query.where, partial(self._field_values, issue), self._resolve)

    @staticmethod
    def is_bounded(jql: str) -> bool:
        """Return whether a query restricts the issues it matches (Cloud rejects unbounded ones)."""
        try:
            return parse_jql(jql).where is not None
        except JqlError:
            return True

    def _validate_references(self, query: Query) -> list[str]:
        problems = []
        for clause in iter_clauses(query.where):
            if clause.field in ("labels", "component"):
                continue
            for value in clause.values:
                if self._resolve(clause.field, value):
                    continue
                if clause.field in ("key", "parent"):
                    problems.append(f"An issue with key '{value}' does not exist for field '{clause.field}'.")
                else:
                    problems.append(f"The value '{value}' does not exist for the field '{clause.field}'.")
        return problems

    def _resolve(self, field_name: str, value: str) -> set[str]:
        """Map a JQL value to the canonical values it matches; an empty set means unknown."""
        lowered = value.lower()
        if field_name in ("key", "parent"):
            issue = self._lookup(value)
            return {issue.key} if issue else set()
        if field_name == "project":
            for index, key in enumerate(self.config.jira_projects):
                if lowered in (key.lower(), str(10000 + index), f"{key} calibration".lower()):
                    return {key}
            return set()
        if field_name == "status":
            return {
                status.name for status in STATUSES.values() if lowered in (status.name.lower(), status.id)
            }
        if field_name == "statusCategory":
            return {
                category.key
                for category in CATEGORIES.values()
                if lowered in (category.key, category.name.lower(), str(category.id))
            }
        if field_name == "issuetype":
            return {name for name, (type_id, _) in ISSUE_TYPES.items() if lowered in (name.lower(), type_id)}
        if field_name in ("assignee", "reporter"):
            if value in self._users:
                return {value}
            username = self.user_for_account(value)
            return {username} if username else set()
        return {value}

    def _field_values(self, issue: Issue, field_name: str) -> set[str]:
        if field_name == "key":
            return {issue.key}
        if field_name == "labels":
            return set(issue.labels)
        if field_name == "project":
            return {issue.project}
        if field_name == "status":
            return {issue.status}
        if field_name == "statusCategory":
            return {STATUSES[issue.status].category}
        if field_name == "issuetype":
            return {issue.issuetype}
        if field_name == "assignee":
            return {issue.assignee} if issue.assignee else set()
        if field_name == "reporter":
            return {issue.reporter}
        if field_name == "parent":
            return {issue.parent} if issue.parent else set()
        if field_name == "component":
            return set(issue.components)
        raise AssertionError(f"unhandled JQL field {field_name}")

    @staticmethod
    def _sort_key(issue: Issue, field_name: str) -> tuple[Any, ...]:
        if field_name == "key":
            return (issue.project, issue.number)
        if field_name == "created":
            return (issue.created, issue.id)
        return (issue.updated or issue.created, issue.id)

    # Representations

    def view(self, base_url: str, version: int = 2) -> View:
        """Return the rendering settings for a request through API ``version``."""
        return View(base_url=base_url.rstrip("/"), version=version, cloud=self.cloud)

    def issue_json(self, issue: Issue, view: View | str, fields: set[str] | None = None) -> dict[str, Any]:
        """Return the REST representation of an issue, limited to ``fields`` unless it is ``None``."""
        if isinstance(view, str):
            view = self.view(view)
        with self._lock:
            everything = self._all_fields(issue, view)
            if fields is not None:
                everything = {name: value for name, value in everything.items() if name in fields}
            return {
                "expand": "renderedFields,names,schema,transitions,operations,editmeta,changelog",
                "id": str(issue.id),
                "self": f"{view.api}/issue/{issue.id}",
                "key": issue.key,
                "fields": everything,
            }

    def _all_fields(self, issue: Issue, view: View) -> dict[str, Any]:
        parent = self._issues.get(issue.parent) if issue.parent else None
        result: dict[str, Any] = {
            "summary": issue.summary,
            "description": render_text(issue.description, view),
            "labels": list(issue.labels),
            "components": [{"name": name} for name in issue.components],
            "assignee": self.user_json(issue.assignee, view) if issue.assignee else None,
            "reporter": self.user_json(issue.reporter, view),
            "status": self.status_json(issue.status, view),
            "resolution": {"name": issue.resolution} if issue.resolution else None,
            "resolutiondate": _format_time(issue.resolved),
            "priority": {"name": issue.priority},
            "issuetype": self.issue_type_json(issue.issuetype, view),
            "project": self.project_json(issue.project, view),
            "issuelinks": self._links_json(issue, view),
            "created": _format_time(issue.created),
            "updated": _format_time(issue.updated),
            "attachment": [self.attachment_json(item, view) for item in issue.attachments],
            "comment": {
                "comments": [self.comment_json(issue, comment, view) for comment in issue.comments],
                "maxResults": len(issue.comments),
                "total": len(issue.comments),
                "startAt": 0,
            },
        }
        if parent is not None:
            result["parent"] = self._issue_reference(parent, view)
        if not view.cloud:
            result[EPIC_LINK_FIELD] = issue.epic
        subtasks = [
            other
            for other in self._issues.values()
            if other.parent == issue.key and ISSUE_TYPES[other.issuetype][1]
        ]
        result["subtasks"] = [self._issue_reference(other, view) for other in subtasks]
        return result

    def status_json(self, name: str, view: View) -> dict[str, Any]:
        """Return the REST representation of a status with its category."""
        status = STATUSES[name]
        category = CATEGORIES[status.category]
        return {
            "self": f"{view.api}/status/{status.id}",
            "id": status.id,
            "name": status.name,
            "description": "",
            "statusCategory": {
                "self": f"{view.api}/statuscategory/{category.id}",
                "id": category.id,
                "key": category.key,
                "colorName": category.color,
                "name": category.name,
            },
        }

    @staticmethod
    def issue_type_json(name: str, view: View) -> dict[str, Any]:
        """Return the REST representation of an issue type."""
        type_id, subtask = ISSUE_TYPES[name]
        return {"self": f"{view.api}/issuetype/{type_id}", "id": type_id, "name": name, "subtask": subtask}

    def _issue_reference(self, issue: Issue, view: View) -> dict[str, Any]:
        return {
            "id": str(issue.id),
            "key": issue.key,
            "self": f"{view.api}/issue/{issue.id}",
            "fields": {
                "summary": issue.summary,
                "status": self.status_json(issue.status, view),
                "issuetype": self.issue_type_json(issue.issuetype, view),
            },
        }

    def _links_json(self, issue: Issue, view: View) -> list[dict[str, Any]]:
        entries = []
        for link in self._links:
            if issue.key not in (link.inward, link.outward):
                continue
            type_id, inward_text, outward_text = LINK_TYPES[link.type]
            entry: dict[str, Any] = {
                "id": str(link.id),
                "self": f"{view.api}/issueLink/{link.id}",
                "type": {"id": type_id, "name": link.type, "inward": inward_text, "outward": outward_text},
            }
            # The issue posted as inwardIssue lists the other one under outwardIssue ("A blocks B").
            if link.inward == issue.key:
                entry["outwardIssue"] = self._issue_reference(self._issues[link.outward], view)
            else:
                entry["inwardIssue"] = self._issue_reference(self._issues[link.inward], view)
            entries.append(entry)
        return entries

    def comment_json(self, issue: Issue, comment: Comment, view: View) -> dict[str, Any]:
        """Return the REST representation of a comment."""
        author = self.user_json(comment.author, view) if comment.author in self._users else None
        result: dict[str, Any] = {
            "self": f"{view.api}/issue/{issue.id}/comment/{comment.id}",
            "id": str(comment.id),
            "body": render_text(comment.body, view),
            "created": _format_time(comment.created),
            "updated": _format_time(comment.created),
        }
        if author is not None:
            result["author"] = author
            result["updateAuthor"] = author
        return result

    def transition_json(self, transition: Transition, view: View) -> dict[str, Any]:
        """Return the REST representation of a transition."""
        return {
            "id": transition.id,
            "name": transition.name,
            "to": self.status_json(transition.to, view),
            "hasScreen": False,
            "isGlobal": False,
            "isInitial": False,
            "isConditional": False,
        }
