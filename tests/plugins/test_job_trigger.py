from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from b2cal.jobs import start_local_job
from b2cal_airflow.triggers.job import LocalJobTrigger


def test_serialize_round_trip():
    trigger = LocalJobTrigger(job_folder="/tmp/some/job", poll_interval=7.5)
    classpath, kwargs = trigger.serialize()
    assert classpath == "b2cal_airflow.triggers.job.LocalJobTrigger"
    again = LocalJobTrigger(**kwargs)
    assert again.serialize() == (classpath, kwargs)


async def first_event(trigger: LocalJobTrigger) -> dict:
    async for event in trigger.run():
        return event.payload
    raise AssertionError("the trigger ended without an event")


def test_fires_with_exit_status(tmp_path: Path):
    start_local_job(tmp_path / "ok", [sys.executable, "-c", "pass"])
    start_local_job(tmp_path / "bad", [sys.executable, "-c", "raise SystemExit(2)"])
    ok = asyncio.run(asyncio.wait_for(first_event(LocalJobTrigger(str(tmp_path / "ok"), 0.1)), 20))
    bad = asyncio.run(asyncio.wait_for(first_event(LocalJobTrigger(str(tmp_path / "bad"), 0.1)), 20))
    assert ok["status"] == "succeeded"
    assert bad["status"] == "failed"
    assert bad["reason"] == "exit status 2"


def test_look_returns_none_while_running(tmp_path: Path):
    job = start_local_job(tmp_path / "slow", [sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert LocalJobTrigger(str(tmp_path / "slow")).look() is None
    finally:
        job.stop()
