"""Benchmark waiting for 200 Rucio rules at once: worker slots held and Rucio API calls per poll cycle.

Run from the repository root after ``make test`` has created ``.venv`` and ``.venv-rucio``::

    .venv/bin/python bench/bench_rucio.py

The script starts its own Rucio server (SQLite, one single-threaded worker, on 127.0.0.1), registers
200 run datasets of one file each at KEK-DISK and adds a rule per dataset to BNL-DISK. While the rules
are REPLICATING it measures, in the same run:

* the candidate: one :class:`RucioRulesTrigger` for all 200 rules, and the deferrable operators;
* baseline 1: one :class:`RucioRuleTrigger` per rule in one event loop, the way 200 single-rule
  deferrable sensors would run in one triggerer;
* baseline 2: one poke-mode sensor per rule, each blocking a worker slot.

API calls are counted from the server's access log, which has one line per HTTP request, over a fixed
window after a warm-up. A poll cycle is one poll of every rule. At the end the replicas are marked
available and the time until the batched trigger reports success is measured. The last line printed
is one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "rucio_server"))

RULES = 200
POLL_INTERVAL = 2.0
WARM_UP = 4.0
WINDOW = 6.0


def _log(message: str) -> None:
    print(f"[bench_rucio {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class CallCounter:
    """Count HTTP requests from the server's access log and polls from the pollers."""

    def __init__(self, access_log: Path) -> None:
        self.access_log = access_log
        self.polls = 0
        self.lock = threading.Lock()

    def requests(self) -> int:
        """Return how many requests the server has logged so far."""
        with open(self.access_log, "rb") as handle:
            return sum(1 for _ in handle)

    def count_poll(self) -> None:
        """Record one poll of one poller or sensor."""
        with self.lock:
            self.polls += 1


def measure_window(counter: CallCounter, pollers: int) -> dict[str, float]:
    """Return requests per poll cycle over ``WINDOW`` seconds, a cycle being one poll of every poller."""
    requests_before, polls_before = counter.requests(), counter.polls
    time.sleep(WINDOW)
    requests = counter.requests() - requests_before
    cycles = (counter.polls - polls_before) / pollers
    return {
        "requests": requests,
        "cycles": round(cycles, 2),
        "calls_per_cycle": round(requests / cycles, 1) if cycles else float("nan"),
        "seconds_per_cycle": round(WINDOW / cycles, 2) if cycles else float("nan"),
    }


def run_triggers_for_window(triggers: list[Any], counter: CallCounter, pollers: int) -> dict[str, float]:
    """Run triggers in one event loop, measure a window after the warm-up, then cancel them."""

    async def main() -> dict[str, float]:
        async def consume(trigger: Any) -> None:
            async for event in trigger.run():
                raise RuntimeError(f"a trigger fired during the measurement: {event.payload}")

        tasks = [asyncio.create_task(consume(trigger)) for trigger in triggers]
        await asyncio.sleep(WARM_UP)
        result = await asyncio.to_thread(measure_window, counter, pollers)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return result

    return asyncio.run(main())


def main() -> int:
    from rucioctl import RucioServer, free_port

    venv = Path(os.environ.get("B2CAL_RUCIO_VENV", ROOT / ".venv-rucio"))
    if not (venv / "bin" / "gunicorn").exists():
        print(f"error: no Rucio server venv at {venv}: run 'make rucio-server-venv' first", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="b2cal-bench-rucio-"))
    os.environ.setdefault("AIRFLOW_HOME", str(work / "airflow"))
    server = RucioServer(venv=venv, home=work / "server", port=free_port())
    load_at_start = [round(value, 2) for value in os.getloadavg()]
    started = time.monotonic()
    try:
        server.up()
        _log(f"server ready in {time.monotonic() - started:.1f} s")
        os.environ["AIRFLOW_CONN_RUCIO_DEFAULT"] = json.dumps(server.connection_values())
        result = run_benchmark(server, work)
    finally:
        server.down()
        shutil.rmtree(work, ignore_errors=True)
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    # Other jobs on the machine slow the server and the baselines; the load average shows how busy it was.
    result["machine"] = {
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "load_average_at_start": load_at_start,
        "load_average_at_end": [round(value, 2) for value in os.getloadavg()],
    }
    print(json.dumps(result))
    return 0 if result["targets_met"] else 1


def set_up_rules(work: Path) -> tuple[Any, list[dict[str, Any]]]:
    """Register 200 run datasets of one file at KEK-DISK and add one REPLICATING rule each to BNL-DISK."""
    from b2cal.iov import IoV
    from b2cal.rucio import RuleRequest, plan_skim_registration
    from b2cal_airflow.hooks.rucio import RucioHook

    storage = work / "kek"
    for run in range(1, RULES + 1):
        folder = storage / "hadron_calib" / "e0026" / f"r{run:05d}"
        folder.mkdir(parents=True)
        (folder / "skim.root").write_bytes(f"skim of run {run}\n".encode())
    hook = RucioHook()
    plan = plan_skim_registration(storage, runs=IoV(26, 0, 26, -1), scope="b2cal", rse="KEK-DISK")
    started = time.monotonic()
    hook.register(plan)
    rules = hook.ensure_rules([RuleRequest(dataset.did, "BNL-DISK") for dataset in plan.datasets])
    _log(f"{len(rules)} rules added in {time.monotonic() - started:.1f} s")
    return plan, rules


def measure_operators(rules: list[dict[str, Any]]) -> tuple[int, float]:
    """Execute a wait operator per rule plus one for all; return how many kept their slot, and the slowest."""
    from airflow.sdk.exceptions import TaskDeferred

    from b2cal_airflow.operators.rucio import RucioWaitForRulesOperator

    operators = [
        RucioWaitForRulesOperator(task_id=f"wait_{index}", rule_ids=[rule["id"]])
        for index, rule in enumerate(rules)
    ]
    operators.append(RucioWaitForRulesOperator(task_id="wait_all", rule_ids=[rule["id"] for rule in rules]))
    slots_held = 0
    slowest = 0.0
    for operator in operators:
        begin = time.monotonic()
        try:
            operator.execute({"ti": None})
            slots_held += 1
        except TaskDeferred:
            pass
        slowest = max(slowest, time.monotonic() - begin)
    _log(f"deferrable operators: {slots_held} of {len(operators)} kept their slot")
    return slots_held, slowest


def measure_poke_sensors(rules: list[dict[str, Any]], counter: CallCounter) -> tuple[dict[str, float], Any]:
    """Start one poke-mode sensor per rule in its own thread; return the window and the threads."""
    from airflow.sdk import BaseSensorOperator

    from b2cal_airflow.hooks.rucio import RucioHook

    class PokeRuleSensor(BaseSensorOperator):
        """A poke-mode sensor that checks one rule per poke, as a non-deferrable sensor would."""

        def __init__(self, *, rule_id: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.rule_id = rule_id
            self.hook = RucioHook()

        def poke(self, context: Any) -> bool:
            counter.count_poll()
            return self.hook.get_rule(self.rule_id)["state"] == "OK"

    sensors = [
        PokeRuleSensor(rule_id=rule["id"], task_id=f"sense_{index}", poke_interval=POLL_INTERVAL, timeout=600)
        for index, rule in enumerate(rules)
    ]
    # Authenticate first, so the window counts polls only, as the trigger windows do after their warm-up.
    for sensor in sensors:
        sensor.hook.get_conn()
    workers = [
        threading.Thread(target=sensor.execute, args=({"ti": None},), daemon=True) for sensor in sensors
    ]
    for worker in workers:
        worker.start()
    time.sleep(WARM_UP)
    window = measure_window(counter, pollers=len(rules))
    window["slots_held"] = sum(1 for worker in workers if worker.is_alive())
    _log(f"poke sensors: {window}")
    return window, workers


def measure_success_latency(plan: Any, watches: list[dict[str, Any]]) -> tuple[dict[str, Any], float]:
    """Mark every replica available while the batched trigger waits; return its event and the delay."""
    from b2cal_airflow.hooks.rucio import RucioHook
    from b2cal_airflow.triggers.rucio import RucioRulesTrigger

    async def finish() -> tuple[dict[str, Any], float]:
        trigger = RucioRulesTrigger(watches, poll_interval=POLL_INTERVAL)

        async def first() -> dict[str, Any]:
            async for event in trigger.run():
                return event.payload
            raise RuntimeError("the trigger ended without an event")

        task = asyncio.create_task(first())
        await asyncio.sleep(1.0)
        marked = time.monotonic()
        available = [{**record.did.as_dict(), "state": "A"} for record in plan.files]
        await asyncio.to_thread(RucioHook().get_conn().update_replicas_states, "BNL-DISK", available)
        payload = await asyncio.wait_for(task, 120)
        return payload, time.monotonic() - marked

    return asyncio.run(finish())


def run_benchmark(server: Any, work: Path) -> dict[str, Any]:
    """Set up 200 REPLICATING rules and measure the candidate and both baselines against them."""
    from b2cal.rucio import RuleWatch
    from b2cal_airflow.triggers import rucio as triggers

    counter = CallCounter(server.access_log)
    original_poll = triggers.RulePoller.poll

    def counted_poll(self: Any) -> Any:
        counter.count_poll()
        return original_poll(self)

    triggers.RulePoller.poll = counted_poll
    plan, rules = set_up_rules(work)
    watches = [RuleWatch.for_rule(rule, expected_files=1).to_dict() for rule in rules]

    slots_held, slowest = measure_operators(rules)
    batched = run_triggers_for_window(
        [triggers.RucioRulesTrigger(watches, poll_interval=POLL_INTERVAL)], counter, pollers=1
    )
    _log(f"batched trigger: {batched}")
    single = [
        triggers.RucioRuleTrigger(rule["id"], expected_files=1, poll_interval=POLL_INTERVAL) for rule in rules
    ]
    per_rule = run_triggers_for_window(single, counter, pollers=len(rules))
    _log(f"one trigger per rule: {per_rule}")
    poke, workers = measure_poke_sensors(rules, counter)

    payload, latency = measure_success_latency(plan, watches)
    for worker in workers:
        worker.join(timeout=30)
    triggers.RulePoller.poll = original_poll

    return {
        "benchmark": "rucio_wait_for_200_rules",
        "rules": len(rules),
        "poll_interval_s": POLL_INTERVAL,
        "window_s": WINDOW,
        "server": "rucio 41.5.1, SQLite, 1 gunicorn worker x 1 thread",
        "worker_slots_held": {
            "deferrable_operators": slots_held,
            "baseline_poke_sensors": poke["slots_held"],
        },
        "operator_execute_max_s": round(slowest, 3),
        "api_calls_per_poll_cycle": {
            "batched_trigger": batched["calls_per_cycle"],
            "baseline_trigger_per_rule": per_rule["calls_per_cycle"],
            "baseline_poke_sensors": poke["calls_per_cycle"],
        },
        "seconds_per_poll_cycle": {
            "batched_trigger": batched["seconds_per_cycle"],
            "baseline_trigger_per_rule": per_rule["seconds_per_cycle"],
            "baseline_poke_sensors": poke["seconds_per_cycle"],
        },
        "success_after_replicas_available_s": round(latency, 2),
        "success_status": payload["status"],
        "targets": {"worker_slots_held": 0, "batched_calls_per_cycle_max": 2},
        "targets_met": slots_held == 0 and batched["calls_per_cycle"] <= 2 and payload["status"] == "success",
    }


if __name__ == "__main__":
    sys.exit(main())
