from __future__ import annotations

import sys
import time
from pathlib import Path

from b2cal.jobs import LocalJob, job_key, start_local_job


def wait_for_exit(job: LocalJob, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while job.exit_status is None and time.monotonic() < deadline:
        time.sleep(0.05)


def test_job_key_is_stable_and_folder_safe():
    key = job_key("prompt-e0026-b01", "PXD hot/dead pixel calibration")
    assert key == job_key("prompt-e0026-b01", "PXD hot/dead pixel calibration")
    assert key.startswith("prompt-e0026-b01/PXD_hot_dead_pixel_calibration-")
    assert key.endswith("/attempt-1")
    assert ".." not in key
    assert job_key("r", "a b") != job_key("r", "a_b")


def test_start_records_pid_log_and_exit(tmp_path: Path):
    job = start_local_job(tmp_path / "job", [sys.executable, "-c", "print('hello from the job')"])
    wait_for_exit(job)
    assert job.pid is not None
    assert job.exit_status == 0
    assert "hello from the job" in job.log_text()
    assert not job.is_alive()


def test_second_start_attaches(tmp_path: Path):
    marker = tmp_path / "runs.txt"
    argv = [sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x')"]
    first = start_local_job(tmp_path / "job", argv)
    wait_for_exit(first)
    second = start_local_job(tmp_path / "job", argv)
    time.sleep(0.3)
    assert second.pid == first.pid
    assert marker.read_text() == "x"


def test_arguments_are_not_shell_code(tmp_path: Path):
    trap = tmp_path / "pwned"
    argv = [sys.executable, "-c", "import sys; print(sys.argv[1])", f"; touch {trap}"]
    job = start_local_job(tmp_path / "job", argv)
    wait_for_exit(job)
    assert job.exit_status == 0
    assert not trap.exists()
    assert f"; touch {trap}" in job.log_text()


def test_failed_exit_and_stop(tmp_path: Path):
    failing = start_local_job(tmp_path / "fail", [sys.executable, "-c", "raise SystemExit(3)"])
    wait_for_exit(failing)
    assert failing.exit_status == 3
    sleeper = start_local_job(tmp_path / "sleep", [sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(0.3)
    assert sleeper.is_alive()
    assert sleeper.stop()
    deadline = time.monotonic() + 10
    while sleeper.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not sleeper.is_alive()
    assert sleeper.exit_status is None
