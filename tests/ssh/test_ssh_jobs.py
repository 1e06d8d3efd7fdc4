"""Jobs at an SSH site, against a real OpenSSH server: start, wait, judge, re-attach, cancel, host keys.

The jobs run the basf2 stand-in ``b2caf-prompt-run`` on the "remote" side, started detached by the start
script over SSH and waited for by :class:`CafJobTrigger`, as the operators and the triggerer do.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import first_event, run_async, set_site, site_extra

from b2cal.caf import caf_config_json, input_data_json
from b2cal.devtools.sshd import LoopbackSSHD
from b2cal.iov import IoV
from b2cal.remote import (
    JobLaunch,
    JobPaths,
    LaunchResult,
    decide_submission,
    inspect_job,
    job_folder,
    judge_snapshot,
    launch_job,
)
from b2cal.sites import SiteConfigError, SiteSettings
from b2cal_airflow.hooks.site import (
    SITE_CONNECTIONS,
    SiteHook,
    SiteHostKeyError,
    SiteLoginError,
    site_transport,
)
from b2cal_airflow.triggers.caf import CafJobTrigger

CALIBRATION = "CDC deadboard"
SCRIPT = "caf_cdc_deadboard.py"
INPUT_NAME = "mumu_tight_or_highm_calib"
RELEASE = "release-11-00-00"


def job_files(site: SiteSettings, *, with_input_data: bool = True) -> dict[str, str]:
    """Write two skim files at the site and return the CAF files of a job that reads them."""
    folder = Path(site.storage_root) / INPUT_NAME / "e0026" / "r00001"
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(2):
        (folder / f"skim{index}.root").write_bytes(f"skim {index}\n".encode())
    files = {"caf_config.json": caf_config_json(SCRIPT, ["staging_test"], IoV(26, 0, 26, -1))}
    if with_input_data:
        files["input_data.json"] = input_data_json({INPUT_NAME: [(str(folder), (26, 1))]})
    return files


def job_launch(site: SiteSettings, job_dir: str, attempt: int = 1, **env: str) -> JobLaunch:
    return JobLaunch(
        paths=JobPaths(job_dir, attempt),
        argv=site.prompt_run_argv(),
        setup_command=site.setup_command(RELEASE),
        env={**site.env, **env},
        shell=site.remote_shell,
    )


def start_job(
    site: SiteSettings, name: str = "req-1", files: dict[str, str] | None = None, **env: str
) -> str:
    """Start a job at the site as the operator does and return its job folder."""
    job_dir = job_folder(site.work_root, name, CALIBRATION)
    with SiteHook("DESY").session() as session:
        decision = decide_submission(session.inspect(job_dir))
        assert decision.action == "start"
        result = session.launch(job_launch(site, job_dir, decision.attempt, **env), files or job_files(site))
    assert not result.attached
    assert result.pid is not None
    return job_dir


def trigger_for(job_dir: str, attempt: int = 1, poll_interval: float = 0.5) -> CafJobTrigger:
    return CafJobTrigger(site="DESY", job_folder=job_dir, attempt=attempt, poll_interval=poll_interval)


def wrappers_running(job_dir: str) -> list[int]:
    """Return the ids of the processes whose command line names a wrapper script of ``job_dir``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(") ", 1)[1][:1]
        except (OSError, IndexError):
            continue
        if f"{job_dir}/attempt-" in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


class TestJobOutcome:
    def test_successful_job(self, ssh_site: SiteSettings, tmp_path: Path) -> None:
        job_dir = start_job(ssh_site)

        event = run_async(first_event(trigger_for(job_dir)))

        assert event["status"] == "succeeded", event["reason"]
        assert event["transport"] == "ssh"
        assert event["attempt"] == 1
        assert event["exit_status"] == 0
        assert [row["state"] for row in event["calibrations"]] == ["completed"]
        assert CALIBRATION in event["output_databases"]
        with SiteHook("DESY").session() as session:
            local = session.fetch_folder(f"{job_dir}/caf_outputdb_results", tmp_path / "fetched")
        database = (local / CALIBRATION / "database.txt").read_text()
        assert database.startswith("dbstore/")

    def test_failed_calibration(self, ssh_site: SiteSettings) -> None:
        job_dir = start_job(ssh_site, B2CAL_FAKE_FAIL=f"{CALIBRATION}:algorithms")

        event = run_async(first_event(trigger_for(job_dir)))

        assert event["status"] == "failed"
        assert "'CDC deadboard' is failed" in event["reason"]
        assert "(exit status 1)" in event["reason"]
        assert event["exit_status"] == 1
        assert "CDC deadboard failed!" in event["log_tail"]

    def test_exit_zero_with_logged_error_is_failure(self, ssh_site: SiteSettings) -> None:
        job_dir = start_job(ssh_site, files=job_files(ssh_site, with_input_data=False))

        event = run_async(first_event(trigger_for(job_dir)))

        assert event["exit_status"] == 0
        assert event["status"] == "failed"
        assert "logged an error and stopped" in event["reason"]
        assert "input_data.json does not exist" in event["reason"]

    def test_progress_reaches_the_snapshot(self, ssh_site: SiteSettings) -> None:
        job_dir = start_job(ssh_site)

        async def look_until_collecting() -> tuple[int, int, list[str]]:
            async with site_transport(ssh_site) as transport:
                while True:
                    snapshot = await inspect_job(transport, job_dir)
                    if snapshot.facts.subjobs_total:
                        return (
                            snapshot.facts.subjobs_done,
                            snapshot.facts.subjobs_total,
                            [row.state for row in snapshot.facts.rows],
                        )
                    await asyncio.sleep(0.2)

        done, total, states = run_async(look_until_collecting())

        assert total == 2
        assert 0 <= done <= total
        assert states[0] in ("running_collector", "collector_completed", "running_algorithms")


class TestReattach:
    def test_worker_killed_mid_job_then_reattached(self, ssh_site: SiteSettings, tmp_path: Path) -> None:
        job_dir = job_folder(ssh_site.work_root, "req-killed", CALIBRATION)
        files = job_files(ssh_site)
        worker_script = tmp_path / "worker.py"
        worker_script.write_text(
            textwrap.dedent(
                f"""
                import json, sys, time
                sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parents[1])!r}]
                from test_ssh_jobs import job_launch
                from b2cal.remote import decide_submission
                from b2cal_airflow.hooks.site import SiteHook
                hook = SiteHook("DESY")
                with hook.session() as session:
                    decision = decide_submission(session.inspect({job_dir!r}))
                    result = session.launch(job_launch(hook.site_settings, {job_dir!r}, decision.attempt),
                                            json.loads({json.dumps(files)!r}))
                print("started", result.pid, flush=True)
                time.sleep(600)
                """
            )
        )
        worker = subprocess.Popen(
            [sys.executable, str(worker_script)], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
        )
        try:
            assert worker.stdout is not None
            lines: list[str] = []
            while not (lines and lines[-1].startswith("started")):
                line = worker.stdout.readline()
                assert line, f"the worker exited before starting the job: {lines}"
                lines.append(line)
            first_pid = int(lines[-1].split()[1])
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)

        with SiteHook("DESY").session() as session:
            snapshot = session.inspect(job_dir)
            decision = decide_submission(snapshot)
            again = session.launch(job_launch(ssh_site, job_dir, 1), files)

        assert decision.action == "attach"
        assert decision.attempt == 1
        assert snapshot.pid == first_pid
        assert again == LaunchResult(attempt=1, pid=None, attached=True)
        assert snapshot.attempts == [1]
        assert wrappers_running(job_dir) == [first_pid]
        event = run_async(first_event(trigger_for(job_dir)))
        assert event["status"] == "succeeded", event["reason"]
        assert sorted(path.name for path in Path(job_dir).glob("attempt-*")) == ["attempt-1"]

    def test_concurrent_starts_run_one_job(self, ssh_site: SiteSettings) -> None:
        job_dir = job_folder(ssh_site.work_root, "req-race", CALIBRATION)
        files = job_files(ssh_site)

        async def start_twice() -> list[LaunchResult]:
            async with site_transport(ssh_site) as transport:
                launch = job_launch(ssh_site, job_dir)
                return list(
                    await asyncio.gather(
                        launch_job(transport, launch, files), launch_job(transport, launch, files)
                    )
                )

        results = run_async(start_twice())

        assert sorted(result.attached for result in results) == [False, True]
        started = next(result for result in results if not result.attached)
        assert wrappers_running(job_dir) == [started.pid]
        leftovers = [path.name for path in Path(job_dir).iterdir() if path.name.startswith(".")]
        assert leftovers == []

    def test_failed_attempt_resumes_in_next_attempt(self, ssh_site: SiteSettings) -> None:
        job_dir = start_job(ssh_site, name="req-resume", B2CAL_FAKE_FAIL=f"{CALIBRATION}:algorithms")
        first = run_async(first_event(trigger_for(job_dir)))
        assert first["status"] == "failed"

        with SiteHook("DESY").session() as session:
            decision = decide_submission(session.inspect(job_dir))
            assert decision.action == "start"
            assert decision.attempt == 2
            assert decision.resume is True
            session.launch(job_launch(ssh_site, job_dir, decision.attempt))

        second = run_async(first_event(trigger_for(job_dir, attempt=2)))
        assert second["status"] == "succeeded", second["reason"]
        log = (Path(job_dir) / "attempt-2" / "job.log").read_text()
        # The collector finished in attempt 1, so the resumed CAF runs only the algorithms.
        assert f"Resuming calibration {CALIBRATION} from checkpoint collector_completed" in log


class TestServerRestart:
    def test_sshd_restarted_mid_wait(self, ssh_site: SiteSettings, sshd: LoopbackSSHD) -> None:
        job_dir = start_job(ssh_site, B2CAL_FAKE_JOB_SECONDS="8")
        opened_before = SITE_CONNECTIONS.opened.get(ssh_site.conn_id, 0)

        async def wait_across_restart() -> dict:
            waiting = asyncio.create_task(first_event(trigger_for(job_dir, poll_interval=0.5)))
            await asyncio.sleep(2.0)
            await asyncio.to_thread(sshd.restart, 1.5)
            return await waiting

        event = run_async(wait_across_restart())

        assert event["status"] == "succeeded", event["reason"]
        # The first connection was lost with the server; the second one was opened after the restart.
        assert SITE_CONNECTIONS.opened[ssh_site.conn_id] - opened_before == 2
        assert wrappers_running(job_dir) == []


class TestHostKeys:
    def test_wrong_host_key_is_rejected(self, monkeypatch, sshd: LoopbackSSHD, tmp_path: Path) -> None:
        other = LoopbackSSHD(tmp_path / "other")
        other.prepare()
        site = set_site(monkeypatch, "DESY", sshd, tmp_path, host_key=other.host_public_key)

        with pytest.raises(SiteHostKeyError) as caught:
            with SiteHook("DESY").session() as session:
                session.inspect(job_folder(site.work_root, "req-1", CALIBRATION))
        message = str(caught.value)
        assert "host key" in message
        assert "b2cal_site_desy" in message
        assert "SHA256:" in message
        assert not Path(site.work_root).exists()

        started = time.monotonic()
        event = run_async(first_event(trigger_for(job_folder(site.work_root, "req-1", CALIBRATION))))
        assert event["status"] == "error"
        assert "host key" in event["reason"]
        assert time.monotonic() - started < 10

    def test_known_hosts_file_is_accepted(self, monkeypatch, sshd: LoopbackSSHD, tmp_path: Path) -> None:
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(sshd.known_hosts_line())
        site = set_site(monkeypatch, "DESY", sshd, tmp_path, host_key=None, known_hosts=str(known_hosts))

        with SiteHook("DESY").session() as session:
            snapshot = session.inspect(job_folder(site.work_root, "req-1", CALIBRATION))

        assert snapshot.attempt is None
        assert snapshot.job_dir_exists is False

    @pytest.mark.parametrize(
        ("overrides", "message"),
        [
            ({"host_key": None}, "neither the extra host_key nor known_hosts"),
            ({"no_host_key_check": "true"}, "turns host key checking off"),
            ({"allow_host_key_change": True}, "turns host key checking off"),
        ],
    )
    def test_host_key_checking_cannot_be_off(self, monkeypatch, sshd, tmp_path, overrides, message) -> None:
        with pytest.raises(SiteConfigError, match=message):
            set_site(monkeypatch, "DESY", sshd, tmp_path, **overrides)
        extra = site_extra(sshd, tmp_path, **overrides)
        monkeypatch.setenv(
            "AIRFLOW_CONN_B2CAL_SITE_DESY",
            json.dumps({"conn_type": "ssh", **sshd.connection_fields(), "extra": extra}),
        )
        with pytest.raises(SiteConfigError, match=message):
            _ = SiteHook("DESY").site_settings


class TestCancel:
    def test_on_kill_stops_the_job(self, ssh_site: SiteSettings) -> None:
        job_dir = start_job(ssh_site, B2CAL_FAKE_JOB_SECONDS="60")
        assert len(wrappers_running(job_dir)) == 1

        run_async(trigger_for(job_dir).on_kill())

        deadline = time.monotonic() + 10
        while wrappers_running(job_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert wrappers_running(job_dir) == []
        assert (Path(job_dir) / "attempt-1" / "job.cancelled").exists()

        async def judge() -> str:
            async with site_transport(ssh_site) as transport:
                return judge_snapshot(await inspect_job(transport, job_dir)).reason

        assert "cancelled" in run_async(judge())


class TestSharedConnection:
    def test_triggers_of_one_site_share_one_connection(
        self, ssh_site: SiteSettings, sshd: LoopbackSSHD
    ) -> None:
        job_dirs = [start_job(ssh_site, name=f"req-share-{number}") for number in range(3)]
        opened_before = SITE_CONNECTIONS.opened.get(ssh_site.conn_id, 0)
        logins_before = sshd.accepted_logins()

        async def wait_all() -> list[dict]:
            return list(await asyncio.gather(*(first_event(trigger_for(job_dir)) for job_dir in job_dirs)))

        events = run_async(wait_all())

        assert [event["status"] for event in events] == ["succeeded"] * 3
        assert SITE_CONNECTIONS.opened[ssh_site.conn_id] - opened_before == 1
        assert sshd.accepted_logins() - logins_before == 1


class TestSecrets:
    def test_keys_and_passwords_stay_out_of_logs(self, monkeypatch, sshd, tmp_path, caplog, capfd) -> None:
        private_key_body = sshd.user_private_key.splitlines()[1]
        password = "pw-Zq81-never-logged"
        site = set_site(monkeypatch, "DESY", sshd, tmp_path, password=password)

        with caplog.at_level(logging.DEBUG):
            job_dir = start_job(site, name="req-secrets")
            event = run_async(first_event(trigger_for(job_dir)))
        assert event["status"] == "succeeded"

        other = LoopbackSSHD(tmp_path / "other")
        other.prepare()
        set_site(monkeypatch, "DESY", sshd, tmp_path, private_key=other.user_private_key, password=password)
        with caplog.at_level(logging.DEBUG), pytest.raises(SiteLoginError) as caught:
            with SiteHook("DESY").session() as session:
                session.inspect(job_dir)

        assert "rejected the login" in str(caught.value)
        printed = "".join(capfd.readouterr())
        for secret in (private_key_body, other.user_private_key.splitlines()[1], password):
            assert secret not in caplog.text
            assert secret not in printed
            assert secret not in str(caught.value)
            assert secret not in repr(event)
