"""Call the Jira REST API of Server/Data Center (v2) or Cloud (v3) through one interface.

The two deployments differ in ways that break clients written for only one of them:

- Server/Data Center speaks REST v2: users are addressed by ``name``, text fields are wiki markup
  strings, and ``/rest/api/2/search`` pages with ``startAt`` and ``total``.
- Cloud speaks REST v3: users are addressed by ``accountId``, text fields are Atlassian Document
  Format (ADF), and the only search is ``/rest/api/3/search/jql``, which pages with
  ``nextPageToken`` and is eventually consistent: a new issue may be missing from it for a while.

:class:`JiraApi` sends the requests through an ``atlassian.Jira`` client (atlassian-python-api, the
client of the Airflow Jira provider) and returns plain JSON. Failures become :class:`JiraApiError`,
which says whether the request may have been carried out anyway (``ambiguous``): a timeout, a dropped
connection or a 5xx response leaves that open, so a caller must look before it repeats a create.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests

log = logging.getLogger(__name__)

SERVER = "server"
CLOUD = "cloud"
MODES = (SERVER, CLOUD)

#: Statuses after which a request may or may not have been carried out.
AMBIGUOUS_STATUSES = frozenset({408, 500, 502, 503, 504})
#: Statuses that a read may retry after waiting (``Retry-After`` when Jira sends it).
RETRYABLE_READ_STATUSES = frozenset({429, 502, 503, 504})
#: Issues per page of a search; Jira Server caps it at 1000, Cloud at 100 unless only ids are read.
SEARCH_PAGE_SIZE = 100
#: The header without which Jira rejects an attachment upload as a cross-site request (403).
NO_CHECK_HEADERS = {"X-Atlassian-Token": "no-check", "Accept": "application/json"}
_MISSING_KEY = re.compile(r"An issue with key '([^']+)' does not exist")
_URL = re.compile(r"https?://[^\s<>\"')\]]+")


class RestClient(Protocol):
    """The part of ``atlassian.Jira`` that :class:`JiraApi` uses."""

    def request(
        self,
        method: str = ...,
        path: str = ...,
        data: Any = ...,
        json: Any = ...,
        flags: Any = ...,
        params: Any = ...,
        headers: Any = ...,
        files: Any = ...,
        trailing: Any = ...,
        absolute: bool = ...,
        advanced_mode: bool = ...,
        allow_redirects: bool = ...,
    ) -> requests.Response: ...


class JiraApiError(RuntimeError):
    """A Jira request that failed.

    :param status: the HTTP status, or ``None`` when no response arrived
    :param messages: Jira's ``errorMessages``
    :param errors: Jira's ``errors`` by field
    :param ambiguous: whether Jira may have carried the request out despite the failure
    """

    def __init__(
        self,
        what: str,
        *,
        status: int | None,
        messages: Sequence[str] = (),
        errors: Mapping[str, str] | None = None,
        ambiguous: bool = False,
    ) -> None:
        self.status = status
        self.messages = list(messages)
        self.errors = dict(errors or {})
        self.ambiguous = ambiguous
        detail = "; ".join([*self.messages, *(f"{name}: {text}" for name, text in self.errors.items())])
        super().__init__(
            f"{what} failed with {f'HTTP {status}' if status else 'no response'}: {detail or '-'}"
        )


@dataclass
class BulkResult:
    """The result of a bulk create: what was created, what was rejected, per position in the request."""

    created: dict[int, dict[str, str]] = field(default_factory=dict)
    rejected: dict[int, JiraApiError] = field(default_factory=dict)
    #: Set when the whole call failed in a way that leaves open which issues were created.
    ambiguous: JiraApiError | None = None


def to_adf(text: str) -> dict[str, Any]:
    """Turn plain text or simple wiki markup into an Atlassian Document Format document.

    Blank lines separate paragraphs, single line breaks become hard breaks, ``{noformat}`` blocks
    become code blocks and URLs become links. Other wiki markup stays as literal text.
    """
    content: list[dict[str, Any]] = []
    for index, chunk in enumerate(text.split("{noformat}")):
        if index % 2 == 1:
            content.append({"type": "codeBlock", "content": [{"type": "text", "text": chunk.strip("\n")}]})
            continue
        for paragraph in re.split(r"\n\s*\n", chunk):
            lines = [line for line in paragraph.strip("\n").split("\n")]
            nodes: list[dict[str, Any]] = []
            for number, line in enumerate(lines):
                if number:
                    nodes.append({"type": "hardBreak"})
                nodes.extend(_inline_nodes(line))
            if nodes:
                content.append({"type": "paragraph", "content": nodes})
    return {"type": "doc", "version": 1, "content": content}


def _inline_nodes(line: str) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = []
    position = 0
    for match in _URL.finditer(line):
        if match.start() > position:
            nodes.append({"type": "text", "text": line[position : match.start()]})
        url = match.group(0)
        nodes.append({"type": "text", "text": url, "marks": [{"type": "link", "attrs": {"href": url}}]})
        position = match.end()
    if position < len(line):
        nodes.append({"type": "text", "text": line[position:]})
    return nodes


def adf_to_text(document: Any) -> str:
    """Return the plain text of an ADF document (or the value itself when it is a string)."""
    if document is None or isinstance(document, str):
        return document or ""
    parts: list[str] = []

    def walk(node: Any) -> None:
        if not isinstance(node, dict):
            return
        kind = node.get("type")
        if kind == "text":
            parts.append(str(node.get("text", "")))
        elif kind == "hardBreak":
            parts.append("\n")
        for child in node.get("content", []) or []:
            walk(child)
        if kind in ("paragraph", "codeBlock", "heading"):
            parts.append("\n\n")

    walk(document)
    return "".join(parts).strip("\n")


class JiraApi:
    """Send ticket-tree requests to Jira Server/Data Center or Cloud and return their JSON.

    :param client: an ``atlassian.Jira`` client (from ``JiraHook.get_conn()``); only its
        ``request`` method is used, with absolute REST paths, so its ``api_version`` does not matter
    :param mode: ``server`` (REST v2) or ``cloud`` (REST v3)
    :param account_ids: Cloud only: Jira ``accountId`` of each username
    :param account_email_domain: Cloud only: look a username up by the e-mail address
        ``<username>@<domain>`` when ``account_ids`` does not have it
    :param read_retries: attempts of a read (search, transitions) on HTTP 429, 502, 503 and 504
    :param max_retry_wait: upper limit of one wait between two attempts, in seconds
    """

    def __init__(
        self,
        client: RestClient,
        *,
        mode: str = SERVER,
        account_ids: Mapping[str, str] | None = None,
        account_email_domain: str | None = None,
        read_retries: int = 3,
        max_retry_wait: float = 30.0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"Jira mode {mode!r} is invalid: use {SERVER!r} (Data Center) or {CLOUD!r}")
        self.client = client
        self.mode = mode
        self.account_ids = dict(account_ids or {})
        self.account_email_domain = account_email_domain
        self.read_retries = max(1, read_retries)
        self.max_retry_wait = max_retry_wait
        self._looked_up: dict[str, str | None] = {}

    @property
    def base(self) -> str:
        """The REST path prefix of the mode: ``rest/api/2`` or ``rest/api/3``."""
        return "rest/api/3" if self.mode == CLOUD else "rest/api/2"

    # Transport

    def call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        read: bool = False,
        files: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Send one request and return its JSON body (``None`` when it has none).

        Every request is repeated after HTTP 429, which Jira sends before doing anything. A read is
        also repeated after a timeout, a dropped connection, 502, 503 or 504; a write is not,
        because it may have been carried out.

        :param what: the operation, for error messages, e.g. ``"search"``
        :param read: whether the request changes nothing
        :param files: multipart fields as ``requests`` takes them; the body is then multipart
        :param headers: headers that replace the client's default ones
        :raises JiraApiError: when Jira rejects the request or no response arrives
        """
        attempts = self.read_retries
        for attempt in range(1, attempts + 1):
            try:
                response = self.client.request(
                    method,
                    path,
                    json=json,
                    params=dict(params) if params else None,
                    files=dict(files) if files else None,
                    headers=dict(headers) if headers else None,
                    advanced_mode=True,
                )
            except (requests.Timeout, requests.ConnectionError) as exc:
                error = JiraApiError(what, status=None, messages=[type(exc).__name__], ambiguous=True)
                wait = 1.0
                if not read:
                    raise error from exc
            else:
                if response.status_code < 300:
                    return response.json() if response.content else None
                error = _error_from(response, what)
                wait = _retry_after(response)
                retryable = RETRYABLE_READ_STATUSES if read else {429}
                if response.status_code not in retryable:
                    raise error
            if attempt < attempts:
                wait = min(wait, self.max_retry_wait)
                log.warning(
                    "Jira %s failed (attempt %d/%d): %s; retrying in %.1f s",
                    what,
                    attempt,
                    attempts,
                    error,
                    wait,
                )
                time.sleep(wait)
        raise error

    # Users and text

    def user_reference(self, username: str | None) -> dict[str, str] | None:
        """Return the assignee reference of a username: ``{"name": ...}`` or ``{"accountId": ...}``.

        On Cloud, a username that neither ``account_ids`` nor the e-mail lookup resolves gives
        ``None``, and the ticket stays unassigned.
        """
        if not username:
            return None
        if self.mode == SERVER:
            return {"name": username}
        account_id = self.account_id(username)
        return {"accountId": account_id} if account_id else None

    def account_id(self, username: str) -> str | None:
        """Return the Cloud ``accountId`` of a username, or ``None`` when it is unknown."""
        if username in self.account_ids:
            return self.account_ids[username]
        if not self.account_email_domain:
            return None
        if username not in self._looked_up:
            email = f"{username}@{self.account_email_domain}".lower()
            users = self.call(
                "GET", f"{self.base}/user/search", params={"query": email}, what="user search", read=True
            )
            matches = [user for user in users or [] if str(user.get("emailAddress", "")).lower() == email]
            self._looked_up[username] = matches[0]["accountId"] if len(matches) == 1 else None
            if self._looked_up[username] is None:
                log.warning("No single Jira Cloud user has the e-mail address %s", email)
        return self._looked_up[username]

    def text(self, value: str) -> str | dict[str, Any]:
        """Return a text field value in the mode's format: wiki markup string or ADF."""
        return to_adf(value) if self.mode == CLOUD else value

    # Issues

    def search(
        self, jql: str, fields: Sequence[str], *, reconcile_ids: Iterable[int] = ()
    ) -> list[dict[str, Any]]:
        """Return every issue that ``jql`` matches, following the pages.

        :param reconcile_ids: Cloud only: ids of issues that must be read as they are now even when
            the search index lags behind (at most 50)
        """
        if self.mode == CLOUD:
            return self._search_cloud(jql, fields, list(reconcile_ids)[:50])
        issues: list[dict[str, Any]] = []
        while True:
            body = {
                "jql": jql,
                "fields": list(fields),
                "startAt": len(issues),
                "maxResults": SEARCH_PAGE_SIZE,
                "validateQuery": "warn",
            }
            page = self.call("POST", f"{self.base}/search", json=body, what="search", read=True) or {}
            batch = page.get("issues", [])
            issues.extend(batch)
            if not batch or len(issues) >= int(page.get("total", 0)):
                return issues

    def _search_cloud(
        self, jql: str, fields: Sequence[str], reconcile_ids: list[int]
    ) -> list[dict[str, Any]]:
        issues: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            body: dict[str, Any] = {"jql": jql, "fields": list(fields), "maxResults": SEARCH_PAGE_SIZE}
            if reconcile_ids:
                body["reconcileIssues"] = reconcile_ids
            if token:
                body["nextPageToken"] = token
            page = self.call("POST", f"{self.base}/search/jql", json=body, what="search", read=True) or {}
            issues.extend(page.get("issues", []))
            token = page.get("nextPageToken")
            if page.get("isLast", True) or not token:
                return issues

    def missing_keys(self, error: JiraApiError) -> list[str]:
        """Return the issue keys that a rejected JQL query named as not existing."""
        return [match.group(1) for text in error.messages for match in _MISSING_KEY.finditer(text)]

    def create_issues(self, updates: Sequence[Mapping[str, Any]]) -> BulkResult:
        """Create issues with one bulk call; never raises for a failed call, see :class:`BulkResult`."""
        result = BulkResult()
        try:
            body = self.call(
                "POST", f"{self.base}/issue/bulk", json={"issueUpdates": list(updates)}, what="bulk create"
            )
        except JiraApiError as error:
            if error.ambiguous or error.status is None:
                result.ambiguous = error
                return result
            body = getattr(error, "body", None)
            if not isinstance(body, dict) or "errors" not in body:
                for index in range(len(updates)):
                    result.rejected[index] = error
                return result
        for index, issue in enumerate(body.get("issues", []) if isinstance(body, dict) else []):
            result.created[index] = {"id": str(issue.get("id")), "key": str(issue.get("key"))}
        failed = body.get("errors", []) if isinstance(body, dict) else []
        if failed:
            # Created issues are listed in request order without their positions; the failed
            # positions come with the errors, so the created ones fill the remaining positions.
            positions = [
                index
                for index in range(len(updates))
                if index not in {int(item.get("failedElementNumber", -1)) for item in failed}
            ]
            created = list(result.created.values())
            result.created = dict(zip(positions, created, strict=False))
            for item in failed:
                element = item.get("elementErrors") or {}
                result.rejected[int(item.get("failedElementNumber", -1))] = JiraApiError(
                    "create",
                    status=int(item.get("status") or 400),
                    messages=element.get("errorMessages") or [],
                    errors=element.get("errors") or {},
                    ambiguous=int(item.get("status") or 400) in AMBIGUOUS_STATUSES,
                )
        return result

    def link(self, blocking: str, blocked: str, link_type: str = "Blocks") -> None:
        """Create the link "``blocking`` blocks ``blocked``"; an existing one is left as it is."""
        body = {
            "type": {"name": link_type},
            "inwardIssue": {"key": blocking},
            "outwardIssue": {"key": blocked},
        }
        self.call("POST", f"{self.base}/issueLink", json=body, what=f"link {blocking} -> {blocked}")

    def transitions(self, key: str) -> list[dict[str, Any]]:
        """Return the transitions available to an issue now."""
        body = self.call(
            "GET", f"{self.base}/issue/{key}/transitions", what=f"transitions of {key}", read=True
        )
        return list((body or {}).get("transitions", []))

    def transition(self, key: str, transition_id: str) -> None:
        """Move an issue along a transition."""
        self.call(
            "POST",
            f"{self.base}/issue/{key}/transitions",
            json={"transition": {"id": str(transition_id)}},
            what=f"transition {transition_id} of {key}",
        )

    def add_comment(self, key: str, text: str) -> None:
        """Add a comment, as wiki markup on Server and ADF on Cloud."""
        self.call(
            "POST",
            f"{self.base}/issue/{key}/comment",
            json={"body": self.text(text)},
            what=f"comment on {key}",
        )

    def attachments(self, key: str) -> list[dict[str, Any]]:
        """Return the attachments of an issue, each with ``id``, ``filename``, ``size`` and ``mimeType``."""
        body = self.call(
            "GET",
            f"{self.base}/issue/{key}",
            params={"fields": "attachment"},
            what=f"attachments of {key}",
            read=True,
        )
        return list(((body or {}).get("fields") or {}).get("attachment") or [])

    def add_attachment(
        self, key: str, filename: str, content: bytes, mime_type: str = "application/octet-stream"
    ) -> list[dict[str, Any]]:
        """Attach one file to an issue and return Jira's description of the new attachments.

        The upload is not repeated after an ambiguous failure: a caller that retries should look at
        :meth:`attachments` first, because Jira may have stored the file.
        """
        body = self.call(
            "POST",
            f"{self.base}/issue/{key}/attachments",
            files={"file": (filename, content, mime_type)},
            headers=NO_CHECK_HEADERS,
            what=f"attaching {filename} to {key}",
        )
        return list(body or [])


def _error_from(response: requests.Response, what: str) -> JiraApiError:
    messages: list[str] = []
    errors: dict[str, str] = {}
    body: Any = None
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        messages = [text[:300]] if text else []
    if isinstance(body, dict):
        messages = [str(item) for item in body.get("errorMessages", []) or []]
        raw_errors = body.get("errors")
        if isinstance(raw_errors, dict):
            errors = {str(name): str(value) for name, value in raw_errors.items()}
    error = JiraApiError(
        what,
        status=response.status_code,
        messages=messages,
        errors=errors,
        ambiguous=response.status_code in AMBIGUOUS_STATUSES,
    )
    error.body = body  # type: ignore[attr-defined]
    return error


def _retry_after(response: requests.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0
