"""Receive Jira webhooks, so that a closed ticket releases the calibrations it blocks at once.

``POST /b2cal/webhooks/jira`` takes the ``jira:issue_updated`` calls of a Jira admin webhook that
was registered with a secret. The call must carry ``X-Hub-Signature: sha256=<hex HMAC-SHA256 of the
body>`` under the secret in the extra ``webhook_secret`` of the ``b2cal_jira`` connection. An
unsigned or wrongly signed call is rejected with 401 and logged; so is every call while no secret is
configured. Accepted events go to the audit log of the requests whose ticket changed (see
:mod:`b2cal.ticket_events`), where the waiting triggers find them within a second. The triggers keep
polling Jira, so a lost delivery delays a release but never loses it.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from b2cal.db.engine import session_scope
from b2cal.ticket_events import (
    ISSUE_UPDATED,
    SIGNATURE_HEADER,
    SignatureError,
    check_signature,
    parse_issue_event,
    record_issue_event,
)

log = logging.getLogger(__name__)

router = APIRouter()

JIRA_CONN_ID = "b2cal_jira"
SECRET_EXTRA = "webhook_secret"
#: Seconds a looked-up secret is reused before the connection is read again.
SECRET_CACHE_SECONDS = 30.0
_secret_cache: dict[str, tuple[float, str]] = {}


def webhook_secret(conn_id: str = JIRA_CONN_ID) -> str:
    """Return the webhook secret of the Jira connection, or ``""`` when none is configured."""
    cached = _secret_cache.get(conn_id)
    if cached is not None and time.monotonic() - cached[0] < SECRET_CACHE_SECONDS:
        return cached[1]
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        secret = str(BaseHook.get_connection(conn_id).extra_dejson.get(SECRET_EXTRA) or "")
    except AirflowNotFoundException:
        secret = ""
    _secret_cache[conn_id] = (time.monotonic(), secret)
    return secret


def database_url(request: Request) -> str:
    """Return the plugin database URL: the pages' setting when the app has one, else the connection."""
    settings = getattr(request.app.state, "b2cal_settings", None)
    if settings is not None:
        return str(settings.db_url())
    from b2cal_airflow.hooks.b2cal import PluginDatabaseHook

    return PluginDatabaseHook().get_url()


def _record(url: str, payload: Any, delivery: str | None) -> tuple[str, list[str]]:
    event = parse_issue_event(payload)
    with session_scope(url) as session:
        requests = record_issue_event(session, event, delivery)
    return event.issue_key, requests


@router.post("/webhooks/jira", status_code=202, response_model=None)
async def receive_jira_webhook(request: Request) -> dict[str, Any] | JSONResponse:
    """Check the signature of a Jira webhook call and record its issue event.

    Errors are returned as JSON responses here rather than raised, so that the pages' error handler does not
    turn a rejected call into a login redirect.
    """
    body = await request.body()
    client = request.client.host if request.client else "unknown"
    delivery = request.headers.get("X-Atlassian-Webhook-Identifier")
    lookup = getattr(request.app.state, "jira_webhook_secret", None) or webhook_secret
    secret = await run_in_threadpool(lookup)
    try:
        check_signature(secret, body, request.headers.get(SIGNATURE_HEADER))
    except SignatureError as exc:
        log.warning("Rejected a Jira webhook call from %s (delivery %s): %s", client, delivery or "-", exc)
        return JSONResponse({"detail": f"webhook call rejected: {exc}"}, status_code=401)
    try:
        payload = json.loads(body)
    except ValueError:
        return JSONResponse({"detail": "the webhook body is not valid JSON"}, status_code=400)
    event_name = payload.get("webhookEvent") if isinstance(payload, dict) else None
    if event_name != ISSUE_UPDATED:
        log.debug("Ignored Jira webhook event %r (delivery %s)", event_name, delivery or "-")
        return {"status": "ignored", "event": event_name}
    try:
        key, requests = await run_in_threadpool(_record, database_url(request), payload, delivery)
    except ValueError as exc:
        return JSONResponse({"detail": f"invalid webhook body: {exc}"}, status_code=400)
    log.info("Jira webhook: %s updated (delivery %s), requests %s", key, delivery or "-", requests or "-")
    return {"status": "accepted", "issue": key, "requests": requests}
