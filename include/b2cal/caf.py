"""Prepare, submit and judge ``b2caf-prompt-run`` jobs of the basf2 Calibration and Alignment Framework.

A prompt calibration job runs in a job folder, which is the current directory of ``b2caf-prompt-run``:

.. code-block:: text

    <job folder>/
        caf_config.json                 written by write_caf_config()
        input_data.json                 written by write_input_data()
        calibration_results/            CAF working folder
            caf_state.db                SQLite table calibrations(name, state, checkpoint, iteration)
            <Calibration>/<iteration>/collector_output/<collection>/<subjob>/__BACKEND_CMD_EXIT_STATUS__
        caf_outputdb_results/           written by the tool only after every calibration completed
            <Calibration>/database.txt  "dbstore/<Payload> <revision> <e1>,<r1>,<e2>,<r2>" per payload
            <Calibration>/dbstore_<Payload>_rev_<revision>.root

``<Calibration>`` is the CAF calibration name made safe as a folder name by :func:`calibration_folder_name`.

The tool's exit status is not reliable, because it exits 0 after logging an error about a missing
configuration or input data file. :func:`judge_job` therefore judges a job from the state table, the output
folder and the log, and uses the exit status only through ``process_alive``.

This module imports no Airflow, so the DAG tasks, the triggers and the tests share it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Literal

from b2cal.iov import IoV

logger = logging.getLogger(__name__)

PROMPT_RUN_PROGRAM = "b2caf-prompt-run"
WORKING_DIR_NAME = "calibration_results"
OUTPUT_DB_DIR_NAME = "caf_outputdb_results"
STATE_DB_NAME = "caf_state.db"
EXIT_STATUS_FILE_NAME = "__BACKEND_CMD_EXIT_STATUS__"
DATABASE_TXT_NAME = "database.txt"
COLLECTOR_OUTPUT_DIR_NAME = "collector_output"

BACKENDS = ("Local", "LSF", "PBS", "HTCondor")

CAF_STATES = (
    "init",
    "running_collector",
    "collector_failed",
    "collector_completed",
    "running_algorithms",
    "algorithms_failed",
    "algorithms_completed",
    "completed",
    "failed",
)
FAILED_STATES = frozenset({"collector_failed", "algorithms_failed", "failed"})
COMPLETED_STATE = "completed"

# Backend options of b2caf-prompt-run, as basf2's calibration/scripts/caf/cli.py defines them, with the
# Python type each value must have.
_BATCH_OPTIONS: dict[str, type] = {"global_job_limit": int, "submission_check_heartbeat": int}
BACKEND_OPTIONS: dict[str, dict[str, type]] = {
    "Local": {"max_processes": int},
    "LSF": {"queue": str, **_BATCH_OPTIONS},
    "PBS": {"queue": str, **_BATCH_OPTIONS},
    "HTCondor": {"universe": str, "getenv": str, "path_prefix": str, **_BATCH_OPTIONS},
}
# Options shared by every backend. A bool option is a flag, given when True and left out when False.
RUN_OPTIONS: dict[str, type] = {
    "heartbeat": int,
    "max_files_per_subjob": int,
    "max_subjobs": int,
    "dry_run": bool,
    "overwrite_output_db": bool,
    "overwrite_working_dir": bool,
    "permissive": bool,
    "log_level": str,
    "debug_level": int,
}
_MUTUALLY_EXCLUSIVE_OPTIONS = ("max_files_per_subjob", "max_subjobs")

# Error lines that b2caf-prompt-run logs before returning without running anything. It still exits 0 for
# the missing-file cases, so these lines are the only sign of the failure.
_FATAL_LOG_PATTERNS = (
    re.compile(r"\bdoes not exist\b"),
    re.compile(r"\bCouldn't import\b"),
    re.compile(r"\binput data dictionary is completely empty\b"),
    re.compile(r"\bWill not overwrite output db\b"),
    re.compile(r"\bdoes not contain all of the required input names\b"),
)
_ERROR_LEVEL = re.compile(r"\[(ERROR|FATAL)\]")

JobState = Literal["running", "succeeded", "failed"]


def calibration_folder_name(calibration_name: str) -> str:
    """Return the name of the folder that contains a CAF calibration's files.

    The CAF names folders after the calibration. A ``/`` in the name (``PXD hot/dead pixel calibration``)
    would nest folders, so it becomes ``_``. Spaces are kept.

    :param calibration_name: the calibration name, as in the ``name`` setting of a prompt script.
    :raises ValueError: if the name is empty or only dots.
    """
    folder = calibration_name.replace("/", "_").replace("\\", "_")
    if not folder.strip() or set(folder) <= {"."}:
        raise ValueError(
            f"Calibration name {calibration_name!r} cannot be used as a folder name: give a real name"
        )
    return folder


# ---------------------------------------------------------------------------------------------------------
# caf_config.json and input_data.json


@dataclass(frozen=True)
class CafConfig:
    """The contents of a ``caf_config.json`` file."""

    caf_script: str
    database_chain: list[str]
    requested_iov: IoV
    expert_config: dict[str, Any] | None = None
    backend_args: dict[str, Any] | None = None
    testing_payloads: str | None = None


InputData = dict[str, list[tuple[str, tuple[int, int]]]]


def write_caf_config(
    path: str | os.PathLike[str],
    caf_script: str,
    database_chain: Sequence[str],
    requested_iov: IoV,
    expert_config: Mapping[str, Any] | None = None,
    backend_args: Mapping[str, Any] | None = None,
    testing_payloads: str | None = None,
) -> Path:
    """Validate the settings and write them as ``caf_config.json``.

    :param path: the file to write. Its folder must exist.
    :return: the path written.
    :raises ValueError: as :func:`caf_config_json` does.
    """
    text = caf_config_json(
        caf_script, database_chain, requested_iov, expert_config, backend_args, testing_payloads
    )
    return _write_text_atomically(Path(path), text)


def caf_config_json(
    caf_script: str,
    database_chain: Sequence[str],
    requested_iov: IoV,
    expert_config: Mapping[str, Any] | None = None,
    backend_args: Mapping[str, Any] | None = None,
    testing_payloads: str | None = None,
) -> str:
    """Validate the settings and return the text of ``caf_config.json``, e.g. to write it over SSH.

    :param caf_script: the prompt script file name, e.g. ``caf_beamspot.py``.
    :param database_chain: global tags, lowest priority first.
    :param requested_iov: the bucket's run range.
    :param expert_config: keys that override the script's ``expert_config`` defaults.
    :param backend_args: backend settings that override the backend defaults.
    :param testing_payloads: a local database file that ``b2caf-prompt-run --permissive`` adds.
    :raises ValueError: if a value has the wrong type or is empty, or is not JSON serialisable.
    """
    if not isinstance(caf_script, str) or not caf_script.endswith(".py"):
        raise ValueError(
            f"caf_script {caf_script!r} must be a prompt script file name such as 'caf_beamspot.py'"
        )
    if isinstance(database_chain, str) or not isinstance(database_chain, Sequence):
        raise ValueError(
            f"database_chain {database_chain!r} must be a list of global tag names, lowest priority first"
        )
    if not database_chain:
        raise ValueError("database_chain is empty: give at least one global tag name")
    for position, tag in enumerate(database_chain):
        if not isinstance(tag, str) or not tag.strip():
            raise ValueError(f"database_chain[{position}] {tag!r} must be a non-empty global tag name")
    if not isinstance(requested_iov, IoV):
        raise ValueError(f"requested_iov {requested_iov!r} must be an IoV, e.g. IoV(26, 0, 26, -1)")

    content: dict[str, Any] = {
        "caf_script": caf_script,
        "database_chain": list(database_chain),
        "requested_iov": requested_iov.as_list(),
    }
    for key, value in (("expert_config", expert_config), ("backend_args", backend_args)):
        if value is None:
            continue
        if not isinstance(value, Mapping):
            raise ValueError(f"{key} {value!r} must be a mapping of option names to JSON values")
        content[key] = dict(value)
    if testing_payloads is not None:
        if not isinstance(testing_payloads, str) or not testing_payloads:
            raise ValueError(
                f"testing_payloads {testing_payloads!r} must be the path of a local database file"
            )
        content["testing_payloads"] = testing_payloads
    return _dump_json(content, "caf_config.json")


def read_caf_config(path: str | os.PathLike[str]) -> CafConfig:
    """Read a ``caf_config.json`` file.

    :raises ValueError: if a required key is missing or has the wrong shape.
    """
    content = _read_json_object(Path(path))
    missing = [key for key in ("caf_script", "database_chain", "requested_iov") if key not in content]
    if missing:
        raise ValueError(f"{path} lacks the keys {missing}: write it with write_caf_config()")
    chain = content["database_chain"]
    if not isinstance(chain, list) or not all(isinstance(tag, str) for tag in chain):
        raise ValueError(f"{path}: database_chain {chain!r} must be a list of global tag names")
    try:
        requested_iov = IoV.from_list(content["requested_iov"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: requested_iov is invalid: {error}") from None
    return CafConfig(
        caf_script=content["caf_script"],
        database_chain=list(content["database_chain"]),
        requested_iov=requested_iov,
        expert_config=content.get("expert_config"),
        backend_args=content.get("backend_args"),
        testing_payloads=content.get("testing_payloads"),
    )


def write_input_data(
    path: str | os.PathLike[str], inputs: Mapping[str, Sequence[tuple[str, tuple[int, int]]]]
) -> Path:
    """Validate the input file lists and write them as ``input_data.json``.

    :param path: the file to write. Its folder must exist.
    :return: the path written.
    :raises ValueError: as :func:`input_data_json` does.
    """
    return _write_text_atomically(Path(path), input_data_json(inputs))


def input_data_json(inputs: Mapping[str, Sequence[tuple[str, tuple[int, int]]]]) -> str:
    """Validate the input file lists and return the text of ``input_data.json``.

    Each input name, as in the script's ``input_data_names``, maps to a list of ``(path, (exp, run))``.
    A path is a folder that the tool searches for ``*.root``, a file, or a URI such as ``root://...``.

    :param inputs: the file lists by input name.
    :raises ValueError: naming the input name and entry index of the first invalid entry.
    """
    if not isinstance(inputs, Mapping) or not inputs:
        raise ValueError(
            f"inputs {inputs!r} must be a non-empty mapping of input names to lists of (path, (exp, run))"
        )

    content: dict[str, list[list[Any]]] = {}
    for input_name, entries in inputs.items():
        if not isinstance(input_name, str) or not input_name.strip():
            raise ValueError(f"Input name {input_name!r} must be a non-empty string such as 'hadron_calib'")
        if isinstance(entries, str | bytes) or not isinstance(entries, Sequence):
            raise ValueError(
                f"Input {input_name!r}: {entries!r} must be a list of (path, (exp, run)) entries"
            )
        if not entries:
            logger.warning("Input %r has no files: b2caf-prompt-run will find nothing to collect", input_name)
        content[input_name] = [
            _checked_entry(input_name, index, entry) for index, entry in enumerate(entries)
        ]
    return _dump_json(content, "input_data.json")


def read_input_data(path: str | os.PathLike[str]) -> InputData:
    """Read an ``input_data.json`` file, with the same checks as :func:`write_input_data`."""
    content = _read_json_object(Path(path))
    inputs: InputData = {}
    for input_name, entries in content.items():
        if not isinstance(entries, list):
            raise ValueError(f"{path}: input {input_name!r} must be a list of [path, [exp, run]] entries")
        checked = [_checked_entry(input_name, index, entry) for index, entry in enumerate(entries)]
        inputs[input_name] = [(file_path, (exp, run)) for file_path, (exp, run) in checked]
    return inputs


def _checked_entry(input_name: str, index: int, entry: Any) -> list[Any]:
    where = f"Input {input_name!r} entry {index}"
    if isinstance(entry, str | bytes) or not isinstance(entry, Sequence) or len(entry) != 2:
        raise ValueError(f"{where} {entry!r} must be a pair (path, (exp, run))")
    file_path, exp_run = entry
    if not isinstance(file_path, str) or not file_path.strip():
        raise ValueError(f"{where}: path {file_path!r} must be a non-empty folder, file or URI string")
    if isinstance(exp_run, str | bytes) or not isinstance(exp_run, Sequence) or len(exp_run) != 2:
        raise ValueError(f"{where}: {exp_run!r} must be a pair (exp, run) of non-negative integers")
    for label, number in zip(("exp", "run"), exp_run, strict=True):
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise ValueError(f"{where}: {label} {number!r} must be a non-negative integer")
    return [file_path, [exp_run[0], exp_run[1]]]


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path} must contain a JSON object, found {type(content).__name__}")
    return content


def _dump_json(content: Mapping[str, Any], file_name: str) -> str:
    try:
        return json.dumps(content, indent=2) + "\n"
    except (TypeError, ValueError) as error:
        raise ValueError(f"{file_name} content is not JSON serialisable: {error}") from None


def _write_text_atomically(path: Path, text: str) -> Path:
    # Write a sibling temporary file and rename it, so that a reader never sees a half-written file. os.open
    # with mode 0o666 applies the umask, as creating the file directly would.
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as temporary_file:
            temporary_file.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------------------------------------------------
# Command line


def build_prompt_run_command(
    backend: str,
    caf_config: str | os.PathLike[str],
    input_data: str | os.PathLike[str],
    *,
    backend_options: Mapping[str, Any],
    options: Mapping[str, Any],
    program: str = PROMPT_RUN_PROGRAM,
) -> list[str]:
    """Build the ``b2caf-prompt-run`` argument list for one job.

    Option names are the long options without dashes, with ``_`` for ``-`` (``max_processes`` for
    ``--max-processes``). A ``None`` value leaves the option out. A bool option is a flag that is given
    when ``True``.

    :param backend: one of ``Local``, ``LSF``, ``PBS``, ``HTCondor``.
    :param caf_config: the ``caf_config.json`` path, as the job's shell will see it.
    :param input_data: the ``input_data.json`` path, as the job's shell will see it.
    :param backend_options: options of the backend, e.g. ``{"queue": "l"}`` for LSF.
    :param options: options of every backend, e.g. ``{"heartbeat": 60, "max_subjobs": 20}``.
    :param program: the program name or path.
    :return: the argument list, to run without a shell or to quote with :func:`shlex.join`.
    :raises ValueError: for an unknown backend, an option the backend does not accept, a value of the
        wrong type, or both ``max_files_per_subjob`` and ``max_subjobs``.
    """
    if backend not in BACKEND_OPTIONS:
        raise ValueError(f"Backend {backend!r} is not supported: use one of {', '.join(BACKENDS)}")

    arguments = [program, backend]
    arguments += _option_arguments(backend_options, BACKEND_OPTIONS[backend], f"{backend} backend option")
    arguments += [os.fspath(caf_config), os.fspath(input_data)]

    given_exclusive = [name for name in _MUTUALLY_EXCLUSIVE_OPTIONS if options.get(name) is not None]
    if len(given_exclusive) > 1:
        raise ValueError(f"Options {' and '.join(given_exclusive)} exclude each other: give only one of them")
    arguments += _option_arguments(options, RUN_OPTIONS, "b2caf-prompt-run option")
    return arguments


def _option_arguments(values: Mapping[str, Any], accepted: Mapping[str, type], kind: str) -> list[str]:
    arguments: list[str] = []
    for name, value in values.items():
        if name not in accepted:
            raise ValueError(f"Unknown {kind} {name!r}: accepted are {', '.join(sorted(accepted))}")
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        expected = accepted[name]
        if expected is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{kind} {name!r} is a flag: give True or False, not {value!r}")
            if value:
                arguments.append(flag)
            continue
        if expected is int and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{kind} {name!r} must be a non-negative integer, got {value!r}")
        if expected is str:
            if isinstance(value, bool):
                value = "true" if value else "false"
            if not isinstance(value, str) or not value:
                raise ValueError(f"{kind} {name!r} must be a non-empty string, got {value!r}")
        arguments += [flag, str(value)]
    return arguments


# ---------------------------------------------------------------------------------------------------------
# State table and verdict


@dataclass(frozen=True)
class CafRow:
    """One row of the CAF ``calibrations`` table."""

    name: str
    state: str
    checkpoint: str
    iteration: int

    @property
    def failed(self) -> bool:
        """Whether the calibration is in one of the failed states."""
        return self.state in FAILED_STATES

    @property
    def completed(self) -> bool:
        """Whether the calibration finished successfully."""
        return self.state == COMPLETED_STATE


@dataclass
class JobVerdict:
    """The state of a ``b2caf-prompt-run`` job, judged from its files and log."""

    state: JobState
    reason: str
    rows: list[CafRow] = field(default_factory=list)
    subjobs_done: int = 0
    subjobs_total: int = 0
    subjobs_failed: int = 0
    output_databases: dict[str, PurePath] = field(default_factory=dict)

    @property
    def calibration_states(self) -> dict[str, str]:
        """The CAF state of each calibration, by name."""
        return {row.name: row.state for row in self.rows}

    @property
    def iteration(self) -> int:
        """The highest iteration any calibration reached, 0 before the first iteration ends."""
        return max((row.iteration for row in self.rows), default=0)

    def to_dict(self) -> dict[str, Any]:
        """Return the verdict as JSON-serialisable values, e.g. for an XCom or a trigger event."""
        return {
            "state": self.state,
            "reason": self.reason,
            "calibrations": [
                {
                    "name": row.name,
                    "state": row.state,
                    "checkpoint": row.checkpoint,
                    "iteration": row.iteration,
                }
                for row in self.rows
            ],
            "iteration": self.iteration,
            "subjobs_done": self.subjobs_done,
            "subjobs_total": self.subjobs_total,
            "subjobs_failed": self.subjobs_failed,
            "output_databases": {name: str(path) for name, path in self.output_databases.items()},
        }


def read_caf_state(working_dir: str | os.PathLike[str]) -> list[CafRow]:
    """Read the ``calibrations`` table of ``<working_dir>/caf_state.db``.

    The database is opened read-only, so this is safe while the CAF process writes to it. A database
    whose table does not exist yet gives an empty list.

    :raises FileNotFoundError: if ``caf_state.db`` does not exist, i.e. the CAF has not started.
    """
    db_path = Path(working_dir) / STATE_DB_NAME
    if not db_path.is_file():
        raise FileNotFoundError(
            f"CAF state database {db_path} does not exist: the CAF process has not started"
        )
    connection = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)
    try:
        cursor = connection.execute("SELECT name, state, checkpoint, iteration FROM calibrations")
        return [
            CafRow(str(name), str(state), str(checkpoint), int(iteration))
            for name, state, checkpoint, iteration in cursor
        ]
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return []
        raise
    finally:
        connection.close()


@dataclass
class CafFacts:
    """What a job's folder shows: the state table, the collector subjobs and the output databases.

    :func:`read_caf_facts` reads them from a local folder; a remote probe reads the same facts at a site.
    """

    rows: list[CafRow] = field(default_factory=list)
    state_db_found: bool = False
    subjobs_done: int = 0
    subjobs_total: int = 0
    subjobs_failed: int = 0
    output_databases: dict[str, PurePath] = field(default_factory=dict)


def read_caf_facts(
    job_dir: str | os.PathLike[str],
    *,
    working_dir: str = WORKING_DIR_NAME,
    output_db_dir: str = OUTPUT_DB_DIR_NAME,
) -> CafFacts:
    """Read the state table, the collector subjob exit statuses and the output databases of a job folder."""
    job_path = Path(job_dir)
    working_path = job_path / working_dir
    output_path = job_path / output_db_dir

    facts = CafFacts()
    try:
        facts.rows = read_caf_state(working_path)
        facts.state_db_found = True
    except FileNotFoundError:
        pass
    _count_subjobs(facts, working_path)
    for row in facts.rows:
        database_txt = output_path / calibration_folder_name(row.name) / DATABASE_TXT_NAME
        if database_txt.is_file():
            facts.output_databases[row.name] = database_txt.parent
    return facts


def judge_job(
    job_dir: str | os.PathLike[str],
    process_alive: bool | None,
    log_text: str | None = None,
    *,
    working_dir: str = WORKING_DIR_NAME,
    output_db_dir: str = OUTPUT_DB_DIR_NAME,
) -> JobVerdict:
    """Judge a ``b2caf-prompt-run`` job from its state table, output folder and log.

    :func:`judge_facts` states the rules.

    :param job_dir: the folder the tool ran in.
    :param process_alive: whether the process still runs, or ``None`` if that is unknown.
    :param log_text: the tool's stdout and stderr, if available.
    :param working_dir: the CAF working folder, relative to ``job_dir``.
    :param output_db_dir: the output database folder, relative to ``job_dir``.
    """
    facts = read_caf_facts(job_dir, working_dir=working_dir, output_db_dir=output_db_dir)
    return judge_facts(facts, process_alive, log_text, output_db_dir=output_db_dir)


def judge_facts(
    facts: CafFacts,
    process_alive: bool | None,
    log_text: str | None = None,
    *,
    output_db_dir: str = OUTPUT_DB_DIR_NAME,
) -> JobVerdict:
    """Judge a ``b2caf-prompt-run`` job from the facts of its folder and its log.

    The job succeeded when every calibration is ``completed``, each has
    ``caf_outputdb_results/<Calibration>/database.txt`` (empty for a calibration without payloads), and the
    process is no longer running. It failed when a calibration is in a failed state, or when the process is
    gone before that success. It also failed when the log has an error line after which the tool stops,
    because the tool exits 0 after a missing configuration or input data file. Otherwise it is running.

    :param facts: the job folder's state table, subjob counts and output databases.
    :param process_alive: whether the process still runs, or ``None`` if that is unknown.
    :param log_text: the tool's stdout and stderr, or at least its error lines, if available.
    :param output_db_dir: the output database folder's name, for messages.
    """
    rows = facts.rows
    verdict = JobVerdict(
        state="running",
        reason="",
        rows=rows,
        subjobs_done=facts.subjobs_done,
        subjobs_total=facts.subjobs_total,
        subjobs_failed=facts.subjobs_failed,
        output_databases=dict(facts.output_databases),
    )
    state_db_found = facts.state_db_found

    fatal_line = _find_fatal_log_line(log_text)
    failed_rows = [row for row in rows if row.failed]
    unfinished = [row for row in rows if not row.completed]
    missing_outputs = [row.name for row in rows if row.name not in verdict.output_databases]

    if fatal_line is not None:
        verdict.state = "failed"
        verdict.reason = f"b2caf-prompt-run logged an error and stopped: {fatal_line}"
    elif failed_rows:
        verdict.state = "failed"
        verdict.reason = "Calibration failed: " + ", ".join(
            f"{row.name!r} is {row.state}" for row in failed_rows
        )
        if verdict.subjobs_failed:
            verdict.reason += f" ({verdict.subjobs_failed} collector subjobs exited with a non-zero status)"
    elif rows and not unfinished and not missing_outputs:
        if process_alive:
            verdict.reason = "Every calibration completed, waiting for b2caf-prompt-run to exit"
        else:
            verdict.state = "succeeded"
            verdict.reason = f"Every calibration completed and wrote {output_db_dir}/: " + ", ".join(
                row.name for row in rows
            )
    elif process_alive is False:
        verdict.state = "failed"
        verdict.reason = _dead_process_reason(
            state_db_found, rows, unfinished, missing_outputs, output_db_dir
        )
    else:
        verdict.reason = _progress_reason(state_db_found, rows, verdict, process_alive)
    return verdict


def _count_subjobs(facts: CafFacts, working_path: Path) -> None:
    # Subjob folders of each calibration's current iteration, created when the collector job is submitted.
    for row in facts.rows:
        iteration_dir = working_path / calibration_folder_name(row.name) / str(row.iteration)
        for subjob_dir in iteration_dir.glob(f"{COLLECTOR_OUTPUT_DIR_NAME}/*/*"):
            if not subjob_dir.is_dir():
                continue
            facts.subjobs_total += 1
            status_file = subjob_dir / EXIT_STATUS_FILE_NAME
            if not status_file.is_file():
                continue
            facts.subjobs_done += 1
            status_text = status_file.read_text(encoding="utf-8").strip()
            if status_text != "0":
                facts.subjobs_failed += 1


def _find_fatal_log_line(log_text: str | None) -> str | None:
    if not log_text:
        return None
    for line in log_text.splitlines():
        if _ERROR_LEVEL.search(line) and any(pattern.search(line) for pattern in _FATAL_LOG_PATTERNS):
            return line.strip()
    return None


def _dead_process_reason(
    state_db_found: bool,
    rows: list[CafRow],
    unfinished: list[CafRow],
    missing_outputs: list[str],
    output_db_dir: str,
) -> str:
    if not state_db_found or not rows:
        return "b2caf-prompt-run exited before the CAF recorded any calibration: read its log for the cause"
    if unfinished:
        states = ", ".join(f"{row.name!r} is {row.state}" for row in unfinished)
        return (
            f"b2caf-prompt-run is not running but {states}: rerun it in the same folder "
            "to resume from the last checkpoint"
        )
    return (
        f"Every calibration completed but {output_db_dir}/ lacks database.txt for "
        f"{', '.join(missing_outputs)}: read the log, and rerun with --overwrite-output-db "
        "if an old output folder was in the way"
    )


def _progress_reason(
    state_db_found: bool, rows: list[CafRow], verdict: JobVerdict, process_alive: bool | None
) -> str:
    if not state_db_found or not rows:
        reason = "The CAF has not recorded any calibration yet"
    else:
        states = ", ".join(f"{row.name!r} is {row.state} (iteration {row.iteration})" for row in rows)
        reason = f"Running: {states}. {verdict.subjobs_done}/{verdict.subjobs_total} collector subjobs done"
    if process_alive is None:
        reason += " (whether the process is alive is unknown)"
    return reason
