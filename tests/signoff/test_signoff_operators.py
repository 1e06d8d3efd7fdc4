"""The sign-off operators, executed with a minimal context against the development Jira and
conditions database: a wrong merge is impossible, and every decision is audited.

Airflow's part of the approval (storing the question, parking the task, resuming it with the
answer) is replaced by calling ``execute`` and then ``execute_complete`` with the answer's event.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    DownstreamTasksSkipped,
    TaskAwaitingInput,
)
from atlassian import Jira
from signoff_support import CALIBRATIONS, CATALOG, CONFIG, PAYLOADS, RUNNING_TAG, Bucket
from sqlalchemy import select

from b2cal.cdst import CDST_JOB
from b2cal.conddb import ConditionsDBError
from b2cal.db import gate, store
from b2cal.db.engine import session_scope
from b2cal.db.gate import resolve_targets
from b2cal.db.models import AuditEntry, SignOffRound
from b2cal.request import parse_request
from b2cal.tickets import parent_label
from b2cal_airflow.operators.signoff import (
    CALIBRATED_BUCKET,
    RejectSignOffOperator,
    RunningUpdateOperator,
    SignOffOperator,
    SignOffReportOperator,
)


class FakeTaskInstance:
    """The task instance parts that the operators use."""

    def __init__(self) -> None:
        self.id = "0190e4a0-0000-7000-8000-000000000001"
        self.map_index = -1
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


@pytest.fixture
def questions(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record each question the approval task stores instead of sending it to Airflow."""
    asked: list[dict[str, Any]] = []
    monkeypatch.setattr(
        "airflow.providers.standard.operators.hitl.upsert_hitl_detail", lambda **kwargs: asked.append(kwargs)
    )
    return asked


@pytest.fixture
def dag(bucket: Bucket) -> DAG:
    with DAG("b2cal_signoff_test", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=UTC)) as built:
        report = SignOffReportOperator(task_id="readiness_report", request_id=bucket.uid)
        sign_off = SignOffOperator(
            task_id="sign_off",
            request_id=bucket.uid,
            subject="Sign off",
            approve_task_ids=["running_update"],
            reject_task_ids=["handle_rejection"],
        )
        update = RunningUpdateOperator(task_id="running_update", request_id=bucket.uid)
        reject = RejectSignOffOperator(
            task_id="handle_rejection", request_id=bucket.uid, rerun_task_ids=["rerun_request"]
        )
        rerun_request = EmptyOperator(task_id="rerun_request")
        report >> sign_off >> [update, reject]
        reject >> rerun_request
    return built


def context(bucket: Bucket) -> dict[str, Any]:
    return {
        "run_id": "run-1",
        "params": dict(bucket.conf),
        "ti": (ti := FakeTaskInstance()),
        "task_instance": ti,
        "outlet_events": defaultdict(SimpleNamespace),
    }


def hitl_event(user: str, user_id: str, option: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "chosen_options": [option],
        "params_input": params or {},
        "responded_at": datetime.now(UTC),
        "responded_by_user": {"id": user_id, "name": user},
    }


def admit(bucket: Bucket, user: str = "manager", user_id: str = "2") -> None:
    """Record what the API server's guard records when it lets a manager respond."""
    with session_scope(bucket.db_url) as session:
        gate.record_response_attempt(
            session,
            allowed=True,
            user_id=user_id,
            user_name=user,
            roles=["Calibration Manager"],
            dag_id="b2cal_processing_request",
            run_id="run-1",
            task_id="sign_off",
            map_index=-1,
        )


def round_state(bucket: Bucket) -> str:
    with session_scope(bucket.db_url) as session:
        return gate.require_round(session, bucket.uid).state


def request_state(bucket: Bucket) -> str:
    with session_scope(bucket.db_url) as session:
        return store.get_request(session, bucket.uid).state


def actions(bucket: Bucket, action: str) -> list[AuditEntry]:
    with session_scope(bucket.db_url) as session:
        return list(
            session.scalars(
                select(AuditEntry)
                .where(AuditEntry.request_uid == bucket.uid, AuditEntry.action == action)
                .order_by(AuditEntry.id)
            )
        )


def running_iovs(bucket: Bucket) -> list[tuple[str, str]]:
    return sorted(
        (item.name, item.iov.as_text()) for item in bucket.conddb().global_tag_payloads(RUNNING_TAG)
    )


def open_question(bucket: Bucket, dag: DAG) -> dict[str, Any]:
    """Make the bucket ready, report on it and open the sign-off question; return the context."""
    bucket.make_ready()
    dag.get_task("readiness_report").execute(context(bucket))
    ctx = context(bucket)
    with pytest.raises(TaskAwaitingInput):
        dag.get_task("sign_off").execute(ctx)
    return ctx


def approve(bucket: Bucket, dag: DAG, ctx: dict[str, Any]) -> None:
    admit(bucket)
    with pytest.raises(DownstreamTasksSkipped) as skipped:
        dag.get_task("sign_off").execute_complete(ctx, hitl_event("manager", "2", "Approve"))
    assert list(skipped.value.tasks) == ["handle_rejection"]


OLD = [(name, "26,0,-1,-1") for name in PAYLOADS]
MERGED = sorted([(name, "26,0,26,99") for name in PAYLOADS] + [(name, "26,100,-1,-1") for name in PAYLOADS])


# Readiness report


def test_report_blocks_until_ready(bucket: Bucket, dag: DAG) -> None:
    bucket.upload(PAYLOADS[1:])
    with pytest.raises(AirflowException) as raised:
        dag.get_task("readiness_report").execute(context(bucket))
    message = str(raised.value)
    assert "not ready for sign-off" in message
    assert CATALOG["CDC Tracking"].expert_username in message
    assert f"Payload {PAYLOADS[0]} is produced by the bucket's calibrations but missing" in message
    assert round_state(bucket) == "blocked"
    assert request_state(bucket) == "signoff_blocked"

    bucket.upload()
    bucket.pass_checks()
    bucket.close_tickets()
    text = dag.get_task("readiness_report").execute(context(bucket))
    assert "**Every check passed.**" in text
    assert round_state(bucket) == "open"
    with session_scope(bucket.db_url) as session:
        rounds = [row.state for row in session.scalars(select(SignOffRound).order_by(SignOffRound.id))]
    assert rounds == ["invalidated", "open"]


def test_sign_off_opens_only_on_a_clean_report(bucket: Bucket, dag: DAG, questions: list) -> None:
    bucket.upload()
    with pytest.raises(AirflowException):
        dag.get_task("readiness_report").execute(context(bucket))
    with pytest.raises(
        AirflowFailException, match="is blocked, and the sign-off opens only on a clean report"
    ):
        dag.get_task("sign_off").execute(context(bucket))
    assert questions == []


def test_sign_off_shows_the_report(bucket: Bucket, dag: DAG, questions: list) -> None:
    open_question(bucket, dag)
    assert len(questions) == 1
    assert "## Sign-off of request prompt-e0026-b02" in questions[0]["body"]
    assert set(questions[0]["params"]) == {"reopen", "comment"}
    assert request_state(bucket) == "awaiting_signoff"


# Who may respond


@pytest.mark.parametrize(("user", "user_id"), [("expert", "3"), ("viewer", "4"), ("admin", "1")])
def test_answer_without_admission_is_refused(
    bucket: Bucket, dag: DAG, questions: list, user: str, user_id: str
) -> None:
    ctx = open_question(bucket, dag)
    with pytest.raises(TaskAwaitingInput):
        dag.get_task("sign_off").execute_complete(ctx, hitl_event(user, user_id, "Approve"))
    refused = actions(bucket, gate.ACTION_REFUSED)
    assert [entry.actor for entry in refused] == [user]
    assert "only a user with the Calibration Manager role" in refused[0].message
    assert round_state(bucket) == "open"
    assert len(questions) == 2
    assert questions[1]["body"].startswith("> **Rejected response:**")
    with pytest.raises(AirflowFailException, match="not approved"):
        dag.get_task("running_update").execute(context(bucket))
    assert running_iovs(bucket) == sorted(OLD)


def test_admission_for_another_user_does_not_count(bucket: Bucket, dag: DAG, questions: list) -> None:
    ctx = open_question(bucket, dag)
    admit(bucket, "manager", "2")
    with pytest.raises(TaskAwaitingInput):
        dag.get_task("sign_off").execute_complete(ctx, hitl_event("expert", "3", "Approve"))
    assert round_state(bucket) == "open"


# Approval and the running update


def test_approval_merges_and_emits_the_asset_event(bucket: Bucket, dag: DAG, questions: list) -> None:
    ctx = open_question(bucket, dag)
    approve(bucket, dag, ctx)
    assert ctx["ti"].xcoms["return_value"]["decision"] == "Approve"
    assert round_state(bucket) == "approved"
    [decision] = actions(bucket, gate.ACTION_DECISION)
    assert decision.actor == "manager"
    assert decision.detail["decision"] == "Approve"

    client = Jira(
        bucket.services.jira_url, username=CONFIG.jira_bot_username, password=CONFIG.jira_bot_password
    )
    parent_key = client.issue_create(
        fields={
            "project": {"key": CONFIG.jira_projects[0]},
            "issuetype": {"name": "Task"},
            "summary": f"Calibration of request {bucket.uid}",
            "labels": [parent_label(bucket.uid)],
        }
    )["key"]

    update_context = context(bucket)
    summary = dag.get_task("running_update").execute(update_context)
    assert summary == {"closed": len(PAYLOADS), "added": len(PAYLOADS), "already_added": 0}
    assert running_iovs(bucket) == MERGED
    assert bucket.conddb().tag_state(bucket.conddb().get_global_tag(bucket.staging)) == "VALIDATED"
    assert round_state(bucket) == "merged"
    assert request_state(bucket) == "merged"
    extra = update_context["outlet_events"][CALIBRATED_BUCKET].extra
    assert extra["request_id"] == bucket.uid
    assert extra["bucket"] == [26, 100, 26, 200]
    assert extra["payloads"] == sorted(PAYLOADS)
    assert [entry.message for entry in actions(bucket, "tag_state")] == [
        f"{bucket.staging}: OPEN -> TESTING",
        f"{bucket.staging}: TESTING -> VALIDATED",
    ]
    assert {entry.actor for entry in actions(bucket, "tag_state")} == {"manager"}
    assert bucket.tree().categories([parent_key]) == {parent_key: "done"}
    assert any(RUNNING_TAG in comment["body"] for comment in jira_comments(bucket, parent_key))


def test_approving_twice_merges_once(bucket: Bucket, dag: DAG, questions: list) -> None:
    ctx = open_question(bucket, dag)
    approve(bucket, dag, ctx)
    dag.get_task("running_update").execute(context(bucket))
    again = dag.get_task("running_update").execute(context(bucket))
    assert again == {"closed": 0, "added": 0, "already_added": len(PAYLOADS)}
    assert running_iovs(bucket) == MERGED
    with pytest.raises(AirflowFailException, match="is merged"):
        dag.get_task("sign_off").execute(context(bucket))
    with pytest.raises(AirflowFailException):
        dag.get_task("sign_off").execute_complete(ctx, hitl_event("manager", "2", "Approve"))


def test_staging_change_after_report_stops_the_merge(bucket: Bucket, dag: DAG, questions: list) -> None:
    ctx = open_question(bucket, dag)
    approve(bucket, dag, ctx)
    bucket.upload(["CDCBadBoards"])
    with pytest.raises(AirflowFailException, match="changed after the report"):
        dag.get_task("running_update").execute(context(bucket))
    assert round_state(bucket) == "invalidated"
    assert request_state(bucket) == "signoff_invalidated"
    assert bucket.conddb().tag_state(bucket.conddb().get_global_tag(bucket.staging)) == "OPEN"
    assert running_iovs(bucket) == sorted(OLD)


def test_staging_change_before_the_answer_closes_the_question(
    bucket: Bucket, dag: DAG, questions: list
) -> None:
    open_question(bucket, dag)
    bucket.upload(["CDCBadBoards"])
    with pytest.raises(AirflowFailException, match="changed after readiness report"):
        dag.get_task("sign_off").execute(context(bucket))
    assert round_state(bucket) == "invalidated"


def test_conditions_database_failing_midway_then_retry(bucket: Bucket, dag: DAG, questions: list) -> None:
    ctx = open_question(bucket, dag)
    approve(bucket, dag, ctx)
    tag_id = bucket.conddb().get_global_tag(RUNNING_TAG)["globalTagId"]
    bucket.services.conddb_state.schedule.add(
        status=500, method="POST", path_prefix=f"/v2/globalTagPayload/{tag_id},", after=2
    )
    with pytest.raises(ConditionsDBError):
        dag.get_task("running_update").execute(context(bucket))
    assert request_state(bucket) == "running_update_incomplete"
    assert round_state(bucket) == "merging"
    stored = bucket.conddb().global_tag_payloads(RUNNING_TAG)
    new = sorted(item.name for item in stored if item.iov.as_text() == "26,100,-1,-1")
    open_old = sorted(item.name for item in stored if item.iov.as_text() == "26,0,-1,-1")
    assert len(new) == 2
    assert len(open_old) == len(PAYLOADS) - 3
    summary = dag.get_task("running_update").execute(context(bucket))
    assert summary["already_added"] == 2
    assert running_iovs(bucket) == MERGED
    assert round_state(bucket) == "merged"


def test_unanswered_report_never_merges(bucket: Bucket, dag: DAG, questions: list) -> None:
    open_question(bucket, dag)
    with pytest.raises(AirflowFailException, match="is open, not approved"):
        dag.get_task("running_update").execute(context(bucket))
    assert running_iovs(bucket) == sorted(OLD)
    assert len(actions(bucket, "running_update_refused")) == 1


# Rejection


def test_rejection_reopens_tickets_and_prepares_the_rerun(bucket: Bucket, dag: DAG, questions: list) -> None:
    ctx = open_question(bucket, dag)
    admit(bucket)
    tracking_key = bucket.keys["CDC Tracking"]
    params = {"reopen": [tracking_key.lower()], "comment": "T0 drifts after run 150"}
    with pytest.raises(DownstreamTasksSkipped) as skipped:
        dag.get_task("sign_off").execute_complete(ctx, hitl_event("manager", "2", "Reject", params))
    assert list(skipped.value.tasks) == ["running_update"]
    assert round_state(bucket) == "rejected"
    assert request_state(bucket) == "rejected"

    conf = dag.get_task("handle_rejection").execute(context(bucket))
    assert conf["request_id"] == bucket.uid
    # CDC Tracking is a raw-phase calibration, so cDST production runs again too.
    assert conf["clean_start"] == [*CALIBRATIONS, CDST_JOB]
    assert bucket.conddb().global_tag_payloads(bucket.staging) == []
    categories = bucket.tree().categories(bucket.keys.values())
    assert all(categories[bucket.keys[name]] != "done" for name in CALIBRATIONS)
    comments = {name: [c["body"] for c in jira_comments(bucket, bucket.keys[name])] for name in CALIBRATIONS}
    assert any(
        "Rejected at sign-off by manager: T0 drifts after run 150" in text
        for text in comments["CDC Tracking"]
    )
    assert any("Reopened because CDC Tracking was rejected" in text for text in comments["CDC badwire"])
    with session_scope(bucket.db_url) as session:
        progress = {item.calibration: item for item in store.get_request(session, bucket.uid).progress}
        assert {name: item.attempt for name, item in progress.items()} == dict.fromkeys(CALIBRATIONS, 2)
        assert gate.load_checks(session, bucket.uid) == {}
    assert request_state(bucket) == "rerun_after_reject"

    dag.get_task("handle_rejection").execute(context(bucket))
    again = {name: len(jira_comments(bucket, bucket.keys[name])) for name in CALIBRATIONS}
    assert again == {name: len(comments[name]) for name in CALIBRATIONS}
    with session_scope(bucket.db_url) as session:
        assert {item.attempt for item in store.get_request(session, bucket.uid).progress} == {2}


ECL_TIME = "ECL crystal and crate time calibrations and validations"
KLM_STRIPS = "KLM strip efficiency"
#: The request of the cDST tests: two raw-phase calibrations (CDC badwire adds CDC Tracking), then
#: two cdst-phase calibrations that declare no dependency on either.
WITH_CDST = ["CDC Tracking", "CDC badwire", ECL_TIME, KLM_STRIPS]
CDST_PAYLOADS = [*CATALOG[ECL_TIME].produced_payloads, *CATALOG[KLM_STRIPS].produced_payloads]


def reject_with_cdst(bucket: Bucket, dag: DAG, reopen: list[str], comment: str) -> dict[str, Any]:
    """Make the request of the cDST tests ready, reject it naming ``reopen``, and handle the rejection."""
    bucket.upload([*PAYLOADS, *CDST_PAYLOADS])
    bucket.pass_checks(WITH_CDST)
    bucket.close_tickets(WITH_CDST)
    dag.get_task("readiness_report").execute(context(bucket))
    ctx = context(bucket)
    with pytest.raises(TaskAwaitingInput):
        dag.get_task("sign_off").execute(ctx)
    admit(bucket)
    params = {"reopen": reopen, "comment": comment}
    with pytest.raises(DownstreamTasksSkipped):
        dag.get_task("sign_off").execute_complete(ctx, hitl_event("manager", "2", "Reject", params))
    return dag.get_task("handle_rejection").execute(context(bucket))


def staging_names(bucket: Bucket) -> set[str]:
    return {item.name for item in bucket.conddb().global_tag_payloads(bucket.staging)}


def attempts(bucket: Bucket) -> tuple[dict[str, int], int]:
    """Return each calibration's job attempt and the request's cDST production attempt."""
    with session_scope(bucket.db_url) as session:
        request = store.get_request(session, bucket.uid)
        return {item.calibration: item.attempt for item in request.progress}, request.cdst_attempt


@pytest.mark.parametrize("bucket", [["CDC badwire", ECL_TIME, KLM_STRIPS]], indirect=True)
def test_raw_rejection_reruns_cdst_production(bucket: Bucket, dag: DAG, questions: list) -> None:
    conf = reject_with_cdst(bucket, dag, [bucket.keys["CDC badwire"]], "wires 12-14 masked by mistake")

    assert conf["request_id"] == bucket.uid
    assert conf["clean_start"] == ["CDC badwire", ECL_TIME, KLM_STRIPS, CDST_JOB]
    assert staging_names(bucket) == set(PAYLOADS)
    categories = bucket.tree().categories(bucket.keys.values())
    assert categories[bucket.keys["CDC Tracking"]] == "done"
    for name in ["CDC badwire", ECL_TIME, KLM_STRIPS]:
        assert categories[bucket.keys[name]] != "done", name
    for name in [ECL_TIME, KLM_STRIPS]:
        comments = [c["body"] for c in jira_comments(bucket, bucket.keys[name])]
        expected = (
            "cDSTs are produced again because CDC badwire was rejected at sign-off by manager: "
            "wires 12-14 masked by mistake"
        )
        assert any(expected in text for text in comments), comments
    assert jira_comments(bucket, bucket.keys["CDC Tracking"]) == []
    calibration_attempts, cdst_attempt = attempts(bucket)
    assert calibration_attempts == {"CDC Tracking": 1, "CDC badwire": 2, ECL_TIME: 2, KLM_STRIPS: 2}
    assert cdst_attempt == 2
    [change] = actions(bucket, store.ACTION_CDST_ATTEMPT)
    assert change.actor == "manager"
    assert change.detail["attempt"] == 2
    [rerun] = actions(bucket, "prepare_rerun")
    assert rerun.detail["rerun_cdst_production"] is True

    # A retry of the task gives cDST production no second new attempt and comments nowhere twice.
    before = {name: len(jira_comments(bucket, bucket.keys[name])) for name in WITH_CDST}
    again = dag.get_task("handle_rejection").execute(context(bucket))
    assert again["clean_start"] == conf["clean_start"]
    assert attempts(bucket) == (calibration_attempts, 2)
    assert {name: len(jira_comments(bucket, bucket.keys[name])) for name in WITH_CDST} == before


@pytest.mark.parametrize("bucket", [["CDC badwire", ECL_TIME, KLM_STRIPS]], indirect=True)
def test_cdst_rejection_keeps_the_cdsts(bucket: Bucket, dag: DAG, questions: list) -> None:
    conf = reject_with_cdst(bucket, dag, [KLM_STRIPS], "efficiency map is empty")

    assert conf["clean_start"] == [KLM_STRIPS]
    assert staging_names(bucket) == {*PAYLOADS, *CATALOG[ECL_TIME].produced_payloads}
    categories = bucket.tree().categories(bucket.keys.values())
    assert categories[bucket.keys[KLM_STRIPS]] != "done"
    assert categories[bucket.keys[ECL_TIME]] == "done"
    assert jira_comments(bucket, bucket.keys[ECL_TIME]) == []
    calibration_attempts, cdst_attempt = attempts(bucket)
    assert calibration_attempts == {"CDC Tracking": 1, "CDC badwire": 1, ECL_TIME: 1, KLM_STRIPS: 2}
    assert cdst_attempt == 1
    assert actions(bucket, store.ACTION_CDST_ATTEMPT) == []


def accept(bucket: Bucket, option: str, params: dict[str, Any] | None = None) -> None:
    """Record what the API server's guard records once Airflow has accepted a manager's response."""
    admit(bucket)
    with session_scope(bucket.db_url) as session:
        gate.record_accepted_response(
            session,
            user_id="2",
            user_name="manager",
            run_id="run-1",
            task_id="sign_off",
            chosen_options=[option],
            params_input=params or {},
            responded_at=datetime.now(UTC),
        )


def test_retry_applies_a_response_stored_before_it(bucket: Bucket, dag: DAG, questions: list) -> None:
    open_question(bucket, dag)
    params = {"reopen": ["CDC Tracking"], "comment": "T0 drifts after run 150"}
    accept(bucket, "Reject", params)
    # The resumed task failed before it applied the response; its retry starts from execute.
    retry = context(bucket)
    with pytest.raises(DownstreamTasksSkipped) as skipped:
        dag.get_task("sign_off").execute(retry)
    assert list(skipped.value.tasks) == ["running_update"]
    assert len(questions) == 1
    assert round_state(bucket) == "rejected"
    assert retry["ti"].xcoms["return_value"]["reopen"] == ["CDC Tracking"]
    [decision] = actions(bucket, gate.ACTION_DECISION)
    assert decision.message.endswith(": T0 drifts after run 150")


def test_retry_after_the_decision_routes_without_asking(bucket: Bucket, dag: DAG, questions: list) -> None:
    ctx = open_question(bucket, dag)
    approve(bucket, dag, ctx)
    retry = context(bucket)
    with pytest.raises(DownstreamTasksSkipped) as skipped:
        dag.get_task("sign_off").execute(retry)
    assert list(skipped.value.tasks) == ["handle_rejection"]
    assert retry["ti"].xcoms["return_value"]["decision"] == "Approve"
    assert len(questions) == 1
    assert len(actions(bucket, gate.ACTION_DECISION)) == 1


def test_invalid_stored_response_asked_again(bucket: Bucket, dag: DAG, questions: list) -> None:
    open_question(bucket, dag)
    accept(bucket, "Reject", {"reopen": ["CAL-999"], "comment": "wrong"})
    with pytest.raises(TaskAwaitingInput):
        dag.get_task("sign_off").execute(context(bucket))
    assert len(questions) == 2
    assert len(actions(bucket, gate.ACTION_REFUSED)) == 1
    assert round_state(bucket) == "open"


def test_response_older_than_the_round_is_not_applied(bucket: Bucket, dag: DAG, questions: list) -> None:
    bucket.make_ready()
    accept(bucket, "Approve")
    dag.get_task("readiness_report").execute(context(bucket))
    with pytest.raises(TaskAwaitingInput):
        dag.get_task("sign_off").execute(context(bucket))
    assert round_state(bucket) == "open"
    assert actions(bucket, gate.ACTION_DECISION) == []


def jira_comments(bucket: Bucket, key: str) -> list[dict[str, Any]]:
    client = Jira(
        bucket.services.jira_url, username=CONFIG.jira_bot_username, password=CONFIG.jira_bot_password
    )
    return list(client.issue_get_comments(key)["comments"])


def test_rejection_naming_an_unknown_ticket_is_asked_again(bucket: Bucket, dag: DAG, questions: list) -> None:
    ctx = open_question(bucket, dag)
    admit(bucket)
    params = {"reopen": ["CAL-999"], "comment": "wrong"}
    with pytest.raises(TaskAwaitingInput):
        dag.get_task("sign_off").execute_complete(ctx, hitl_event("manager", "2", "Reject", params))
    assert round_state(bucket) == "open"
    assert (
        "'CAL-999' is neither a ticket key nor a calibration"
        in actions(bucket, gate.ACTION_REFUSED)[0].message
    )


def test_rejection_without_a_comment_is_asked_again(bucket: Bucket, dag: DAG, questions: list) -> None:
    ctx = open_question(bucket, dag)
    admit(bucket)
    with pytest.raises(TaskAwaitingInput):
        dag.get_task("sign_off").execute_complete(
            ctx, hitl_event("manager", "2", "Reject", {"reopen": ["CDC badwire"], "comment": " "})
        )
    assert round_state(bucket) == "open"


def test_rejection_naming_nothing_reruns_nothing(bucket: Bucket, dag: DAG, questions: list) -> None:
    ctx = open_question(bucket, dag)
    admit(bucket)
    with pytest.raises(DownstreamTasksSkipped):
        dag.get_task("sign_off").execute_complete(ctx, hitl_event("manager", "2", "Reject"))
    bucket.conddb().set_global_tag_state(bucket.staging, "TESTING")
    with pytest.raises(DownstreamTasksSkipped) as skipped:
        dag.get_task("handle_rejection").execute(context(bucket))
    assert list(skipped.value.tasks) == ["rerun_request"]
    assert bucket.conddb().tag_state(bucket.conddb().get_global_tag(bucket.staging)) == "OPEN"
    assert len(bucket.conddb().global_tag_payloads(bucket.staging)) == len(PAYLOADS)


def add_other_request_round(bucket: Bucket) -> None:
    """Store another request with a readiness report, so the bucket's rounds get later row ids."""
    conf = {
        **bucket.conf,
        "request_id": "prompt-e0026-b01",
        "bucket": [26, 0, 26, 99],
        "staging_tag": "staging_e0026_b01",
    }
    with session_scope(bucket.db_url) as session:
        spec = parse_request(conf, store.load_catalog(session, CATALOG.release))
        store.save_request(session, spec, CATALOG)
        gate.add_round(
            session, spec.uid, clean=False, staging_fingerprint="0" * 64, report={}, report_text="blocked"
        )


def messages(bucket: Bucket, action: str) -> list[str]:
    return [entry.message for entry in actions(bucket, action)]


def test_rounds_are_numbered_per_request(bucket: Bucket, dag: DAG, questions: list) -> None:
    add_other_request_round(bucket)
    ctx = open_question(bucket, dag)
    admit(bucket)
    params = {"reopen": [bucket.keys["CDC Tracking"]], "comment": "T0 drifts"}
    with pytest.raises(DownstreamTasksSkipped):
        dag.get_task("sign_off").execute_complete(ctx, hitl_event("manager", "2", "Reject", params))
    dag.get_task("handle_rejection").execute(context(bucket))
    # The rejection emptied the staging tag, so the next report is not clean.
    with pytest.raises(AirflowException, match="not ready for sign-off"):
        dag.get_task("readiness_report").execute(context(bucket))

    assert messages(bucket, gate.ACTION_REPORT) == ["round 1: clean", "round 2: not clean"]
    assert messages(bucket, gate.ACTION_DECISION) == ["Reject round 1: T0 drifts"]
    assert "round 1: open -> rejected" in messages(bucket, gate.ACTION_ROUND_STATE)
    [rerun] = messages(bucket, "prepare_rerun")
    assert rerun.endswith("after the rejection of round 1")
    with session_scope(bucket.db_url) as session:
        first, second = session.scalars(
            select(SignOffRound)
            .where(SignOffRound.request_id == store.get_request(session, bucket.uid).id)
            .order_by(SignOffRound.id)
        )
        assert (gate.round_number(session, first), gate.round_number(session, second)) == (1, 2)
        # Audit details keep the row id, which the idempotency checks of a retry match on.
        assert actions(bucket, gate.ACTION_DECISION)[0].detail["round_id"] == first.id
    assert first.id == 2, "the other request's round took row id 1"


# Helpers


def test_resolve_targets_accepts_keys_and_names() -> None:
    keys = {"CDC Tracking": "CAL-1", "CDC badwire": "CAL-2"}
    assert resolve_targets(["cal-2", "CDC Tracking", " ", "CAL-2"], keys, CALIBRATIONS) == [
        "CDC badwire",
        "CDC Tracking",
    ]
    with pytest.raises(ValueError, match="'Nope' is neither"):
        resolve_targets(["Nope"], keys, CALIBRATIONS)


def test_resolve_targets_names_every_unknown_item() -> None:
    keys = {"CDC Tracking": "CAL-1", "CDC badwire": "CAL-2"}
    with pytest.raises(ValueError, match="'Nope', 'cal-3' is neither") as raised:
        resolve_targets(["Nope", "CAL-1", "cal-3"], keys, CALIBRATIONS)
    assert "use one of the ticket keys CAL-1, CAL-2" in str(raised.value)
