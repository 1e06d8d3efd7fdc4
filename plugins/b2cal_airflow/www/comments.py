"""Comments on a calibration from its bucket page, posted to the calibration's Jira ticket.

Calibration managers and experts may comment. The page posts the text to the calibration's ticket
through the plugin's Jira connection (``b2cal_jira``), with the user's login in the text because the
bot account writes it, and records it in the audit log. The same text from the same user on the same
calibration within :data:`REPEAT_WINDOW` is taken as a repeated submission and not posted again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from b2cal.db import store
from b2cal.db.engine import session_scope
from b2cal.db.models import AuditEntry
from b2cal.request import short_repr
from b2cal_airflow.auth import ProductAction, user_login
from b2cal_airflow.www.context import (
    CSRF_FIELD,
    SettingsDep,
    UserDep,
    aware,
    check_csrf,
    prefix,
    render,
    require,
)
from b2cal_airflow.www.pages import bucket_page_context

log = logging.getLogger(__name__)

router = APIRouter()

COMMENT_ACTION = "comment"
COMMENT_FIELD = "comment"
CALIBRATION_FIELD = "calibration"
#: The maximum length of a comment that the page accepts.
MAX_COMMENT_CHARS = 5000
#: How long an identical comment counts as a second submission of the same form.
REPEAT_WINDOW = timedelta(minutes=2)


def ticket_text(uid: str, actor: str, text: str) -> str:
    """Return the comment as the ticket shows it: the text, then who wrote it and where."""
    return f"{text}\n\n— {actor}, on the bucket page of request {uid}"


def post_to_ticket(key: str, text: str) -> None:
    """Post ``text`` as a comment on ticket ``key`` through the ``b2cal_jira`` connection."""
    from b2cal_airflow.hooks.b2cal import TicketHook

    TicketHook().get_tree().comment(key, text)


def is_repeat(session: Any, uid: str, calibration: str, actor: str, text: str, now: datetime) -> bool:
    """Return whether ``actor`` posted the same comment on the calibration within the repeat window."""
    latest = session.scalar(
        select(AuditEntry)
        .where(
            AuditEntry.request_uid == uid,
            AuditEntry.calibration == calibration,
            AuditEntry.actor == actor,
            AuditEntry.action == COMMENT_ACTION,
        )
        .order_by(AuditEntry.id.desc())
        .limit(1)
    )
    if latest is None or latest.message != text:
        return False
    at = aware(latest.at)
    return at is not None and now - at < REPEAT_WINDOW


def comment_problems(tickets: Mapping[str, str], uid: str, calibration: str, text: str) -> dict[str, str]:
    """Return the problems of a comment form by field, or an empty dict when the comment can be posted.

    :param tickets: the ticket key of each calibration of the request that has a ticket.
    """
    problems = {}
    with_ticket = list(tickets)
    if calibration not in with_ticket:
        problems[CALIBRATION_FIELD] = (
            f"calibration {short_repr(calibration)} has no ticket in request {uid}; pick one of "
            f"{', '.join(with_ticket) or 'none: the request has no tickets yet'}"
        )
    if not text:
        problems[COMMENT_FIELD] = "comment is missing; write what the ticket's readers should know"
    elif len(text) > MAX_COMMENT_CHARS:
        problems[COMMENT_FIELD] = (
            f"comment is {len(text)} characters long; shorten it to at most {MAX_COMMENT_CHARS}"
        )
    return problems


@router.post("/requests/{uid}/comment", response_class=HTMLResponse)
async def comment_submit(request: Request, uid: str, user: UserDep, settings: SettingsDep) -> Response:
    """Post a comment on a calibration's ticket and record it in the audit log."""
    form = await request.form()
    # The role first: a user who may not take the action learns that, not that a token is missing.
    require(user, ProductAction.COMMENT)
    check_csrf(request, settings, str(form.get(CSRF_FIELD) or ""))
    calibration = str(form.get(CALIBRATION_FIELD) or "").strip()
    text = str(form.get(COMMENT_FIELD) or "").strip()
    actor = user_login(user)
    with session_scope(settings.db_url()) as session:
        try:
            row = store.get_request(session, uid)
        except store.NotFoundError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None
        tickets = {item.calibration: item.ticket_key for item in row.progress if item.ticket_key}
        problems = comment_problems(tickets, uid, calibration, text)
        repeated = not problems and is_repeat(session, uid, calibration, actor, text, datetime.now(UTC))
    if problems:
        log.info("Rejected a comment on %s of %s by %s: %s", calibration, uid, actor, problems)
        context = bucket_page_context(request, settings, uid, user)
        context.update({"comment_errors": problems, "comment": text, "comment_calibration": calibration})
        return render(request, "bucket.html", context, status_code=422)

    key = tickets[calibration]
    target = f"{prefix(request)}/requests/{uid}#comment-section"
    if repeated:
        log.info(
            "Comment by %s on %s of %s was posted already; not posting it again", actor, calibration, uid
        )
        return RedirectResponse(target, status_code=303)
    try:
        await run_in_threadpool(post_to_ticket, key, ticket_text(uid, actor, text))
    except Exception as exc:  # noqa: BLE001 - any Jira failure is shown on the page, nothing is recorded
        log.warning("Posting the comment by %s on %s (%s) to Jira failed: %s", actor, key, uid, exc)
        context = bucket_page_context(request, settings, uid, user)
        context.update(
            {
                "comment_error": f"Jira did not take the comment on {key}: {exc}. Nothing was posted; "
                "send the form again once Jira answers.",
                "comment": text,
                "comment_calibration": calibration,
            }
        )
        return render(request, "bucket.html", context, status_code=502)
    with session_scope(settings.db_url()) as session:
        store.audit(
            session, actor, COMMENT_ACTION, request_uid=uid, calibration=calibration, message=text, key=key
        )
    log.info("Comment by %s posted on %s (%s of %s)", actor, key, calibration, uid)
    return RedirectResponse(target, status_code=303)
