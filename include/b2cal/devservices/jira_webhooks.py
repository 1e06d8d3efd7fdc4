"""Deliver the development Jira's admin webhooks to receivers on the loopback interface.

A webhook is registered as Jira admin webhooks are, with ``POST /rest/webhooks/1.0/webhook``
``{"name", "url", "events", "filters": {"issue-related-events-section": "<JQL>"}, "secret"}``. For
each matching issue event a background thread POSTs the JSON payload to the URL. With a secret the
body is signed as Jira Cloud signs it: ``X-Hub-Signature: sha256=<hex HMAC-SHA256 of the body>``.
Every delivery carries a unique ``X-Atlassian-Webhook-Identifier``.

Real deliveries can be lost, so :meth:`WebhookDispatcher.drop_next` discards the next deliveries on
purpose. URLs that are not on a loopback address are rejected: the service sends nothing elsewhere.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from b2cal.devservices.jira_model import Issue, JiraError
from b2cal.devservices.jira_store import JiraState
from b2cal.devservices.jql import JqlError, Query, parse_jql

logger = logging.getLogger(__name__)

WEBHOOK_PATH = "/rest/webhooks/1.0/webhook"
EVENTS = ("jira:issue_created", "jira:issue_updated")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DELIVERY_TIMEOUT_SECONDS = 5.0
FILTER_KEY = "issue-related-events-section"


@dataclass
class Webhook:
    """A registered webhook. ``secret`` is never rendered."""

    id: int
    name: str
    url: str
    events: tuple[str, ...]
    jql: str
    query: Query
    secret: str | None = field(default=None, repr=False)
    enabled: bool = True


@dataclass(frozen=True)
class Delivery:
    """One delivery attempt: the HTTP status, or the error when no response arrived."""

    webhook_id: int
    event: str
    issue_key: str
    identifier: str
    sent_at: float
    status: int | None
    error: str | None = None
    dropped: bool = False


def signature(secret: str, body: bytes) -> str:
    """Return the ``X-Hub-Signature`` header value of a body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookDispatcher:
    """Register webhooks and deliver issue events to them from one background thread."""

    def __init__(self, state: JiraState) -> None:
        self.state = state
        self._lock = threading.Lock()
        self._hooks: dict[int, Webhook] = {}
        self._next_id = 1
        self._drop = 0
        self._queue: queue.Queue[tuple[Webhook, str, str, bytes] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._session = requests.Session()
        self.deliveries: list[Delivery] = []
        state.add_listener(self._on_event)

    # Registration

    def register(self, body: Any) -> Webhook:
        """Register a webhook from a ``POST /rest/webhooks/1.0/webhook`` body."""
        if not isinstance(body, dict):
            raise JiraError(400, ["The request body must be a JSON object."])
        url = str(body.get("url") or "")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or parts.hostname not in LOOPBACK_HOSTS:
            raise JiraError(
                400,
                [],
                {
                    "url": f"URL {url!r} is not allowed: the development Jira delivers only to "
                    "http(s) loopback URLs."
                },
            )
        events = tuple(body.get("events") or ())
        unknown = [event for event in events if event not in EVENTS]
        if not events or unknown:
            raise JiraError(400, [], {"events": f"events must be a non-empty subset of {list(EVENTS)}."})
        jql = str((body.get("filters") or {}).get(FILTER_KEY) or "")
        try:
            query = parse_jql(jql)
        except JqlError as error:
            raise JiraError(400, [], {"filters": str(error)}) from None
        secret = body.get("secret")
        with self._lock:
            hook = Webhook(
                id=self._next_id,
                name=str(body.get("name") or f"webhook {self._next_id}"),
                url=url,
                events=events,
                jql=jql,
                query=query,
                secret=str(secret) if secret else None,
                enabled=bool(body.get("enabled", True)),
            )
            self._hooks[hook.id] = hook
            self._next_id += 1
        logger.info("Registered webhook %d %r for %s to %s", hook.id, hook.name, list(events), url)
        return hook

    def get(self, webhook_id: int) -> Webhook:
        """Return a webhook; raise a 404 :class:`JiraError` when there is none with this id."""
        with self._lock:
            if webhook_id not in self._hooks:
                raise JiraError(404, [f"Webhook {webhook_id} does not exist."])
            return self._hooks[webhook_id]

    def hooks(self) -> list[Webhook]:
        """Return the registered webhooks."""
        with self._lock:
            return list(self._hooks.values())

    def delete(self, webhook_id: int) -> None:
        """Remove a webhook."""
        with self._lock:
            if self._hooks.pop(webhook_id, None) is None:
                raise JiraError(404, [f"Webhook {webhook_id} does not exist."])

    def clear(self) -> None:
        """Remove every webhook, forget the deliveries and stop dropping."""
        with self._lock:
            self._hooks.clear()
            self.deliveries.clear()
            self._drop = 0

    def export_state(self) -> dict[str, Any]:
        """Return the registered webhooks, with their secrets, and the next id as JSON-compatible data."""
        with self._lock:
            hooks = [
                {
                    "id": hook.id,
                    "name": hook.name,
                    "url": hook.url,
                    "events": list(hook.events),
                    "jql": hook.jql,
                    "secret": hook.secret,
                    "enabled": hook.enabled,
                }
                for hook in self._hooks.values()
            ]
            return {"webhooks": hooks, "next_id": self._next_id}

    def restore_state(self, data: dict[str, Any]) -> None:
        """Replace the registered webhooks with what :meth:`export_state` saved.

        :raises KeyError, TypeError, ValueError: when the data is incomplete or a filter is invalid JQL
        """
        hooks = {}
        for item in data["webhooks"]:
            hook = Webhook(
                id=int(item["id"]),
                name=str(item["name"]),
                url=str(item["url"]),
                events=tuple(str(event) for event in item["events"]),
                jql=str(item["jql"]),
                query=parse_jql(str(item["jql"])),
                secret=item["secret"],
                enabled=bool(item["enabled"]),
            )
            hooks[hook.id] = hook
        with self._lock:
            self._hooks = hooks
            self._next_id = int(data["next_id"])

    def drop_next(self, count: int) -> None:
        """Lose the next ``count`` deliveries, as a network or a busy receiver can."""
        if count < 0:
            raise ValueError(f"count is {count}, expected 0 or more")
        with self._lock:
            self._drop += count

    def json(self, hook: Webhook, base_url: str) -> dict[str, Any]:
        """Return the REST representation of a webhook, without its secret."""
        return {
            "self": f"{base_url}{WEBHOOK_PATH}/{hook.id}",
            "name": hook.name,
            "url": hook.url,
            "events": list(hook.events),
            "filters": {FILTER_KEY: hook.jql},
            "excludeBody": False,
            "enabled": hook.enabled,
        }

    # Delivery

    def _on_event(self, event: str, issue: Issue, items: list[dict[str, Any]], user: str) -> None:
        targets = [
            hook
            for hook in self.hooks()
            if hook.enabled and event in hook.events and self.state.issue_matches(hook.query, issue)
        ]
        if not targets:
            return
        view = self.state.view(self.state.base_url or "http://127.0.0.1")
        payload: dict[str, Any] = {
            "timestamp": int(time.time() * 1000),
            "webhookEvent": event,
            "issue_event_type_name": "issue_created" if event == "jira:issue_created" else "issue_generic",
            "user": self.state.user_json(user, view) if self.state.has_user(user) else None,
            "issue": self.state.issue_json(issue, view),
        }
        if items:
            payload["changelog"] = {"id": str(uuid.uuid4().int % 10**8), "items": items}
        body = json.dumps(payload).encode()
        for hook in targets:
            self._queue.put((hook, event, issue.key, body))
        self._ensure_thread()

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._work, name="b2cal-dev-jira-webhooks", daemon=True
                )
                self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            hook, event, key, body = item
            self._deliver(hook, event, key, body)

    def _deliver(self, hook: Webhook, event: str, key: str, body: bytes) -> None:
        identifier = str(uuid.uuid4())
        with self._lock:
            dropped = self._drop > 0
            if dropped:
                self._drop -= 1
        if dropped:
            logger.warning(
                "Dropped delivery %s of %s on %s to webhook %d on purpose", identifier, event, key, hook.id
            )
            self.deliveries.append(Delivery(hook.id, event, key, identifier, time.time(), None, None, True))
            return
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Atlassian Webhook HTTP Client",
            "X-Atlassian-Webhook-Identifier": identifier,
        }
        if hook.secret:
            headers["X-Hub-Signature"] = signature(hook.secret, body)
        sent_at = time.time()
        try:
            response = self._session.post(
                hook.url, data=body, headers=headers, timeout=DELIVERY_TIMEOUT_SECONDS
            )
        except requests.RequestException as exc:
            logger.warning("Delivery of %s on %s to %s failed: %s", event, key, hook.url, exc)
            self.deliveries.append(Delivery(hook.id, event, key, identifier, sent_at, None, str(exc)))
            return
        level = logging.INFO if response.status_code < 300 else logging.WARNING
        logger.log(
            level, "Delivered %s on %s to webhook %d: HTTP %d", event, key, hook.id, response.status_code
        )
        self.deliveries.append(Delivery(hook.id, event, key, identifier, sent_at, response.status_code))

    def stop(self) -> None:
        """Stop the delivery thread after the deliveries already queued."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(DELIVERY_TIMEOUT_SECONDS * 2)
