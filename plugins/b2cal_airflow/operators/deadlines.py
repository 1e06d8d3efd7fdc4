"""Remind experts and managers on Jira when a ticket or a sign-off waits past its deadline."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator, Context, Variable
from airflow.sdk.bases.notifier import BaseNotifier

from b2cal.db import gate, store
from b2cal.db.engine import session_scope, upgrade
from b2cal.deadlines import TICKET, DeadlineSettings, Reminder, due_reminders
from b2cal_airflow.hooks.b2cal import PluginDatabaseHook, TicketHook

#: The Airflow Variable with the deadlines, a JSON object such as
#: ``{"ticket_hours": 72, "sign_off_hours": 24, "repeat_hours": 24}``.
DEADLINES_VARIABLE = "b2cal_deadlines"


class DeadlineReminderOperator(BaseOperator):
    """Send the reminders that are due: a Jira comment for the owner that mentions the manager too.

    A ticket's reminder goes on that ticket. The sign-off itself lives in Airflow, so its reminder
    goes on the first ticket of the request, where the mention notifies the manager. Every reminder
    is audited, and each notifier is also called with the reminder in its context under
    ``b2cal_reminder`` (keys ``request_id``, ``kind``, ``owner``, ``manager``, ``calibration``,
    ``text``), for example to send it by e-mail.

    :param deadlines_variable: the Airflow Variable with the deadlines, read when the task runs.
    :param notifiers: Airflow notifiers to call once per reminder.
    :param jira_conn_id: the Jira connection.
    :param db_conn_id: the plugin database connection.
    """

    def __init__(
        self,
        *,
        deadlines_variable: str = DEADLINES_VARIABLE,
        notifiers: Sequence[BaseNotifier] = (),
        jira_conn_id: str = "b2cal_jira",
        db_conn_id: str = "b2cal_db",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.deadlines_variable = deadlines_variable
        self.notifiers = list(notifiers)
        self.jira_conn_id = jira_conn_id
        self.db_conn_id = db_conn_id

    @cached_property
    def db_url(self) -> str:
        """The plugin database URL."""
        return PluginDatabaseHook(self.db_conn_id).get_url()

    def settings(self) -> DeadlineSettings:
        """Read the deadlines from the Airflow Variable; the defaults apply when it is not set."""
        raw = Variable.get(self.deadlines_variable, default=None)
        if raw in (None, ""):
            return DeadlineSettings()
        try:
            data = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            raise ValueError(
                f"Airflow Variable {self.deadlines_variable!r} is not JSON: set it to an object such as "
                '{"ticket_hours": 72, "sign_off_hours": 24, "repeat_hours": 24}'
            ) from None
        return DeadlineSettings.from_mapping(data)

    def execute(self, context: Context) -> list[dict[str, Any]]:
        settings = self.settings()
        upgrade(self.db_url)
        with session_scope(self.db_url) as session:
            catalogs = {name: store.load_catalog(session, name) for name in store.list_releases(session)}
            waits = gate.list_waits(session, catalogs)
            sent = gate.last_reminders(session)
            first_tickets = {}
            for wait in waits:
                if wait.kind != TICKET:
                    progress = store.get_request(session, wait.request_uid).progress
                    first_tickets[wait.request_uid] = next(
                        (item.ticket_key for item in progress if item.ticket_key), None
                    )
        due = due_reminders(waits, settings, datetime.now(UTC), sent)
        self.log.info("%d waits, %d reminders due (%s)", len(waits), len(due), settings)
        tree = TicketHook(self.jira_conn_id).get_tree() if due else None
        done = []
        for reminder in due:
            wait = reminder.wait
            key = wait.ticket_key if wait.kind == TICKET else first_tickets.get(wait.request_uid)
            text = reminder.jira_text()
            if key and tree is not None:
                tree.comment(key, text)
            self._notify(context, reminder, text)
            with session_scope(self.db_url) as session:
                gate.record_reminder(session, wait, text, sent_to=key or "notifiers only")
            self.log.info(
                "Reminded %s about the %s of request %s on %s", wait.owner, wait.kind, wait.request_uid, key
            )
            done.append({"request_id": wait.request_uid, "kind": wait.kind, "ticket": key})
        return done

    def _notify(self, context: Context, reminder: Reminder, text: str) -> None:
        if not self.notifiers:
            return
        details = {
            "request_id": reminder.wait.request_uid,
            "kind": reminder.wait.kind,
            "owner": reminder.wait.owner,
            "manager": reminder.wait.manager,
            "calibration": reminder.wait.calibration,
            "text": text,
        }
        for notifier in self.notifiers:
            notifier({**context, "b2cal_reminder": details})  # type: ignore[arg-type]
