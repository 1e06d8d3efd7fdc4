"""Simulate the CAF process that ``b2caf-prompt-run`` drives, for the basf2 stand-ins.

The simulation writes the files a real CAF process writes (state table, collector subjob folders with
their exit status, local output databases) and takes the time and fails as the ``B2CAL_FAKE_*``
environment variables request. :mod:`b2cal.devtools.basf2` documents the variables and the layout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from b2cal.caf import (
    COLLECTOR_OUTPUT_DIR_NAME,
    DATABASE_TXT_NAME,
    EXIT_STATUS_FILE_NAME,
    STATE_DB_NAME,
    calibration_folder_name,
)
from b2cal.devtools.releases import CafCalibration
from b2cal.iov import IoV, open_ended_from

logger = logging.getLogger(__name__)

JOB_SECONDS_ENV = "B2CAL_FAKE_JOB_SECONDS"
FAIL_ENV = "B2CAL_FAKE_FAIL"
ITERATIONS_ENV = "B2CAL_FAKE_ITERATIONS"

DEFAULT_JOB_SECONDS = 2.0
FAIL_STAGES = ("collector", "algorithms")
# Share of a calibration iteration's time spent running the collector jobs. The algorithms take the rest.
COLLECTOR_TIME_SHARE = 2 / 3
# States from which a restarted CAF resumes a calibration, as in basf2's Calibration.checkpoint_states.
CHECKPOINT_STATES = ("init", "collector_completed", "completed")
ALGORITHM_OUTPUT_DIR_NAME = "algorithm_output"
OUTPUT_DB_NAME = "outputdb"
PAYLOAD_REVISION = 1
_POLL_SECONDS = 0.05

InputFiles = dict[str, list[tuple[str, tuple[int, int]]]]


@dataclass(frozen=True)
class FakeBehaviour:
    """Duration, iterations and failures of the simulated calibrations."""

    job_seconds: float = DEFAULT_JOB_SECONDS
    iterations: int = 1
    failures: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> FakeBehaviour:
        """Read the behaviour from the ``B2CAL_FAKE_*`` variables of ``environ``.

        :raises ValueError: naming the variable and the invalid value.
        """
        seconds_text = environ.get(JOB_SECONDS_ENV, "").strip()
        try:
            job_seconds = float(seconds_text) if seconds_text else DEFAULT_JOB_SECONDS
        except ValueError:
            raise ValueError(
                f"{JOB_SECONDS_ENV}={seconds_text!r} must be a number of seconds, e.g. 2"
            ) from None
        if not math.isfinite(job_seconds) or job_seconds < 0:
            raise ValueError(f"{JOB_SECONDS_ENV}={seconds_text!r} must be a finite number of seconds >= 0")

        iterations_text = environ.get(ITERATIONS_ENV, "").strip()
        try:
            iterations = int(iterations_text) if iterations_text else 1
        except ValueError:
            raise ValueError(f"{ITERATIONS_ENV}={iterations_text!r} must be an integer >= 1") from None
        if iterations < 1:
            raise ValueError(f"{ITERATIONS_ENV}={iterations_text!r} must be an integer >= 1")

        failures: dict[str, str] = {}
        for item in environ.get(FAIL_ENV, "").split(","):
            item = item.strip()
            if not item:
                continue
            target, separator, stage = item.rpartition(":")
            if not separator or stage not in FAIL_STAGES:
                target, stage = item, "collector"
            failures[target.strip()] = stage
        return cls(job_seconds=job_seconds, iterations=iterations, failures=failures)

    def failure_stage(self, script: str, calibration_name: str) -> str | None:
        """Return the stage at which a calibration fails, or ``None`` if it succeeds."""
        return self.failures.get(calibration_name) or self.failures.get(Path(script).name)


@dataclass
class RunPlan:
    """Everything a CAF process needs to run one prompt script."""

    release: str
    script: str
    calibrations: list[CafCalibration]
    input_files: InputFiles
    subjobs: dict[str, list[list[tuple[str, tuple[int, int]]]]]
    requested_iov: IoV
    database_chain: list[str]
    expert_config: dict[str, Any]
    backend: str
    backend_args: dict[str, Any]
    heartbeat: int
    testing_payloads: str | None = None

    def describe(self) -> list[str]:
        """Return the plan as readable lines, as ``--dry-run`` prints it."""
        lines = [
            f"Release: {self.release}",
            f"Prompt script: {self.script}",
            f"Requested IoV: {self.requested_iov.as_text()}",
            f"Database chain (lowest priority first): {', '.join(self.database_chain)}",
            f"Expert config: {json.dumps(self.expert_config, sort_keys=True)}",
            f"Backend: {self.backend} {json.dumps(self.backend_args, sort_keys=True)}",
        ]
        if self.testing_payloads:
            lines.append(f"Testing payloads: {self.testing_payloads}")
        for calibration in self.calibrations:
            payloads = ", ".join(calibration.payloads) or "none"
            lines.append(f"Calibration {calibration.name!r} produces payloads: {payloads}")
            for collection, subjobs in self.subjobs.items():
                lines.append(f"  Collection {collection!r}: {len(subjobs)} collector subjobs")
                for number, files in enumerate(subjobs):
                    for file_path, (exp, run) in files:
                        lines.append(f"    subjob {number}: {file_path} (exp {exp}, run {run})")
        return lines


def resolve_input_files(input_data: Mapping[str, Any], path_prefix: str = "") -> InputFiles:
    """Find the files of each input name as ``b2caf-prompt-run`` does.

    A local folder is searched for ``*.root`` at any depth, a local file is used as it is, and a URI with
    another scheme than ``file`` passes through unchecked. A local path that does not exist is skipped with
    a warning. ``path_prefix`` is put in front of local paths (HTCondor's ``--path-prefix``).
    """
    resolved: InputFiles = {}
    for input_name, entries in input_data.items():
        files: dict[str, tuple[int, int]] = {}
        for entry_path, exp_run in entries:
            exp_run_key = (int(exp_run[0]), int(exp_run[1]))
            scheme = urlparse(entry_path).scheme
            if scheme not in ("", "file"):
                files[entry_path] = exp_run_key
                continue
            local_path = Path(urlparse(entry_path).path if scheme == "file" else entry_path).absolute()
            if local_path.is_dir():
                for found in sorted(local_path.glob("**/*.root")):
                    files[path_prefix + found.as_posix()] = exp_run_key
            elif local_path.is_file():
                files[path_prefix + local_path.as_posix()] = exp_run_key
            else:
                logger.warning("Local path %s doesn't exist, skipping...", local_path)
        logger.info("Found %d files in '%s'", len(files), input_name)
        if not files:
            logger.warning("'%s' has no files associated with it!", input_name)
        resolved[input_name] = list(files.items())
    return resolved


def split_subjobs(
    files: list[tuple[str, tuple[int, int]]], max_files_per_subjob: int | None, max_subjobs: int | None
) -> list[list[tuple[str, tuple[int, int]]]]:
    """Split one collection's files into collector subjobs.

    Without a limit every file gets its own subjob. ``max_subjobs`` spreads the files as evenly as possible.
    """
    if not files:
        return []
    if max_subjobs:
        count = min(max_subjobs, len(files))
        size, extra = divmod(len(files), count)
        chunks = []
        start = 0
        for number in range(count):
            end = start + size + (1 if number < extra else 0)
            chunks.append(files[start:end])
            start = end
        return chunks
    per_subjob = max_files_per_subjob or 1
    return [files[start : start + per_subjob] for start in range(0, len(files), per_subjob)]


class StateTable:
    """The CAF state database ``caf_state.db`` with its ``calibrations`` table."""

    def __init__(self, working_dir: Path) -> None:
        working_dir.mkdir(parents=True, exist_ok=True)
        self.path = working_dir / STATE_DB_NAME
        # Autocommit, so that every state change is on disk before the next step and survives a kill.
        self._connection = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        self._connection.execute(
            "CREATE TABLE IF NOT EXISTS calibrations "
            "(name TEXT PRIMARY KEY, state TEXT, checkpoint TEXT, iteration INTEGER)"
        )

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()

    def row(self, name: str) -> tuple[str, str, int] | None:
        """Return ``(state, checkpoint, iteration)`` of a calibration, or ``None`` if it has no row."""
        found = self._connection.execute(
            "SELECT state, checkpoint, iteration FROM calibrations WHERE name = ?", (name,)
        ).fetchone()
        return None if found is None else (str(found[0]), str(found[1]), int(found[2]))

    def insert(self, name: str) -> None:
        """Add a calibration in state ``init``."""
        self._connection.execute("INSERT INTO calibrations VALUES (?, 'init', 'init', 0)", (name,))

    def update(self, name: str, **values: str | int) -> None:
        """Set columns of a calibration's row."""
        for column, value in values.items():
            if column not in ("state", "checkpoint", "iteration"):
                raise ValueError(f"Column {column!r} is not in the calibrations table")
            self._connection.execute(f"UPDATE calibrations SET {column} = ? WHERE name = ?", (value, name))


class FakeCaf:
    """A CAF process that runs the calibrations of one prompt script in order."""

    def __init__(self, working_dir: Path, plan: RunPlan, behaviour: FakeBehaviour) -> None:
        self.working_dir = working_dir
        self.plan = plan
        self.behaviour = behaviour
        self.iteration_seconds = behaviour.job_seconds / behaviour.iterations

    def run(self) -> list[str]:
        """Run or resume every calibration and return the names of those that failed.

        Calibrations run one after the other, each depending on the previous one, so a failure leaves
        the later calibrations in ``init``.
        """
        table = StateTable(self.working_dir)
        try:
            for calibration in self.plan.calibrations:
                if not self._run_calibration(table, calibration):
                    return [calibration.name]
            return []
        finally:
            table.close()

    def _run_calibration(self, table: StateTable, calibration: CafCalibration) -> bool:
        name = calibration.name
        row = table.row(name)
        if row is None:
            table.insert(name)
            row = ("init", "init", 0)
        state, checkpoint, iteration = row
        if state == "completed":
            logger.info("Calibration %s is already completed, it will not be run again", name)
            return True
        if checkpoint not in CHECKPOINT_STATES:
            checkpoint = "init"
        if (state, checkpoint, iteration) != ("init", "init", 0):
            logger.info(
                "Resuming calibration %s from checkpoint %s at iteration %d (it was %s)",
                name,
                checkpoint,
                iteration,
                state,
            )

        failure_stage = self.behaviour.failure_stage(self.plan.script, name)
        skip_collector = checkpoint == "collector_completed"
        while True:
            if skip_collector:
                self._move(table, name, "collector_completed", checkpoint="collector_completed")
                skip_collector = False
            else:
                self._move(table, name, "init", checkpoint="init")
                # As in the CAF, the collector subjobs are submitted before the state running_collector
                # is recorded, so a reader of that state finds every subjob folder.
                subjob_dirs = self._submit_collector(calibration, iteration)
                self._move(table, name, "running_collector")
                if not subjob_dirs or not self._run_collector(
                    calibration, iteration, subjob_dirs, failure_stage == "collector"
                ):
                    self._move(table, name, "collector_failed")
                    self._move(table, name, "failed")
                    return False
                self._move(table, name, "collector_completed", checkpoint="collector_completed")

            self._move(table, name, "running_algorithms")
            if not self._run_algorithms(calibration, iteration, failure_stage == "algorithms"):
                self._move(table, name, "algorithms_failed")
                self._move(table, name, "failed")
                return False
            self._move(table, name, "algorithms_completed")

            if iteration + 1 >= self.behaviour.iterations:
                break
            iteration += 1
            logger.info("Calibration %s requested iteration %d", name, iteration)
            table.update(name, iteration=iteration)

        self._prepare_final_database(calibration, iteration)
        self._move(table, name, "completed", checkpoint="completed")
        return True

    def _move(self, table: StateTable, name: str, state: str, checkpoint: str | None = None) -> None:
        values: dict[str, str | int] = {"state": state}
        if checkpoint is not None:
            values["checkpoint"] = checkpoint
        table.update(name, **values)
        logger.info("Calibration Machine %s moved to state %s", name, state)

    def _calibration_dir(self, calibration: CafCalibration) -> Path:
        return self.working_dir / calibration_folder_name(calibration.name)

    def _submit_collector(
        self, calibration: CafCalibration, iteration: int
    ) -> list[tuple[Path, list[tuple[str, tuple[int, int]]]]]:
        collector_dir = self._calibration_dir(calibration) / str(iteration) / COLLECTOR_OUTPUT_DIR_NAME
        if collector_dir.exists():
            logger.info(
                "Previous collector output of %s exists, deleting %s", calibration.name, collector_dir
            )
            shutil.rmtree(collector_dir)

        subjob_dirs: list[tuple[Path, list[tuple[str, tuple[int, int]]]]] = []
        for collection, subjobs in self.plan.subjobs.items():
            for number, files in enumerate(subjobs):
                subjob_dir = collector_dir / collection / str(number)
                subjob_dir.mkdir(parents=True)
                listed = [[file_path, [exp, run]] for file_path, (exp, run) in files]
                (subjob_dir / "input_data_files.json").write_text(
                    json.dumps(listed, indent=1), encoding="utf-8"
                )
                subjob_dirs.append((subjob_dir, files))
        if not subjob_dirs:
            logger.error("Calibration %s has no input files, so no collector job can run", calibration.name)
            return []
        logger.info(
            "Submitted %d collector subjobs of %s to the %s backend",
            len(subjob_dirs),
            calibration.name,
            self.plan.backend,
        )
        return subjob_dirs

    def _run_collector(
        self,
        calibration: CafCalibration,
        iteration: int,
        subjob_dirs: list[tuple[Path, list[tuple[str, tuple[int, int]]]]],
        fail: bool,
    ) -> bool:

        # Subjob i finishes at (i + 1) / n of the collector time. When the collector fails, the last
        # subjob exits with status 1.
        collector_seconds = self.iteration_seconds * COLLECTOR_TIME_SHARE
        start = time.monotonic()
        for number, (subjob_dir, files) in enumerate(subjob_dirs):
            _sleep_until(start + collector_seconds * (number + 1) / len(subjob_dirs))
            exit_status = 1 if fail and number == len(subjob_dirs) - 1 else 0
            with (subjob_dir / "stdout").open("w", encoding="utf-8") as stdout:
                stdout.write(
                    f"Collector of {calibration.name}, iteration {iteration}, {len(files)} input files\n"
                )
                if exit_status:
                    stdout.write("[FATAL] Collector module stopped: B2CAL_FAKE_FAIL requested a failure\n")
            if not exit_status:
                (subjob_dir / "CollectorOutput.root").write_bytes(_fake_root_bytes({"files": files}))
            (subjob_dir / EXIT_STATUS_FILE_NAME).write_text(f"{exit_status}\n", encoding="utf-8")
            logger.info(
                "%d/%d Collector SubJobs finished in %s", number + 1, len(subjob_dirs), calibration.name
            )

        if fail:
            logger.error(
                "Collector job of %s failed: subjob %s exited with 1", calibration.name, subjob_dirs[-1][0]
            )
            return False
        return True

    def _run_algorithms(self, calibration: CafCalibration, iteration: int, fail: bool) -> bool:
        algorithm_dir = self._calibration_dir(calibration) / str(iteration) / ALGORITHM_OUTPUT_DIR_NAME
        if algorithm_dir.exists():
            shutil.rmtree(algorithm_dir)
        database_dir = algorithm_dir / OUTPUT_DB_NAME
        database_dir.mkdir(parents=True)
        logger.info("Output local database for %s will be stored at %s", calibration.name, database_dir)
        _sleep_until(time.monotonic() + self.iteration_seconds * (1 - COLLECTOR_TIME_SHARE))

        if fail:
            logger.error(
                "c_Failure returned by the algorithm of %s for %s", calibration.name, self._payload_iov()
            )
            return False

        lines = []
        for payload in calibration.payloads:
            content = _fake_root_bytes(self._payload_description(payload, iteration))
            (database_dir / f"dbstore_{payload}_rev_{PAYLOAD_REVISION}.root").write_bytes(content)
            lines.append(f"dbstore/{payload} {PAYLOAD_REVISION} {self._payload_iov().as_text()}\n")
        # A calibration without payloads still writes database.txt, empty.
        (database_dir / DATABASE_TXT_NAME).write_text("".join(lines), encoding="utf-8")
        return True

    def _payload_iov(self) -> IoV:
        return open_ended_from(*self.plan.requested_iov.first)

    def _payload_description(self, payload: str, iteration: int) -> dict[str, Any]:
        return {
            "payload": payload,
            "revision": PAYLOAD_REVISION,
            "release": self.plan.release,
            "iov": self._payload_iov().as_list(),
            "iteration": iteration,
            "expert_config": self.plan.expert_config,
            "inputs": {name: files for name, files in sorted(self.plan.input_files.items())},
        }

    def _prepare_final_database(self, calibration: CafCalibration, iteration: int) -> None:
        source = (
            self._calibration_dir(calibration) / str(iteration) / ALGORITHM_OUTPUT_DIR_NAME / OUTPUT_DB_NAME
        )
        final = self._calibration_dir(calibration) / OUTPUT_DB_NAME
        if final.exists():
            shutil.rmtree(final)
        shutil.copytree(source, final)


def collect_output_databases(
    working_dir: Path, output_db: Path, calibrations: list[CafCalibration], overwrite: bool
) -> bool:
    """Copy each calibration's final local database to ``<output_db>/<Calibration>/``.

    :return: ``False`` if the output folder exists and ``overwrite`` is not set.
    """
    if output_db.exists():
        logger.warning("Final output payload directory '%s' exists.", output_db)
        if not overwrite:
            logger.error("Will not overwrite output db! Please move them and restart b2caf-prompt-run.")
            return False
        logger.info("Overwrite DB set, removing '%s'...", output_db)
        shutil.rmtree(output_db)
    output_db.mkdir(parents=True)
    logger.info("Will now copy the calibration final outputdb directories to '%s'", output_db)
    for calibration in calibrations:
        folder = calibration_folder_name(calibration.name)
        logger.info("Will now copy final outputdb of %s", calibration.name)
        shutil.copytree(working_dir / folder / OUTPUT_DB_NAME, output_db / folder)
    return True


def _fake_root_bytes(description: Mapping[str, Any]) -> bytes:
    # Starts with ROOT's file signature but is not a ROOT file: a digest and the JSON that determines it.
    text = json.dumps(description, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return b"root" + hashlib.sha256(text).digest() + b"\n" + text + b"\n"


def _sleep_until(deadline: float) -> None:
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(min(remaining, _POLL_SECONDS))


def environ_behaviour() -> FakeBehaviour:
    """Return the behaviour requested by the current environment."""
    return FakeBehaviour.from_environ(os.environ)
