"""Tests of the CAF helpers: configuration files, command line, state table and job verdict."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from b2cal.caf import (
    CafRow,
    build_prompt_run_command,
    caf_config_json,
    calibration_folder_name,
    judge_job,
    read_caf_config,
    read_caf_state,
    read_input_data,
    write_caf_config,
    write_input_data,
)
from b2cal.iov import IoV

# ---------------------------------------------------------------------------------------------------------
# caf_config.json


def test_caf_config_round_trip(tmp_path: Path) -> None:
    path = write_caf_config(
        tmp_path / "caf_config.json",
        "caf_beamspot.py",
        ["online", "staging_prompt_bucket36"],
        IoV(26, 1200, 26, 1850),
        expert_config={"outerloss": "pow(0.000005e-1*rawTime, 2) + 1./nTracks"},
        backend_args={"queue": "l"},
        testing_payloads="testing/database.txt",
    )

    config = read_caf_config(path)
    assert config.caf_script == "caf_beamspot.py"
    assert config.database_chain == ["online", "staging_prompt_bucket36"]
    assert config.requested_iov == IoV(26, 1200, 26, 1850)
    assert config.expert_config == {"outerloss": "pow(0.000005e-1*rawTime, 2) + 1./nTracks"}
    assert config.backend_args == {"queue": "l"}
    assert config.testing_payloads == "testing/database.txt"


def test_caf_config_omits_unset_keys(tmp_path: Path) -> None:
    path = write_caf_config(tmp_path / "caf_config.json", "caf_cdc.py", ["online"], IoV(26, 0, 26, -1))

    content = json.loads(path.read_text())
    assert content == {
        "caf_script": "caf_cdc.py",
        "database_chain": ["online"],
        "requested_iov": [26, 0, 26, -1],
    }
    assert sorted(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"caf_script": "caf_beamspot"}, "caf_script 'caf_beamspot'"),
        ({"database_chain": "online"}, "database_chain 'online' must be a list"),
        ({"database_chain": []}, "database_chain is empty"),
        ({"database_chain": ["online", ""]}, r"database_chain\[1\] ''"),
        ({"requested_iov": [26, 0, 26, -1]}, "requested_iov .* must be an IoV"),
        ({"expert_config": ["a"]}, "expert_config .* must be a mapping"),
        ({"expert_config": {"when": object()}}, "not JSON serialisable"),
        ({"testing_payloads": ""}, "testing_payloads ''"),
    ],
)
def test_caf_config_rejects_bad_values(arguments: dict[str, Any], message: str) -> None:
    values: dict[str, Any] = {
        "caf_script": "caf_beamspot.py",
        "database_chain": ["online"],
        "requested_iov": IoV(26, 0),
        **arguments,
    }

    with pytest.raises(ValueError, match=message):
        caf_config_json(**values)


def test_read_caf_config_reports_missing_keys(tmp_path: Path) -> None:
    path = tmp_path / "caf_config.json"
    path.write_text(json.dumps({"caf_script": "caf_cdc.py"}))

    with pytest.raises(ValueError, match=r"lacks the keys \['database_chain', 'requested_iov'\]"):
        read_caf_config(path)


def test_read_caf_config_reports_bad_iov(tmp_path: Path) -> None:
    path = tmp_path / "caf_config.json"
    path.write_text(json.dumps({"caf_script": "caf_cdc.py", "database_chain": [], "requested_iov": [26, 5]}))

    with pytest.raises(ValueError, match="requested_iov is invalid"):
        read_caf_config(path)


# ---------------------------------------------------------------------------------------------------------
# input_data.json


def test_input_data_round_trip(tmp_path: Path) -> None:
    inputs = {
        "hadron_calib": [
            ("/data/e0026/r01200/hadron", (26, 1200)),
            ("/data/e0026/r01201/hadron", (26, 1201)),
        ],
        "mumu_tight_or_highm_calib": [("root://xrootd.example:1094//belle/r01200.root", (26, 1200))],
    }

    path = write_input_data(tmp_path / "input_data.json", inputs)

    assert json.loads(path.read_text()) == {
        "hadron_calib": [
            ["/data/e0026/r01200/hadron", [26, 1200]],
            ["/data/e0026/r01201/hadron", [26, 1201]],
        ],
        "mumu_tight_or_highm_calib": [["root://xrootd.example:1094//belle/r01200.root", [26, 1200]]],
    }
    assert read_input_data(path) == inputs


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "non-empty mapping"),
        ({"": [("/a", (1, 2))]}, "Input name ''"),
        ({"hadron_calib": "/data/hadron"}, "Input 'hadron_calib': '/data/hadron' must be a list"),
        ({"hadron_calib": [("/a", (26, 1)), "/b"]}, "Input 'hadron_calib' entry 1 '/b' must be a pair"),
        ({"hadron_calib": [("/a", (26, 1), "x")]}, "Input 'hadron_calib' entry 0 .* must be a pair"),
        ({"hadron_calib": [("", (26, 1))]}, "Input 'hadron_calib' entry 0: path ''"),
        ({"hadron_calib": [("/a", 26)]}, "Input 'hadron_calib' entry 0: 26 must be a pair"),
        ({"hadron_calib": [("/a", (26, -1))]}, "Input 'hadron_calib' entry 0: run -1"),
        ({"hadron_calib": [("/a", ("26", 1))]}, "Input 'hadron_calib' entry 0: exp '26'"),
        ({"hadron_calib": [("/a", (True, 1))]}, "Input 'hadron_calib' entry 0: exp True"),
    ],
)
def test_input_data_rejects_bad_entries(tmp_path: Path, inputs: dict[str, Any], message: str) -> None:
    path = tmp_path / "input_data.json"

    with pytest.raises(ValueError, match=message):
        write_input_data(path, inputs)
    assert not path.exists()


def test_input_data_warns_on_empty_list(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_input_data(tmp_path / "input_data.json", {"hadron_calib": [], "bhabha_all_calib": [("/a", (1, 1))]})

    assert "Input 'hadron_calib' has no files" in caplog.text


def test_read_input_data_rejects_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "input_data.json"
    path.write_text(json.dumps({"hadron_calib": [["/a", [26]]]}))

    with pytest.raises(ValueError, match="Input 'hadron_calib' entry 0"):
        read_input_data(path)


# ---------------------------------------------------------------------------------------------------------
# Command line


def test_command_for_lsf() -> None:
    command = build_prompt_run_command(
        "LSF",
        "job/caf_config.json",
        Path("job/input_data.json"),
        backend_options={"queue": "l", "global_job_limit": 500, "submission_check_heartbeat": None},
        options={"heartbeat": 60, "max_subjobs": 20, "dry_run": False, "overwrite_working_dir": True},
    )

    assert command == [
        "b2caf-prompt-run",
        "LSF",
        "--queue",
        "l",
        "--global-job-limit",
        "500",
        "job/caf_config.json",
        "job/input_data.json",
        "--heartbeat",
        "60",
        "--max-subjobs",
        "20",
        "--overwrite-working-dir",
    ]


def test_command_for_htcondor_with_program() -> None:
    command = build_prompt_run_command(
        "HTCondor",
        "caf_config.json",
        "input_data.json",
        backend_options={"universe": "vanilla", "getenv": True, "path_prefix": "root://dcache.example:1096"},
        options={"permissive": True},
        program="/cvmfs/belle.cern.ch/tools/b2caf-prompt-run",
    )

    assert command == [
        "/cvmfs/belle.cern.ch/tools/b2caf-prompt-run",
        "HTCondor",
        "--universe",
        "vanilla",
        "--getenv",
        "true",
        "--path-prefix",
        "root://dcache.example:1096",
        "caf_config.json",
        "input_data.json",
        "--permissive",
    ]


@pytest.mark.parametrize(
    ("backend", "backend_options", "options", "message"),
    [
        ("SLURM", {}, {}, "Backend 'SLURM' is not supported: use one of Local, LSF, PBS, HTCondor"),
        ("Local", {"queue": "l"}, {}, "Unknown Local backend option 'queue': accepted are max_processes"),
        ("LSF", {"max-processes": 4}, {}, "Unknown LSF backend option 'max-processes'"),
        ("Local", {}, {"working_dir": "x"}, "Unknown b2caf-prompt-run option 'working_dir'"),
        ("Local", {}, {"max_subjobs": 2, "max_files_per_subjob": 1}, "exclude each other"),
        ("Local", {"max_processes": "4"}, {}, "'max_processes' must be a non-negative integer, got '4'"),
        ("Local", {}, {"heartbeat": True}, "'heartbeat' must be a non-negative integer, got True"),
        ("Local", {}, {"dry_run": "yes"}, "'dry_run' is a flag"),
        ("PBS", {"queue": ""}, {}, "'queue' must be a non-empty string"),
    ],
)
def test_command_rejects_bad_options(
    backend: str, backend_options: dict[str, Any], options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_prompt_run_command(
            backend, "caf_config.json", "input_data.json", backend_options=backend_options, options=options
        )


# ---------------------------------------------------------------------------------------------------------
# State table and verdict


def test_folder_name_replaces_slash() -> None:
    assert calibration_folder_name("PXD hot/dead pixel calibration") == "PXD hot_dead pixel calibration"
    assert calibration_folder_name("CDC Tracking") == "CDC Tracking"
    with pytest.raises(ValueError, match="'..' cannot be used as a folder name"):
        calibration_folder_name("..")


def write_state(job_dir: Path, rows: list[tuple[str, str, str, int]]) -> Path:
    working_dir = job_dir / "calibration_results"
    working_dir.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(working_dir / "caf_state.db")
    connection.execute(
        "CREATE TABLE calibrations (name TEXT, state TEXT, checkpoint TEXT, iteration INTEGER)"
    )
    connection.executemany("INSERT INTO calibrations VALUES (?, ?, ?, ?)", rows)
    connection.commit()
    connection.close()
    return working_dir


def write_subjobs(job_dir: Path, calibration: str, iteration: int, statuses: list[str | None]) -> None:
    collection = (
        job_dir / "calibration_results" / calibration / str(iteration) / "collector_output" / "hadron"
    )
    for number, status in enumerate(statuses):
        subjob_dir = collection / str(number)
        subjob_dir.mkdir(parents=True)
        if status is not None:
            (subjob_dir / "__BACKEND_CMD_EXIT_STATUS__").write_text(status + "\n")


def write_output(job_dir: Path, folder: str, lines: str = "dbstore/BeamSpot 1 26,100,-1,-1\n") -> Path:
    output_dir = job_dir / "caf_outputdb_results" / folder
    output_dir.mkdir(parents=True)
    (output_dir / "database.txt").write_text(lines)
    return output_dir


def test_read_caf_state_rows(tmp_path: Path) -> None:
    working_dir = write_state(
        tmp_path, [("BeamSpot Calibrations", "running_algorithms", "collector_completed", 1)]
    )

    assert read_caf_state(working_dir) == [
        CafRow("BeamSpot Calibrations", "running_algorithms", "collector_completed", 1)
    ]


def test_read_caf_state_missing_database(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="caf_state.db does not exist"):
        read_caf_state(tmp_path)


def test_read_caf_state_without_table(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "caf_state.db").close()

    assert read_caf_state(tmp_path) == []


def test_judge_running_counts_subjobs(tmp_path: Path) -> None:
    write_state(tmp_path, [("BeamSpot Calibrations", "running_collector", "init", 0)])
    write_subjobs(tmp_path, "BeamSpot Calibrations", 0, ["0", "0", None])

    verdict = judge_job(tmp_path, process_alive=True)

    assert verdict.state == "running"
    assert verdict.subjobs_done == 2
    assert verdict.subjobs_total == 3
    assert verdict.subjobs_failed == 0
    assert "'BeamSpot Calibrations' is running_collector (iteration 0)" in verdict.reason
    assert "2/3 collector subjobs done" in verdict.reason


def test_judge_succeeded(tmp_path: Path) -> None:
    write_state(tmp_path, [("PXD hot/dead pixel calibration", "completed", "completed", 2)])
    output_dir = write_output(tmp_path, "PXD hot_dead pixel calibration", lines="")

    verdict = judge_job(tmp_path, process_alive=False, log_text="[INFO] End of CAF processing.\n")

    assert verdict.state == "succeeded", verdict.reason
    assert verdict.iteration == 2
    assert verdict.output_databases == {"PXD hot/dead pixel calibration": output_dir}
    assert verdict.calibration_states == {"PXD hot/dead pixel calibration": "completed"}


def test_judge_waits_for_exit_after_completion(tmp_path: Path) -> None:
    write_state(tmp_path, [("BeamSpot Calibrations", "completed", "completed", 0)])
    write_output(tmp_path, "BeamSpot Calibrations")

    verdict = judge_job(tmp_path, process_alive=True)

    assert verdict.state == "running"
    assert "waiting for b2caf-prompt-run to exit" in verdict.reason


def test_judge_unknown_liveness_with_outputs(tmp_path: Path) -> None:
    write_state(tmp_path, [("BeamSpot Calibrations", "completed", "completed", 0)])
    write_output(tmp_path, "BeamSpot Calibrations")

    assert judge_job(tmp_path, process_alive=None).state == "succeeded"


def test_judge_unknown_liveness_unfinished(tmp_path: Path) -> None:
    write_state(tmp_path, [("BeamSpot Calibrations", "running_algorithms", "collector_completed", 0)])

    verdict = judge_job(tmp_path, process_alive=None)

    assert verdict.state == "running"
    assert "unknown" in verdict.reason


@pytest.mark.parametrize("state", ["collector_failed", "algorithms_failed", "failed"])
def test_judge_failed_row(tmp_path: Path, state: str) -> None:
    write_state(
        tmp_path,
        [("CDC Tracking", "completed", "completed", 0), ("CDC badwire", state, "init", 0)],
    )
    write_subjobs(tmp_path, "CDC badwire", 0, ["0", "1"])

    verdict = judge_job(tmp_path, process_alive=True)

    assert verdict.state == "failed"
    assert f"'CDC badwire' is {state}" in verdict.reason
    assert verdict.subjobs_failed == 1
    assert "1 collector subjobs exited with a non-zero status" in verdict.reason


def test_judge_completed_without_output(tmp_path: Path) -> None:
    write_state(tmp_path, [("BeamSpot Calibrations", "completed", "completed", 0)])

    verdict = judge_job(tmp_path, process_alive=False)

    assert verdict.state == "failed"
    assert "lacks database.txt for BeamSpot Calibrations" in verdict.reason


def test_judge_dead_before_start(tmp_path: Path) -> None:
    verdict = judge_job(tmp_path, process_alive=False, log_text="[INFO] Gathering files\n")

    assert verdict.state == "failed"
    assert "exited before the CAF recorded any calibration" in verdict.reason


def test_judge_dead_mid_run_is_resumable(tmp_path: Path) -> None:
    write_state(tmp_path, [("BeamSpot Calibrations", "running_collector", "init", 0)])

    verdict = judge_job(tmp_path, process_alive=False)

    assert verdict.state == "failed"
    assert "rerun it in the same folder to resume" in verdict.reason


def test_judge_error_line_despite_exit_0(tmp_path: Path) -> None:
    log_text = (
        "[2025-03-01 10:00:00] [INFO] Gathering files from input_data.json\n"
        "[2025-03-01 10:00:00] [ERROR] The file input_data.json does not exist\n"
    )

    verdict = judge_job(tmp_path, process_alive=False, log_text=log_text)

    assert verdict.state == "failed"
    assert verdict.reason.endswith("[ERROR] The file input_data.json does not exist")


def test_judge_ignores_warning_lines(tmp_path: Path) -> None:
    write_state(tmp_path, [("BeamSpot Calibrations", "completed", "completed", 0)])
    write_output(tmp_path, "BeamSpot Calibrations")
    log_text = "[WARNING] Local path /data/r00101 does not exist, skipping...\n"

    assert judge_job(tmp_path, process_alive=False, log_text=log_text).state == "succeeded"


def test_verdict_to_dict_is_json(tmp_path: Path) -> None:
    write_state(tmp_path, [("BeamSpot Calibrations", "completed", "completed", 0)])
    write_output(tmp_path, "BeamSpot Calibrations")

    content = judge_job(tmp_path, process_alive=False).to_dict()

    assert json.loads(json.dumps(content)) == content
    assert content["state"] == "succeeded"
    assert content["calibrations"] == [
        {"name": "BeamSpot Calibrations", "state": "completed", "checkpoint": "completed", "iteration": 0}
    ]
    assert content["output_databases"] == {
        "BeamSpot Calibrations": str(tmp_path / "caf_outputdb_results" / "BeamSpot Calibrations")
    }
