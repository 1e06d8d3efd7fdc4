"""Checked values, job keys, scripts, snapshots and decisions of :mod:`b2cal.remote`, run locally."""

from __future__ import annotations

import asyncio
import json
import shlex
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from b2cal.caf import CafFacts, CafRow
from b2cal.iov import IoV
from b2cal.jobs import LocalTransport
from b2cal.remote import (
    JobBusyError,
    JobLaunch,
    JobPaths,
    JobSnapshot,
    UnsafeValueError,
    build_probe_program,
    build_start_script,
    calibration_key,
    check_name,
    check_request_for_site,
    check_text,
    decide_submission,
    inspect_job,
    job_folder,
    job_key,
    judge_snapshot,
    launch_job,
    list_folders,
    stop_job,
)
from b2cal.request import RequestSpec

SPEC = RequestSpec(
    uid="prompt-e0026-b01",
    kind="prompt",
    site="BNL",
    release="release-11-00-00",
    bucket=IoV(26, 0, 26, 100),
    calibrations=("CDC badwire", "PXD hot/dead pixel calibration"),
    staging_tag="staging_prompt_e0026_b01",
    running_tag="b2cal_prompt_running",
    requested_by="manager",
    filter_overrides={"CDC badwire": {"mumu_tight_or_highm_calib": ["Magnet On"]}},
    expert_config_overrides={"CDC badwire": {"min_events": 1000, "mode": "fast", "flags": [True, 2.5]}},
)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 60))


class TestCheckedValues:
    @pytest.mark.parametrize(
        "value",
        [
            "a;b",
            "a|b",
            "a&b",
            "$(id)",
            "`id`",
            "a>b",
            "a\nb",
            "a\rb",
            "a\tb",
            "a\0b",
            "-rf",
            "/etc",
            "a/../b",
            "..",
            "'x'",
            '"x"',
            "a\\b",
            "~root",
            "a*",
            "a{b}",
        ],
    )
    def test_unsafe_text_is_rejected(self, value: str) -> None:
        with pytest.raises(UnsafeValueError, match="field"):
            check_text("field", value)

    @pytest.mark.parametrize(
        "value", ["CDC badwire", "PXD hot/dead pixel calibration", "release-11-00-00", "a.b+c"]
    )
    def test_safe_text_passes(self, value: str) -> None:
        assert check_text("field", value) == value

    def test_name_rejects_slash_space_and_leading_dot(self) -> None:
        for value in ("a/b", "a b", ".hidden", "_x"):
            with pytest.raises(UnsafeValueError):
                check_name("request_id", value)
        assert check_name("request_id", "prompt-e0026-b01") == "prompt-e0026-b01"

    def test_valid_request_passes(self) -> None:
        check_request_for_site(SPEC)

    @pytest.mark.parametrize(
        ("field", "value", "named"),
        [
            ("uid", "b01\n", "request_id"),
            ("kind", "prompt;id", "kind"),
            ("site", "BNL$(id)", "site"),
            ("release", "release-11-00-00\nid", "release"),
            ("staging_tag", "tag`id`", "staging_tag"),
            ("running_tag", "../running", "running_tag"),
            ("requested_by", "manager; rm -rf ~", "requested_by"),
            ("calibrations", ("CDC badwire", "/etc/passwd"), "calibrations[1]"),
            (
                "filter_overrides",
                {"CDC badwire": {"mumu_tight_or_highm_calib": ["Magnet On;id"]}},
                "filter_overrides",
            ),
            ("filter_overrides", {"CDC badwire": {"../x": ["Magnet On"]}}, "filter_overrides"),
            ("expert_config_overrides", {"CDC badwire": {"mode": "$(reboot)"}}, "expert_config"),
            ("expert_config_overrides", {"CDC badwire": {"paths": ["ok", "../../secret"]}}, "expert_config"),
            ("expert_config_overrides", {"CDC badwire": {"bad\nkey": 1}}, "expert_config"),
        ],
    )
    def test_each_request_field_is_checked(self, field: str, value: object, named: str) -> None:
        with pytest.raises(UnsafeValueError) as caught:
            check_request_for_site(replace(SPEC, **{field: value}))
        assert named in str(caught.value)


class TestKeys:
    def test_job_key_contains_request_calibration_and_attempt(self) -> None:
        key = job_key("prompt-e0026-b01", "PXD hot/dead pixel calibration", 3)
        assert key.startswith("prompt-e0026-b01/PXD_hot_dead_pixel_calibration-")
        assert key.endswith("/attempt-3")
        assert key.rsplit("/", 1)[0] == calibration_key("prompt-e0026-b01", "PXD hot/dead pixel calibration")

    def test_keys_of_similar_names_differ(self) -> None:
        assert calibration_key("r", "a b") != calibration_key("r", "a_b")
        assert calibration_key("r1", "a") != calibration_key("r2", "a")

    def test_invalid_attempt_is_rejected(self) -> None:
        for attempt in (0, -1, True, 1.5):
            with pytest.raises(ValueError, match="attempt"):
                job_key("r", "a", attempt)  # type: ignore[arg-type]

    def test_job_folder_is_below_work_root(self) -> None:
        folder = job_folder("/data/b2cal/jobs", "req", "CDC badwire")
        assert folder.startswith("/data/b2cal/jobs/req/CDC_badwire-")


class TestScripts:
    def test_start_script_quotes_every_value(self, tmp_path: Path) -> None:
        trap = tmp_path / "trap"
        launch = JobLaunch(
            paths=JobPaths(str(tmp_path / "job dir"), 1),
            argv=[
                sys.executable,
                "-c",
                "import sys; print(sys.argv[1:])",
                f"; touch {trap}",
                f"$(touch {trap})",
                "a\nb",
            ],
            env={"NOTE": f"`touch {trap}`"},
        )

        result = run(launch_job(LocalTransport(), launch))
        snapshot = wait_until_ended(str(tmp_path / "job dir"))

        assert result.attached is False
        assert snapshot.exit_status == 0
        assert not trap.exists()
        printed = "\n".join(snapshot.log_tail)
        assert f"; touch {trap}" in printed
        assert f"$(touch {trap})" in printed

    def test_start_script_is_valid_sh(self, tmp_path: Path) -> None:
        launch = JobLaunch(
            paths=JobPaths("/x/y", 2), argv=["prog", "it's"], setup_command="source /setup 'r'"
        )
        script = build_start_script(launch, {"caf_config.json": ".caf_config.json.abc"})
        checked = subprocess.run(["/bin/sh", "-n"], input=script, text=True, capture_output=True, check=False)
        assert checked.returncode == 0, checked.stderr

    def test_probe_arguments_are_data(self) -> None:
        program = build_probe_program("list", folders=["a'b\"c\n$(id)"], pattern="*.root")
        header = program.splitlines()[1]
        assert header.startswith("ARGS = json.loads(")
        namespace: dict = {}
        exec("import json\n" + header, namespace)  # noqa: S102 - the header is a literal built above
        assert namespace["ARGS"]["folders"] == ["a'b\"c\n$(id)"]


def wait_until_ended(job_dir: str, kind: str = "exit_status", timeout: float = 30) -> JobSnapshot:
    deadline = time.monotonic() + timeout
    while True:
        snapshot = run(inspect_job(LocalTransport(), job_dir, caf=kind == "caf"))
        if judge_snapshot(snapshot, kind).state != "running" or time.monotonic() > deadline:  # type: ignore[arg-type]
            return snapshot
        time.sleep(0.1)


class TestLocalJobs:
    def test_second_launch_of_an_attempt_attaches(self, tmp_path: Path) -> None:
        marker = tmp_path / "runs.txt"
        launch = JobLaunch(
            paths=JobPaths(str(tmp_path / "job"), 1),
            argv=[sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x')"],
        )
        first = run(launch_job(LocalTransport(), launch, {"input.txt": "one"}))
        second = run(launch_job(LocalTransport(), launch, {"input.txt": "two"}))
        wait_until_ended(str(tmp_path / "job"))

        assert first.attached is False
        assert first.pid is not None
        assert second.attached is True
        assert marker.read_text() == "x"
        assert (tmp_path / "job" / "input.txt").read_text() == "one"
        assert sorted(path.name for path in (tmp_path / "job").iterdir()) == ["attempt-1", "input.txt"]

    def test_failed_setup_command_fails_the_job(self, tmp_path: Path) -> None:
        launch = JobLaunch(paths=JobPaths(str(tmp_path / "job"), 1), argv=["true"], setup_command="false")
        run(launch_job(LocalTransport(), launch))
        snapshot = wait_until_ended(str(tmp_path / "job"))

        assert snapshot.exit_status == 1
        assert any("set-up command failed" in line for line in snapshot.log_tail)

    def test_stop_marks_the_attempt_cancelled(self, tmp_path: Path) -> None:
        paths = JobPaths(str(tmp_path / "job"), 1)
        run(
            launch_job(
                LocalTransport(),
                JobLaunch(paths=paths, argv=[sys.executable, "-c", "import time; time.sleep(60)"]),
            )
        )

        message = run(stop_job(LocalTransport(), paths))
        snapshot = wait_until_ended(paths.job_dir)

        assert message.startswith("b2cal-stop: stopped")
        assert snapshot.cancelled is True
        assert snapshot.alive is False
        assert judge_snapshot(snapshot, "exit_status").reason == "attempt 1 was cancelled by a user"

    def test_stop_leaves_a_reused_pid_alone(self, tmp_path: Path) -> None:
        paths = JobPaths(str(tmp_path / "job"), 1)
        Path(paths.attempt_dir).mkdir(parents=True)
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            Path(paths.file("job.pid")).write_text(str(other.pid))
            message = run(stop_job(LocalTransport(), paths))
            assert "is not this job" in message
            assert other.poll() is None
        finally:
            other.kill()
            other.wait()

    def test_list_folders_returns_matching_files(self, tmp_path: Path) -> None:
        (tmp_path / "a").mkdir()
        (tmp_path / "a" / "x.root").write_text("12345")
        (tmp_path / "a" / "y.txt").write_text("no")

        found = run(list_folders(LocalTransport(), [str(tmp_path / "a"), str(tmp_path / "missing")]))

        assert found == {str(tmp_path / "a"): [("x.root", 5)]}


def snapshot_of(**values: object) -> JobSnapshot:
    base = {
        "job_dir": "/w/j",
        "job_dir_exists": True,
        "attempts": [1],
        "attempt": 1,
        "pid": 42,
        "claimed_age": 500.0,
    }
    base.update(values)
    return JobSnapshot(**base)  # type: ignore[arg-type]


COMPLETED = CafFacts(
    rows=[CafRow("CDC badwire", "completed", "completed", 0)],
    state_db_found=True,
    output_databases={"CDC badwire": Path("/w/j/caf_outputdb_results/CDC badwire")},
)
FAILED = CafFacts(rows=[CafRow("CDC badwire", "failed", "collector_completed", 0)], state_db_found=True)


class TestDecisions:
    def test_nothing_started_starts_attempt_one(self) -> None:
        decision = decide_submission(snapshot_of(attempts=[], attempt=None, pid=None))
        assert (decision.action, decision.attempt, decision.resume) == ("start", 1, False)

    def test_running_attempt_is_attached(self) -> None:
        decision = decide_submission(snapshot_of(alive=True))
        assert (decision.action, decision.attempt) == ("attach", 1)

    def test_claimed_attempt_without_pid_is_attached_during_grace(self) -> None:
        assert decide_submission(snapshot_of(pid=None, claimed_age=5.0)).action == "attach"
        assert decide_submission(snapshot_of(pid=None, claimed_age=600.0)).action == "start"

    def test_succeeded_attempt_is_taken(self) -> None:
        decision = decide_submission(snapshot_of(exit_status=0, facts=COMPLETED))
        assert (decision.action, decision.attempt) == ("finished", 1)

    def test_failed_attempt_resumes_or_starts_clean(self) -> None:
        failed = snapshot_of(exit_status=1, facts=FAILED, attempts=[1, 2], attempt=2)
        assert decide_submission(failed).attempt == 3
        assert decide_submission(failed).resume is True
        assert decide_submission(failed, clean_start=True).resume is False

    def test_failed_rows_while_alive_count_as_running(self) -> None:
        verdict = judge_snapshot(snapshot_of(alive=True, facts=FAILED))
        assert verdict.state == "running"
        assert "waiting for b2caf-prompt-run to exit" in verdict.reason

    def test_exit_zero_with_logged_error_is_failed(self) -> None:
        snapshot = snapshot_of(
            exit_status=0,
            error_lines=["[2026-01-01 00:00:00] [ERROR] The file input_data.json does not exist"],
        )
        verdict = judge_snapshot(snapshot)
        assert verdict.state == "failed"
        assert "input_data.json does not exist" in verdict.reason

    def test_higher_wanted_attempt_starts_clean_after_success(self) -> None:
        decision = decide_submission(snapshot_of(exit_status=0, facts=COMPLETED), attempt=2)
        assert (decision.action, decision.attempt, decision.resume) == ("start", 2, False)

    def test_higher_wanted_attempt_waits_for_a_running_one(self) -> None:
        with pytest.raises(JobBusyError, match="attempt 1 still runs"):
            decide_submission(snapshot_of(alive=True), attempt=2)


def test_snapshot_from_probe_output(tmp_path: Path) -> None:
    job_dir = tmp_path / "job"
    (job_dir / "attempt-1").mkdir(parents=True)
    (job_dir / "attempt-1" / "job.exit").write_text("0\n")
    (job_dir / "attempt-1" / "job.log").write_text("line 1\n[ERROR] broken\nline 3\n")
    (job_dir / "caf_config.json").write_text(json.dumps({}))

    snapshot = run(inspect_job(LocalTransport(), str(job_dir)))

    assert snapshot.attempts == [1]
    assert snapshot.exit_status == 0
    assert snapshot.files == {"caf_config.json": True, "input_data.json": False}
    assert snapshot.error_lines == ["[ERROR] broken"]
    assert snapshot.log_tail == ["line 1", "[ERROR] broken", "line 3"]
    assert snapshot.facts.state_db_found is False


def test_local_transport_reports_a_failing_command() -> None:
    result = run(LocalTransport().run(["/bin/sh", "-s"], "echo out; echo err >&2; exit 4", 10))
    assert (result.exit_status, result.stdout, result.stderr) == (4, "out\n", "err\n")
    assert shlex.join(["/bin/sh", "-s"]) == "/bin/sh -s"
