"""The sign-off gate: readiness report, the manager's approval, the running update, and rejection.

The steps of a request's DAG run after its calibrations:

1. :class:`SignOffReportOperator` builds the readiness report and stores it as a sign-off round. A
   report that is not clean fails the task and lists who must act.
2. :class:`SignOffOperator`, Airflow's ``ApprovalOperator``, shows the report and waits in the
   ``awaiting_input`` state. Only a response that the API server's guard
   (:mod:`b2cal_airflow.signoff_guard`) let through counts: the guard admits users with the
   Calibration Manager role and audits everyone else. Any other response is rejected, audited, and the
   question is asked again.
3. On approval, :class:`RunningUpdateOperator` freezes the staging tag (TESTING), checks that it is
   still what the report showed, validates it, and applies exactly the approved running update.
   Its success emits an event of the :data:`CALIBRATED_BUCKET` asset for mDST production.
4. On rejection, :class:`RejectSignOffOperator` moves the staging tag back to OPEN, reopens the named
   tickets and their dependents with the manager's comment, removes their payloads from the staging
   tag, gives them a new job attempt, and returns the request's conf for a new DAG run. A rejected
   raw-phase calibration also gives cDST production a new attempt and sends every cdst-phase
   calibration back, because the cDSTs are made with the raw-phase payloads.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLOperator
from airflow.sdk import Asset, Context, Param
from airflow.sdk.bases.skipmixin import SkipMixin
from airflow.sdk.definitions.param import ParamsDict
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from b2cal.cdst import CDST_JOB
from b2cal.conddb import ConditionsDB, ConditionsDBError
from b2cal.db import gate, store
from b2cal.db.engine import session_scope
from b2cal.globaltags import fingerprint
from b2cal.readiness import build_report
from b2cal.request import RequestSpec
from b2cal.rerun import RerunPlan, plan_rerun
from b2cal.tickets import TicketError, parent_label
from b2cal_airflow.hooks.b2cal import ConditionsDBHook, PluginDatabaseHook, TicketHook
from b2cal_airflow.operators.base import RequestOperator

#: The asset whose events tell downstream mDST production that a bucket is calibrated. The event's
#: extra holds ``request_id``, ``bucket``, ``running_tag``, ``staging_tag`` and ``payloads``.
CALIBRATED_BUCKET = Asset(name="b2cal_calibrated_bucket", uri="b2cal://buckets/calibrated")
#: Ticket status categories a rejected ticket is moved to, in order of preference.
ACTION_REOPEN = "reopen_ticket"
ACTION_RERUN = "prepare_rerun"
ACTION_TAG_STATE = "tag_state"


def _tag_state(client: ConditionsDB, name: str) -> str | None:
    tag = client.get_global_tag(name)
    return client.tag_state(tag) if tag is not None else None


class SignOffReportOperator(RequestOperator):
    """Build the readiness report and store it as a sign-off round; fail while it is not clean.

    :param conddb_conn_id: the conditions database connection.
    :param jira_conn_id: the Jira connection.
    """

    template_fields: Sequence[str] = ("request_id",)

    def __init__(
        self, *, conddb_conn_id: str = "b2cal_conddb", jira_conn_id: str = "b2cal_jira", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.conddb_conn_id = conddb_conn_id
        self.jira_conn_id = jira_conn_id

    def execute(self, context: Context) -> str:
        spec, catalog = self.load()
        client = ConditionsDBHook(self.conddb_conn_id).get_conn()
        keys = self.ticket_keys()
        categories = TicketHook(self.jira_conn_id).get_tree().categories(keys.values())
        with session_scope(self.db_url) as session:
            checks = gate.load_checks(session, spec.uid)
        staging_state = _tag_state(client, spec.staging_tag)
        running_state = _tag_state(client, spec.running_tag)
        report = build_report(
            request_uid=spec.uid,
            bucket=spec.bucket,
            release=spec.release,
            site=spec.site,
            staging_tag=spec.staging_tag,
            running_tag=spec.running_tag,
            manager=spec.requested_by,
            calibrations=spec.calibrations,
            catalog=catalog,
            ticket_keys=keys,
            ticket_categories=categories,
            checks=checks,
            staging=client.global_tag_payloads(spec.staging_tag) if staging_state else [],
            running=client.global_tag_payloads(spec.running_tag) if running_state else [],
            staging_state=staging_state,
            running_state=running_state,
        )
        text = report.to_markdown()
        with session_scope(self.db_url) as session:
            round_row = gate.add_round(
                session,
                spec.uid,
                clean=report.clean,
                staging_fingerprint=report.staging_fingerprint,
                report=report.to_dict(),
                report_text=text,
                dag_run_id=context["run_id"],
            )
            round_id, number = round_row.id, gate.round_number(session, round_row)
        if not report.clean:
            blockers = [f"{blocker.owner}: {blocker.message}" for blocker in report.blockers]
            self.set_state("signoff_blocked", blockers=blockers, round_id=round_id)
            self.log.error("Request %s is not ready for sign-off (round %s):\n%s", spec.uid, number, text)
            raise AirflowException(
                f"request {spec.uid} is not ready for sign-off: {len(blockers)} problems, to be solved by "
                f"{', '.join(report.owners())}; clear this task once they are solved.\n" + "\n".join(blockers)
            )
        self.set_state("awaiting_signoff", report=text, round_id=round_id)
        self.log.info("Request %s is ready for sign-off (round %s): %s", spec.uid, number, report.operations)
        return text


class SignOffOperator(ApprovalOperator):
    """Ask the calibration manager to approve or reject the newest clean readiness report.

    The question opens only when the newest sign-off round is ``open`` and the staging tag still has
    the fingerprint of its report. The form carries two fields for a rejection: ``reopen``, the
    ticket keys or calibration names to rerun, and ``comment``, the reason, which goes to their
    tickets. A response is taken only from a user that :mod:`b2cal_airflow.signoff_guard` recorded
    as allowed for this task and run; any other response, and a rejection whose ``reopen`` names
    something unknown, is rejected, audited and asked again.

    A retry does not open the question a second time. When an earlier try of the same run recorded
    the decision, the retry only skips the tasks of the decision not taken. When Airflow accepted a
    response that no try applied, the retry applies it.

    :param request_id: the request's id, usually ``"{{ params.request_id }}"``.
    :param approve_task_ids: tasks that run only after an approval; skipped on rejection.
    :param reject_task_ids: tasks that run only after a rejection; skipped on approval.
    """

    template_fields: Sequence[str] = ("subject", "body", "request_id")
    ui_color = "#fde68a"

    def __init__(
        self,
        *,
        request_id: str,
        approve_task_ids: Sequence[str] = (),
        reject_task_ids: Sequence[str] = (),
        db_conn_id: str = "b2cal_db",
        conddb_conn_id: str = "b2cal_conddb",
        **kwargs: Any,
    ) -> None:
        # Airflow hands the DAG's params in as well; the form shows only those marked as the task's.
        params = ParamsDict(kwargs.pop("params", None) or {})
        params.update(
            {
                "reopen": Param(
                    [],
                    type="array",
                    items={"type": "string"},
                    title="Reopen (on rejection)",
                    description="Ticket keys or calibration names to rerun, with all that depends on them",
                    source="task",
                ),
                "comment": Param(
                    "",
                    type="string",
                    title="Comment",
                    description="Why the bucket is rejected; written on each reopened ticket",
                    source="task",
                ),
            }
        )
        kwargs.setdefault("body", "The readiness report is loaded when the question opens.")
        super().__init__(params=params, **kwargs)
        self.request_id = request_id
        self.approve_task_ids = list(approve_task_ids)
        self.reject_task_ids = list(reject_task_ids)
        self.db_conn_id = db_conn_id
        self.conddb_conn_id = conddb_conn_id
        self.refusal_notes: list[str] = []
        self._replayed = False

    @cached_property
    def db_url(self) -> str:
        """The plugin database URL."""
        return PluginDatabaseHook(self.db_conn_id).get_url()

    def execute(self, context: Context) -> Any:
        with session_scope(self.db_url) as session:
            request = store.get_request(session, self.request_id)
            staging_tag = request.staging_tag
            round_row = gate.require_round(session, self.request_id)
            round_id, number, state, expected, text = (
                round_row.id,
                gate.round_number(session, round_row),
                round_row.state,
                round_row.staging_fingerprint,
                round_row.report_text,
            )
            decided = (round_row.dag_run_id == context["run_id"] and state in ("approved", "rejected")) and {
                "decision": round_row.decision,
                "user": round_row.decided_by,
                "reopen": list(((round_row.report or {}).get("decision") or {}).get("reopen") or []),
                "comment": round_row.comment,
            }
            pending = (
                None
                if self._replayed
                else gate.unapplied_response(
                    session,
                    uid=self.request_id,
                    run_id=context["run_id"],
                    task_id=self.task_id,
                    round_row=round_row,
                )
            )
        if decided:
            # An earlier try recorded the decision and then failed: finish what it started.
            self.log.info("Request %s was already signed off in this run: %s", self.request_id, decided)
            return self._route(context, decided)
        if pending is not None:
            # An earlier try failed after Airflow stored the response: apply it rather than ask again.
            self._replayed = True
            self.log.info(
                "Applying the response of %s stored before this task started again",
                pending["responded_by_user"]["name"],
            )
            return self.execute_complete(context, pending)
        if state != "open":
            raise AirflowFailException(
                f"the newest readiness report of {self.request_id} (round {number}) is {state}, and the "
                "sign-off opens only on a clean report: clear readiness_report to make a new one"
            )
        current = fingerprint(
            ConditionsDBHook(self.conddb_conn_id).get_conn().global_tag_payloads(staging_tag)
        )
        if current != expected:
            with session_scope(self.db_url) as session:
                gate.set_round_state(
                    session,
                    gate.require_round(session, self.request_id),
                    "invalidated",
                    message=f"round {number}: staging tag {staging_tag} changed after the report",
                )
            raise AirflowFailException(
                f"staging tag {staging_tag} changed after readiness report round {number}: clear "
                "readiness_report to report on its current contents"
            )
        notes = [f"> **Rejected response:** {note}" for note in self.refusal_notes]
        self.body = "\n\n".join([*notes, text]) if notes else text
        with session_scope(self.db_url) as session:
            store.set_request_state(
                session, self.request_id, "awaiting_signoff", round_id=round_id, report=text
            )
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        if "error" in event:
            return super().execute_complete(context, event)
        user = event.get("responded_by_user") or {}
        user_id, user_name = str(user.get("id", "")), str(user.get("name", ""))
        chosen = list(event.get("chosen_options") or [])
        params_input = dict(event.get("params_input") or {})
        with session_scope(self.db_url) as session:
            allowed = bool(user_name) and gate.is_authorised_responder(
                session,
                uid=self.request_id,
                user_id=user_id,
                user_name=user_name,
                run_id=context["run_id"],
                task_id=self.task_id,
            )
        if not allowed:
            return self._refuse(
                context,
                user_name or "an unknown user",
                f"{user_name or 'an unknown user'} responded {chosen}, but only a user with the Calibration "
                "Manager role, admitted by the API server's sign-off guard, may sign off",
            )
        decision = chosen[0] if chosen else ""
        targets: list[str] = []
        comment = str(params_input.get("comment") or "").strip()
        if decision == self.REJECT:
            try:
                with session_scope(self.db_url) as session:
                    request = store.get_request(session, self.request_id)
                    targets = gate.resolve_reopen(request, params_input.get("reopen") or [])
            except ValueError as exc:
                return self._refuse(
                    context, user_name, f"the rejection by {user_name} was not applied: {exc}"
                )
            if targets and not comment:
                return self._refuse(
                    context,
                    user_name,
                    f"the rejection by {user_name} names tickets to reopen but no comment; say why, "
                    "the experts read it on their tickets",
                )

        # HITLOperator validates the response; ApprovalOperator's own step would skip every downstream task.
        result = HITLOperator.execute_complete(self, context, event)
        responded_at = event.get("responded_at") or datetime.now(UTC)
        with session_scope(self.db_url) as session:
            round_row = gate.require_round(session, self.request_id)
            if round_row.state != "open":
                number = gate.round_number(session, round_row)
                raise AirflowFailException(
                    f"readiness report round {number} of {self.request_id} is {round_row.state}, "
                    "so the response cannot apply to it: clear readiness_report"
                )
            gate.record_decision(
                session,
                round_row,
                decision=decision,
                user=user_name,
                at=responded_at,
                comment=comment,
                user_id=user_id,
                reopen=targets,
            )
            store.set_request_state(
                session,
                self.request_id,
                "signed_off" if decision == self.APPROVE else "rejected",
                actor=user_name,
                round_id=round_row.id,
            )
        self.log.info("Request %s: %s by %s at %s", self.request_id, decision, user_name, responded_at)
        outcome = {"decision": decision, "user": user_name, "reopen": targets, "comment": comment}
        return self._route(context, {**outcome, "responded": result.get("responded_by_user")})

    def _route(self, context: Context, outcome: dict[str, Any]) -> dict[str, Any]:
        """Skip the tasks of the decision not taken, and return ``outcome``."""
        skipped = self.reject_task_ids if outcome["decision"] == self.APPROVE else self.approve_task_ids
        tasks = [self.dag.get_task(task_id) for task_id in skipped if self.dag.has_task(task_id)]
        if tasks:
            # Skipping raises inside Airflow, so the return value is pushed first.
            context["ti"].xcom_push(key="return_value", value=outcome)
            self.skip(ti=context["ti"], tasks=tasks)
        return outcome

    def _refuse(self, context: Context, user_name: str, reason: str) -> Any:
        """Audit a rejected response, then ask the question again."""
        self.log.warning("Sign-off of %s: %s", self.request_id, reason)
        with session_scope(self.db_url) as session:
            store.audit(
                session,
                user_name,
                gate.ACTION_REFUSED,
                request_uid=self.request_id,
                message=reason,
                run_id=context["run_id"],
                task_id=self.task_id,
            )
        self.refusal_notes.append(reason)
        return self.execute(context)


class RunningUpdateOperator(RequestOperator):
    """Apply the approved running update, and emit the calibrated-bucket asset event.

    The staging tag goes to TESTING first, which freezes it, then its fingerprint is compared with
    the approved report's; a difference invalidates the round and fails the task without retries.
    Then the tag goes to VALIDATED, the dry run is compared with the approved operations, and the
    update is applied, limited to those operations. A failure in the middle leaves the request in
    ``running_update_incomplete``; the task's retry computes what remains and finishes it.

    Once merged, the request's parent ticket is closed with a comment that names the running tag,
    because every calibration ticket under it is done.

    :param conddb_conn_id: the conditions database connection.
    :param jira_conn_id: the Jira connection.
    """

    def __init__(
        self, *, conddb_conn_id: str = "b2cal_conddb", jira_conn_id: str = "b2cal_jira", **kwargs: Any
    ) -> None:
        kwargs.setdefault("outlets", [CALIBRATED_BUCKET])
        super().__init__(**kwargs)
        self.conddb_conn_id = conddb_conn_id
        self.jira_conn_id = jira_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        spec, catalog = self.load()
        client = ConditionsDBHook(self.conddb_conn_id).get_conn()
        with session_scope(self.db_url) as session:
            round_row = gate.require_round(session, spec.uid)
            round_id, state = round_row.id, round_row.state
            number = gate.round_number(session, round_row)
            decision, approver = round_row.decision, round_row.decided_by or "system"
            expected = round_row.staging_fingerprint
            approved = [*round_row.report.get("to_close", []), *round_row.report.get("to_add", [])]
        if state not in ("approved", "merging", "merged") or decision != "Approve":
            with session_scope(self.db_url) as session:
                store.audit(
                    session,
                    "system",
                    "running_update_refused",
                    request_uid=spec.uid,
                    message=f"round {number} is {state} with decision {decision}",
                    round_id=round_id,
                )
            raise AirflowFailException(
                f"the newest readiness report of {spec.uid} (round {number}) is {state}, not approved by a "
                "calibration manager: the running update does not run"
            )

        self._freeze(client, spec, approver)
        current = fingerprint(client.global_tag_payloads(spec.staging_tag))
        if current != expected:
            self._invalidate(
                client, spec, round_id, number, f"staging tag {spec.staging_tag} changed after the report"
            )
        self._change_state(client, spec, "VALIDATED", approver)

        dry = client.running_update(spec.staging_tag, spec.running_tag, spec.bucket.first, dry_run=True)
        if extra := dry.unapproved(approved):
            self._invalidate(
                client, spec, round_id, number, f"the running update now holds unapproved operations {extra}"
            )
        if dry.problems:
            raise AirflowFailException(
                f"the running update of {spec.uid} has problems: "
                + "; ".join(problem.message for problem in dry.problems)
            )
        if state == "approved":
            with session_scope(self.db_url) as session:
                gate.set_round_state(
                    session, gate.require_round(session, spec.uid), "merging", actor=approver
                )
        try:
            done = client.running_update(
                spec.staging_tag, spec.running_tag, spec.bucket.first, dry_run=False, approved=approved
            )
        except ConditionsDBError as exc:
            self.set_state("running_update_incomplete", error=str(exc), round_id=round_id)
            raise
        summary = {
            "closed": len(done.to_close),
            "added": len(done.to_add),
            "already_added": done.already_added,
        }
        with session_scope(self.db_url) as session:
            round_row = gate.require_round(session, spec.uid)
            if round_row.state != "merged":
                gate.set_round_state(session, round_row, "merged", actor=approver, **summary)
            store.set_request_state(session, spec.uid, "merged", actor=approver, round_id=round_id, **summary)
        payloads = sorted({name for name in spec.calibrations for name in catalog[name].produced_payloads})
        context["outlet_events"][CALIBRATED_BUCKET].extra = {
            "request_id": spec.uid,
            "bucket": spec.bucket.as_list(),
            "running_tag": spec.running_tag,
            "staging_tag": spec.staging_tag,
            "payloads": payloads,
        }
        self.log.info(
            "Merged %s into %s for request %s: %s", spec.staging_tag, spec.running_tag, spec.uid, summary
        )
        self._close_parent(spec, approver)
        return summary

    def _close_parent(self, spec: RequestSpec, approver: str) -> None:
        """Close the request's parent ticket, if it has one that is open; a Jira error is only logged."""
        try:
            tree = TicketHook(self.jira_conn_id).get_tree()
            parent = tree.find(parent_label(spec.uid)).get(parent_label(spec.uid))
            if parent is None or not tree.transition_to(parent["key"]):
                return
            tree.comment(
                parent["key"],
                f"The bucket {spec.bucket} was signed off by {approver} and its staging tag "
                f"{spec.staging_tag} merged into the running tag {spec.running_tag}.",
            )
            self.log.info("Closed the parent ticket %s of request %s", parent["key"], spec.uid)
        except TicketError as exc:
            self.log.warning("Could not close the parent ticket of request %s: %s", spec.uid, exc)

    def _freeze(self, client: ConditionsDB, spec: RequestSpec, actor: str) -> None:
        if _tag_state(client, spec.staging_tag) == "OPEN":
            self._change_state(client, spec, "TESTING", actor)

    def _change_state(self, client: ConditionsDB, spec: RequestSpec, target: str, actor: str) -> None:
        before = _tag_state(client, spec.staging_tag)
        if before == target:
            return
        client.set_global_tag_state(spec.staging_tag, target)
        with session_scope(self.db_url) as session:
            store.audit(
                session,
                actor,
                ACTION_TAG_STATE,
                request_uid=spec.uid,
                message=f"{spec.staging_tag}: {before} -> {target}",
                tag=spec.staging_tag,
            )

    def _invalidate(
        self, client: ConditionsDB, spec: RequestSpec, round_id: int, number: int, reason: str
    ) -> None:
        """Invalidate round ``number`` (stored with id ``round_id``) and fail the task without retries."""
        if _tag_state(client, spec.staging_tag) == "TESTING":
            self._change_state(client, spec, "OPEN", "system")
        with session_scope(self.db_url) as session:
            gate.set_round_state(
                session,
                gate.require_round(session, spec.uid),
                "invalidated",
                message=f"round {number}: {reason}",
            )
            store.set_request_state(
                session, spec.uid, "signoff_invalidated", reason=reason, round_id=round_id
            )
        raise AirflowFailException(
            f"the sign-off of {spec.uid} (round {number}) no longer applies: {reason}; clear "
            "readiness_report to make a new report and sign off again"
        )


class RejectSignOffOperator(RequestOperator, SkipMixin):
    """Carry out a rejection: reopen tickets, prepare their calibrations' rerun, return the rerun's conf.

    What runs again is decided by :func:`b2cal.rerun.plan_rerun`. The conf is the request's, plus
    ``clean_start`` listing the calibrations to run again, whose progress rows now carry their next job
    attempt, and ``cdst-production`` when cDST production runs again; the request's ``cdst_attempt``
    then carries its next attempt. Idempotent: a retry neither comments twice on a ticket nor gives a
    calibration or cDST production a second new attempt. When the rejection names no tickets, nothing
    is rerun and the ``rerun_task_ids`` are skipped.

    :param rerun_task_ids: the tasks that start the rerun; skipped when there is nothing to rerun.
    :param conddb_conn_id: the conditions database connection.
    :param jira_conn_id: the Jira connection.
    """

    def __init__(
        self,
        *,
        rerun_task_ids: Sequence[str] = (),
        conddb_conn_id: str = "b2cal_conddb",
        jira_conn_id: str = "b2cal_jira",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.rerun_task_ids = list(rerun_task_ids)
        self.conddb_conn_id = conddb_conn_id
        self.jira_conn_id = jira_conn_id

    def execute(self, context: Context) -> dict[str, Any] | None:
        spec, catalog = self.load()
        with session_scope(self.db_url) as session:
            round_row = gate.require_round(session, spec.uid)
            round_id, state = round_row.id, round_row.state
            number = gate.round_number(session, round_row)
            decision = dict(round_row.report.get("decision") or {})
        if state != "rejected":
            raise AirflowFailException(
                f"readiness report round {number} of {spec.uid} is {state}, not rejected"
            )
        manager = str(decision.get("user") or "the calibration manager")
        comment = str(decision.get("comment") or "")
        named = list(decision.get("reopen") or [])
        plan = plan_rerun(catalog, spec.calibrations, named)
        affected = list(plan.calibrations)

        client = ConditionsDBHook(self.conddb_conn_id).get_conn()
        if _tag_state(client, spec.staging_tag) in ("TESTING", "VALIDATED"):
            client.set_global_tag_state(spec.staging_tag, "OPEN")
            with session_scope(self.db_url) as session:
                store.audit(
                    session,
                    manager,
                    ACTION_TAG_STATE,
                    request_uid=spec.uid,
                    message=f"{spec.staging_tag}: back to OPEN after the rejection of round {number}",
                )
        if not affected:
            self.set_state("rejected", round_id=round_id, reopened=[])
            self.log.info("Rejection of %s names no calibrations; nothing is rerun", spec.uid)
            tasks = [
                self.dag.get_task(task_id) for task_id in self.rerun_task_ids if self.dag.has_task(task_id)
            ]
            if tasks:
                self.skip(ti=context["ti"], tasks=tasks)
            return None

        clean_start = [*affected, CDST_JOB] if plan.cdst_production else affected
        payloads = {payload for name in affected for payload in catalog[name].produced_payloads}
        removed = 0
        for item in client.global_tag_payloads(spec.staging_tag):
            if item.name in payloads and item.iov_id is not None:
                client.delete_iov(item.iov_id)
                removed += 1
        self._reopen_tickets(spec, round_id, plan, manager, comment)
        with session_scope(self.db_url) as session:
            if not gate.has_round_action(session, spec.uid, ACTION_RERUN, round_id):
                if plan.cdst_production:
                    store.set_cdst_attempt(
                        session,
                        spec.uid,
                        store.get_cdst_attempt(session, spec.uid) + 1,
                        actor=manager,
                        reason=f"{', '.join(plan.cdst_causes)} rejected in round {number}",
                    )
                for name in affected:
                    row = store.get_progress(session, spec.uid, name)
                    store.update_progress(
                        session,
                        spec.uid,
                        name,
                        actor=manager,
                        attempt=row.attempt + 1,
                        job_state="pending",
                        upload_state="pending",
                        ticket_state="reopened",
                        job_id=None,
                        started_at=None,
                        ended_at=None,
                    )
                gate.clear_checks(session, spec.uid, affected)
                store.audit(
                    session,
                    manager,
                    ACTION_RERUN,
                    request_uid=spec.uid,
                    message=f"rerun {', '.join(clean_start)} after the rejection of round {number}",
                    round_id=round_id,
                    rerun=affected,
                    rerun_cdst_production=plan.cdst_production,
                    removed_iovs=removed,
                )
            store.set_request_state(
                session,
                spec.uid,
                "rerun_after_reject",
                actor=manager,
                rerun=affected,
                rerun_cdst_production=plan.cdst_production,
            )
        self.log.info(
            "Request %s: reopened %s, removed %d staging IoVs, rerunning %s",
            spec.uid,
            named,
            removed,
            clean_start,
        )
        return {**dict(context["params"]), "clean_start": clean_start}

    def _reopen_tickets(
        self, spec: RequestSpec, round_id: int, plan: RerunPlan, manager: str, comment: str
    ) -> None:
        keys = self.ticket_keys()
        tree = TicketHook(self.jira_conn_id).get_tree()
        for name in plan.calibrations:
            key = keys.get(name)
            if key is None:
                continue
            with session_scope(self.db_url) as session:
                if gate.has_round_action(session, spec.uid, ACTION_REOPEN, round_id, key=key):
                    continue
            if tree.categories([key]).get(key) == "done":
                self._reopen(tree, key)
            text = plan.reopen_comment(name, manager, comment)
            tree.comment(key, text)
            with session_scope(self.db_url) as session:
                store.audit(
                    session,
                    manager,
                    ACTION_REOPEN,
                    request_uid=spec.uid,
                    calibration=name,
                    message=text,
                    round_id=round_id,
                    key=key,
                )

    def _reopen(self, tree: Any, key: str) -> None:
        try:
            tree.reopen(key)
        except TicketError as exc:
            raise AirflowException(str(exc)) from None
