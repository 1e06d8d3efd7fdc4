"""Remind the people the calibration loop waits for, when they take longer than agreed.

Every hour the run looks for experts' tickets whose payloads have waited past their deadline and
for sign-offs waiting past theirs, and comments on Jira to remind the expert or the manager; the
manager is mentioned in every reminder. The deadlines come from the Airflow Variable
``b2cal_deadlines`` (``{"ticket_hours": 72, "sign_off_hours": 24, "repeat_hours": 24}`` by default),
read when the task runs. A reminder is repeated every ``repeat_hours`` while the wait lasts.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG

from b2cal_airflow.operators.deadlines import DeadlineReminderOperator

with DAG(
    dag_id="b2cal_deadline_reminders",
    description="Remind experts and managers on Jira when tickets or sign-offs wait past their deadline",
    schedule="@hourly",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,
    tags=["b2cal", "calibration"],
    doc_md=__doc__,
) as dag:
    DeadlineReminderOperator(task_id="send_reminders")
