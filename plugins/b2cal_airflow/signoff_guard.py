"""Admit only calibration managers to respond to the sign-off, and audit every attempt.

Airflow decides who may respond to a human-in-the-loop task from permissions on the DAG and on "HITL
Detail", and from the task's ``assigned_users``, which must be listed when the DAG is parsed. Neither
knows the product's roles, and Airflow's own User, Op and Admin roles can edit HITL details too.
:class:`SignOffGuardMiddleware` closes that gap in the API server, where the user's roles are known.
It watches ``PATCH /api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/hitlDetails``
for the sign-off tasks and:

- lets the request through when the user has the Calibration Manager role, after recording in the
  plugin database's audit log that this user was admitted for this task and run;
- returns 403 to anyone else, including Airflow admins without that role, and records the refusal;
- once Airflow has accepted an admitted response (HTTP 200), records its options and form fields, so
  that a sign-off task that fails after Airflow resumed it applies that response on its retry instead
  of asking the manager a second time.

Airflow's UI, its REST API and the plugin's own pages all respond through that endpoint. The
sign-off task then accepts a response only from a user the guard recorded as admitted
(``b2cal.db.gate.is_authorised_responder``), so a response that reached Airflow some other way is
rejected as well. Requests without valid credentials pass through untouched, and Airflow rejects
them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime
from typing import Any

from b2cal.db import gate
from b2cal.db.engine import session_scope, upgrade
from b2cal_airflow.auth import MANAGER_ROLE, user_roles

log = logging.getLogger(__name__)

#: The ``(dag_id, task_id)`` pairs to which only calibration managers may respond.
SIGN_OFF_TASKS = frozenset({("b2cal_processing_request", "sign_off")})
HITL_PATH = re.compile(
    r"^/api/v2/dags/(?P<dag_id>[^/]+)/dagRuns/(?P<run_id>[^/]+)/taskInstances/(?P<task_id>[^/]+)"
    r"/(?P<map_index>-?\d+)/hitlDetails/?$"
)
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _database_url() -> str:
    from b2cal_airflow.hooks.b2cal import PluginDatabaseHook

    return PluginDatabaseHook().get_url()


async def _user_from_scope(scope: Scope) -> Any | None:
    """Return the Airflow user of a request, from its bearer token or the UI's token cookie."""
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
    from airflow.api_fastapi.core_api.security import resolve_user_from_token
    from fastapi import HTTPException
    from starlette.requests import Request

    request = Request(scope)
    header = request.headers.get("authorization", "")
    token = (
        header[7:].strip()
        if header.lower().startswith("bearer ")
        else request.cookies.get(COOKIE_NAME_JWT_TOKEN)
    )
    if not token:
        return None
    try:
        return await resolve_user_from_token(token)
    except HTTPException:
        return None


class SignOffGuardMiddleware:
    """ASGI middleware that lets only calibration managers respond to the sign-off tasks.

    :param app: the API server application.
    :param tasks: the guarded ``(dag_id, task_id)`` pairs.
    :param database_url: returns the plugin database URL; by default from the ``b2cal_db`` connection.
    :param resolve_user: returns the user of a request scope, or ``None`` without valid credentials.
    """

    def __init__(
        self,
        app: Any,
        tasks: Collection[tuple[str, str]] = SIGN_OFF_TASKS,
        database_url: Callable[[], str] = _database_url,
        resolve_user: Callable[[Scope], Awaitable[Any | None]] = _user_from_scope,
    ) -> None:
        self.app = app
        self.tasks = frozenset(tasks)
        self.database_url = database_url
        self.resolve_user = resolve_user
        self._migrated: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = HITL_PATH.match(scope.get("path", "")) if scope.get("type") == "http" else None
        if (
            match is None
            or scope.get("method") != "PATCH"
            or (match["dag_id"], match["task_id"]) not in self.tasks
        ):
            await self.app(scope, receive, send)
            return
        user = await self.resolve_user(scope)
        if user is None:
            await self.app(scope, receive, send)
            return

        body, receive = await _buffer_body(receive)
        roles = sorted(user_roles(user))
        name = str(getattr(user, "username", None) or user.get_name())
        allowed = MANAGER_ROLE in roles
        options = _chosen_options(body)
        reason = (
            f"{name} may respond to {match['task_id']} of {match['run_id']} with {options}"
            if allowed
            else f"{name} (roles: {', '.join(roles) or 'none'}) tried to respond to {match['task_id']} of "
            f"{match['run_id']} with {options}, but only the {MANAGER_ROLE} role may sign off"
        )
        try:
            await asyncio.to_thread(self._record, allowed, str(user.get_id()), name, roles, match, reason)
        except Exception as exc:  # noqa: BLE001 - any database failure must keep the response out
            log.error("Could not audit the sign-off response of %s to %s: %s", name, match["run_id"], exc)
            if allowed:
                # The task accepts only responses the audit log admits, so this one would be rejected.
                detail = f"the sign-off response was not accepted because it could not be audited: {exc}"
                await _json(send, 503, detail)
                return
        if not allowed:
            log.warning("Rejected sign-off response: %s", reason)
            await _json(send, 403, f"{reason}. Ask a calibration manager to sign off.")
            return
        log.info("Admitted sign-off response: %s", reason)
        status: list[int] = []

        async def watch(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        await self.app(scope, receive, watch)
        if status and status[0] == 200:
            try:
                await asyncio.to_thread(self._record_accepted, str(user.get_id()), name, match, body)
            except Exception as exc:  # noqa: BLE001 - Airflow has the response; the task resumes from it
                log.error("Could not record the accepted sign-off response of %s: %s", name, exc)

    def _record(
        self, allowed: bool, user_id: str, name: str, roles: list[str], match: re.Match[str], reason: str
    ) -> None:
        url = self.database_url()
        if url not in self._migrated:
            # The API server may see a response before any task has created the plugin tables.
            upgrade(url)
            self._migrated.add(url)
        with session_scope(url) as session:
            gate.record_response_attempt(
                session,
                allowed=allowed,
                user_id=user_id,
                user_name=name,
                roles=roles,
                dag_id=match["dag_id"],
                run_id=match["run_id"],
                task_id=match["task_id"],
                map_index=int(match["map_index"]),
                reason=reason,
            )

    def _record_accepted(self, user_id: str, name: str, match: re.Match[str], body: bytes) -> None:
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            payload = {}
        params = payload.get("params_input") if isinstance(payload, dict) else None
        with session_scope(self.database_url()) as session:
            gate.record_accepted_response(
                session,
                user_id=user_id,
                user_name=name,
                run_id=match["run_id"],
                task_id=match["task_id"],
                chosen_options=_chosen_options(body),
                params_input=params if isinstance(params, dict) else {},
                responded_at=datetime.now(UTC),
            )


async def _buffer_body(receive: Receive) -> tuple[bytes, Receive]:
    """Read the whole request body and return it with a ``receive`` that replays it."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


def _chosen_options(body: bytes) -> list[str]:
    try:
        options = json.loads(body or b"{}").get("chosen_options") or []
    except (ValueError, AttributeError):
        return []
    return [str(option) for option in options] if isinstance(options, list) else []


async def _json(send: Send, status: int, detail: str) -> None:
    payload = json.dumps({"detail": detail}).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def guard_middleware() -> dict[str, Any]:
    """Return the plugin's ``fastapi_root_middlewares`` entry for the guard."""
    return {"middleware": SignOffGuardMiddleware, "args": [], "kwargs": {}, "name": "b2cal sign-off guard"}
