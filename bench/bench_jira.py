"""Benchmark the Jira ticket tree: creation calls and time, unblocking latency, worker slots held.

Run from the repository root after ``make test`` has created ``.venv``::

    .venv/bin/python bench/bench_jira.py

Everything runs against the development Jira (Server mode) on 127.0.0.1, in the same run:

* Tree creation for the full packaged catalog (28 calibrations, 18 dependencies) with 50 ms
  latency added to every Jira call. Candidate: ``TicketTree.ensure_tree`` with a parent epic, on a
  first attempt (no label search) and on a retry (label search first). Baseline: one
  ``JiraOperator(create_issue)`` per ticket plus one ``JiraOperator(create_issue_link)`` per
  dependency, the way a DAG built on the Airflow Jira provider alone would create the tree. Calls
  are counted by the development Jira.
* Unblocking latency, from the moment a ticket reaches its done status to the moment the waiting
  code submits the dependent job (a stand-in function records the time). Webhook path:
  ``JiraTicketsDoneTrigger`` woken by a signed webhook through the plugin's receiver and the plugin
  database. Poll path: the same trigger with webhooks lost, polling every 30 s (the product
  default). Provider path: ``JiraTicketSensor`` with its defaults (``poke_interval`` 60 s, poke
  mode). The poll and sensor samples run side by side, each ticket closed at a random moment.
  The latency stops at the trigger's event: Airflow's own time to resume the deferred task on a
  worker comes on top and is the same for every path that defers.
* Worker slots held while 28 tickets wait: 28 poke-mode sensors, each in a thread that stands for
  a worker slot, against 28 triggers in one event loop that stands for the triggerer. The busy
  worker threads are sampled during the wait.

The last line printed is one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "jira"))

LATENCY_SECONDS = 0.05
POLL_INTERVAL = 30.0
WEBHOOK_SAMPLES = 28
POLL_SAMPLES = 12
SENSOR_SAMPLES = 8
CLOSE_WINDOW = 60.0
WAITING_TICKETS = 28
SECRET = "bench-webhook-secret"
REQUEST = "bench-request"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return round(ordered[index], 3)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "samples": len(values),
        "median_s": round(statistics.median(values), 3),
        "p95_s": percentile(values, 0.95),
        "max_s": round(max(values), 3),
    }


class Bench:
    """The development services, the clients and the helpers shared by the measurements."""

    def __init__(self, home: Path) -> None:
        import requests

        from b2cal.catalog import load_packaged_release
        from b2cal.devservices.config import DevServicesConfig, catalog_expert_usernames
        from b2cal.devservices.server import start_services

        self.requests = requests
        self.home = home
        self.catalog = load_packaged_release()
        self.config = DevServicesConfig(jira_experts=catalog_expert_usernames(), runs_per_experiment=5)
        self.services = start_services(jira_port=0, conddb_port=0, runregistry_port=0, config=self.config)
        self.url = self.services.jira_url
        self.auth = (self.config.jira_bot_username, self.config.jira_bot_password)
        connection = {"conn_type": "jira", "host": self.url, "login": self.auth[0], "password": self.auth[1]}
        os.environ["AIRFLOW_CONN_BENCH_JIRA"] = json.dumps(
            {**connection, "extra": {"project": "CAL", "webhook_secret": SECRET}}
        )

    def reset(self, latency: float = 0.0) -> None:
        self.requests.post(f"{self.url}/_dev/reset", timeout=10).raise_for_status()
        settings = {"deployment": "Server", "latency": latency, "search_lag": 0.0}
        self.requests.post(f"{self.url}/_dev/settings", json=settings, timeout=10).raise_for_status()

    def calls(self) -> int:
        return int(self.requests.get(f"{self.url}/_dev/stats", timeout=10).json()["total"])

    def tree(self) -> Any:
        from atlassian import Jira

        from b2cal.tickets import TicketTree

        return TicketTree(Jira(self.url, username=self.auth[0], password=self.auth[1], timeout=30))

    def plan(self, request: str = REQUEST, parent: bool = True) -> Any:
        from b2cal.tickets import plan_tickets

        return plan_tickets(
            self.catalog,
            self.catalog.names,
            request_uid=request,
            project="CAL",
            kind="prompt",
            site="BNL",
            bucket="26,0,26,100",
            staging_tag="staging_bench",
            parent_issue_type="Epic" if parent else None,
            parent_link_field="customfield_10008",
        )

    def close(self, key: str) -> None:
        """Close a ticket through the workflow's "Close Issue" transition, as an expert would."""
        tree = self.tree()
        transition = next(item for item in tree.api.transitions(key) if item["to"]["name"] == "Closed")
        tree.api.transition(key, transition["id"])

    def stop(self) -> None:
        self.services.stop()


# Tree creation


def measure_tree(bench: Bench) -> dict[str, Any]:
    from airflow.providers.atlassian.jira.operators.jira import JiraOperator

    class TaskInstance:
        def xcom_push(self, key: str, value: Any) -> None:
            pass

    context: Any = {"task_instance": TaskInstance()}

    bench.reset(LATENCY_SECONDS)
    plan = bench.plan(parent=False)
    started = time.perf_counter()
    keys: dict[str, str] = {}
    for spec in plan.tickets:
        fields = {**spec.fields, "assignee": {"name": spec.assignee}}
        operator = JiraOperator(
            task_id=f"create_{len(keys)}",
            jira_conn_id="bench_jira",
            jira_method="create_issue",
            jira_method_args={"fields": fields},
        )
        keys[spec.calibration] = operator.execute(context)["key"]
    for number, (blocking, blocked) in enumerate(plan.links()):
        link = {
            "type": {"name": "Blocks"},
            "inwardIssue": {"key": keys[blocking]},
            "outwardIssue": {"key": keys[blocked]},
        }
        JiraOperator(
            task_id=f"link_{number}",
            jira_conn_id="bench_jira",
            jira_method="create_issue_link",
            jira_method_args={"data": link},
        ).execute(context)
    baseline = {"calls": bench.calls(), "wall_s": round(time.perf_counter() - started, 3)}
    baseline_links = len(bench.services.jira_state.links())

    results: dict[str, Any] = {}
    for name, first_attempt in (("first_attempt", True), ("retry", False)):
        bench.reset(LATENCY_SECONDS)
        started = time.perf_counter()
        result = bench.tree().ensure_tree(bench.plan(), first_attempt=first_attempt)
        wall = time.perf_counter() - started
        links = len(bench.services.jira_state.links())
        assert links == baseline_links, f"{links} links created, the baseline made {baseline_links}"
        assert len(result.keys) == len(plan.tickets) and result.parent_key
        calls = bench.calls()
        results[name] = {
            "calls": calls,
            "wall_s": round(wall, 3),
            "calls_ratio": round(calls / baseline["calls"], 3),
            "wall_ratio": round(wall / baseline["wall_s"], 3),
        }
    return {
        "tickets": len(plan.tickets),
        "links": baseline_links,
        "latency_per_call_s": LATENCY_SECONDS,
        "baseline_jira_operator": baseline,
        "candidate_with_parent_epic": results,
        "target_ratio": 0.10,
    }


# Unblocking latency


class Receiver:
    """The plugin's webhook receiver served by uvicorn on a free loopback port."""

    def __init__(self, db_url: str) -> None:
        import uvicorn
        from fastapi import FastAPI

        from b2cal_airflow.www import webhooks

        app = FastAPI()
        app.include_router(webhooks.router, prefix="/b2cal")
        app.state.jira_webhook_secret = lambda: SECRET
        app.state.b2cal_settings = type("Settings", (), {"db_url": staticmethod(lambda: db_url)})()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False, lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the webhook receiver did not start within 15 s")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/b2cal/webhooks/jira"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def create_waiting_tickets(bench: Bench, request: str, count: int) -> list[str]:
    from b2cal.tickets import plan_tickets

    names = bench.catalog.names[:count]
    plan = plan_tickets(
        bench.catalog,
        names,
        request_uid=request,
        project="CAL",
        kind="prompt",
        site="BNL",
        bucket="26,0,26,100",
        staging_tag="staging_bench",
    )
    keys = bench.tree().ensure(plan, first_attempt=True)
    return [keys[name] for name in names if name in keys]


async def wait_with_triggers(
    bench: Bench, keys: list[str], request: str, poll_interval: float, close_at: dict[str, float]
) -> dict[str, float]:
    """Run one trigger per ticket; return each ticket's latency from its close to the job submission."""
    from b2cal_airflow.triggers.jira import JiraTicketsDoneTrigger

    submitted: dict[str, float] = {}
    closed: dict[str, float] = {}

    def submit_job(key: str) -> None:
        submitted[key] = time.monotonic()

    async def wait(key: str) -> None:
        trigger = JiraTicketsDoneTrigger("bench_jira", [key], poll_interval, request_id=request)
        async for event in trigger.run():
            assert event.payload["status"] == "done", event.payload
            submit_job(key)
            return

    async def close_later(key: str, delay: float) -> None:
        await asyncio.sleep(delay)
        await asyncio.to_thread(bench.close, key)
        closed[key] = time.monotonic()

    await asyncio.gather(*(wait(key) for key in keys), *(close_later(key, close_at[key]) for key in keys))
    return {key: submitted[key] - closed[key] for key in keys}


def closed_sensor(prefix: str, key: str) -> Any:
    """Return the provider's sensor with its defaults, waiting for the status Closed of ``key``."""
    from airflow.providers.atlassian.jira.sensors.jira import JiraTicketSensor

    return JiraTicketSensor(
        task_id=f"{prefix}_{key.replace('-', '_')}",
        jira_conn_id="bench_jira",
        ticket_id=key,
        field="status",
        expected_value="Closed",
    )


def run_sensor_samples(bench: Bench, keys: list[str], close_at: dict[str, float]) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def sample(key: str) -> None:
        sensor = closed_sensor("wait", key)
        closed: list[float] = []

        def close() -> None:
            bench.close(key)
            closed.append(time.monotonic())

        timer = threading.Timer(close_at[key], close)
        timer.start()
        while not sensor.poke({}):
            time.sleep(sensor.poke_interval)
        submitted = time.monotonic()
        timer.join()
        with lock:
            latencies.append(submitted - closed[0])

    with ThreadPoolExecutor(max_workers=len(keys)) as pool:
        list(pool.map(sample, keys))
    return latencies


def measure_unblocking(bench: Bench) -> dict[str, Any]:
    from jira_support import make_plugin_db

    from b2cal.ticket_watch import TicketWatcher
    from b2cal.tickets import TicketTree  # noqa: F401 - imported before the threads start
    from b2cal_airflow.triggers.jira import JiraTicketsDoneTrigger  # noqa: F401

    bench.reset()
    rng = random.Random(2026)

    # Webhook path: the tickets close one after another, each wakes its trigger through the receiver.
    webhook_keys = create_waiting_tickets(bench, "bench-webhook", WEBHOOK_SAMPLES)
    db_url = make_plugin_db(
        bench.home / "webhook.db", "bench-webhook", dict(zip(webhook_keys, webhook_keys, strict=True))
    )
    os.environ["AIRFLOW_CONN_B2CAL_DB"] = json.dumps({"conn_type": "generic", "extra": {"url": db_url}})
    receiver = Receiver(db_url)
    url = receiver.start()
    bench.requests.post(
        f"{bench.url}/rest/webhooks/1.0/webhook",
        json={"name": "bench", "url": url, "events": ["jira:issue_updated"], "secret": SECRET},
        auth=bench.auth,
        timeout=10,
    ).raise_for_status()
    close_at = {key: 2.0 + index * 0.7 + rng.uniform(0, 0.5) for index, key in enumerate(webhook_keys)}
    TicketWatcher.forget_all()
    webhook = asyncio.run(wait_with_triggers(bench, webhook_keys, "bench-webhook", POLL_INTERVAL, close_at))
    receiver.stop()

    # Poll path and provider sensor path, side by side, with every webhook delivery lost.
    bench.requests.post(
        f"{bench.url}/_dev/webhooks/drop", json={"count": 10_000}, timeout=10
    ).raise_for_status()
    poll_keys = create_waiting_tickets(bench, "bench-poll", POLL_SAMPLES)
    sensor_keys = create_waiting_tickets(bench, "bench-sensor", SENSOR_SAMPLES)
    make_plugin_db(bench.home / "poll.db", "bench-poll", {})
    poll_close = {key: rng.uniform(1.0, CLOSE_WINDOW) for key in poll_keys}
    sensor_close = {key: rng.uniform(1.0, CLOSE_WINDOW) for key in sensor_keys}
    sensor_latencies: list[float] = []
    sensor_thread = threading.Thread(
        target=lambda: sensor_latencies.extend(run_sensor_samples(bench, sensor_keys, sensor_close))
    )
    sensor_thread.start()
    TicketWatcher.forget_all()
    poll = asyncio.run(wait_with_triggers(bench, poll_keys, "bench-poll", POLL_INTERVAL, poll_close))
    sensor_thread.join()
    return {
        "measured_to": "the trigger's event or the sensor's successful poke, where the job is submitted",
        "webhook": summary(list(webhook.values())),
        "poll_every_30s": summary(list(poll.values())),
        "provider_jira_ticket_sensor_defaults": summary(sensor_latencies),
        "target_webhook_p95_s": 2.0,
    }


# Worker slots


def measure_slots(bench: Bench) -> dict[str, Any]:
    """Sample the busy worker slots while 28 tickets wait, with poke-mode sensors and with triggers.

    A worker slot is a thread of a pool of 28, one per waiting task. A poke-mode sensor keeps its
    thread until its ticket closes. The deferrable path runs what ``CalibrationOperator.execute``
    does in the slot (one category check, then the deferral) and hands the trigger to an event loop
    in another thread, which stands for the triggerer.
    """
    from b2cal.ticket_watch import TicketWatcher
    from b2cal_airflow.triggers.jira import JiraTicketsDoneTrigger

    bench.reset()
    keys = create_waiting_tickets(bench, "bench-slots", WAITING_TICKETS)
    busy = {"sensors": 0, "triggers": 0}
    lock = threading.Lock()
    stop = threading.Event()
    samples: dict[str, list[int]] = {"sensors": [], "triggers": []}

    def sample(kind: str, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with lock:
                samples[kind].append(busy[kind])
            time.sleep(0.1)

    def sensor_slot(key: str) -> None:
        sensor = closed_sensor("slot", key)
        with lock:
            busy["sensors"] += 1
        try:
            while not sensor.poke({}) and not stop.is_set():
                stop.wait(1.0)
        finally:
            with lock:
                busy["sensors"] -= 1

    with ThreadPoolExecutor(max_workers=WAITING_TICKETS) as workers:
        for key in keys:
            workers.submit(sensor_slot, key)
        time.sleep(1.0)
        sample("sensors", 3.0)
        stop.set()

    triggerer = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=triggerer.run_forever, daemon=True)
    loop_thread.start()
    TicketWatcher.forget_all()
    tree = bench.tree()
    futures = []

    def deferrable_slot(key: str) -> None:
        with lock:
            busy["triggers"] += 1
        try:
            if tree.categories([key]).get(key) != "done":
                trigger = JiraTicketsDoneTrigger("bench_jira", [key], 1.0, request_id="bench-slots")
                futures.append(asyncio.run_coroutine_threadsafe(anext(aiter(trigger.run())), triggerer))
        finally:
            with lock:
                busy["triggers"] -= 1

    with ThreadPoolExecutor(max_workers=WAITING_TICKETS) as workers:
        list(workers.map(deferrable_slot, keys))
        time.sleep(1.0)
        sample("triggers", 3.0)
    waiting = sum(1 for future in futures if not future.done())

    async def cancel_all() -> None:
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run_coroutine_threadsafe(cancel_all(), triggerer).result(10)
    triggerer.call_soon_threadsafe(triggerer.stop)
    loop_thread.join(10)
    triggerer.close()
    return {
        "tickets_waiting": len(keys),
        "poke_mode_sensors_slots_held": max(samples["sensors"]),
        "deferred_triggers_slots_held": max(samples["triggers"]),
        "triggers_still_waiting": waiting,
        "target_slots_held": 0,
    }


def main() -> int:
    started = time.perf_counter()
    # The services and Airflow log every request; the figures are what this script prints.
    logging.getLogger().setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-jira-") as folder:
        bench = Bench(Path(folder))
        try:
            tree = measure_tree(bench)
            print("tree:", json.dumps(tree), flush=True)
            slots = measure_slots(bench)
            print("slots:", json.dumps(slots), flush=True)
            unblocking = measure_unblocking(bench)
            print("unblocking:", json.dumps(unblocking), flush=True)
        finally:
            bench.stop()
    first = tree["candidate_with_parent_epic"]["first_attempt"]
    result = {
        "tree_creation": tree,
        "unblocking_latency": unblocking,
        "worker_slots": slots,
        "targets_met": {
            "tree_calls_at_most_10_percent": first["calls_ratio"] <= 0.10,
            "tree_wall_at_most_10_percent": first["wall_ratio"] <= 0.10,
            "webhook_p95_under_2s": unblocking["webhook"]["p95_s"] < 2.0,
            "zero_slots_held": slots["deferred_triggers_slots_held"] == 0,
        },
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
