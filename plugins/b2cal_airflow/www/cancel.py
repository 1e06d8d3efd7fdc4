"""Cancelling a processing request from its bucket page.

A calibration manager gives a reason, and the page marks the request's DAG run failed through
Airflow's REST API with the manager's own login (``PATCH /api/v2/dags/{dag_id}/dagRuns/{dag_run_id}``).
The run that a rejection started (:func:`rerun_id`) is marked failed too when Airflow has it and it is
not finished. Airflow 3.3 then fails the runs' running and deferred task instances and skips those
not started yet, and the triggers that wait for jobs at the site stop them in ``on_kill``.

Only after Airflow accepted every call is the request set to ``cancelled`` in the plugin database,
with the reason and the run ids in the audit log. When Airflow returns an error, the plugin database
stays unchanged, and sending the form again cancels what is left, because runs already marked failed
are skipped. A request whose run Airflow does not have is cancelled in the plugin database alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from b2cal.cdst import CDST_JOB
from b2cal.db import store
from b2cal.db.engine import session_scope
from b2cal.remote import JobPaths, job_folder
from b2cal.reports import CANCELLED_JOB_STATE, FAILED_JOB_STATES, FINAL_REQUEST_STATES, FINISHED_JOB_STATES
from b2cal_airflow.auth import ProductAction, user_login
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
from b2cal_airflow.www.pages import bucket_page_context

log = logging.getLogger(__name__)

router = APIRouter()

CANCELLED = "cancelled"
REASON_FIELD = "reason"
#: The suffix of the run id that the DAG's ``rerun_request`` task starts after a rejection.
RERUN_SUFFIX = "__rerun"
#: Airflow's DAG run states after which the run does nothing more.
FINISHED_RUN_STATES = frozenset({"success", "failed"})
#: The maximum length of a DAG run's note in Airflow 3.3 (``DAGRunPatchBody.note``).
MAX_NOTE_CHARS = 1000
#: The maximum length of a reason, so that one form cannot flood the audit log. The run's note gets
#: the reason cut to fit :data:`MAX_NOTE_CHARS`.
MAX_REASON_CHARS = 2000

MARKED_FAILED = "marked_failed"
ALREADY_FINISHED = "already_finished"
NOT_FOUND = "not_found"


@dataclass(frozen=True)
class RunOutcome:
    """The result of cancelling one DAG run: ``marked_failed``, ``already_finished`` or ``not_found``.

    :ivar state: the run's state before the cancellation, or None when Airflow has no such run.
    """

    run_id: str
    result: str
    state: str | None = None


class CancelRunsError(RuntimeError):
    """Airflow returned an error while the request's runs were marked failed.

    :param run_id: the run whose call failed.
    :param error: Airflow's error.
    :param marked_failed: the runs that Airflow marked failed before the error.
    """

    def __init__(self, run_id: str, error: AirflowAPIError, marked_failed: list[str]) -> None:
        super().__init__(f"marking run {run_id} failed: {error}")
        self.run_id = run_id
        self.error = error
        self.marked_failed = marked_failed


def rerun_id(run_id: str) -> str:
    """Return the id of the run that a rejection of run ``run_id`` starts, as ``rerun_request`` names it."""
    return f"{run_id}{RERUN_SUFFIX}"


def run_note(actor: str, reason: str) -> str:
    """Return the note for a cancelled DAG run, cut to the length that Airflow accepts."""
    note = f"Cancelled by {actor} on the calibration pages: {reason}"
    if len(note) <= MAX_NOTE_CHARS:
        return note
    return note[: MAX_NOTE_CHARS - 1] + "…"


async def fail_run(airflow: AirflowClient, dag_id: str, run_id: str, note: str) -> RunOutcome:
    """Mark one DAG run failed unless Airflow has no such run or the run is finished.

    :raises AirflowAPIError: when Airflow returns an error other than 404.
    """
    run = await airflow.get_run(dag_id, run_id)
    if run is None:
        return RunOutcome(run_id, NOT_FOUND)
    state = str(run.get("state") or "") or None
    if state in FINISHED_RUN_STATES:
        return RunOutcome(run_id, ALREADY_FINISHED, state)
    try:
        await airflow.set_run_state(dag_id, run_id, "failed", note)
    except AirflowAPIError as exc:
        # The run was deleted between the two calls.
        if exc.status == 404:
            return RunOutcome(run_id, NOT_FOUND)
        raise
    return RunOutcome(run_id, MARKED_FAILED, state)


async def fail_runs(airflow: AirflowClient, dag_id: str, run_id: str | None, note: str) -> list[RunOutcome]:
    """Mark a request's DAG run and its rerun failed; return the outcome for each run that Airflow has.

    The request's own run is always in the result, ``not_found`` when Airflow lacks it. The result is
    empty when the request has no run id.

    :raises CancelRunsError: when Airflow returns an error other than 404.
    """
    if not run_id:
        return []
    outcomes: list[RunOutcome] = []
    for candidate in (run_id, rerun_id(run_id)):
        try:
            outcome = await fail_run(airflow, dag_id, candidate, note)
        except AirflowAPIError as exc:
            done = [item.run_id for item in outcomes if item.result == MARKED_FAILED]
            raise CancelRunsError(candidate, exc, done) from exc
        if outcome.result != NOT_FOUND or candidate == run_id:
            outcomes.append(outcome)
    return outcomes


def cancel_detail(run_id: str | None, outcomes: list[RunOutcome]) -> dict[str, Any]:
    """Return the audit detail of a cancellation: the run ids and what happened to each run."""
    detail: dict[str, Any] = {
        "dag_run_id": run_id,
        "marked_failed": [item.run_id for item in outcomes if item.result == MARKED_FAILED],
        "already_finished": {item.run_id: item.state for item in outcomes if item.result == ALREADY_FINISHED},
    }
    if not run_id:
        detail["without_dag_run"] = "the request has no DAG run id"
    elif any(item.run_id == run_id and item.result == NOT_FOUND for item in outcomes):
        detail["without_dag_run"] = f"Airflow has no run {run_id}"
    return detail


def conflict_message(uid: str, state: str, cancellation: dict[str, Any] | None) -> str:
    """Return the message that request ``uid`` is already over in ``state``, so nothing was changed."""
    if state == CANCELLED and cancellation is not None:
        at = cancellation["at"]
        when = f" at {at:%Y-%m-%d %H:%M} UTC" if at else ""
        return (
            f"Request {uid} was already cancelled by {cancellation['actor']}{when} "
            f"(reason: {cancellation['reason']!r}). Nothing was changed."
        )
    return f"Request {uid} is already {state}, so it cannot be cancelled. Nothing was changed."


def _bucket_page(
    request: Request, settings: PageSettings, uid: str, user: Any, status: int, **extra: Any
) -> HTMLResponse:
    context = bucket_page_context(request, settings, uid, user)
    context.update(extra)
    return render(request, "bucket.html", context, status_code=status)


def _conflict_page(request: Request, settings: PageSettings, uid: str, user: Any) -> HTMLResponse:
    """Show the bucket page, with 409, saying that the request is over and was left unchanged."""
    context = bucket_page_context(request, settings, uid, user)
    state = context["summary"]["state"]
    context["cancel_conflict"] = conflict_message(uid, state, context["cancellation"])
    log.info(
        "Request %s is %s already, so the cancellation by %s changed nothing", uid, state, user_login(user)
    )
    return render(request, "bucket.html", context, status_code=409)


def _airflow_error_message(exc: CancelRunsError) -> str:
    message = (
        f"Airflow rejected marking run {exc.run_id} failed ({exc.error.status}): {exc.error.detail}. "
        "The request was not cancelled."
    )
    if exc.marked_failed:
        message += (
            f" Airflow already marked {', '.join(exc.marked_failed)} failed. Send the form again to "
            "cancel the rest."
        )
    return message


#: Job states after which a calibration's job has ended; the other calibrations are marked cancelled.
ENDED_JOB_STATES = FINISHED_JOB_STATES | FAILED_JOB_STATES


def stop_request_work(db_url: str, uid: str, actor: str, reason: str) -> dict[str, Any]:
    """Stop the jobs of a cancelled request, mark its open calibrations cancelled, comment on its tickets.

    Airflow stops a job through its trigger's ``on_kill`` only once the triggerer runs that trigger,
    so a job started a moment before the cancellation would run on. Here every calibration that has
    not ended, and cDST production, gets the stop script in its job folder, which does nothing where no
    job runs. The steps are best effort: a site or Jira that fails is logged and named in the result,
    which goes into the audit log.
    """
    from b2cal_airflow.hooks.b2cal import TicketHook
    from b2cal_airflow.hooks.site import SiteHook

    with session_scope(db_url) as session:
        row = store.get_request(session, uid)
        site, cdst_attempt = row.site, int(row.cdst_attempt or 1)
        open_rows = []
        for item in row.progress:
            if item.job_state in ENDED_JOB_STATES:
                continue
            open_rows.append((item.calibration, int(item.attempt or 1), item.ticket_key))
            store.update_progress(session, uid, item.calibration, job_state=CANCELLED_JOB_STATE, actor=actor)
    result: dict[str, Any] = {"stopped_jobs": [], "stop_errors": [], "commented_tickets": []}
    try:
        hook = SiteHook(site)
        work_root = hook.site_settings.work_root
        with hook.session() as session:
            jobs = [(name, attempt) for name, attempt, _ in open_rows] + [(CDST_JOB, cdst_attempt)]
            for name, attempt in jobs:
                message = session.stop(JobPaths(job_folder(work_root, uid, name), attempt))
                if message.startswith("b2cal-stop: stopped"):
                    result["stopped_jobs"].append(name)
    except Exception as exc:  # noqa: BLE001 - the request is cancelled in any case; the error is recorded
        log.warning("Could not stop the jobs of cancelled request %s at site %s: %s", uid, site, exc)
        result["stop_errors"].append(f"site {site}: {exc}")
    text = f"The request {uid} was cancelled by {actor}: {reason}"
    try:
        tree = TicketHook().get_tree()
        for _, _, key in open_rows:
            if key:
                tree.comment(key, text)
                result["commented_tickets"].append(key)
    except Exception as exc:  # noqa: BLE001 - a lost comment must not undo the cancellation
        log.warning("Could not comment on the tickets of cancelled request %s: %s", uid, exc)
        result["stop_errors"].append(f"Jira: {exc}")
    return result


@router.post("/requests/{uid}/cancel", response_class=HTMLResponse)
async def cancel_submit(
    request: Request, uid: str, user: UserDep, settings: SettingsDep, airflow: AirflowDep
) -> Response:
    """Cancel a request: mark its DAG runs failed in Airflow, then set it cancelled with the reason."""
    form = await request.form()
    # The role first: a user who may not take the action learns that, not that a token is missing.
    require(user, ProductAction.CANCEL_REQUEST)
    check_csrf(request, settings, str(form.get(CSRF_FIELD) or ""))
    reason = str(form.get(REASON_FIELD) or "").strip()
    actor = user_login(user)
    context = bucket_page_context(request, settings, uid, user)
    summary = context["summary"]
    if summary["final"]:
        return _conflict_page(request, settings, uid, user)
    error = None
    if not reason:
        error = "reason is missing; say why the request is cancelled, so that the bucket page can show it"
    elif len(reason) > MAX_REASON_CHARS:
        error = f"reason is {len(reason)} characters long; shorten it to at most {MAX_REASON_CHARS}"
    if error is not None:
        log.info("Rejected the cancellation of %s by %s: %s", uid, actor, error)
        context.update({"cancel_errors": {REASON_FIELD: error}, "reason": reason})
        return render(request, "bucket.html", context, status_code=422)

    run_id = summary["dag_run_id"]
    try:
        outcomes = await fail_runs(airflow, settings.dag_id, run_id, run_note(actor, reason))
    except CancelRunsError as exc:
        log.warning(
            "Airflow rejected the cancellation of %s by %s at run %s: %s", uid, actor, exc.run_id, exc.error
        )
        status = 502 if exc.error.status >= 500 else exc.error.status
        return _bucket_page(
            request, settings, uid, user, status, cancel_error=_airflow_error_message(exc), reason=reason
        )

    detail = cancel_detail(run_id, outcomes)
    with session_scope(settings.db_url()) as session:
        # NOTE: a task that was ending when Airflow failed its run may still write a later state.
        changed = store.set_final_request_state(
            session, uid, CANCELLED, final_states=FINAL_REQUEST_STATES, actor=actor
        )
        if changed:
            store.audit(session, actor, data.CANCEL_ACTION, request_uid=uid, message=reason, **detail)
    if not changed:
        return _conflict_page(request, settings, uid, user)
    stopped = await run_in_threadpool(stop_request_work, settings.db_url(), uid, actor, reason)
    with session_scope(settings.db_url()) as session:
        store.audit(session, actor, "stop_request_work", request_uid=uid, **stopped)
    log.info("Request %s cancelled by %s: %s; %s", uid, actor, detail, stopped)
    return RedirectResponse(f"{prefix(request)}/requests/{uid}", status_code=303)
