"""Trigger that waits until Jira tickets reach the status category done."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from b2cal.ticket_watch import TicketWaitError, TicketWatcher


class JiraTicketsDoneTrigger(BaseTrigger):
    """Wait until every ticket in ``keys`` is in the status category done, without a worker slot.

    "Done" is the status category, not a status name, because workflows name their final status
    differently ("Done", "Closed", "Resolved"). All triggers of one request and connection in a
    triggerer share one :class:`~b2cal.ticket_watch.TicketWatcher`, which searches Jira once per
    poll for all their tickets, and searches at once when the webhook receiver recorded an event
    for the request.

    :param jira_conn_id: the Jira connection.
    :param keys: the ticket keys to watch.
    :param poll_interval: seconds between two searches.
    :param request_id: the processing request the tickets belong to; triggers of the same request
        share a watcher, and its webhook events wake that watcher. Without it the triggers of a
        connection share a watcher that only polls.
    :param db_conn_id: the plugin database connection, where the webhook receiver records events.
    :param wake_interval: seconds between two looks for a new webhook event.
    """

    def __init__(
        self,
        jira_conn_id: str,
        keys: list[str],
        poll_interval: float = 30.0,
        request_id: str | None = None,
        db_conn_id: str = "b2cal_db",
        wake_interval: float = 0.5,
    ) -> None:
        super().__init__()
        self.jira_conn_id = jira_conn_id
        self.keys = list(keys)
        self.poll_interval = poll_interval
        self.request_id = request_id
        self.db_conn_id = db_conn_id
        self.wake_interval = wake_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "jira_conn_id": self.jira_conn_id,
                "keys": self.keys,
                "poll_interval": self.poll_interval,
                "request_id": self.request_id,
                "db_conn_id": self.db_conn_id,
                "wake_interval": self.wake_interval,
            },
        )

    @property
    def watcher_key(self) -> str:
        """The key under which triggers share a watcher: connection and request."""
        return f"{self.jira_conn_id}/{self.request_id or '*'}"

    def make_watcher(self) -> TicketWatcher:
        """Build the watcher of this trigger's connection and request."""
        return TicketWatcher(
            self.watcher_key,
            _JiraSearch(self.jira_conn_id),
            poll_interval=self.poll_interval,
            events=_EventLookup(self.db_conn_id, self.request_id) if self.request_id else None,
            wake_interval=self.wake_interval,
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        watcher = TicketWatcher.shared(self.watcher_key, self.make_watcher)
        self.log.info(
            "Waiting for %s with watcher %s (%d waiting)", self.keys, self.watcher_key, watcher.waiting
        )
        try:
            categories = await watcher.wait(self.keys)
        except TicketWaitError as exc:
            yield TriggerEvent({"status": "error", "reason": str(exc), "keys": self.keys})
            return
        self.log.info("Tickets %s are done", self.keys)
        yield TriggerEvent({"status": "done", "keys": self.keys, "categories": categories})


class _JiraSearch:
    """Status categories of tickets through the connection's ticket tree, built once per watcher."""

    def __init__(self, jira_conn_id: str) -> None:
        self.jira_conn_id = jira_conn_id
        self._tree: Any = None

    def __call__(self, keys: list[str]) -> dict[str, str]:
        from b2cal_airflow.hooks.jira import TicketHook

        if self._tree is None:
            self._tree = TicketHook(self.jira_conn_id).get_tree()
        try:
            return dict(self._tree.categories(keys))
        except Exception:
            self._tree = None  # a new client after a failure, in case the connection changed
            raise


class _EventLookup:
    """Newest webhook event id of a request, read from the plugin database."""

    def __init__(self, db_conn_id: str, request_id: str) -> None:
        self.db_conn_id = db_conn_id
        self.request_id = request_id
        self._url: str | None = None

    def __call__(self) -> int:
        from b2cal.db.engine import session_scope
        from b2cal.ticket_events import latest_issue_event
        from b2cal_airflow.hooks.b2cal import PluginDatabaseHook

        if self._url is None:
            self._url = PluginDatabaseHook(self.db_conn_id).get_url()
        with session_scope(self._url) as session:
            return latest_issue_event(session, self.request_id)
