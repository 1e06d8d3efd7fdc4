"""Serve an in-memory Jira, as Server/Data Center (REST v2) or Cloud (REST v2 and v3), for development.

The service follows the behaviour of Jira that clients depend on and that is easy to get wrong:

- ``POST /rest/api/2/issueLink`` with ``inwardIssue`` A and ``outwardIssue`` B of type ``Blocks``
  means *A blocks B*. ``GET A`` then lists the link with ``outwardIssue: B`` and ``GET B`` lists it
  with ``inwardIssue: A``. Creating the same link twice changes nothing.
- Transition ids belong to the workflow, and projects may use different workflows
  (:data:`~b2cal.devservices.jira_model.WORKFLOWS`), so clients must look them up with
  ``GET .../transitions``. Statuses map to the categories ``new``, ``indeterminate`` and ``done``.
- Bulk create takes at most 50 issues and reports each failed element separately.
- Server: users are addressed by ``name``, text fields are strings (wiki markup), and JQL search is
  ``/rest/api/2/search`` with ``startAt``/``maxResults``/``total``; ``/rest/api/3`` does not exist.
- Cloud: users are addressed by ``accountId``; REST v3 takes and returns Atlassian Document Format
  (ADF) text; ``/rest/api/{2,3}/search`` returns 410 Gone and the search is ``search/jql`` with
  ``nextPageToken``, which may lag behind creates (``search_lag``) except for ``reconcileIssues``.
- Admin webhooks (``/rest/webhooks/1.0/webhook``) are delivered to loopback URLs, signed with
  HMAC-SHA256 when registered with a secret; see :mod:`b2cal.devservices.jira_webhooks`.
- ``POST .../issue/{key}/attachments`` takes multipart ``file`` fields and, as Jira does, answers 403
  unless the request has the header ``X-Atlassian-Token: no-check``. The issue's field
  ``attachment`` lists them; their content is at ``/secure/attachment/{id}/{file name}`` (Server)
  or ``/rest/api/3/attachment/content/{id}`` (Cloud), and ``.../attachment/{id}`` describes one.

Every ``/rest`` endpoint except ``serverInfo`` requires HTTP basic authentication with a user from
:class:`~b2cal.devservices.config.DevServicesConfig`. ``GET /browse/{key}`` shows an issue as a
read-only HTML page without a login (:mod:`b2cal.devservices.jira_pages`). The ``/_dev`` endpoints
are for tests and demos and need no authentication:

- ``GET /_dev/issues``, ``POST /_dev/reset``;
- ``GET|POST /_dev/settings`` (``{"deployment", "latency", "search_lag"}``);
- ``GET /_dev/stats``: served REST requests by method and route;
- ``POST /_dev/faults`` (``{"count", "status", "path_prefix", "mode", "delay", "method"}``), where
  ``mode`` is ``error`` (return ``status`` without serving the request), ``timeout`` (wait
  ``delay`` seconds, then serve it: the client has given up by then) or ``lost_response`` (serve
  the request, then return 504 as a proxy that lost the response does);
- ``POST /_dev/webhooks/drop`` (``{"count"}``) and ``GET /_dev/webhooks/deliveries``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from b2cal.devservices.common import base_url_of, install_request_logging, set_log_ids
from b2cal.devservices.jira_pages import add_browse_routes
from b2cal.devservices.jira_store import (
    DEFAULT_SEARCH_RESULTS,
    LINK_TYPES,
    MAX_BULK_ISSUES,
    MAX_CLOUD_SEARCH_RESULTS,
    MAX_SEARCH_RESULTS,
    STATUSES,
    JiraError,
    JiraState,
    View,
)
from b2cal.devservices.jira_webhooks import WEBHOOK_PATH, WebhookDispatcher

__all__ = ["JiraError", "JiraState", "create_app"]

logger = logging.getLogger(__name__)

#: Maximum ``maxResults`` of a Cloud ``search/jql`` page that reads issue ids only.
MAX_CLOUD_ID_RESULTS = 5000
FAULT_MODES = ("error", "timeout", "lost_response")


@dataclass(frozen=True)
class PlannedFault:
    """A ``timeout`` or ``lost_response`` fault for the next matching request."""

    mode: str
    path_prefix: str
    method: str | None
    delay: float


class JiraFaults:
    """Queue of ``timeout`` and ``lost_response`` faults; ``error`` faults use the shared injector."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: deque[PlannedFault] = deque()

    def plan(self, count: int, fault: PlannedFault) -> None:
        """Apply ``fault`` to the next ``count`` matching requests."""
        with self._lock:
            self._pending.extend(fault for _ in range(count))

    def clear(self) -> None:
        """Drop every pending fault."""
        with self._lock:
            self._pending.clear()

    def take(self, method: str, path: str) -> PlannedFault | None:
        """Remove and return the first pending fault that applies to the request."""
        with self._lock:
            for fault in self._pending:
                if path.startswith(fault.path_prefix) and fault.method in (None, method):
                    self._pending.remove(fault)
                    return fault
        return None


def _parse_fields(value: str | list[str] | None) -> set[str] | None:
    """Turn a ``fields`` parameter into a set of names; ``None`` stands for every field."""
    if value is None:
        return None
    raw = value if isinstance(value, list) else [value]
    names = [part.strip() for item in raw for part in str(item).split(",") if part.strip()]
    if not names or "*all" in names or "*navigable" in names:
        excluded = {name[1:] for name in names if name.startswith("-")}
        if not excluded:
            return None
        every = {"summary", "description", "labels", "components", "assignee", "reporter", "status"}
        every |= {"resolution", "resolutiondate", "priority", "issuetype", "project", "issuelinks"}
        every |= {"created", "updated", "comment", "parent", "subtasks", "attachment"}
        return every - excluded
    return {name for name in names if not name.startswith("-")}


def _int_parameter(value: Any, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise JiraError(400, [f"The value '{value}' of parameter '{name}' is not a valid number."]) from None
    if number < 0:
        raise JiraError(400, [f"The value '{value}' of parameter '{name}' must not be negative."])
    return number


def _page_token(offset: int, jql: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset, "jql": jql}).encode()).decode()


def _read_page_token(token: str, jql: str) -> int:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        if data["jql"] != jql:
            raise ValueError("token of another query")
        return int(data["offset"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise JiraError(400, [f"The nextPageToken {token!r} is invalid for this query."]) from None


def _install_behaviour(app: FastAPI, state: JiraState, faults: JiraFaults) -> None:
    """Add latency, ``timeout``/``lost_response`` faults, request counting and optional recording."""

    @app.middleware("http")
    async def behave(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path
        fault = None
        if path.startswith("/rest"):
            if state.latency > 0:
                await asyncio.sleep(state.latency)
            fault = faults.take(request.method, path)
            if fault is not None and fault.mode == "timeout":
                logger.warning(
                    "%s %s: waiting %.1f s before serving (injected timeout)",
                    request.method,
                    path,
                    fault.delay,
                )
                await asyncio.sleep(fault.delay)
        request_body = await request.body() if state.recorder is not None else b""
        response = await call_next(request)
        route = request.scope.get("route")
        if path.startswith("/rest") and route is not None:
            state.count_request(request.method, getattr(route, "path", path))
        if fault is not None and fault.mode == "lost_response":
            logger.warning(
                "%s %s -> %d, returned 504 instead (injected lost response)",
                request.method,
                path,
                response.status_code,
            )
            return PlainTextResponse(
                "injected failure: the response was lost on its way back\n", status_code=504
            )
        if state.recorder is not None and path.startswith("/rest"):
            chunks = [chunk async for chunk in response.body_iterator]  # type: ignore[attr-defined]
            response_body = b"".join(
                chunk if isinstance(chunk, bytes) else chunk.encode() for chunk in chunks
            )
            state.recorder.append(
                {
                    "method": request.method,
                    "path": path,
                    "query": request.url.query,
                    "request_content_type": request.headers.get("content-type"),
                    "request_body": request_body,
                    "status": response.status_code,
                    "response_content_type": response.headers.get("content-type"),
                    "response_body": response_body,
                }
            )
            return Response(
                content=response_body,
                status_code=response.status_code,
                headers={name: value for name, value in response.headers.items() if name != "content-length"},
            )
        return response


def create_app(state: JiraState) -> FastAPI:
    """Build the FastAPI application of the development Jira around ``state``."""
    app = FastAPI(title="b2cal development Jira (Server and Cloud REST API)", docs_url=None, redoc_url=None)
    faults = JiraFaults()
    webhooks = WebhookDispatcher(state)
    state.webhooks = webhooks
    install_request_logging(app, logger, state.faults)
    _install_behaviour(app, state, faults)

    @app.exception_handler(JiraError)
    async def jira_error(request: Request, error: JiraError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    def base(request: Request) -> str:
        return base_url_of(request, state.base_url)

    def authenticated_user(request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                username, _, password = base64.b64decode(credentials).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                username, password = "", ""
            if state.authenticate(username, password):
                return username
        raise JiraError(
            401,
            ["You are not authenticated. Authentication required to perform this operation."],
        )

    async def json_body(request: Request) -> Any:
        raw = await request.body()
        if not raw:
            return None
        try:
            return await request.json()
        except ValueError:
            raise JiraError(400, ["The request body is not valid JSON."]) from None

    for version in (2, 3):
        _add_rest_routes(app, state, version, base, authenticated_user, json_body)
    _add_content_routes(app, state, authenticated_user)
    add_browse_routes(app, state, base)
    _add_webhook_routes(app, state, webhooks, base, authenticated_user, json_body)
    _add_dev_routes(app, state, faults, webhooks, base, json_body)
    return app


def _add_rest_routes(
    app: FastAPI,
    state: JiraState,
    version: int,
    base: Callable[[Request], str],
    authenticated_user: Callable[[Request], str],
    json_body: Callable[[Request], Awaitable[Any]],
) -> None:
    """Add the REST routes of one API version; v3 returns 404 unless the service is Cloud."""
    api = f"/rest/api/{version}"

    def view(request: Request) -> View:
        if version >= 3 and not state.cloud:
            raise JiraError(404, [f"{api} does not exist on Jira Server/Data Center; use /rest/api/2."])
        return state.view(base(request), version)

    def user(request: Request) -> tuple[str, View]:
        current = view(request)
        return authenticated_user(request), current

    @app.get(f"{api}/serverInfo")
    async def server_info(request: Request) -> dict[str, Any]:
        view(request)
        return {
            "baseUrl": base(request),
            "version": "1001.0.0-SNAPSHOT" if state.cloud else "9.12.0",
            "versionNumbers": [1001, 0, 0] if state.cloud else [9, 12, 0],
            "deploymentType": state.deployment,
            "buildNumber": 100280 if state.cloud else 9120000,
            "serverTitle": "b2cal development Jira",
        }

    @app.get(f"{api}/myself")
    async def myself(request: Request) -> dict[str, Any]:
        name, current = user(request)
        return state.user_json(name, current)

    @app.get(f"{api}/user")
    async def get_user(
        request: Request, username: str | None = None, key: str | None = None, accountId: str | None = None
    ) -> dict[str, Any]:
        _, current = user(request)
        if state.cloud:
            if username or key:
                raise JiraError(400, ["The query parameter 'username' is not supported in GDPR strict mode."])
            name = state.user_for_account(accountId or "")
            if name is None:
                raise JiraError(404, [f"The user with accountId '{accountId}' does not exist"])
            return state.user_json(name, current)
        name = username or key
        if not name:
            raise JiraError(400, ["Either the 'username' or the 'key' query parameter is required."])
        if not state.has_user(name):
            raise JiraError(404, [f"The user named '{name}' does not exist"])
        return state.user_json(name, current)

    @app.get(f"{api}/user/search")
    async def search_users(
        request: Request, query: str | None = None, username: str | None = None
    ) -> list[dict[str, Any]]:
        _, current = user(request)
        text = query if state.cloud else (username or query)
        if state.cloud and username:
            raise JiraError(400, ["The query parameter 'username' is not supported in GDPR strict mode."])
        if not text:
            raise JiraError(400, ["The 'query' parameter is required."])
        return [state.user_json(name, current) for name in state.find_users(text)]

    @app.get(f"{api}/project")
    async def projects(request: Request) -> list[dict[str, Any]]:
        _, current = user(request)
        return [state.project_json(key, current) for key in state.config.jira_projects]

    @app.get(f"{api}/project/{{key}}")
    async def project(request: Request, key: str) -> dict[str, Any]:
        _, current = user(request)
        found = state.find_project({"id": key} if key.isdigit() else {"key": key})
        if found is None:
            raise JiraError(404, [f"No project could be found with key '{key}'."])
        return state.project_json(found, current)

    @app.get(f"{api}/status")
    async def statuses(request: Request) -> list[dict[str, Any]]:
        _, current = user(request)
        return [state.status_json(name, current) for name in STATUSES]

    @app.get(f"{api}/issueLinkType")
    async def link_types(request: Request) -> dict[str, Any]:
        user(request)
        return {
            "issueLinkTypes": [
                {"id": type_id, "name": name, "inward": inward, "outward": outward}
                for name, (type_id, inward, outward) in LINK_TYPES.items()
            ]
        }

    @app.post(f"{api}/issue", status_code=201)
    async def create_issue(request: Request) -> dict[str, Any]:
        reporter, current = user(request)
        issue = state.create(await json_body(request), reporter, version)
        set_log_ids(request, f"key={issue.key}")
        return {"id": str(issue.id), "key": issue.key, "self": f"{current.api}/issue/{issue.id}"}

    @app.post(f"{api}/issue/bulk")
    async def create_issues(request: Request) -> JSONResponse:
        reporter, current = user(request)
        body = await json_body(request)
        updates = body.get("issueUpdates") if isinstance(body, dict) else None
        if not isinstance(updates, list):
            raise JiraError(400, ['The request body must be {"issueUpdates": [...]}.'])
        if len(updates) > MAX_BULK_ISSUES:
            raise JiraError(
                400,
                [
                    f"A bulk create takes at most {MAX_BULK_ISSUES} issues, got {len(updates)}; "
                    f"split the request into batches of {MAX_BULK_ISSUES}."
                ],
            )
        created, failed = [], []
        for index, update in enumerate(updates):
            try:
                issue = state.create(update, reporter, version)
            except JiraError as error:
                failed.append(
                    {"status": error.status, "elementErrors": error.body(), "failedElementNumber": index}
                )
            else:
                created.append(
                    {"id": str(issue.id), "key": issue.key, "self": f"{current.api}/issue/{issue.id}"}
                )
        set_log_ids(
            request, f"created={','.join(item['key'] for item in created) or '-'} failed={len(failed)}"
        )
        status = 201 if created or not updates else 400
        return JSONResponse({"issues": created, "errors": failed}, status_code=status)

    @app.get(f"{api}/issue/{{id_or_key}}")
    async def get_issue(request: Request, id_or_key: str, fields: str | None = None) -> dict[str, Any]:
        _, current = user(request)
        issue = state.get(id_or_key)
        set_log_ids(request, f"key={issue.key}")
        return state.issue_json(issue, current, _parse_fields(fields))

    @app.put(f"{api}/issue/{{id_or_key}}", status_code=204)
    async def edit_issue(request: Request, id_or_key: str) -> Response:
        author, _ = user(request)
        issue = state.get(id_or_key)
        state.edit(issue, await json_body(request), author, version)
        set_log_ids(request, f"key={issue.key}")
        return Response(status_code=204)

    @app.put(f"{api}/issue/{{id_or_key}}/assignee", status_code=204)
    async def assign_issue(request: Request, id_or_key: str) -> Response:
        author, _ = user(request)
        issue = state.get(id_or_key)
        state.assign(issue, await json_body(request), author)
        set_log_ids(request, f"key={issue.key} assignee={issue.assignee or '-'}")
        return Response(status_code=204)

    @app.post(f"{api}/issueLink", status_code=201)
    async def create_link(request: Request) -> Response:
        user(request)
        link = state.link(await json_body(request))
        set_log_ids(request, f"{link.inward} {LINK_TYPES[link.type][2]} {link.outward} link={link.id}")
        return Response(status_code=201)

    @app.get(f"{api}/issue/{{id_or_key}}/transitions")
    async def get_transitions(request: Request, id_or_key: str) -> dict[str, Any]:
        _, current = user(request)
        issue = state.get(id_or_key)
        set_log_ids(request, f"key={issue.key} status={issue.status!r}")
        return {
            "expand": "transitions",
            "transitions": [state.transition_json(item, current) for item in state.transitions(issue)],
        }

    @app.post(f"{api}/issue/{{id_or_key}}/transitions", status_code=204)
    async def do_transition(request: Request, id_or_key: str) -> Response:
        author, _ = user(request)
        issue = state.get(id_or_key)
        transition = state.transition(issue, await json_body(request), author)
        set_log_ids(request, f"key={issue.key} transition={transition.id} status={issue.status!r}")
        return Response(status_code=204)

    @app.get(f"{api}/issue/{{id_or_key}}/comment")
    async def get_comments(request: Request, id_or_key: str) -> dict[str, Any]:
        _, current = user(request)
        issue = state.get(id_or_key)
        comments = [state.comment_json(issue, comment, current) for comment in issue.comments]
        return {"startAt": 0, "maxResults": len(comments), "total": len(comments), "comments": comments}

    @app.post(f"{api}/issue/{{id_or_key}}/comment", status_code=201)
    async def add_comment(request: Request, id_or_key: str) -> dict[str, Any]:
        author, current = user(request)
        issue = state.get(id_or_key)
        comment = state.add_comment(issue, await json_body(request), author, version)
        set_log_ids(request, f"key={issue.key} comment={comment.id}")
        return state.comment_json(issue, comment, current)

    @app.post(f"{api}/issue/{{id_or_key}}/attachments")
    async def add_attachments(request: Request, id_or_key: str) -> Response:
        author, current = user(request)
        issue = state.get(id_or_key)
        # Jira's XSRF protection blocks a multipart POST without this header, before reading the body.
        if request.headers.get("x-atlassian-token", "").strip().lower() != "no-check":
            set_log_ids(request, f"key={issue.key} xsrf=blocked")
            return PlainTextResponse("XSRF check failed", status_code=403)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise JiraError(415, ["Attachments must be posted as multipart/form-data."])
        form = await request.form()
        uploads = [item for item in form.getlist("file") if not isinstance(item, str)]
        if not uploads:
            raise JiraError(400, ["No file was found in the multipart field 'file'."])
        added = []
        for upload in uploads:
            content = await upload.read()
            added.append(
                state.add_attachment(issue, upload.filename or "", content, upload.content_type, author)
            )
        set_log_ids(request, f"key={issue.key} attachments={','.join(str(item.id) for item in added)}")
        return JSONResponse([state.attachment_json(item, current) for item in added])

    @app.get(f"{api}/attachment/{{attachment_id}}")
    async def get_attachment(request: Request, attachment_id: str) -> dict[str, Any]:
        _, current = user(request)
        _, attachment = state.attachment(attachment_id)
        return state.attachment_json(attachment, current)

    @app.get(f"{api}/attachment/content/{{attachment_id}}")
    async def get_attachment_content(request: Request, attachment_id: str) -> Response:
        user(request)
        if not state.cloud:
            raise JiraError(404, [f"Jira Server serves attachments at /secure/attachment/{attachment_id}/."])
        _, attachment = state.attachment(attachment_id)
        return Response(attachment.content, media_type=attachment.mime_type)

    async def search(request: Request, parameters: dict[str, Any]) -> dict[str, Any]:
        _, current = user(request)
        if state.cloud:
            raise JiraError(
                410, ["The requested API has been removed. Please migrate to the /rest/api/3/search/jql API."]
            )
        jql = parameters.get("jql") or ""
        start_at = _int_parameter(parameters.get("startAt"), "startAt", 0)
        max_results = min(
            _int_parameter(parameters.get("maxResults"), "maxResults", DEFAULT_SEARCH_RESULTS),
            MAX_SEARCH_RESULTS,
        )
        validate = str(parameters.get("validateQuery") or "strict")
        found, warnings = state.search(str(jql), validate)
        page = found[start_at : start_at + max_results]
        fields = _parse_fields(parameters.get("fields"))
        set_log_ids(request, f"total={len(found)} returned={','.join(issue.key for issue in page) or '-'}")
        result: dict[str, Any] = {
            "expand": "schema,names",
            "startAt": start_at,
            "maxResults": max_results,
            "total": len(found),
            "issues": [state.issue_json(issue, current, fields) for issue in page],
        }
        if warnings:
            result["warningMessages"] = warnings
        return result

    @app.get(f"{api}/search")
    async def search_get(request: Request) -> dict[str, Any]:
        return await search(request, dict(request.query_params))

    @app.post(f"{api}/search")
    async def search_post(request: Request) -> dict[str, Any]:
        body = await json_body(request)
        if not isinstance(body, dict):
            raise JiraError(400, ['The request body must be a JSON object like {"jql": "..."}.'])
        return await search(request, body)

    async def search_jql(request: Request, parameters: dict[str, Any]) -> dict[str, Any]:
        _, current = user(request)
        if not state.cloud:
            raise JiraError(404, [f"{api}/search/jql exists on Jira Cloud only; use {api}/search."])
        jql = str(parameters.get("jql") or "")
        if not state.is_bounded(jql):
            raise JiraError(
                400,
                [
                    "Unbounded JQL queries are not allowed here. "
                    "Please add a search restriction to your query."
                ],
            )
        fields = _parse_fields(parameters.get("fields") or "id")
        only_ids = fields is not None and fields <= {"id", "key"}
        limit = MAX_CLOUD_ID_RESULTS if only_ids else MAX_CLOUD_SEARCH_RESULTS
        max_results = min(
            _int_parameter(parameters.get("maxResults"), "maxResults", DEFAULT_SEARCH_RESULTS), limit
        )
        token = parameters.get("nextPageToken")
        offset = _read_page_token(str(token), jql) if token else 0
        reconcile = parameters.get("reconcileIssues") or []
        if isinstance(reconcile, str):
            reconcile = [part for part in reconcile.split(",") if part]
        try:
            ids = frozenset(int(item) for item in reconcile)
        except (TypeError, ValueError):
            raise JiraError(400, [f"reconcileIssues {reconcile!r} must be a list of issue ids."]) from None
        found, _ = state.search(jql, "strict", lagging=True, reconcile=ids)
        page = found[offset : offset + max_results]
        set_log_ids(request, f"matched={len(found)} returned={','.join(issue.key for issue in page) or '-'}")
        if only_ids:
            with_key = "key" in (fields or set())
            issues = [{"id": str(issue.id), **({"key": issue.key} if with_key else {})} for issue in page]
        else:
            issues = [state.issue_json(issue, current, fields) for issue in page]
        result: dict[str, Any] = {"issues": issues, "isLast": offset + max_results >= len(found)}
        if not result["isLast"]:
            result["nextPageToken"] = _page_token(offset + max_results, jql)
        return result

    @app.get(f"{api}/search/jql")
    async def search_jql_get(request: Request) -> dict[str, Any]:
        parameters: dict[str, Any] = dict(request.query_params)
        parameters["fields"] = request.query_params.getlist("fields") or None
        return await search_jql(request, parameters)

    @app.post(f"{api}/search/jql")
    async def search_jql_post(request: Request) -> dict[str, Any]:
        body = await json_body(request)
        if not isinstance(body, dict):
            raise JiraError(400, ['The request body must be a JSON object like {"jql": "..."}.'])
        return await search_jql(request, body)


def _add_content_routes(app: FastAPI, state: JiraState, authenticated_user: Callable[[Request], str]) -> None:
    @app.get("/secure/attachment/{attachment_id}/{filename}")
    async def attachment_content(request: Request, attachment_id: str, filename: str) -> Response:
        authenticated_user(request)
        _, attachment = state.attachment(attachment_id)
        if filename != attachment.filename:
            raise JiraError(404, [f"The attachment {attachment_id} has no file named {filename!r}."])
        return Response(attachment.content, media_type=attachment.mime_type)


def _add_webhook_routes(
    app: FastAPI,
    state: JiraState,
    webhooks: WebhookDispatcher,
    base: Callable[[Request], str],
    authenticated_user: Callable[[Request], str],
    json_body: Callable[[Request], Awaitable[Any]],
) -> None:
    @app.post(WEBHOOK_PATH, status_code=201)
    async def register_webhook(request: Request) -> dict[str, Any]:
        authenticated_user(request)
        hook = webhooks.register(await json_body(request))
        set_log_ids(request, f"webhook={hook.id}")
        return webhooks.json(hook, base(request))

    @app.get(WEBHOOK_PATH)
    async def list_webhooks(request: Request) -> list[dict[str, Any]]:
        authenticated_user(request)
        return [webhooks.json(hook, base(request)) for hook in webhooks.hooks()]

    @app.get(f"{WEBHOOK_PATH}/{{webhook_id}}")
    async def get_webhook(request: Request, webhook_id: int) -> dict[str, Any]:
        authenticated_user(request)
        return webhooks.json(webhooks.get(webhook_id), base(request))

    @app.delete(f"{WEBHOOK_PATH}/{{webhook_id}}", status_code=204)
    async def delete_webhook(request: Request, webhook_id: int) -> Response:
        authenticated_user(request)
        webhooks.delete(webhook_id)
        return Response(status_code=204)


def _add_dev_routes(
    app: FastAPI,
    state: JiraState,
    faults: JiraFaults,
    webhooks: WebhookDispatcher,
    base: Callable[[Request], str],
    json_body: Callable[[Request], Awaitable[Any]],
) -> None:
    @app.get("/_dev/issues")
    async def dev_issues(request: Request) -> list[dict[str, Any]]:
        return [state.issue_json(issue, state.view(base(request))) for issue in state.issues()]

    @app.post("/_dev/reset", status_code=204)
    async def dev_reset() -> Response:
        state.reset()
        faults.clear()
        webhooks.clear()
        logger.info("Jira state reset: every issue, link, comment and webhook deleted")
        return Response(status_code=204)

    @app.get("/_dev/settings")
    async def dev_get_settings() -> dict[str, Any]:
        return {"deployment": state.deployment, "latency": state.latency, "search_lag": state.search_lag}

    @app.post("/_dev/settings")
    async def dev_settings(request: Request) -> dict[str, Any]:
        body = await json_body(request) or {}
        try:
            if "deployment" in body:
                state.set_deployment(str(body["deployment"]))
            for name in ("latency", "search_lag"):
                if name in body:
                    value = float(body[name])
                    if value < 0:
                        raise ValueError(f"{name} is {value}, expected 0 or more seconds")
                    setattr(state, name, value)
        except (TypeError, ValueError) as error:
            raise JiraError(400, [str(error)]) from None
        logger.info(
            "Jira settings: %s, latency %.3f s, search lag %.1f s",
            state.deployment,
            state.latency,
            state.search_lag,
        )
        return {"deployment": state.deployment, "latency": state.latency, "search_lag": state.search_lag}

    @app.get("/_dev/stats")
    async def dev_stats() -> dict[str, Any]:
        counts = state.request_counts()
        return {"total": sum(counts.values()), "requests": counts}

    @app.post("/_dev/faults", status_code=204)
    async def dev_faults(request: Request) -> Response:
        body = await json_body(request) or {}
        mode = str(body.get("mode", "error"))
        try:
            count = int(body.get("count", 1))
            prefix = str(body.get("path_prefix", "/rest/api/"))
            if mode not in FAULT_MODES:
                raise ValueError(f"mode {mode!r} is invalid: use one of {', '.join(FAULT_MODES)}")
            if count < 0:
                raise ValueError(f"count is {count}, expected 0 or more")
            if mode == "error":
                state.faults.fail_next(count, int(body.get("status", 503)), prefix)
            else:
                method = str(body["method"]).upper() if body.get("method") else None
                faults.plan(count, PlannedFault(mode, prefix, method, float(body.get("delay", 15.0))))
        except (TypeError, ValueError) as error:
            raise JiraError(400, [str(error)]) from None
        return Response(status_code=204)

    @app.post("/_dev/webhooks/drop", status_code=204)
    async def dev_drop_webhooks(request: Request) -> Response:
        body = await json_body(request) or {}
        try:
            webhooks.drop_next(int(body.get("count", 1)))
        except (TypeError, ValueError) as error:
            raise JiraError(400, [str(error)]) from None
        return Response(status_code=204)

    @app.get("/_dev/webhooks/deliveries")
    async def dev_deliveries() -> list[dict[str, Any]]:
        return [
            {
                "webhook_id": item.webhook_id,
                "event": item.event,
                "issue_key": item.issue_key,
                "identifier": item.identifier,
                "sent_at": item.sent_at,
                "status": item.status,
                "error": item.error,
                "dropped": item.dropped,
            }
            for item in list(webhooks.deliveries)
        ]
