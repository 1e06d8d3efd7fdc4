"""CafJobTrigger on a local site: serialisation, the exit-status judgement, cancelling, a missing site."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest

from b2cal.jobs import LocalTransport
from b2cal.remote import JobLaunch, JobPaths, launch_job
from b2cal_airflow.triggers.caf import CafJobTrigger


async def first_event(trigger: CafJobTrigger) -> dict:
    async for event in trigger.run():
        return dict(event.payload)
    raise AssertionError("the trigger ended without an event")


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 60))


@pytest.fixture
def local_site(monkeypatch, tmp_path: Path) -> Path:
    extra = {
        "work_root": str(tmp_path / "jobs"),
        "storage_root": str(tmp_path / "storage"),
        "poll_interval": 0.1,
    }
    monkeypatch.setenv("AIRFLOW_CONN_B2CAL_SITE_LAB", json.dumps({"conn_type": "generic", "extra": extra}))
    return tmp_path / "jobs"


def start(folder: Path, code: str) -> None:
    launch = JobLaunch(paths=JobPaths(str(folder), 1), argv=[sys.executable, "-c", code])
    run(launch_job(LocalTransport(), launch))


def test_serialize_round_trip() -> None:
    trigger = CafJobTrigger(
        site="BNL",
        job_folder="/data/jobs/req/CDC_badwire-0123abcd",
        attempt=2,
        poll_interval=7.5,
        judge="exit_status",
        request_id="req",
        calibration="CDC badwire",
        db_conn_id="b2cal_db_other",
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "b2cal_airflow.triggers.caf.CafJobTrigger"
    again = CafJobTrigger(**kwargs)
    assert again.serialize() == (classpath, kwargs)
    assert json.loads(json.dumps(kwargs)) == kwargs


def test_exit_status_job_on_a_local_site(local_site: Path) -> None:
    start(local_site / "ok", "print('produced')")
    start(local_site / "bad", "raise SystemExit(3)")

    ok = run(
        first_event(CafJobTrigger("LAB", str(local_site / "ok"), poll_interval=0.1, judge="exit_status"))
    )
    bad = run(
        first_event(CafJobTrigger("LAB", str(local_site / "bad"), poll_interval=0.1, judge="exit_status"))
    )

    assert (ok["status"], ok["transport"], ok["exit_status"]) == ("succeeded", "local", 0)
    assert "produced" in ok["log_tail"]
    assert (bad["status"], bad["reason"]) == ("failed", "exit status 3")


def test_caf_job_without_state_table_fails_after_exit(local_site: Path) -> None:
    start(local_site / "empty", "print('no CAF here')")

    event = run(first_event(CafJobTrigger("LAB", str(local_site / "empty"), poll_interval=0.1)))

    assert event["status"] == "failed"
    assert "exited before the CAF recorded any calibration" in event["reason"]


def test_on_kill_stops_a_local_job(local_site: Path) -> None:
    folder = local_site / "long"
    start(folder, "import time; time.sleep(60)")
    trigger = CafJobTrigger("LAB", str(folder), poll_interval=0.1, judge="exit_status")

    run(trigger.on_kill())

    event = run(first_event(trigger))
    assert event["status"] == "failed"
    assert event["reason"] == "attempt 1 was cancelled by a user"
    assert (folder / "attempt-1" / "job.cancelled").exists()


def test_missing_site_connection_is_an_error_event(monkeypatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_B2CAL_SITE_NOWHERE", raising=False)
    started = time.monotonic()

    event = run(first_event(CafJobTrigger("NOWHERE", "/tmp/none", poll_interval=0.1)))

    assert event["status"] == "error"
    assert "b2cal_site_nowhere" in event["reason"]
    assert time.monotonic() - started < 10
