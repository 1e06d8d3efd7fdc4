"""Wait for tickets with one shared watcher per request: polls, webhook wake-ups, reopen, errors."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import uvicorn
from airflow.triggers.base import TriggerEvent
from fastapi import FastAPI
from jira_support import DevJira, make_plugin_db
from jira_support import create_tickets as create_request_tickets

from b2cal.catalog import Catalog
from b2cal.db.engine import session_scope
from b2cal.ticket_events import latest_issue_event
from b2cal.ticket_watch import TicketWaitError, TicketWatcher
from b2cal_airflow.triggers.jira import JiraTicketsDoneTrigger
from b2cal_airflow.www import webhooks

SECRET = "test-webhook-secret"
REQUEST = "prompt-e0026-b01"


@pytest.fixture(autouse=True)
def fresh_watchers() -> Iterator[None]:
    TicketWatcher.forget_all()
    yield
    TicketWatcher.forget_all()


def create_tickets(dev_jira: DevJira, catalog: Catalog, names: list[str]) -> dict[str, str]:
    return create_request_tickets(dev_jira, catalog, names, REQUEST)


def search_count(dev_jira: DevJira) -> int:
    return dev_jira.stats().get("POST /rest/api/2/search", 0)


@pytest.fixture
def jira_connection(dev_jira: DevJira, monkeypatch: pytest.MonkeyPatch) -> str:
    connection = {
        "conn_type": "jira",
        "host": dev_jira.url,
        "login": dev_jira.config.jira_bot_username,
        "password": dev_jira.config.jira_bot_password,
        "extra": {"project": "CAL", "webhook_secret": SECRET},
    }
    monkeypatch.setenv("AIRFLOW_CONN_B2CAL_JIRA", json.dumps(connection))
    webhooks._secret_cache.clear()
    return "b2cal_jira"


def test_trigger_serialisation_round_trip() -> None:
    trigger = JiraTicketsDoneTrigger(
        "b2cal_jira", ["CAL-1", "CAL-2"], 5.0, request_id=REQUEST, db_conn_id="b2cal_db", wake_interval=0.25
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "b2cal_airflow.triggers.jira.JiraTicketsDoneTrigger"
    rebuilt = JiraTicketsDoneTrigger(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert json.loads(json.dumps(kwargs)) == kwargs
    # The positional form of earlier versions still works.
    assert JiraTicketsDoneTrigger("b2cal_jira", ["CAL-1"], 30.0).request_id is None


def test_one_search_per_poll_for_all_waiters(dev_jira: DevJira, catalog: Catalog) -> None:
    keys = create_tickets(dev_jira, catalog, catalog.names)
    tree = dev_jira.tree()
    watcher = TicketWatcher("test", tree.categories, poll_interval=0.3, min_wait=0.0)
    before = search_count(dev_jira)

    async def scenario() -> dict[str, float]:
        released: dict[str, float] = {}

        async def wait(name: str) -> None:
            await watcher.wait([keys[name]])
            released[name] = time.monotonic()

        tasks = [asyncio.create_task(wait(name)) for name in catalog.names]
        await asyncio.sleep(1.0)
        polls_while_open = watcher.stats.searches
        for name in catalog.names[:5]:
            await asyncio.to_thread(tree.transition_to, keys[name])
        deadline = time.monotonic() + 10
        while len(released) < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # room for a wrong release of an open ticket to show
        assert sorted(released) == sorted(catalog.names[:5])
        assert watcher.waiting == len(catalog.names) - 5
        for name in catalog.names[5:]:
            await asyncio.to_thread(tree.transition_to, keys[name])
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        return {"polls_while_open": polls_while_open}

    result = asyncio.run(scenario())
    # One search per 0.3 s interval at the most: 4 in the first second, fewer on a loaded machine.
    assert 1 <= result["polls_while_open"] <= 4
    # One search per poll, plus one per transition_to (it reads the category first).
    assert search_count(dev_jira) - before == watcher.stats.searches + len(catalog.names)
    assert max(watcher.stats.searched_keys) == len(catalog.names)
    assert watcher.stats.released == len(catalog.names)


def test_reopened_ticket_keeps_its_waiter(dev_jira: DevJira, catalog: Catalog) -> None:
    keys = create_tickets(dev_jira, catalog, ["CDC Tracking", "CDC badwire", "CDC Sigma fudge factor"])
    tree = dev_jira.tree()
    blockers = [keys["CDC Tracking"], keys["CDC badwire"]]
    watcher = TicketWatcher("test", tree.categories, poll_interval=0.2, min_wait=0.0)

    async def scenario() -> None:
        task = asyncio.create_task(watcher.wait(blockers))
        await asyncio.to_thread(tree.transition_to, blockers[0])
        await asyncio.to_thread(tree.transition_to, blockers[0], "new")  # reopened before the other closes
        await asyncio.to_thread(tree.transition_to, blockers[1])
        await asyncio.sleep(0.8)
        assert not task.done()
        await asyncio.to_thread(tree.transition_to, blockers[0])
        assert await asyncio.wait_for(task, 3) == dict.fromkeys(blockers, "done")

    asyncio.run(scenario())


def test_missing_ticket_fails_its_waiter_only(dev_jira: DevJira, catalog: Catalog) -> None:
    keys = create_tickets(dev_jira, catalog, ["CDC Tracking"])
    tree = dev_jira.tree()
    watcher = TicketWatcher("test", tree.categories, poll_interval=0.1, min_wait=0.0, missing_polls=2)

    async def scenario() -> None:
        good = asyncio.create_task(watcher.wait([keys["CDC Tracking"]]))
        with pytest.raises(TicketWaitError, match="CAL-77"):
            await asyncio.wait_for(watcher.wait(["CAL-77"]), 3)
        assert not good.done()
        await asyncio.to_thread(tree.transition_to, keys["CDC Tracking"])
        await asyncio.wait_for(good, 3)

    asyncio.run(scenario())


def test_unreachable_jira_gives_an_error_after_retries() -> None:
    def failing(keys: list[str]) -> dict[str, str]:
        raise ConnectionError("Jira is down")

    watcher = TicketWatcher("test", failing, poll_interval=0.05, min_wait=0.0, max_failures=3)
    with pytest.raises(TicketWaitError, match="unreachable after 3"):
        asyncio.run(asyncio.wait_for(watcher.wait(["CAL-1"]), 5))


def test_event_wakes_the_watcher_before_its_poll(dev_jira: DevJira, catalog: Catalog) -> None:
    keys = create_tickets(dev_jira, catalog, ["CDC Tracking"])
    key = keys["CDC Tracking"]
    tree = dev_jira.tree()
    event_ids = [0]
    watcher = TicketWatcher(
        "test",
        tree.categories,
        poll_interval=60.0,
        events=lambda: event_ids[0],
        wake_interval=0.05,
        min_wait=0.0,
    )

    async def scenario() -> float:
        task = asyncio.create_task(watcher.wait([key]))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(tree.transition_to, key)
        closed = time.monotonic()
        event_ids[0] = 1
        await asyncio.wait_for(task, 30)
        return time.monotonic() - closed

    # The poll interval is 60 s, so a release within seconds comes from the event.
    assert asyncio.run(scenario()) < 5
    assert watcher.stats.wakeups == 1
    assert watcher.stats.searches == 1


def run_triggers(triggers: list[JiraTicketsDoneTrigger], timeout: float) -> list[TriggerEvent]:
    async def first_event(trigger: JiraTicketsDoneTrigger) -> TriggerEvent:
        async for event in trigger.run():
            return event
        raise AssertionError("the trigger ended without an event")

    async def all_events() -> list[TriggerEvent]:
        return list(
            await asyncio.wait_for(asyncio.gather(*(first_event(item) for item in triggers)), timeout)
        )

    return asyncio.run(all_events())


def test_triggers_of_a_request_share_one_search(
    dev_jira: DevJira, catalog: Catalog, jira_connection: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = create_tickets(dev_jira, catalog, catalog.names)
    url = make_plugin_db(tmp_path / "b2cal.db", REQUEST, keys)
    monkeypatch.setenv("AIRFLOW_CONN_B2CAL_DB", json.dumps({"conn_type": "generic", "extra": {"url": url}}))
    for key in keys.values():
        dev_jira.transition(key, "done")
    before = search_count(dev_jira)
    triggers = [
        JiraTicketsDoneTrigger(jira_connection, [key], 0.5, request_id=REQUEST, wake_interval=0.2)
        for key in keys.values()
    ]
    events = run_triggers(triggers, timeout=20)
    assert [event.payload["status"] for event in events] == ["done"] * len(keys)
    assert [event.payload["keys"] for event in events] == [[key] for key in keys.values()]
    assert search_count(dev_jira) - before <= 3  # 28 triggers, one search per poll


class Receiver:
    """The plugin's webhook router served by uvicorn on a free loopback port."""

    def __init__(self, db_url: str, secret: str) -> None:
        app = FastAPI()
        app.include_router(webhooks.router, prefix="/b2cal")
        app.state.jira_webhook_secret = lambda: secret
        app.state.b2cal_settings = type("Settings", (), {"db_url": staticmethod(lambda: db_url)})()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the webhook receiver did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/b2cal/webhooks/jira"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def register_webhook(dev_jira: DevJira, url: str, secret: str) -> None:
    response = requests.post(
        f"{dev_jira.url}/rest/webhooks/1.0/webhook",
        json={"name": "b2cal", "url": url, "events": ["jira:issue_updated"], "secret": secret},
        auth=(dev_jira.config.jira_bot_username, dev_jira.config.jira_bot_password),
        timeout=10,
    )
    response.raise_for_status()


def test_webhook_releases_the_trigger_at_once(
    dev_jira: DevJira, catalog: Catalog, jira_connection: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = create_tickets(dev_jira, catalog, ["CDC Tracking", "CDC badwire"])
    url = make_plugin_db(tmp_path / "b2cal.db", REQUEST, keys)
    monkeypatch.setenv("AIRFLOW_CONN_B2CAL_DB", json.dumps({"conn_type": "generic", "extra": {"url": url}}))
    with Receiver(url, SECRET) as receiver_url:
        register_webhook(dev_jira, receiver_url, SECRET)
        trigger = JiraTicketsDoneTrigger(jira_connection, [keys["CDC Tracking"]], 60.0, request_id=REQUEST)

        async def scenario() -> tuple[TriggerEvent, float]:
            task = asyncio.create_task(anext(aiter(trigger.run())))
            await asyncio.sleep(1.5)
            await asyncio.to_thread(dev_jira.transition, keys["CDC Tracking"], "done")
            closed = time.monotonic()
            event = await asyncio.wait_for(task, 10)
            return event, time.monotonic() - closed

        event, latency = asyncio.run(scenario())
    assert event.payload["status"] == "done"
    assert latency < 20  # the poll interval is 60 s, so only the webhook can explain this
    with session_scope(url) as session:
        assert latest_issue_event(session, REQUEST) > 0


def test_ticket_closed_while_nothing_runs_is_found_on_restart(
    dev_jira: DevJira, catalog: Catalog, jira_connection: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ticket closes while the scheduler and triggerer are down and the webhook delivery is lost.

    Airflow keeps the deferred task's trigger in its database; after the restart the triggerer
    builds it again from its serialised form, and its first poll releases it.
    """
    keys = create_tickets(dev_jira, catalog, ["CDC Tracking"])
    key = keys["CDC Tracking"]
    url = make_plugin_db(tmp_path / "b2cal.db", REQUEST, keys)
    monkeypatch.setenv("AIRFLOW_CONN_B2CAL_DB", json.dumps({"conn_type": "generic", "extra": {"url": url}}))
    stored = JiraTicketsDoneTrigger(jira_connection, [key], 0.5, request_id=REQUEST).serialize()
    requests.post(f"{dev_jira.url}/_dev/webhooks/drop", json={"count": 1}, timeout=10).raise_for_status()
    register_webhook(dev_jira, "http://127.0.0.1:9/unreachable", SECRET)
    dev_jira.transition(key, "done")

    restarted = JiraTicketsDoneTrigger(**stored[1])
    started = time.monotonic()
    [event] = run_triggers([restarted], timeout=10)
    assert event.payload == {"status": "done", "keys": [key], "categories": {key: "done"}}
    assert time.monotonic() - started < 8
    deliveries = requests.get(f"{dev_jira.url}/_dev/webhooks/deliveries", timeout=10).json()
    assert [item["dropped"] for item in deliveries] == [True]


def test_open_tickets_are_searched_once_per_interval_only() -> None:
    searches: list[float] = []

    def search(keys: list[str]) -> dict[str, str]:
        searches.append(time.monotonic())
        return dict.fromkeys(keys, "new")

    watcher = TicketWatcher("test", search, poll_interval=0.5, wake_interval=0.05, min_wait=0.1)

    async def scenario() -> None:
        task = asyncio.create_task(watcher.wait(["CAL-1"]))
        await asyncio.sleep(2.3)
        task.cancel()

    asyncio.run(scenario())
    # At most one search per interval: 2.3 s hold 5 at the most, and fewer only on a loaded machine.
    assert 2 <= len(searches) <= 5
    gaps = [later - earlier for earlier, later in zip(searches, searches[1:], strict=False)]
    assert min(gaps) > 0.4


def test_young_waiter_is_released_once_old_enough() -> None:
    watcher = TicketWatcher("test", lambda keys: dict.fromkeys(keys, "done"), poll_interval=0.4, min_wait=0.6)

    async def scenario() -> float:
        started = time.monotonic()
        await asyncio.wait_for(watcher.wait(["CAL-1"]), 3)
        return time.monotonic() - started

    waited = asyncio.run(scenario())
    # Released at the second search, after min_wait; the upper bound only tells that from a hang.
    assert 0.6 <= waited < 3
    assert watcher.stats.searches == 2
