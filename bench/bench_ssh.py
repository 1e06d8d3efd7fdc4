"""Benchmark 28 calibration jobs waited for over SSH: worker slots, SSH connections, detection delay.

Run from the repository root after ``make test`` has set up ``.venv`` and installed openssh-server::

    .venv/bin/python bench/bench_ssh.py

A loopback sshd (``b2cal.devtools.sshd``) replaces the login nodes of two sites, KEK and DESY, each
its own Airflow connection. 14 jobs run at each site: the basf2 stand-in ``b2caf-prompt-run``, each
calibration taking a random 15 to 30 s after a common start, so the jobs end at different moments
and none before the waiting begins. Both variants below start the same 28 jobs the same way (the
operators' start path: inspect, decide, launch over SSH) and then wait for them, in the same run:

* Candidate: every start returns, as an operator that defers does, and 28 ``CafJobTrigger`` wait in
  one event loop, which stands for the triggerer, polling every 5 s over one shared connection a site.
* Baseline: the pattern of a poke-mode sensor built on the SSH provider's hook alone. Each job keeps a
  thread, which stands for a worker slot, and every poll opens a new SSH connection, as
  ``SSHHookAsync.run_command`` does, to run the same probe every 5 s.

Measured: worker slots held, as the busy "worker" threads sampled every 0.5 s during the wait. SSH
logins that the server accepted during the wait (from its log), in all and per poll cycle. The
detection delay of each job, from the modification time of its ``job.exit`` file to the waiting
code's verdict. The last line printed is one JSON object.
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
if "AIRFLOW_HOME" not in os.environ:
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="b2cal-bench-ssh-airflow-")

from b2cal.caf import caf_config_json, input_data_json  # noqa: E402
from b2cal.devtools.sshd import LoopbackSSHD, sshd_available  # noqa: E402
from b2cal.iov import IoV  # noqa: E402
from b2cal.remote import (  # noqa: E402
    JobLaunch,
    JobPaths,
    decide_submission,
    inspect_job,
    job_folder,
    judge_snapshot,
)
from b2cal.sites import SiteSettings  # noqa: E402
from b2cal_airflow.hooks.site import (  # noqa: E402
    SITE_CONNECTIONS,
    SiteHook,
    SiteUnreachableError,
    SSHTransport,
    _SiteConnection,
)
from b2cal_airflow.triggers.caf import CafJobTrigger  # noqa: E402

SITES = {"KEK": ("LSF", {"queue": "l"}), "DESY": ("HTCondor", {"universe": "vanilla"})}
JOBS_PER_SITE = 14
POLL_INTERVAL = 5.0
JOB_SECONDS = (15.0, 30.0)
SAMPLE_SECONDS = 0.5
CALIBRATION = "CDC deadboard"
INPUT_NAME = "mumu_tight_or_highm_calib"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def configure_sites(sshd: LoopbackSSHD, root: Path) -> dict[str, SiteSettings]:
    """Create the site connections and return their settings."""
    settings = {}
    for site, (backend, options) in SITES.items():
        extra = {
            "transport": "ssh",
            "site": site,
            "work_root": str(root / site.lower() / "jobs"),
            "storage_root": str(root / "storage"),
            "backend": backend,
            "backend_options": options,
            "prompt_run_options": {"heartbeat": 1},
            "basf2_setup": f"export PATH={Path(sys.executable).parent}:$PATH",
            "remote_python": sys.executable,
            "poll_interval": POLL_INTERVAL,
            **sshd.connection_extra(),
        }
        connection = {"conn_type": "ssh", **sshd.connection_fields(), "extra": extra}
        os.environ[f"AIRFLOW_CONN_B2CAL_SITE_{site}"] = json.dumps(connection)
        settings[site] = SiteHook(site).site_settings
    return settings


def start_jobs(
    sites: dict[str, SiteSettings], root: Path, label: str, sampler: BusySampler, keep_busy: bool
) -> tuple[list[tuple[str, str]], Path]:
    """Start 14 jobs a site as the operators do; return ``(site, job folder)`` of each and their gate.

    Each start counts as one busy worker slot while it runs. With ``keep_busy`` the slot stays busy
    after the start, as a worker that waits for its job itself does. Every job waits in its set-up
    command until the gate file exists, so no job ends before the waiting begins.
    """
    gate = root / f"{label}.gate"
    skims = root / "storage" / INPUT_NAME / "e0026" / "r00001"
    skims.mkdir(parents=True, exist_ok=True)
    (skims / "skim.root").write_bytes(b"skim\n")
    files = {
        "caf_config.json": caf_config_json("caf_cdc_deadboard.py", ["staging_bench"], IoV(26, 0, 26, -1)),
        "input_data.json": input_data_json({INPUT_NAME: [(str(skims), (26, 1))]}),
    }
    jobs = []
    for site, settings in sites.items():
        argv = settings.prompt_run_argv()
        with SiteHook(site).session() as session:
            for number in range(JOBS_PER_SITE):
                sampler.change(1)
                job_dir = job_folder(settings.work_root, f"{label}-{number:02d}", CALIBRATION)
                decision = decide_submission(session.inspect(job_dir))
                seconds = f"{random.uniform(*JOB_SECONDS):.1f}"
                launch = JobLaunch(
                    paths=JobPaths(job_dir, decision.attempt),
                    argv=argv,
                    setup_command=f"{settings.setup_command('release-11-00-00')}; "
                    f"while [ ! -e {gate} ]; do sleep 0.2; done",
                    env={"B2CAL_FAKE_JOB_SECONDS": seconds},
                )
                session.launch(launch, files)
                jobs.append((site, job_dir))
                if not keep_busy:
                    sampler.change(-1)
    sampler.waiting_from = time.monotonic()
    return jobs, gate


def exit_time(job_dir: str) -> float:
    return (Path(job_dir) / "attempt-1" / "job.exit").stat().st_mtime


class BusySampler:
    """Sample how many "worker" threads are busy, every 0.5 s, until stopped.

    :attr:`waiting_from` marks the moment every job has been started; the samples after it are the wait.
    """

    def __init__(self) -> None:
        self.busy = 0
        self.lock = threading.Lock()
        self.samples: list[tuple[float, int]] = []
        self.waiting_from = float("inf")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BusySampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def change(self, delta: int) -> None:
        with self.lock:
            self.busy += delta

    def during_wait(self) -> list[int]:
        """Return the samples taken after every job was started."""
        return [busy for at, busy in self.samples if at >= self.waiting_from]

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            with self.lock:
                self.samples.append((time.monotonic(), self.busy))


def run_candidate(sites: dict[str, SiteSettings], root: Path, sshd: LoopbackSSHD) -> dict[str, Any]:
    async def wait(site: str, job_dir: str) -> tuple[str, float]:
        trigger = CafJobTrigger(site=site, job_folder=job_dir, poll_interval=POLL_INTERVAL)
        async for event in trigger.run():
            return str(event.payload["status"]), time.time()
        raise RuntimeError(f"no event for {job_dir}")

    async def wait_all(jobs: list[tuple[str, str]]) -> list[tuple[str, float]]:
        return list(await asyncio.gather(*(wait(site, job_dir) for site, job_dir in jobs)))

    with BusySampler() as sampler:
        jobs, gate = start_jobs(sites, root, "candidate", sampler, keep_busy=False)
        opened_before = dict(SITE_CONNECTIONS.opened)
        logins_before = sshd.accepted_logins()
        gate.touch()
        outcomes = asyncio.run(wait_all(jobs))
        waited = time.monotonic() - sampler.waiting_from
    logins = sshd.accepted_logins() - logins_before
    opened = {
        site: SITE_CONNECTIONS.opened.get(settings.conn_id, 0) - opened_before.get(settings.conn_id, 0)
        for site, settings in sites.items()
    }
    delays = [seen - exit_time(job_dir) for (_, job_dir), (_, seen) in zip(jobs, outcomes, strict=True)]
    return summary(outcomes, delays, sampler.during_wait(), logins, waited, opened)


def run_baseline(sites: dict[str, SiteSettings], root: Path, sshd: LoopbackSSHD) -> dict[str, Any]:
    async def look_once(settings: SiteSettings, job_dir: str) -> str:
        # A new connection for this one poll, closed after it, as SSHHookAsync.run_command does.
        entry = _SiteConnection(settings, asyncio.get_running_loop())
        try:
            snapshot = await inspect_job(SSHTransport(entry), job_dir, timeout=settings.command_timeout)
        finally:
            await entry.close()
        return judge_snapshot(snapshot).state

    refused = [0]

    def sensor(site: str, job_dir: str, sampler: BusySampler) -> tuple[str, float]:
        try:
            next_look = time.monotonic() + POLL_INTERVAL
            while True:
                time.sleep(max(0.0, next_look - time.monotonic()))
                next_look = time.monotonic() + POLL_INTERVAL
                try:
                    state = asyncio.run(look_once(sites[site], job_dir))
                except SiteUnreachableError:
                    # sshd drops unauthenticated connections beyond its MaxStartups (OpenSSH default
                    # 10:30:100); the sensor tries again at its next poll.
                    refused[0] += 1
                    continue
                if state != "running":
                    return state, time.time()
        finally:
            sampler.change(-1)

    with BusySampler() as sampler:
        jobs, gate = start_jobs(sites, root, "baseline", sampler, keep_busy=True)
        logins_before = sshd.accepted_logins()
        gate.touch()
        with ThreadPoolExecutor(max_workers=len(jobs)) as slots:
            futures = [slots.submit(sensor, site, job_dir, sampler) for site, job_dir in jobs]
            outcomes = [future.result() for future in futures]
        waited = time.monotonic() - sampler.waiting_from
    logins = sshd.accepted_logins() - logins_before
    delays = [seen - exit_time(job_dir) for (_, job_dir), (_, seen) in zip(jobs, outcomes, strict=True)]
    result = summary(outcomes, delays, sampler.during_wait(), logins, waited, None)
    result["connections_refused_by_sshd"] = refused[0]
    return result


def summary(
    outcomes: list[tuple[str, float]],
    delays: list[float],
    busy: list[int],
    logins: int,
    waited: float,
    opened: dict[str, int] | None,
) -> dict[str, Any]:
    cycles = max(1.0, waited / POLL_INTERVAL)
    result: dict[str, Any] = {
        "jobs": len(outcomes),
        "succeeded": sum(1 for state, _ in outcomes if state == "succeeded"),
        "wait_s": round(waited, 1),
        "worker_slots_held_max": max(busy, default=0),
        "worker_slots_held_mean": round(statistics.fmean(busy), 1) if busy else 0.0,
        "ssh_logins_during_wait": logins,
        "ssh_logins_per_poll_cycle": round(logins / cycles, 2),
        "detection_delay_s": {
            "median": round(statistics.median(delays), 2),
            "p95": round(percentile(delays, 0.95), 2),
            "max": round(max(delays), 2),
        },
    }
    if opened is not None:
        result["connections_opened_per_site"] = opened
    return result


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    if not sshd_available():
        print(json.dumps({"error": "openssh-server is not installed: run make system-packages"}))
        return 1
    random.seed(2026)
    with tempfile.TemporaryDirectory(prefix="b2cal-bench-ssh-") as folder:
        root = Path(folder)
        sshd = LoopbackSSHD(root / "sshd")
        sshd.start()
        try:
            sites = configure_sites(sshd, root)
            candidate = run_candidate(sites, root, sshd)
            baseline = run_baseline(sites, root, sshd)
        finally:
            sshd.stop()
    target_delay = POLL_INTERVAL + 2.0
    report = {
        "benchmark": "ssh",
        "waiting_jobs": 2 * JOBS_PER_SITE,
        "sites": len(SITES),
        "poll_interval_s": POLL_INTERVAL,
        "candidate": candidate,
        "baseline": baseline,
        "targets": {
            "worker_slots_held": 0,
            "connections_per_site": 1,
            "detection_delay_max_s": target_delay,
        },
        "meets_targets": (
            candidate["worker_slots_held_max"] == 0
            and all(count == 1 for count in candidate["connections_opened_per_site"].values())
            and candidate["detection_delay_s"]["max"] < target_delay
        ),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
