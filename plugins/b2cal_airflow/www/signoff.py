"""The sign-off page: the readiness report, and the manager's approval or rejection with a comment.

The decision is the response to the ``sign_off`` task, Airflow's approval task. The page sends it
through Airflow's REST API with the manager's own login, so Airflow checks that the user may
respond.
The comment and the calibrations to reopen go with the response as the task's parameters, and the
decision is also written to the request's audit log. The request's state is left to the DAG,
whose tasks act on the response. Only users with the Calibration Manager role get the buttons,
because the sign-off guard (:mod:`b2cal_airflow.signoff_guard`) rejects any other user's response,
Airflow admins included. For everyone else the page is read-only.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from b2cal.db import gate, store
from b2cal.db.engine import session_scope
from b2cal_airflow.auth import MANAGER_ROLE, ProductAction, is_calibration_manager, user_login
from b2cal_airflow.www import data
from b2cal_airflow.www.airflow_api import AirflowAPIError, AirflowClient, AirflowDep
from b2cal_airflow.www.context import (
    CSRF_FIELD,
    PageSettings,
    SettingsDep,
    UserDep,
    check_csrf,
    prefix,
    render,
    require,
)

log = logging.getLogger(__name__)

router = APIRouter()

SIGN_OFF_TASK = "sign_off"
#: The audit action of a response that the sign-off page sent to Airflow.
RESPONSE_ACTION = "sign_off_response"
DECISIONS = {"approve": "Approve", "reject": "Reject"}
#: The past participle of each option, shown for a decision already taken.
DECIDED = {"Approve": "Approved", "Reject": "Rejected"}


def decided_text(decision: str | None) -> str:
    """Return a decision already taken as a past participle, e.g. ``Approved``.

    The page's audit entries store the form value (``approve``), the sign-off rounds and Airflow the
    option (``Approve``); both give the same text. Any other value is returned unchanged.
    """
    if not decision:
        return ""
    option = DECISIONS.get(decision, decision)
    return DECIDED.get(option, decision)


def _time_text(value: datetime | str | None) -> str:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if value is None:
        return ""
    return f"{data.aware(value):%Y-%m-%d %H:%M} UTC"


def recorded_decision(
    context: dict[str, Any], hitl: dict[str, Any] | None, run_id: str | None
) -> dict[str, str] | None:
    """Return the decision already taken on run ``run_id``'s sign-off, or None when none is known.

    The result has the keys ``decision`` (a past participle), ``by`` and ``at``, which may be empty.
    The plugin database is read first: the run's sign-off round, which the DAG's ``sign_off`` task
    fills, then the responses this page sent for the run. Airflow's response to the task comes
    last, for a decision that neither records yet.
    """
    for item in context["rounds"]:
        if item["decision"] and item["dag_run_id"] == run_id:
            return {
                "decision": item["decision_text"],
                "by": item["decided_by"] or "",
                "at": _time_text(item["decided_at"]),
            }
    for entry in context["responses"]:
        if entry["detail"].get("dag_run_id") == run_id:
            return {"decision": entry["decision_text"], "by": entry["actor"], "at": _time_text(entry["at"])}
    if hitl and hitl.get("response_received"):
        return {
            "decision": ", ".join(decided_text(option) for option in hitl.get("chosen_options") or []),
            "by": str((hitl.get("responded_by_user") or {}).get("name") or ""),
            "at": _time_text(hitl.get("responded_at")),
        }
    return None


def signed_off_message(uid: str, decision: str, recorded: dict[str, str] | None) -> str:
    """Return the message that request ``uid`` was already signed off, so ``decision`` was not sent."""
    attempt = "approval" if decision == "approve" else "rejection"
    if recorded is None or not recorded["decision"]:
        return (
            f"Request {uid} was already signed off, so your {attempt} was not sent. The plugin database "
            "has no record of the decision yet; the DAG's sign_off task records it when it resumes."
        )
    decided_by = f" by {recorded['by']}" if recorded["by"] else ""
    decided_at = f" at {recorded['at']}" if recorded["at"] else ""
    return (
        f"Request {uid} was already signed off: {recorded['decision']}{decided_by}{decided_at}. "
        f"Your {attempt} was not sent."
    )


def answer_params(hitl: dict[str, Any] | None, comment: str, reopen: list[str]) -> dict[str, Any]:
    """Return the ``params_input`` of a response: every parameter the task declares, as Airflow's form sends.

    The comment and the calibrations to reopen fill the task's ``comment`` and ``reopen``
    parameters; the others keep their declared values. A task without parameters gets none.
    """
    declared = (hitl or {}).get("params") or {}
    values = {key: spec.get("value") if isinstance(spec, dict) else spec for key, spec in declared.items()}
    if "comment" in values:
        values["comment"] = comment
    if "reopen" in values:
        values["reopen"] = reopen
    return values


def split_items(text: str) -> list[str]:
    """Return the ticket keys or calibration names of a text, one per line or separated by commas."""
    return [item.strip() for line in text.splitlines() for item in line.split(",") if item.strip()]


def reopen_problem(row: Any, reopen: list[str]) -> str | None:
    """Return why the ``reopen`` entries of a rejection of request ``row`` are invalid, or None.

    The entries are checked with the rule that the ``sign_off`` task applies to the response
    (:func:`b2cal.db.gate.resolve_reopen`), so a rejection that the task would not apply is not sent.
    """
    try:
        gate.resolve_reopen(row, reopen)
    except ValueError as exc:
        return f"The reopen field is invalid, so the rejection was not sent: {exc}."
    return None


def not_waiting_message(uid: str, decision: str, state: str) -> str:
    """Return the message that Airflow does not wait for a sign-off of request ``uid`` now."""
    attempt = "approval" if decision == "approve" else "rejection"
    return (
        f"Airflow is not waiting for a sign-off of request {uid} now, so your {attempt} was not sent. "
        f"The request is {state}. Airflow asks for the sign-off after the readiness report, once every "
        "calibration's ticket is done and every check passed."
    )


async def _hitl(
    airflow: AirflowClient, dag_id: str, run_id: str | None
) -> tuple[dict[str, Any] | None, str | None]:
    if not run_id:
        return None, "The request has no Airflow run yet."
    try:
        return await airflow.hitl_detail(dag_id, run_id, SIGN_OFF_TASK), None
    except AirflowAPIError as exc:
        return None, f"Airflow did not show the sign-off task ({exc.status}): {exc.detail}"


def _context(session: Any, uid: str, user: Any) -> tuple[Any, dict[str, Any]]:
    try:
        row = data.find_request(session, uid)
    except store.NotFoundError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    counts = data.state_counts((item.job_state, item.ticket_state) for item in row.progress)
    rounds = data.signoff_rounds(session, row)
    for index, item in enumerate(rounds):
        item["decision_text"] = decided_text(item["decision"])
        # The rounds come newest first, and the oldest is round 1, as in gate.round_number.
        item["number"] = len(rounds) - index
    entries = data.audit_entries(session, uid)
    decisions = [entry for entry in entries if entry["action"] == "sign_off_decision"]
    responses = [entry for entry in entries if entry["action"] == RESPONSE_ACTION]
    for entry in decisions + responses:
        entry["decision_text"] = decided_text(entry["detail"].get("decision"))
    context = {
        "user": user,
        "summary": data.summary(row, counts),
        "rounds": rounds,
        "report": data.latest_report(session, uid),
        "decisions": decisions,
        "responses": responses,
        "manager_role": MANAGER_ROLE,
    }
    return row, context


def _task_context(hitl: dict[str, Any] | None, problem: str | None, user: Any) -> dict[str, Any]:
    waiting = bool(hitl) and not hitl.get("response_received")
    chosen = (hitl or {}).get("chosen_options") or []
    may_decide = waiting and is_calibration_manager(user)
    return {
        "hitl": hitl,
        "hitl_problem": problem,
        "waiting": waiting,
        "may_decide": may_decide,
        # The form has a reopen field only when the task declares the ``reopen`` parameter.
        "reopen_field": may_decide and "reopen" in ((hitl or {}).get("params") or {}),
        "answer_text": ", ".join(decided_text(option) for option in chosen),
        "answered_at": _time_text((hitl or {}).get("responded_at")),
    }


@router.get("/requests/{uid}/signoff", response_class=HTMLResponse)
async def signoff_page(
    request: Request, uid: str, user: UserDep, settings: SettingsDep, airflow: AirflowDep
) -> HTMLResponse:
    """Show the readiness report; managers get the approve and reject buttons while Airflow waits."""
    require(user, ProductAction.READ)
    with session_scope(settings.db_url()) as session:
        row, context = _context(session, uid, user)
        run_id = row.dag_run_id
    hitl, problem = await _hitl(airflow, settings.dag_id, run_id)
    context.update(_task_context(hitl, problem, user))
    return render(request, "signoff.html", context)


async def _signed_off_page(
    request: Request, settings: PageSettings, airflow: AirflowClient, uid: str, user: Any, decision: str
) -> HTMLResponse:
    """Show the sign-off page, with 409, saying who took the decision that the user tried to take again."""
    # Read again: the decision that won may have been recorded after the form was read.
    with session_scope(settings.db_url()) as session:
        row, context = _context(session, uid, user)
        run_id = row.dag_run_id
    hitl, problem = await _hitl(airflow, settings.dag_id, run_id)
    context.update(_task_context(hitl, problem, user))
    context["signed_off"] = signed_off_message(uid, decision, recorded_decision(context, hitl, run_id))
    log.info(
        "Request %s was signed off already, so the %s response of %s was not sent",
        uid,
        DECISIONS[decision],
        user_login(user),
    )
    return render(request, "signoff.html", context, status_code=409)


async def _send_response(
    airflow: AirflowClient,
    dag_id: str,
    uid: str,
    run_id: str,
    state: str,
    decision: str,
    comment: str,
    reopen: list[str],
    actor: str,
) -> tuple[str | None, int, bool]:
    """Send ``decision`` to the ``sign_off`` task of run ``run_id`` if Airflow waits for it.

    The result is the error to show (None once Airflow accepted the response), its HTTP status, and
    whether the task had a response already.
    """
    try:
        hitl = await airflow.hitl_detail(dag_id, run_id, SIGN_OFF_TASK)
    except AirflowAPIError as exc:
        log.warning("Airflow did not show the sign-off task of %s: %s", uid, exc)
        error = f"Airflow did not show the sign-off task ({exc.status}): {exc.detail}. Nothing was sent."
        return error, 502 if exc.status >= 500 else exc.status, False
    if hitl is None:
        # Airflow has no question to answer yet. A response now would fail with Airflow's 404, after
        # the API server's sign-off guard had already audited the user as admitted.
        log.info("Request %s (%s): Airflow does not wait for a sign-off, so nothing was sent", uid, state)
        return not_waiting_message(uid, decision, state), 409, False
    if hitl.get("response_received"):
        return None, 409, True
    params = answer_params(hitl, comment, reopen)
    try:
        await airflow.respond(dag_id, run_id, SIGN_OFF_TASK, DECISIONS[decision], params)
    except AirflowAPIError as exc:
        log.warning("Airflow rejected the sign-off of %s by %s: %s", uid, actor, exc)
        # Airflow 3.3's hitlDetails endpoint returns 409 only when the task has a response already,
        # and 404 when the task instance has no human-in-the-loop detail.
        # NOTE: the sign-off guard has audited the user as admitted before Airflow's 404.
        if exc.status == 409:
            return None, 409, True
        if exc.status == 404:
            return not_waiting_message(uid, decision, state), 409, False
        error = f"Airflow rejected the response ({exc.status}): {exc.detail}"
        return error, 502 if exc.status >= 500 else exc.status, False
    return None, 200, False


@router.post("/requests/{uid}/signoff", response_class=HTMLResponse)
async def signoff_submit(
    request: Request, uid: str, user: UserDep, settings: SettingsDep, airflow: AirflowDep
) -> Response:
    """Approve or reject the bucket: respond to the ``sign_off`` task and record the decision."""
    form = await request.form()
    # The role first: a user who may not take the action learns that, not that a token is missing.
    require(user, ProductAction.SIGN_OFF)
    check_csrf(request, settings, str(form.get(CSRF_FIELD) or ""))
    if not is_calibration_manager(user):
        log.warning(
            "Rejected the sign-off of %s by %s, who lacks the %s role", uid, user_login(user), MANAGER_ROLE
        )
        raise HTTPException(
            status_code=403,
            detail=f"Only users with the {MANAGER_ROLE} role may sign off; ask a calibration manager",
        )
    decision = str(form.get("decision") or "")
    comment = str(form.get("comment") or "").strip()
    reopen = split_items(str(form.get("reopen") or ""))
    with session_scope(settings.db_url()) as session:
        row, context = _context(session, uid, user)
        run_id = row.dag_run_id
        state = row.state
        invalid_reopen = reopen_problem(row, reopen) if decision == "reject" else None

    error = None
    # The form field that the error concerns, so that the page shows the error next to it.
    error_field = None
    status = 422
    if decision not in DECISIONS:
        error = f"decision {decision!r} is unknown; press Approve or Reject"
    elif decision == "reject" and not comment:
        error = "Say why the bucket is rejected in the comment; the experts read it."
    elif not run_id:
        error = "The request has no Airflow run, so there is nothing to sign off."
    elif decision == "approve" and reopen:
        error = "Tickets to reopen go with a rejection; clear the reopen field to approve."
    elif invalid_reopen is not None:
        error, error_field = invalid_reopen, "reopen"

    signed_off = False
    if error is None:
        error, status, signed_off = await _send_response(
            airflow, settings.dag_id, uid, str(run_id), state, decision, comment, reopen, user_login(user)
        )
    if signed_off:
        return await _signed_off_page(request, settings, airflow, uid, user, decision)
    if error is not None:
        hitl, problem = await _hitl(airflow, settings.dag_id, run_id)
        context.update(_task_context(hitl, problem, user))
        context.update(
            {"error": error, "error_field": error_field, "comment": comment, "reopen": "\n".join(reopen)}
        )
        return render(request, "signoff.html", context, status_code=status)
    actor = user_login(user)
    with session_scope(settings.db_url()) as session:
        # The sign-off task records the decision itself (``sign_off_decision``) once Airflow resumes
        # it. This entry records that the page sent the response.
        store.audit(
            session,
            actor,
            RESPONSE_ACTION,
            request_uid=uid,
            message=comment,
            decision=decision,
            reopen=reopen,
            dag_run_id=run_id,
        )
    log.info("Request %s: %s by %s", uid, decision, actor)
    return RedirectResponse(f"{prefix(request)}/requests/{uid}/signoff", status_code=303)
