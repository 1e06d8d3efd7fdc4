"""Benchmark the parse time of every DAG file with 20 active requests, against a naive DAG file.

Run from the repository root after ``make test`` has created ``.venv``::

    .venv/bin/python bench/bench_parse.py [--requests 20] [--repeats 7]

The script makes a scratch ``AIRFLOW_HOME`` with a plugin database (SQLite) that contains the packaged
release catalog and ``--requests`` processing requests. It imports Airflow once. Then it parses each
DAG file in a forked child process with Airflow's own ``DagBag``, as Airflow's dag-processor does. Each child
counts, through a Python audit hook, the I/O that the parse does beyond reading Python code: socket
connections, name look-ups, SQLite connections, subprocesses and opened data files.

The candidates are the files in ``dags/``. The baseline is ``bench/naive/b2cal_naive_request.py``,
which queries the plugin database at parse time and builds one DAG per request. The last line printed
is one JSON object with the median and maximum parse time of each file, its I/O events, and the ratio
of the baseline's median to the slowest product file's median.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import ROOT, exit_on_sigterm, log, machine  # noqa: E402

NAIVE_FILE = ROOT / "bench" / "naive" / "b2cal_naive_request.py"
TARGET_MS = 100.0
CODE_SUFFIXES = (".py", ".pyc", ".so", ".pth", ".pyi")
IO_EVENTS = ("socket.connect", "socket.getaddrinfo", "sqlite3.connect", "subprocess.Popen", "os.system")


def prepare_home(home: Path, requests: int) -> str:
    """Fill a plugin database with the catalog and ``requests`` requests; return its URL."""
    from b2cal.catalog import load_packaged_release
    from b2cal.db import store
    from b2cal.db.engine import session_scope, upgrade
    from b2cal.e2e import sample_conf
    from b2cal.request import parse_request

    url = f"sqlite:///{home / 'b2cal.db'}"
    upgrade(url)
    catalog = load_packaged_release()
    with session_scope(url) as session:
        store.import_catalog(session, catalog, source="bench_parse")
    for number in range(requests):
        bucket = [26, number * 5, 26, number * 5 + 4]
        spec = parse_request(sample_conf(f"naive-bench-{number:02d}", bucket=bucket), catalog)
        with session_scope(url) as session:
            store.save_request(session, spec, catalog)
    return url


def parse_in_child(path: Path) -> dict[str, Any]:
    """Parse one DAG file in a forked child and return its time, DAGs, tasks and I/O events."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_end)
        events: list[str] = []

        def audit(event: str, args: tuple[Any, ...]) -> None:
            if event in IO_EVENTS:
                events.append(event)
            elif event == "open" and isinstance(args[0], str | bytes):
                name = os.fsdecode(args[0])
                if not name.endswith(CODE_SUFFIXES) and not os.path.isdir(name):
                    events.append(f"open {name}")

        try:
            from airflow.dag_processing.dagbag import DagBag

            sys.addaudithook(audit)
            started = time.perf_counter()
            bag = DagBag(dag_folder=str(path), safe_mode=False)
            seconds = time.perf_counter() - started
            result = {
                "seconds": seconds,
                "dags": len(bag.dags),
                "tasks": sum(len(dag.tasks) for dag in bag.dags.values()),
                "errors": {key: str(value)[:300] for key, value in bag.import_errors.items()},
                "io_events": events,
            }
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
            result = {"failure": f"{type(exc).__name__}: {exc}"}
        with os.fdopen(write_end, "w") as handle:
            handle.write(json.dumps(result))
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as handle:
        text = handle.read()
    os.waitpid(pid, 0)
    result = dict(json.loads(text))
    if "failure" in result:
        raise RuntimeError(f"parsing {path} failed: {result['failure']}")
    return result


def measure(path: Path, repeats: int) -> dict[str, Any]:
    """Parse ``path`` ``repeats`` times and summarise the runs."""
    runs = [parse_in_child(path) for _ in range(repeats)]
    times_ms = [run["seconds"] * 1000 for run in runs]
    events = sorted(set(runs[0]["io_events"]))
    return {
        "median_ms": round(statistics.median(times_ms), 1),
        "max_ms": round(max(times_ms), 1),
        "dags": runs[0]["dags"],
        "tasks": runs[0]["tasks"],
        "errors": runs[0]["errors"],
        "io_event_count": len(runs[0]["io_events"]),
        "io_events": events[:10],
    }


def main() -> int:
    """Run the benchmark and print its JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20, help="active requests in the plugin database")
    parser.add_argument("--repeats", type=int, default=7, help="parses per file; the median is reported")
    args = parser.parse_args()
    exit_on_sigterm()

    home = Path(tempfile.mkdtemp(prefix="b2cal-bench-parse-"))
    try:
        return run(args, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def run(args: argparse.Namespace, home: Path) -> int:
    """Measure every DAG file and the baseline with the plugin database in ``home``."""
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        }
    )
    info = machine()
    os.environ["B2CAL_DB_URL"] = prepare_home(home, args.requests)
    log("bench_parse", f"plugin database with {args.requests} requests in {home}")
    # This process plays the dag-processor's manager. It has Airflow imported and, like the manager
    # before each fork, it imports the airflow.* modules that a DAG file imports.
    import structlog
    from airflow.dag_processing.dagbag import DagBag
    from airflow.dag_processing.processor import _pre_import_airflow_modules

    from b2cal.db.engine import get_engine

    get_engine.cache_clear()  # a forked child must open its own database connection, as in Airflow
    files = {path.name: path for path in sorted((ROOT / "dags").glob("*.py"))}
    files["baseline"] = NAIVE_FILE
    for path in files.values():
        _pre_import_airflow_modules(str(path), structlog.get_logger())
    # Cold: each child imports the b2cal modules itself, as every parse in the dag-processor does.
    cold = {name: measure(path, args.repeats) for name, path in files.items()}
    # Warm: the parent parses every file once, so the children find the modules imported and pay only
    # for running the DAG file itself.
    for path in files.values():
        DagBag(dag_folder=str(path), safe_mode=False)
    get_engine.cache_clear()
    warm = {name: measure(path, args.repeats) for name, path in files.items()}
    for name in files:
        log(
            "bench_parse",
            f"{name}: cold {cold[name]['median_ms']} ms, warm {warm[name]['median_ms']} ms median, "
            f"{warm[name]['io_event_count']} I/O events",
        )

    product = [name for name in files if name != "baseline"]
    summary = {
        "benchmark": "dag_parse",
        "active_requests": args.requests,
        "repeats": args.repeats,
        "target_ms": TARGET_MS,
        "cold": {name: cold[name] for name in product},
        "warm": {name: warm[name] for name in product},
        "cold_all_under_target": all(cold[name]["max_ms"] < TARGET_MS for name in product),
        "warm_all_under_target": all(warm[name]["max_ms"] < TARGET_MS for name in product),
        "product_io_events": sum(
            cold[name]["io_event_count"] + warm[name]["io_event_count"] for name in product
        ),
        "baseline_cold": cold["baseline"],
        "baseline_warm": warm["baseline"],
        "baseline_over_slowest_product_warm": round(
            warm["baseline"]["median_ms"] / max(warm[name]["median_ms"] for name in product), 1
        ),
        "machine": info,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
