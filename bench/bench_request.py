"""Benchmark the orchestration overhead of one full request, against the naive loop in the same run.

Run from the repository root after ``make test`` has created ``.venv``. The script needs the PostgreSQL
server on 127.0.0.1:5432 with trust authentication. It creates two scratch databases there and drops
them at the end::

    .venv/bin/python bench/bench_request.py [--job-seconds 20] [--poll-interval 4]

One stack (LocalExecutor, Airflow's metadata database and the plugin database on PostgreSQL, the
development services) runs two requests for the whole packaged catalog at the same time, each with
stand-in jobs of ``--job-seconds`` and tickets closed as soon as the payloads are uploaded:

* the product's ``b2cal_processing_request``, signed off by the script as soon as it asks;
* the baseline ``bench/naive/b2cal_naive_request.py``: poke-mode sensors, one Jira call per ticket,
  job tasks that wait for their job in the worker slot.

Each loop gets 6 worker slots of its own (the default pool and the pool ``b2cal_naive``), so the naive
loop cannot take the product's slots; both share the scheduler, the triggerer and the machine.

Figures, from the job folders' timestamps and Airflow's REST API:

* ``critical_path_s``: the longest chain of measured job durations through the dependency graph, with
  cDST production between the raw and the cdst phase;
* ``wall_over_critical_path``: the DAG run's wall time divided by that (target under 1.5);
* ``job_start_delay_s``: per job, the time from the moment it could start (its dependencies' jobs
  ended, or the run started) to its start: uploads, ticket checks and scheduling;
* ``task_queue_delay_s``: per task instance, from queued to running.

The baseline stops being waited for when the product is done and ``--baseline-grace`` seconds more have
passed; its ratio is then a lower bound, marked ``finished: false``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    NAIVE_POOL,
    airflow_cli,
    dags_folder,
    exit_on_sigterm,
    job_times,
    log,
    machine,
    stack_config,
    summary,
)

from b2cal.catalog import CDST_PHASE, RAW_PHASE, Catalog, load_packaged_release  # noqa: E402
from b2cal.db import store  # noqa: E402
from b2cal.db.engine import session_scope  # noqa: E402
from b2cal.e2e import sample_conf, trigger, wait_for_run  # noqa: E402
from b2cal.jobs import job_key  # noqa: E402
from b2cal.production_stack import (  # noqa: E402
    DEFAULT_POSTGRES_ADMIN_URL,
    check_postgres,
    scratch_postgres_database,
    seed_running_tag,
)
from b2cal.request import parse_request  # noqa: E402
from b2cal.stack import Stack  # noqa: E402

SCRIPT = "bench_request"
PRODUCT_ID = "bench-product"
NAIVE_ID = "naive-bench"
NAIVE_DAG_ID = "b2cal_naive_naive_bench"
SLOTS = 6


def epoch(value: str | None) -> float | None:
    """Return an API timestamp as seconds since the epoch."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def critical_path(catalog: Catalog, names: list[str], durations: dict[str, float]) -> float:
    """Return the longest sum of job durations along a dependency chain, through cDST production."""
    phases = catalog.phases(names)
    finish: dict[str, float] = {}
    for name in phases[RAW_PHASE]:
        finish[name] = durations[name] + max(
            (finish[dep] for dep in catalog[name].depends_on if dep in finish), default=0
        )
    finish["cdst-production"] = durations["cdst-production"] + max(
        (finish[name] for name in phases[RAW_PHASE]), default=0
    )
    for name in phases[CDST_PHASE]:
        upstream = [finish[dep] for dep in catalog[name].depends_on if dep in finish]
        finish[name] = durations[name] + max([*upstream, finish["cdst-production"]])
    return max(finish.values())


def start_delays(
    catalog: Catalog, names: list[str], times: dict[str, tuple[float, float]], run_start: float
) -> list[float]:
    """Return, per job, the seconds from the end of its last dependency (or the run start) to its start."""
    phases = catalog.phases(names)
    raw_ends = [times[name][1] for name in phases[RAW_PHASE]]
    delays = []
    for name in names:
        ready = [times[dep][1] for dep in catalog[name].depends_on if dep in times]
        if catalog[name].phase == CDST_PHASE:
            ready.append(times["cdst-production"][1])
        delays.append(times[name][0] - max(ready, default=run_start))
    delays.append(times["cdst-production"][0] - max(raw_ends, default=run_start))
    return delays


def analyse(
    stack: Stack, dag_id: str, run_id: str, uid: str, catalog: Catalog, finished: bool
) -> dict[str, Any]:
    """Measure one request from its job folders and its DAG run."""
    run = stack.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json()
    start = epoch(run["start_date"]) or time.time()
    end = epoch(run["end_date"]) or time.time()
    names = list(catalog.names)
    work_root = stack.config.work_root("BNL")
    times = {name: job_times(work_root / job_key(uid, name)) for name in [*names, "cdst-production"]}
    ended = {name: value for name, value in times.items() if value is not None}
    result: dict[str, Any] = {
        "dag_id": dag_id,
        "state": run["state"],
        "finished": finished,
        "wall_s": round(end - start, 1),
        "jobs_ended": len(ended),
        "jobs_expected": len(times),
    }
    if len(ended) == len(times):
        durations = {name: value[1] - value[0] for name, value in ended.items()}
        critical = critical_path(catalog, names, durations)
        result["critical_path_s"] = round(critical, 1)
        result["wall_over_critical_path"] = round((end - start) / critical, 3)
        result["job_duration_s"] = summary(list(durations.values()), 1)
        result["job_start_delay_s"] = summary(start_delays(catalog, names, ended, start), 1)
    instances = stack.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=500").json()
    queue_delays = [
        epoch(item["start_date"]) - epoch(item["queued_when"])
        for item in instances["task_instances"]
        if item.get("start_date") and item.get("queued_when")
    ]
    result["task_queue_delay_s"] = summary([value for value in queue_delays if value >= 0], 2)
    result["task_instances"] = len(instances["task_instances"])
    return result


def prepare(stack: Stack, catalog: Catalog, with_baseline: bool) -> None:
    """Set up the stack's databases, services, pools and the baseline's request before Airflow starts."""
    stack.setup()
    stack.start_services()
    airflow_cli(stack, "pools", "set", "default_pool", str(SLOTS), "Worker slots of the product's tasks")
    if not with_baseline:
        return
    airflow_cli(stack, "pools", "set", NAIVE_POOL, str(SLOTS), "Worker slots of the naive baseline")
    conf = {**sample_conf(NAIVE_ID), "running_tag": "b2cal_naive_running"}
    seed_running_tag(stack, conf["running_tag"])
    with session_scope(stack.config.plugin_db) as session:
        store.save_request(session, parse_request(conf, catalog), catalog)


def wait_for_dag(stack: Stack, dag_id: str, timeout: float = 180) -> None:
    """Wait until the dag-processor has parsed ``dag_id``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.api("GET", f"/api/v2/dags/{dag_id}").status_code == 200:
            return
        time.sleep(2)
    raise RuntimeError(f"the DAG {dag_id} was not parsed within {timeout} s")


def run_benchmark(args: argparse.Namespace, home: Path, airflow_db: str, plugin_db: str) -> dict[str, Any]:
    """Run both requests on one stack and return the figures."""
    catalog = load_packaged_release()
    with_baseline = args.baseline_grace >= 0
    extra_env = {
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder(home, with_baseline)),
        "AIRFLOW__CORE__PARALLELISM": str(2 * SLOTS),
        "B2CAL_NAIVE_POOL": NAIVE_POOL,
        "B2CAL_NAIVE_POKE_INTERVAL": str(args.poll_interval),
    }
    config = stack_config(home, args, airflow_db, plugin_db, **extra_env)
    stack = Stack(config)
    try:
        setup_started = time.monotonic()
        prepare(stack, catalog, with_baseline)
        stack.start_airflow()
        if with_baseline:
            wait_for_dag(stack, NAIVE_DAG_ID)
        log(SCRIPT, f"stack ready in {time.monotonic() - setup_started:.0f} s; triggering")

        product_run = trigger(stack, sample_conf(PRODUCT_ID))
        naive_run = None
        if with_baseline:
            response = stack.api(
                "POST", f"/api/v2/dags/{NAIVE_DAG_ID}/dagRuns", json={"logical_date": None, "conf": {}}
            )
            response.raise_for_status()
            naive_run = str(response.json()["dag_run_id"])
        outcome: dict[str, str] = {}
        waiter = threading.Thread(
            target=lambda: outcome.update(state=wait_for_run(stack, product_run, timeout=args.timeout))
        )
        waiter.start()
        naive_state = None
        while naive_run is not None:
            naive_state = stack.api("GET", f"/api/v2/dags/{NAIVE_DAG_ID}/dagRuns/{naive_run}").json()["state"]
            if naive_state in ("success", "failed") or not waiter.is_alive():
                break
            time.sleep(2)
        waiter.join()
        log(SCRIPT, f"product run {outcome.get('state')}")
        grace_end = time.monotonic() + max(args.baseline_grace, 0)
        while (
            naive_run is not None
            and naive_state not in ("success", "failed")
            and time.monotonic() < grace_end
        ):
            time.sleep(2)
            naive_state = stack.api("GET", f"/api/v2/dags/{NAIVE_DAG_ID}/dagRuns/{naive_run}").json()["state"]

        product = analyse(stack, "b2cal_processing_request", product_run, PRODUCT_ID, catalog, True)
        figures: dict[str, Any] = {"product": product}
        if naive_run is not None:
            finished = naive_state in ("success", "failed")
            naive = analyse(stack, NAIVE_DAG_ID, naive_run, NAIVE_ID, catalog, finished)
            figures["baseline_naive"] = naive
            figures["baseline_wall_over_product_wall"] = round(naive["wall_s"] / product["wall_s"], 2)
            if not finished:
                figures["baseline_note"] = (
                    "baseline still running when the benchmark stopped: its ratios are lower bounds"
                )
        return figures
    finally:
        stack.stop()


def main() -> int:
    """Run the benchmark and print its JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job-seconds", type=float, default=20.0, help="duration of each stand-in job")
    parser.add_argument(
        "--poll-interval", type=float, default=4.0, help="seconds between trigger and sensor polls"
    )
    parser.add_argument(
        "--baseline-grace",
        type=float,
        default=30.0,
        help="seconds to keep waiting for the baseline after the product is done; -1 runs no baseline",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the product's run")
    args = parser.parse_args()
    exit_on_sigterm()
    check_postgres(DEFAULT_POSTGRES_ADMIN_URL)
    info = machine()
    home = Path(tempfile.mkdtemp(prefix="b2cal-bench-request-"))
    started = time.monotonic()
    try:
        with (
            scratch_postgres_database(DEFAULT_POSTGRES_ADMIN_URL, "b2cal_bench_airflow") as airflow_db,
            scratch_postgres_database(DEFAULT_POSTGRES_ADMIN_URL, "b2cal_bench_plugin") as plugin_db,
        ):
            figures = run_benchmark(args, home, airflow_db, plugin_db)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    result = {
        "benchmark": "request_overhead",
        "executor": "LocalExecutor",
        "calibrations": len(load_packaged_release()),
        "job_seconds": args.job_seconds,
        "poll_interval_s": args.poll_interval,
        "slots_per_loop": SLOTS,
        "target_wall_over_critical_path": 1.5,
        **figures,
        "benchmark_wall_s": round(time.monotonic() - started, 1),
        "machine": info,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
