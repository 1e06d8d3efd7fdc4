"""The ``b2val-prompt-run`` stand-in: its arguments, its files, its output list and its exit status."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import RunTool

TOOL = "b2val-prompt-run"


def make_job(root: Path, payloads: dict[str, list[str]]) -> Path:
    """Create a job folder whose output databases hold the given payloads per calibration folder."""
    job = root / "job"
    for folder, names in payloads.items():
        output = job / "caf_outputdb_results" / folder
        output.mkdir(parents=True)
        (output / "database.txt").write_text("".join(f"dbstore/{name} 1 26,0,-1,-1\n" for name in names))
        for name in names:
            (output / f"dbstore_{name}_rev_1.root").write_bytes(b"root" + name.encode())
    return job


def test_writes_and_lists_its_files(run_tool: RunTool, tmp_path: Path) -> None:
    job = make_job(tmp_path, {"CDC_deadboard": ["CDCBadBoards"], "BeamSpot": ["BeamSpot", "BeamSpotErr"]})
    output = job / "validation" / "attempt-1"

    done = run_tool(TOOL, [str(job), str(output)], cwd=job)

    assert done.returncode == 0, done.stderr
    listing = json.loads((output / "validation_outputs.json").read_text())
    expected = ["summary.txt", "BeamSpot_payloads.png", "CDC_deadboard_payloads.png", "validation_report.pdf"]
    assert listing == {"outputs": expected}
    assert done.stdout.split() == expected
    assert (output / "BeamSpot_payloads.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert (output / "validation_report.pdf").read_bytes().startswith(b"%PDF-1.4")
    summary = (output / "summary.txt").read_text().splitlines()
    assert len(summary) == 3
    assert summary[0].startswith("BeamSpot BeamSpot 1 26,0,-1,-1 ")


def test_plots_option_adds_numbered_plots(run_tool: RunTool, tmp_path: Path) -> None:
    job = make_job(tmp_path, {"BeamSpot": ["BeamSpot"]})
    output = tmp_path / "out"

    done = run_tool(TOOL, ["--plots", "2", str(job), str(output)], cwd=job)

    assert done.returncode == 0, done.stderr
    outputs = json.loads((output / "validation_outputs.json").read_text())["outputs"]
    assert outputs[1:3] == ["BeamSpot_payloads_1.png", "BeamSpot_payloads_2.png"]


def test_missing_job_folder_exits_one(run_tool: RunTool, tmp_path: Path) -> None:
    done = run_tool(TOOL, [str(tmp_path / "missing"), str(tmp_path / "out")], cwd=tmp_path)

    assert done.returncode == 1
    assert "does not exist" in done.stderr
    assert not (tmp_path / "out").exists()


def test_job_without_outputs_exits_one(run_tool: RunTool, tmp_path: Path) -> None:
    (tmp_path / "job").mkdir()

    done = run_tool(TOOL, [str(tmp_path / "job"), str(tmp_path / "out")], cwd=tmp_path)

    assert done.returncode == 1
    assert "caf_outputdb_results/*/database.txt" in done.stderr


def test_malformed_database_exits_one(run_tool: RunTool, tmp_path: Path) -> None:
    job = make_job(tmp_path, {"BeamSpot": []})
    (job / "caf_outputdb_results" / "BeamSpot" / "database.txt").write_text("BeamSpot one\n")

    done = run_tool(TOOL, [str(job), str(tmp_path / "out")], cwd=job)

    assert done.returncode == 1
    assert "is not 'dbstore/<Name> <revision> <IoV>'" in done.stderr


def test_missing_arguments_exit_two(run_tool: RunTool, tmp_path: Path) -> None:
    done = run_tool(TOOL, [str(tmp_path)], cwd=tmp_path)

    assert done.returncode == 2
    assert "usage: b2val-prompt-run" in done.stderr


def test_forced_failure_exits_with_the_status(run_tool: RunTool, tmp_path: Path) -> None:
    job = make_job(tmp_path, {"BeamSpot": ["BeamSpot"]})

    done = run_tool(TOOL, [str(job), str(tmp_path / "out")], cwd=job, env={"B2CAL_FAKE_VALIDATION_FAIL": "3"})

    assert done.returncode == 3
    assert "[ERROR] validation of" in done.stderr
    assert not (tmp_path / "out" / "validation_outputs.json").exists()
