"""Run the installed basf2 stand-ins in temporary folders and check their output, files and exit status."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from standin_support import packaged_release, tool_path

from b2cal.caf import build_prompt_run_command, judge_job, read_caf_state
from b2cal.iov import IoV

RunTool = Callable[..., subprocess.CompletedProcess[str]]

RUN_ARGS = ["Local", "caf_config.json", "input_data.json", "--heartbeat", "1"]


def catalog_entry(script: str) -> dict[str, Any]:
    return next(entry for entry in packaged_release()["calibrations"] if entry["script"] == script)


def two_step_release() -> dict[str, Any]:
    """Return a release whose caf_two.py runs two CAF calibrations, the second one with a payload."""
    release = packaged_release()
    release["basf2_release"] = "release-test"
    release["calibrations"].append(
        {
            **catalog_entry("caf_beamspot.py"),
            "name": "Two step",
            "script": "caf_two.py",
            "depends_on": [],
            "produced_payloads": ["StepTwoPayload"],
            "caf_calibrations": [
                {"name": "Step one", "payloads": []},
                {"name": "Step two", "payloads": ["StepTwoPayload"]},
            ],
        }
    )
    return release


# ---------------------------------------------------------------------------------------------------------
# b2caf-prompt-show


def test_show_json_matches_catalog(run_tool: RunTool, tmp_path: Path) -> None:
    result = run_tool("b2caf-prompt-show", ["--json", "caf_beamspot.py"], tmp_path)

    assert result.returncode == 0, result.stderr
    expected = {key: value for key, value in catalog_entry("caf_beamspot.py").items() if key != "script"}
    assert json.loads(result.stdout) == expected


def test_show_accepts_script_path(run_tool: RunTool, tmp_path: Path) -> None:
    result = run_tool("b2caf-prompt-show", ["--json", "/somewhere/prompt/caf_cdc.py"], tmp_path)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["name"] == "CDC Tracking"


def test_show_summary_is_readable(run_tool: RunTool, tmp_path: Path) -> None:
    result = run_tool("b2caf-prompt-show", ["--script-name", "caf_arich.py"], tmp_path)

    assert result.returncode == 0, result.stderr
    assert "ARICH channel masks" in result.stdout
    assert "expert_username='arich-calibration-expert'" in result.stdout


def test_show_unknown_script_fails(run_tool: RunTool, tmp_path: Path) -> None:
    result = run_tool("b2caf-prompt-show", ["--json", "caf_nothing.py"], tmp_path)

    assert result.returncode == 1
    assert result.stdout == ""
    assert "[ERROR]" in result.stderr
    assert "caf_nothing.py" in result.stderr


def test_show_lists_scripts_without_name(run_tool: RunTool, tmp_path: Path) -> None:
    result = run_tool("b2caf-prompt-show", ["--json"], tmp_path)

    assert result.returncode == 0, result.stderr
    expected = sorted(entry["script"] for entry in packaged_release()["calibrations"])
    assert json.loads(result.stdout) == expected


def test_show_unknown_release_fails(run_tool: RunTool, tmp_path: Path) -> None:
    result = run_tool("b2caf-prompt-show", ["--json"], tmp_path, env={"BELLE2_RELEASE": "release-00-00-00"})

    assert result.returncode == 1
    assert "release-00-00-00" in result.stderr


# ---------------------------------------------------------------------------------------------------------
# b2caf-prompt-check


def test_check_packaged_release_passes(run_tool: RunTool, tmp_path: Path) -> None:
    result = run_tool("b2caf-prompt-check", [], tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "No problems found in 28 prompt scripts of release-11-00-00" in result.stdout
    assert result.stderr == ""


def test_check_broken_release_fails(
    run_tool: RunTool, tmp_path: Path, custom_release: Callable[..., dict[str, str]]
) -> None:
    release = packaged_release()
    release["check_error"] = "ImportError: circular import of prompt.calibrations"
    env = custom_release(release)

    result = run_tool("b2caf-prompt-check", [], tmp_path, env=env)

    assert result.returncode == 1
    assert "caf_beamspot.py: ImportError: circular import of prompt.calibrations" in result.stdout
    assert "[ERROR]" in result.stderr


def test_check_broken_script_only_fails_itself(
    run_tool: RunTool, tmp_path: Path, custom_release: Callable[..., dict[str, str]]
) -> None:
    release = packaged_release()
    catalog = {entry["script"]: entry for entry in release["calibrations"]}
    catalog["caf_top.py"]["check_error"] = "SyntaxError in caf_top.py"
    env = custom_release(release)

    broken = run_tool("b2caf-prompt-check", ["caf_top.py"], tmp_path, env=env)
    healthy = run_tool("b2caf-prompt-check", ["caf_arich.py", "caf_cdc.py"], tmp_path, env=env)

    assert broken.returncode == 1
    assert "caf_top.py: SyntaxError in caf_top.py" in broken.stdout
    assert healthy.returncode == 0, healthy.stdout


def test_check_reports_invalid_settings(
    run_tool: RunTool, tmp_path: Path, custom_release: Callable[..., dict[str, str]]
) -> None:
    release = packaged_release()
    catalog = {entry["script"]: entry for entry in release["calibrations"]}
    catalog["caf_arich.py"]["input_data_filters"]["bhabha_all_calib"].append("NOT no_such_tag")
    catalog["caf_arich.py"]["input_data_formats"] = ["raw", "hdf5"]
    catalog["caf_boostvector.py"]["depends_on"] = ["eCMS Calibrations"]
    catalog["caf_cdc.py"]["name"] = "x" * 65
    env = custom_release(release)

    result = run_tool("b2caf-prompt-check", [], tmp_path, env=env)

    assert result.returncode == 1
    assert (
        "caf_arich.py: input_data_filters['bhabha_all_calib'] has unknown filter 'NOT no_such_tag'"
        in result.stdout
    )
    assert "unknown formats ['hdf5']" in result.stdout
    assert "Circular dependency:" in result.stdout
    assert "caf_cdc.py: name" in result.stdout
    # caf_cdc.py's dependants now name a calibration that no longer exists.
    assert "depends_on names 'CDC Tracking'" in result.stdout


def test_check_unknown_script_fails(run_tool: RunTool, tmp_path: Path) -> None:
    result = run_tool("b2caf-prompt-check", ["caf_nothing.py"], tmp_path)

    assert result.returncode == 1
    assert "caf_nothing.py" in result.stdout


# ---------------------------------------------------------------------------------------------------------
# b2caf-prompt-run: success


def test_run_success_writes_payloads(run_tool: RunTool, make_job: Callable[..., Path]) -> None:
    job_dir = make_job("caf_cdc.py", catalog_entry("caf_cdc.py")["input_data_names"])

    result = run_tool("b2caf-prompt-run", RUN_ARGS, job_dir)

    assert result.returncode == 0, result.stdout + result.stderr
    rows = read_caf_state(job_dir / "calibration_results")
    assert [(row.name, row.state, row.checkpoint, row.iteration) for row in rows] == [
        ("CDC Tracking", "completed", "completed", 0)
    ]
    output_dir = job_dir / "caf_outputdb_results" / "CDC Tracking"
    payloads = catalog_entry("caf_cdc.py")["produced_payloads"]
    expected_lines = [f"dbstore/{payload} 1 26,100,-1,-1" for payload in payloads]
    assert (output_dir / "database.txt").read_text().splitlines() == expected_lines
    for payload in payloads:
        content = (output_dir / f"dbstore_{payload}_rev_1.root").read_bytes()
        assert content.startswith(b"root")
        assert payload.encode() in content
    # Three inputs with two runs each, one subjob a file.
    exit_files = sorted(
        (job_dir / "calibration_results" / "CDC Tracking" / "0").glob("collector_output/*/*/*STATUS*")
    )
    assert len(exit_files) == 6
    assert {path.read_text().strip() for path in exit_files} == {"0"}

    verdict = judge_job(job_dir, process_alive=False, log_text=result.stdout + result.stderr)
    assert verdict.state == "succeeded", verdict.reason
    assert verdict.subjobs_done == 6
    assert verdict.subjobs_total == 6
    assert verdict.output_databases == {"CDC Tracking": output_dir}


def test_run_without_payloads_writes_empty_index(run_tool: RunTool, make_job: Callable[..., Path]) -> None:
    job_dir = make_job("caf_arich.py", ["bhabha_all_calib"])

    result = run_tool("b2caf-prompt-run", RUN_ARGS, job_dir)

    assert result.returncode == 0, result.stderr
    output_dir = job_dir / "caf_outputdb_results" / "ARICH channel masks"
    assert (output_dir / "database.txt").read_text() == ""
    assert sorted(path.name for path in output_dir.iterdir()) == ["database.txt"]
    assert judge_job(job_dir, process_alive=False).state == "succeeded"


def test_run_folder_name_replaces_slash(run_tool: RunTool, make_job: Callable[..., Path]) -> None:
    job_dir = make_job("caf_pxd.py", catalog_entry("caf_pxd.py")["input_data_names"])

    result = run_tool("b2caf-prompt-run", RUN_ARGS, job_dir)

    assert result.returncode == 0, result.stderr
    assert (job_dir / "caf_outputdb_results" / "PXD hot_dead pixel calibration" / "database.txt").is_file()
    assert read_caf_state(job_dir / "calibration_results")[0].name == "PXD hot/dead pixel calibration"
    assert judge_job(job_dir, process_alive=False).state == "succeeded"


def test_run_payload_bytes_depend_on_bucket(run_tool: RunTool, make_job: Callable[..., Path]) -> None:
    first = make_job("caf_beamspot.py", ["mumu_tight_or_highm_calib"], name="first")
    second = make_job(
        "caf_beamspot.py",
        ["mumu_tight_or_highm_calib"],
        name="second",
        requested_iov=IoV(26, 300, 26, 400),
        runs=(300, 301),
    )

    for job_dir in (first, second):
        result = run_tool("b2caf-prompt-run", RUN_ARGS, job_dir)
        assert result.returncode == 0, result.stderr
    payload = Path("caf_outputdb_results", "BeamSpot Calibrations", "dbstore_BeamSpot_rev_1.root")
    first_bytes = (first / payload).read_bytes()
    assert first_bytes != (second / payload).read_bytes()
    index = (second / payload.parent / "database.txt").read_text()
    assert index == "dbstore/BeamSpot 1 26,300,-1,-1\n"

    rerun = run_tool(
        "b2caf-prompt-run", [*RUN_ARGS, "--overwrite-working-dir", "--overwrite-output-db"], first
    )
    assert rerun.returncode == 0, rerun.stderr
    assert (first / payload).read_bytes() == first_bytes


def test_run_iterations_fill_iteration_column(run_tool: RunTool, make_job: Callable[..., Path]) -> None:
    job_dir = make_job("caf_beamspot.py", ["mumu_tight_or_highm_calib"])

    result = run_tool("b2caf-prompt-run", RUN_ARGS, job_dir, env={"B2CAL_FAKE_ITERATIONS": "3"})

    assert result.returncode == 0, result.stderr
    rows = read_caf_state(job_dir / "calibration_results")
    assert rows[0].iteration == 2
    assert rows[0].state == "completed"
    calibration_dir = job_dir / "calibration_results" / "BeamSpot Calibrations"
    assert sorted(path.name for path in calibration_dir.iterdir()) == ["0", "1", "2", "outputdb"]
    assert judge_job(job_dir, process_alive=False).iteration == 2


def test_run_subjob_limits_split_files(run_tool: RunTool, make_job: Callable[..., Path]) -> None:
    job_dir = make_job("caf_beamspot.py", ["mumu_tight_or_highm_calib"], runs=(100, 101, 102, 103, 104))

    result = run_tool("b2caf-prompt-run", [*RUN_ARGS, "--max-subjobs", "2"], job_dir)

    assert result.returncode == 0, result.stderr
    collection_dir = (
        job_dir / "calibration_results/BeamSpot Calibrations/0/collector_output/mumu_tight_or_highm_calib"
    )
    file_counts = [
        len(json.loads((path / "input_data_files.json").read_text()))
        for path in sorted(collection_dir.iterdir())
    ]
    assert file_counts == [3, 2]


def test_run_limits_exclude_each_other(run_tool: RunTool, make_job: Callable[..., Path]) -> None:
    job_dir = make_job("caf_beamspot.py", ["mumu_tight_or_highm_calib"])

    result = run_tool(
        "b2caf-prompt-run", [*RUN_ARGS, "--max-subjobs", "2", "--max-files-per-subjob", "1"], job_dir
    )

    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr


def test_run_dry_run_writes_nothing(run_tool: RunTool, make_job: Callable[..., Path]) -> None:
    job_dir = make_job("caf_beamspot.py", ["mumu_tight_or_highm_calib"])

    result = run_tool("b2caf-prompt-run", [*RUN_ARGS, "--dry-run"], job_dir)

    assert result.returncode == 0, result.stderr
    assert "Calibration 'BeamSpot Calibrations' produces payloads: BeamSpot" in result.stdout
    assert "subjob 1:" in result.stdout
    assert not (job_dir / "calibration_results").exists()
    assert not (job_dir / "caf_outputdb_results").exists()


def test_run_existing_output_db_fails(run_tool: RunTool, make_job: Callable[..., Path]) -> None:
    job_dir = make_job("caf_arich.py", ["bhabha_all_calib"])
    (job_dir / "caf_outputdb_results").mkdir()

    result = run_tool("b2caf-prompt-run", RUN_ARGS, job_dir)

    assert result.returncode == 1
    assert "Will not overwrite output db!" in result.stderr
    verdict = judge_job(job_dir, process_alive=False, log_text=result.stderr)
    assert verdict.state == "failed"
    assert "Will not overwrite output db" in verdict.reason


@pytest.mark.parametrize(
    ("backend", "backend_options"),
    [
        ("Local", {"max_processes": 2}),
        ("LSF", {"queue": "l", "global_job_limit": 50}),
        ("PBS", {"queue": "short", "submission_check_heartbeat": 30}),
        ("HTCondor", {"universe": "vanilla", "getenv": False, "path_prefix": "root://xrootd.example:1094"}),
    ],
)
def test_run_accepts_built_command(
    backend: str, backend_options: dict[str, Any], base_env: dict[str, str], make_job: Callable[..., Path]
) -> None:
    job_dir = make_job("caf_beamspot.py", ["mumu_tight_or_highm_calib"])
    command = build_prompt_run_command(
        backend,
        "caf_config.json",
        "input_data.json",
        backend_options=backend_options,
        options={"heartbeat": 1, "max_files_per_subjob": 1, "overwrite_output_db": True, "permissive": False},
        program=tool_path("b2caf-prompt-run"),
    )

    result = subprocess.run(
        command, cwd=job_dir, env=base_env, capture_output=True, text=True, timeout=30, check=False
    )

    assert result.returncode == 0, result.stderr
    assert f"Requested use of {backend} backend" in result.stdout
    assert judge_job(job_dir, process_alive=False).state == "succeeded"


# ---------------------------------------------------------------------------------------------------------
# b2caf-prompt-run: failures and the exit status quirk


@pytest.mark.parametrize(
    ("stage", "failed_state"), [("collector", "collector_failed"), ("algorithms", "algorithms_failed")]
)
def test_run_failed_calibration_exits_1(
    stage: str, failed_state: str, run_tool: RunTool, make_job: Callable[..., Path]
) -> None:
    job_dir = make_job("caf_beamspot.py", ["mumu_tight_or_highm_calib"])

    result = run_tool(
        "b2caf-prompt-run", RUN_ARGS, job_dir, env={"B2CAL_FAKE_FAIL": f"caf_beamspot.py:{stage}"}
    )

    assert result.returncode == 1
    assert f"moved to state {failed_state}" in result.stdout
    assert "BeamSpot Calibrations failed!" in result.stderr
    rows = read_caf_state(job_dir / "calibration_results")
    assert [(row.name, row.state) for row in rows] == [("BeamSpot Calibrations", "failed")]
    assert not (job_dir / "caf_outputdb_results").exists()

    verdict = judge_job(job_dir, process_alive=False, log_text=result.stdout + result.stderr)
    assert verdict.state == "failed"
    assert "'BeamSpot Calibrations' is failed" in verdict.reason
    assert verdict.subjobs_failed == (1 if stage == "collector" else 0)


def test_run_failure_stops_later_calibrations(
    run_tool: RunTool, make_job: Callable[..., Path], custom_release: Callable[..., dict[str, str]]
) -> None:
    env = custom_release(two_step_release())
    job_dir = make_job("caf_two.py", ["mumu_tight_or_highm_calib"])

    result = run_tool("b2caf-prompt-run", RUN_ARGS, job_dir, env={**env, "B2CAL_FAKE_FAIL": "Step one"})

    assert result.returncode == 1
    states = {row.name: row.state for row in read_caf_state(job_dir / "calibration_results")}
    assert states == {"Step one": "failed"}
    last_exit_status = job_dir / "calibration_results/Step one/0/collector_output/mumu_tight_or_highm_calib/1"
    assert (last_exit_status / "__BACKEND_CMD_EXIT_STATUS__").read_text().strip() == "1"


@pytest.mark.parametrize("missing", ["input_data.json", "caf_config.json"])
def test_run_missing_file_exits_0(missing: str, run_tool: RunTool, make_job: Callable[..., Path]) -> None:
    job_dir = make_job("caf_beamspot.py", ["mumu_tight_or_highm_calib"])
    (job_dir / missing).unlink()

    result = run_tool("b2caf-prompt-run", RUN_ARGS, job_dir)

    assert result.returncode == 0
    assert f"[ERROR] The file {missing} does not exist" in result.stderr
    assert not (job_dir / "calibration_results").exists()
    assert not (job_dir / "caf_outputdb_results").exists()

    with_log = judge_job(job_dir, process_alive=False, log_text=result.stdout + result.stderr)
    assert with_log.state == "failed"
    assert f"The file {missing} does not exist" in with_log.reason
    assert judge_job(job_dir, process_alive=False).state == "failed"
    # The log alone is enough while the exit has not been seen yet.
    assert judge_job(job_dir, process_alive=None, log_text=result.stderr).state == "failed"


def test_run_unknown_script_exits_1(run_tool: RunTool, make_job: Callable[..., Path]) -> None:
    job_dir = make_job("caf_nothing.py", ["mumu_tight_or_highm_calib"])

    result = run_tool("b2caf-prompt-run", RUN_ARGS, job_dir)

    assert result.returncode == 1
    assert "Couldn't import prompt.calibrations.caf_nothing" in result.stderr
    assert judge_job(job_dir, process_alive=False, log_text=result.stderr).state == "failed"


def test_run_missing_input_name_exits_1(run_tool: RunTool, make_job: Callable[..., Path]) -> None:
    job_dir = make_job("caf_cdc.py", ["mumu_tight_or_highm_calib"])

    result = run_tool("b2caf-prompt-run", RUN_ARGS, job_dir)

    assert result.returncode == 1
    assert "does not contain all of the required input names" in result.stderr
    assert "cosmic_calib" in result.stderr


def test_run_passes_uris_and_skips_missing(run_tool: RunTool, make_job: Callable[..., Path]) -> None:
    job_dir = make_job("caf_beamspot.py", ["mumu_tight_or_highm_calib"], runs=(100,))
    inputs = json.loads((job_dir / "input_data.json").read_text())
    inputs["mumu_tight_or_highm_calib"] += [
        ["root://xrootd.example:1094//belle/r00101.root", [26, 101]],
        [str(job_dir / "data" / "gone"), [26, 102]],
    ]
    (job_dir / "input_data.json").write_text(json.dumps(inputs))

    result = run_tool("b2caf-prompt-run", RUN_ARGS, job_dir)

    assert result.returncode == 0, result.stderr
    assert "doesn't exist, skipping" in result.stdout
    collection_dir = (
        job_dir / "calibration_results/BeamSpot Calibrations/0/collector_output/mumu_tight_or_highm_calib"
    )
    listed = [
        json.loads((path / "input_data_files.json").read_text())[0][0]
        for path in sorted(collection_dir.iterdir())
    ]
    assert len(listed) == 2
    assert listed[1] == "root://xrootd.example:1094//belle/r00101.root"


# ---------------------------------------------------------------------------------------------------------
# b2caf-prompt-run: resume


def wait_for_row_state(working_dir: Path, name: str, state: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, "b2caf-prompt-run ended before the state was reached"
        try:
            states = {row.name: row.state for row in read_caf_state(working_dir)}
        except (FileNotFoundError, sqlite3.OperationalError):
            states = {}
        if states.get(name) == state:
            return
        time.sleep(0.05)
    raise AssertionError(f"{name} did not reach {state} within 20 s")


def test_run_resumes_after_kill(
    base_env: dict[str, str],
    run_tool: RunTool,
    make_job: Callable[..., Path],
    custom_release: Callable[..., dict[str, str]],
) -> None:
    env = {**base_env, **custom_release(two_step_release()), "B2CAL_FAKE_JOB_SECONDS": "1.5"}
    job_dir = make_job("caf_two.py", ["mumu_tight_or_highm_calib"])
    working_dir = job_dir / "calibration_results"
    log_path = job_dir / "first.log"

    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [tool_path("b2caf-prompt-run"), *RUN_ARGS],
            cwd=job_dir,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_for_row_state(working_dir, "Step two", "running_collector", process)
            # Freeze the tool so that its state cannot move on while it is judged on a busy machine.
            process.send_signal(signal.SIGSTOP)
            running = judge_job(job_dir, process_alive=True, log_text=log_path.read_text())
            process.kill()
        finally:
            process.wait(timeout=10)

    assert running.state == "running"
    assert running.calibration_states == {"Step one": "completed", "Step two": "running_collector"}
    assert running.subjobs_total == 4
    killed = judge_job(job_dir, process_alive=False, log_text=log_path.read_text())
    assert killed.state == "failed"
    assert "resume" in killed.reason
    step_one_status = (
        working_dir / "Step one/0/collector_output/mumu_tight_or_highm_calib/0/__BACKEND_CMD_EXIT_STATUS__"
    )
    step_one_mtime = step_one_status.stat().st_mtime_ns

    result = run_tool("b2caf-prompt-run", RUN_ARGS, job_dir, env={**env})

    assert result.returncode == 0, result.stderr
    assert "Calibration Step one is already completed" in result.stdout
    assert "Step one moved to state" not in result.stdout
    assert "Resuming calibration Step two from checkpoint init" in result.stdout
    assert step_one_status.stat().st_mtime_ns == step_one_mtime
    states = {row.name: row.state for row in read_caf_state(working_dir)}
    assert states == {"Step one": "completed", "Step two": "completed"}
    verdict = judge_job(job_dir, process_alive=False, log_text=result.stdout + result.stderr)
    assert verdict.state == "succeeded", verdict.reason
    assert set(verdict.output_databases) == {"Step one", "Step two"}
    step_two_index = job_dir / "caf_outputdb_results/Step two/database.txt"
    assert step_two_index.read_text() == "dbstore/StepTwoPayload 1 26,100,-1,-1\n"


def test_run_resumes_from_collector_checkpoint(run_tool: RunTool, make_job: Callable[..., Path]) -> None:
    job_dir = make_job("caf_beamspot.py", ["mumu_tight_or_highm_calib"])
    failed = run_tool(
        "b2caf-prompt-run", RUN_ARGS, job_dir, env={"B2CAL_FAKE_FAIL": "caf_beamspot.py:algorithms"}
    )
    assert failed.returncode == 1
    status_update = run_tool(
        "b2caf-status", ["update", "BeamSpot Calibrations", "checkpoint", "collector_completed"], job_dir
    )
    assert status_update.returncode == 0, status_update.stderr

    result = run_tool("b2caf-prompt-run", RUN_ARGS, job_dir)

    assert result.returncode == 0, result.stderr
    assert "from checkpoint collector_completed" in result.stdout
    assert "moved to state running_collector" not in result.stdout
    assert judge_job(job_dir, process_alive=False).state == "succeeded"


# ---------------------------------------------------------------------------------------------------------
# b2caf-status


def test_status_prints_table(run_tool: RunTool, make_job: Callable[..., Path]) -> None:
    job_dir = make_job("caf_arich.py", ["bhabha_all_calib"])
    assert run_tool("b2caf-prompt-run", RUN_ARGS, job_dir).returncode == 0

    default_path = run_tool("b2caf-status", [], job_dir)
    explicit_path = run_tool(
        "b2caf-status", ["--path", str(job_dir / "calibration_results"), "show"], job_dir.parent
    )

    assert default_path.returncode == 0, default_path.stderr
    assert "Calibrations Table" in default_path.stdout
    row = next(line for line in default_path.stdout.splitlines() if line.startswith("ARICH"))
    assert row.split()[-3:] == ["completed", "completed", "0"]
    assert explicit_path.stdout == default_path.stdout


def test_status_without_database_fails(run_tool: RunTool, tmp_path: Path) -> None:
    result = run_tool("b2caf-status", [], tmp_path)

    assert result.returncode == 1
    assert "No database at path: calibration_results/caf_state.db" in result.stdout
