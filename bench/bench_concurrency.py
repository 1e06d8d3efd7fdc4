"""Benchmark concurrent requests: the slowdown against one request alone, memory and database load.

Run from the repository root after ``make test`` has created ``.venv``. The script needs the PostgreSQL
server on 127.0.0.1:5432 with trust authentication. It creates two scratch databases there and drops
them at the end::

    .venv/bin/python bench/bench_concurrency.py [--requests 10] [--job-seconds 5] [--calibration NAME ...]

One stack (LocalExecutor with 6 worker slots, Airflow's metadata database and the plugin database on
PostgreSQL, the development services) first runs one request alone, the baseline, then ``--requests``
requests at the same time, each with its own staging and running tag. Requests cover the
calibrations named by ``--calibration`` and their dependencies. The default is "CDC badwire" and "CDC
dedx Hadron Calibrations", four calibrations in both phases, so that the run fits in 5 minutes.
``--full-catalog`` runs the whole packaged catalog instead, which takes far longer. Tickets close as
soon as payloads are uploaded, and the script signs each request off as soon as its sign-off opens.

Figures: the wall time of the request alone and of each concurrent request, their ratio (target under
2), the peak and mean resident memory of each Airflow component (its whole process group, so the
scheduler includes the LocalExecutor's task processes), and the PostgreSQL transactions and row
changes per request in each database. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    exit_on_sigterm,
    log,
    machine,
    process_group_rss_mib,
    stack_config,
    summary,
)

from b2cal.catalog import load_packaged_release  # noqa: E402
from b2cal.e2e import sample_conf, trigger, wait_for_run  # noqa: E402
from b2cal.production_stack import (  # noqa: E402
    DEFAULT_POSTGRES_ADMIN_URL,
    check_postgres,
    scratch_postgres_database,
    seed_running_tag,
)
from b2cal.stack import DAG_ID, Stack  # noqa: E402

SCRIPT = "bench_concurrency"
#: Two calibrations whose closure has four, two in each phase with cDST production between them: enough
#: for every kind of wait, and 10 such requests finish within the 5 minutes a benchmark may take.
DEFAULT_CALIBRATIONS = ("CDC badwire", "CDC dedx Hadron Calibrations")
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer", "dev-services")


class MemorySampler:
    """Sample the resident memory of each component's process group every ``interval`` seconds."""

    def __init__(self, stack: Stack, interval: float = 3.0) -> None:
        self.stack = stack
        self.interval = interval
        self.samples: dict[str, list[float]] = {name: [] for name in COMPONENTS}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name in COMPONENTS:
                process = self.stack.processes.get(name)
                if process is not None:
                    self.samples[name].append(process_group_rss_mib(process.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def figures(self) -> dict[str, dict[str, float]]:
        """Return the peak and mean memory of each component in MiB."""
        return {
            name: {"peak_mib": round(max(values), 1), "mean_mib": round(statistics.fmean(values), 1)}
            for name, values in self.samples.items()
            if values
        }


def database_counters(url: str) -> dict[str, int]:
    """Return PostgreSQL's transaction and row counters of the database at ``url``."""
    from sqlalchemy import create_engine, text

    name = url.rsplit("/", 1)[1]
    engine = create_engine(DEFAULT_POSTGRES_ADMIN_URL)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                text(
                    "select xact_commit, tup_inserted, tup_updated, tup_deleted, tup_fetched "
                    "from pg_stat_database where datname = :name"
                ),
                {"name": name},
            ).one()
    finally:
        engine.dispose()
    keys = ("transactions", "rows_inserted", "rows_updated", "rows_deleted", "rows_fetched")
    return dict(zip(keys, (int(value) for value in row), strict=True))


def run_requests(stack: Stack, confs: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
    """Trigger every request at once, wait for all, and return each run's state and wall time."""
    for conf in confs:
        seed_running_tag(stack, conf["running_tag"])
    run_ids = [trigger(stack, conf) for conf in confs]
    states: dict[str, str] = {}
    threads = [
        threading.Thread(
            target=lambda run_id=run_id: states.update({run_id: wait_for_run(stack, run_id, timeout=timeout)})
        )
        for run_id in run_ids
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results = []
    for run_id in run_ids:
        run = stack.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}").json()
        start = datetime.fromisoformat(run["start_date"].replace("Z", "+00:00"))
        end = datetime.fromisoformat((run["end_date"] or datetime.now().isoformat()).replace("Z", "+00:00"))
        results.append(
            {"run_id": run_id, "state": states.get(run_id), "wall_s": (end - start).total_seconds()}
        )
    return results


def phase(stack: Stack, confs: list[dict[str, Any]], timeout: float, urls: dict[str, str]) -> dict[str, Any]:
    """Run one batch of requests and return its walls, memory and database load per request."""
    before = {name: database_counters(url) for name, url in urls.items()}
    with MemorySampler(stack) as sampler:
        runs = run_requests(stack, confs, timeout)
    after = {name: database_counters(url) for name, url in urls.items()}
    load = {
        name: {key: round((after[name][key] - before[name][key]) / len(confs)) for key in before[name]}
        for name in urls
    }
    return {
        "requests": len(confs),
        "states": sorted({str(run["state"]) for run in runs}),
        "wall_s": summary([run["wall_s"] for run in runs], 1),
        "memory": sampler.figures(),
        "database_load_per_request": load,
    }


def main() -> int:
    """Run the benchmark and print its JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10, help="requests run at the same time")
    parser.add_argument("--job-seconds", type=float, default=5.0, help="duration of each stand-in job")
    parser.add_argument("--poll-interval", type=float, default=4.0, help="seconds between trigger polls")
    parser.add_argument(
        "--calibration",
        action="append",
        help=f"run this calibration and its dependencies (default: {', '.join(DEFAULT_CALIBRATIONS)})",
    )
    parser.add_argument(
        "--full-catalog",
        action="store_true",
        help="run every calibration of the packaged catalog (takes far longer than 5 minutes)",
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for each batch")
    args = parser.parse_args()
    exit_on_sigterm()
    check_postgres(DEFAULT_POSTGRES_ADMIN_URL)
    info = machine()
    catalog = load_packaged_release()
    if args.full_catalog:
        args.calibration = None
    elif not args.calibration:
        args.calibration = list(DEFAULT_CALIBRATIONS)
    calibrations = catalog.closure(args.calibration) if args.calibration else list(catalog.names)
    home = Path(tempfile.mkdtemp(prefix="b2cal-bench-concurrency-"))
    started = time.monotonic()
    try:
        with (
            scratch_postgres_database(DEFAULT_POSTGRES_ADMIN_URL, "b2cal_bench_airflow") as airflow_db,
            scratch_postgres_database(DEFAULT_POSTGRES_ADMIN_URL, "b2cal_bench_plugin") as plugin_db,
        ):
            config = stack_config(home, args, airflow_db, plugin_db)
            stack = Stack(config)
            urls = {"airflow": airflow_db, "plugin": plugin_db}
            try:
                stack.setup()
                stack.start_services()
                stack.start_airflow()

                def conf(uid: str) -> dict[str, Any]:
                    return {
                        **sample_conf(uid, args.calibration or ()),
                        "running_tag": f"running_{uid.replace('-', '_')}",
                    }

                log(SCRIPT, "one request alone")
                alone = phase(stack, [conf("alone")], args.timeout, urls)
                log(SCRIPT, f"{args.requests} requests at once")
                together = phase(
                    stack, [conf(f"together-{n:02d}") for n in range(args.requests)], args.timeout, urls
                )
            finally:
                stack.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    result = {
        "benchmark": "concurrent_requests",
        "executor": "LocalExecutor",
        "parallelism": 6,
        "calibrations_per_request": len(calibrations),
        "job_seconds": args.job_seconds,
        "alone": alone,
        "together": together,
        "slowdown_mean": round(together["wall_s"]["mean"] / alone["wall_s"]["mean"], 2),
        "slowdown_max": round(together["wall_s"]["max"] / alone["wall_s"]["mean"], 2),
        "target_slowdown": 2.0,
        "benchmark_wall_s": round(time.monotonic() - started, 1),
        "machine": info,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
