"""Fixtures that run the installed basf2 stand-in scripts as subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from standin_support import tool_path

from b2cal.caf import write_caf_config, write_input_data
from b2cal.iov import IoV

# Short enough to keep the suite fast, long enough to see the states move.
JOB_SECONDS = "0.3"

RunTool = Callable[..., subprocess.CompletedProcess[str]]
DEFAULT_IOV = IoV(26, 100, 26, 200)


@pytest.fixture
def base_env() -> dict[str, str]:
    """Return the environment of the stand-ins, cleared of every variable that changes their behaviour."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("B2CAL_") and key not in ("BELLE2_RELEASE",)
    }
    env["B2CAL_FAKE_JOB_SECONDS"] = JOB_SECONDS
    return env


@pytest.fixture
def run_tool(base_env: dict[str, str]) -> RunTool:
    """Return a function that runs a stand-in and returns the completed process."""

    def run(
        name: str, args: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [tool_path(name), *args],
            cwd=cwd,
            env={**base_env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run


@pytest.fixture
def custom_release(tmp_path: Path) -> Callable[[dict[str, Any]], dict[str, str]]:
    """Return a function that writes a release file and returns the environment that selects it."""

    def write(content: dict[str, Any], name: str = "release-test") -> dict[str, str]:
        releases_dir = tmp_path / "releases"
        releases_dir.mkdir(exist_ok=True)
        (releases_dir / f"{name}.json").write_text(json.dumps(content), encoding="utf-8")
        return {"B2CAL_BASF2_RELEASES": str(releases_dir), "BELLE2_RELEASE": name}

    return write


@pytest.fixture
def make_job(tmp_path: Path) -> Callable[..., Path]:
    """Return a function that prepares a job folder with input files, caf_config.json and input_data.json."""

    def make(
        caf_script: str,
        input_names: Sequence[str],
        *,
        name: str = "job",
        requested_iov: IoV = DEFAULT_IOV,
        runs: Sequence[int] = (100, 101),
    ) -> Path:
        job_dir = tmp_path / name
        data_dir = job_dir / "data"
        inputs: dict[str, list[tuple[str, tuple[int, int]]]] = {}
        for input_name in input_names:
            entries = []
            for run in runs:
                run_dir = data_dir / input_name / f"r{run:05d}"
                run_dir.mkdir(parents=True)
                (run_dir / f"{input_name}.{run}.root").write_bytes(b"root")
                entries.append((str(run_dir), (requested_iov.exp_low, run)))
            inputs[input_name] = entries
        write_caf_config(job_dir / "caf_config.json", caf_script, ["online", "staging_prompt"], requested_iov)
        write_input_data(job_dir / "input_data.json", inputs)
        return job_dir

    return make
