"""Shared parts of the benchmark scripts: the machine description and the stack they start."""

from __future__ import annotations

import os
import platform
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def log(script: str, message: str) -> None:
    """Print a progress line to stderr; stdout is kept for the final JSON."""
    print(f"[{script} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    """Describe the machine a figure was measured on."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    import airflow

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
        "airflow": airflow.__version__,
        "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
    }


def summary(values: list[float], digits: int = 3) -> dict[str, float]:
    """Return count, mean, median, 95th percentile and maximum of ``values``."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {
        "count": len(values),
        "mean": round(statistics.fmean(values), digits),
        "median": round(statistics.median(values), digits),
        "p95": round(p95, digits),
        "max": round(ordered[-1], digits),
    }


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so a stopped benchmark still stops the processes it started."""

    def _raise(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _raise)


NAIVE_DAG_FILE = ROOT / "bench" / "naive" / "b2cal_naive_request.py"
NAIVE_POOL = "b2cal_naive"


def dags_folder(home: Path, with_baseline: bool) -> Path:
    """Return a DAG folder with the product's DAG files and, if asked, the naive baseline."""
    folder = home / "dags"
    folder.mkdir(parents=True, exist_ok=True)
    files = sorted((ROOT / "dags").glob("*.py"))
    if with_baseline:
        files.append(NAIVE_DAG_FILE)
    for path in files:
        link = folder / path.name
        if not link.exists():
            link.symlink_to(path)
    return folder


def airflow_cli(stack: Any, *args: str) -> None:
    """Run an ``airflow`` command with the stack's environment."""
    import subprocess

    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), *args],
        env=stack.env,
        check=True,
        capture_output=True,
        text=True,
    )


def job_times(folder: Path) -> tuple[float, float] | None:
    """Return when a job folder's job started and ended (file modification times), if it ended."""
    pid_file, exit_file = folder / "job.pid", folder / "job.exit"
    if not (pid_file.exists() and exit_file.exists()):
        return None
    return pid_file.stat().st_mtime, exit_file.stat().st_mtime


def process_group_rss_mib(pgid: int) -> float:
    """Return the resident memory of every process in a process group, in MiB."""
    total_kib = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
            if int(stat[2]) != pgid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total_kib / 1024


def stack_config(home: Path, args: Any, airflow_db: str, plugin_db: str, **extra_env: str) -> Any:
    """Return a LocalExecutor stack on free ports with both databases on PostgreSQL and the autopilot on."""
    from b2cal.stack import StackConfig, free_port

    return StackConfig(
        home=home,
        api_port=free_port(),
        jira_port=free_port(),
        conddb_port=free_port(),
        runregistry_port=free_port(),
        poll_interval=args.poll_interval,
        job_seconds=args.job_seconds,
        autopilot=True,
        airflow_db_url=airflow_db,
        plugin_db_url=plugin_db,
        extra_env=dict(extra_env),
    )
