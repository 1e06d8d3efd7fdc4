"""Stand-ins for the basf2 prompt calibration tools, for development and tests where basf2 cannot run.

The console scripts ``b2caf-prompt-show``, ``b2caf-prompt-check``, ``b2caf-status`` and
``b2caf-prompt-run`` take the command lines of the basf2 tools of the same name
(``calibration/tools`` in the public basf2 repository) and write the same files. They run no
physics: a calibration waits, then writes small fake payload files.

Release
    ``$BELLE2_RELEASE`` names the release (default ``release-11-00-00``). Its settings come from
    ``$B2CAL_BASF2_RELEASES/<release>.json`` or, when that variable is unset, from the releases packaged in
    ``b2cal/data/releases/``. :mod:`b2cal.devtools.releases` describes the file and the keys
    ``check_error`` and ``caf_calibrations`` that configure a broken release or a script with several CAF
    calibrations. A prompt script is named by its file name (``caf_beamspot.py``) or by a path with that
    base name.

Behaviour of ``b2caf-prompt-run``
    ``B2CAL_FAKE_JOB_SECONDS``
        Seconds that one CAF calibration takes over all its iterations (default 2). Within an iteration
        the collector subjobs take two thirds, finishing one after another, and the algorithms the rest.
    ``B2CAL_FAKE_ITERATIONS``
        Iterations of every calibration (default 1). The ``iteration`` column counts from 0.
    ``B2CAL_FAKE_FAIL``
        Comma-separated ``<target>[:<stage>]``. The target is a CAF calibration name or a prompt script file
        name, the stage ``collector`` (default: the last collector subjob exits 1, the row ends
        ``collector_failed`` then ``failed``) or ``algorithms`` (the row ends ``algorithms_failed`` then
        ``failed``). Example: ``caf_beamspot.py:algorithms,CDC Tracking``.

Files
    ``b2caf-prompt-run`` runs in a job folder (its current directory) and writes::

        calibration_results/                        --working-dir
            caf_state.db                            table calibrations(name, state, checkpoint, iteration)
            <Calibration>/<iteration>/collector_output/<input name>/<subjob>/
                input_data_files.json  stdout  CollectorOutput.root  __BACKEND_CMD_EXIT_STATUS__
            <Calibration>/<iteration>/algorithm_output/outputdb/   local database of the iteration
            <Calibration>/outputdb/                 local database of the last iteration
        caf_outputdb_results/                       --output-db, written after every calibration completed
            <Calibration>/database.txt              "dbstore/<Payload> 1 <e1>,<r1>,-1,-1" per payload
            <Calibration>/dbstore_<Payload>_rev_1.root

    ``<Calibration>`` is the CAF calibration name with ``/`` replaced by ``_``
    (:func:`b2cal.caf.calibration_folder_name`). A script has one CAF calibration named after its ``name``
    setting unless the release declares ``caf_calibrations``, and one collection per input name, with one
    subjob a file unless ``--max-files-per-subjob`` or ``--max-subjobs`` set other limits. A calibration
    without payloads writes an empty ``database.txt``. Payload IoVs are open-ended from the first run of
    ``requested_iov``. Payload bytes start with ROOT's ``root`` signature followed by a SHA-256 digest and the
    JSON they derive from (payload, release, IoV, iteration, expert config, input files), so two buckets give
    different checksums.

Exit status, as in basf2
    0 after success, after ``--dry-run`` (which prints the plan and writes nothing), and after a missing or
    unreadable ``caf_config.json`` or ``input_data.json``: basf2 logs ``[ERROR] The file ... does not exist``
    and returns the ``errno`` of an exception that has none, which exits 0. 1 after a failed calibration, an
    unknown script, missing input names, an existing output folder without ``--overwrite-output-db``, or
    invalid JSON. Rerunning in the same folder resumes each calibration from its last checkpoint (``init``,
    ``collector_completed`` or ``completed``), so completed calibrations are not run again.

Options that basf2's tools lack
    ``b2caf-prompt-run --working-dir`` and ``--output-db`` (basf2 always uses ``calibration_results`` and
    ``caf_outputdb_results`` in the current directory), ``b2caf-prompt-show <script>`` as a positional
    form of ``--script-name``, ``b2caf-prompt-check <script>...`` (basf2 checks every script), and
    ``b2caf-status`` without a sub-command, which runs ``show``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from b2cal.caf import BACKENDS, OUTPUT_DB_DIR_NAME, STATE_DB_NAME, WORKING_DIR_NAME
from b2cal.devtools.fake_caf import (
    FakeBehaviour,
    FakeCaf,
    RunPlan,
    collect_output_databases,
    resolve_input_files,
    split_subjobs,
)
from b2cal.devtools.releases import ReleaseError, check_scripts, load_release, settings_of
from b2cal.iov import IoV

logger = logging.getLogger(__name__)

DEFAULT_HEARTBEAT = 60
DEFAULT_MAX_PROCESSES = 4
DEFAULT_GLOBAL_JOB_LIMIT = 1000
DEFAULT_SUBMISSION_CHECK_HEARTBEAT = 30
LOG_LEVELS = ("DEBUG", "INFO", "RESULT", "WARNING", "ERROR", "FATAL")
_LOG_FORMAT = "[%(asctime)s] [%(levelname)s] %(message)s"


class _BelowErrorFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


def _configure_logging(level_name: str = "INFO", debug_level: int | None = None) -> None:
    """Send log lines below ERROR to stdout and the others to stderr, with time and level."""
    logging.addLevelName(logging.CRITICAL, "FATAL")
    # basf2's RESULT level sits between INFO and WARNING.
    logging.addLevelName(logging.INFO + 5, "RESULT")
    level = logging.DEBUG if debug_level else logging.getLevelName(level_name)
    formatter = logging.Formatter(_LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S")
    stdout_handler = logging.StreamHandler(sys.stdout)
    stdout_handler.addFilter(_BelowErrorFilter())
    stderr_handler = logging.StreamHandler(sys.stderr)
    stderr_handler.setLevel(logging.ERROR)
    root = logging.getLogger()
    root.handlers.clear()
    for handler in (stdout_handler, stderr_handler):
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else logging.INFO)


# ---------------------------------------------------------------------------------------------------------
# b2caf-prompt-show


def prompt_show_main(argv: Sequence[str] | None = None) -> int:
    """Print the settings of a prompt script, or list the scripts when none is named."""
    parser = argparse.ArgumentParser(
        prog="b2caf-prompt-show",
        description="Prints details about the prompt calibration scripts of the basf2 release.",
    )
    parser.add_argument("script", nargs="?", help="prompt script file name or path, e.g. caf_beamspot.py")
    parser.add_argument("--script-name", dest="script_name", help="the same as the positional script")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a readable summary")
    args = parser.parse_args(argv)
    _configure_logging()

    try:
        release = load_release()
        script = args.script or args.script_name
        if not script:
            scripts = release.scripts()
            if args.json:
                print(json.dumps(scripts))
            else:
                print(f"All available prompt calibration scripts of {release.name}:")
                print("\n".join(scripts))
            return 0
        settings = settings_of(release.find_script(script))
    except ReleaseError as error:
        logger.error("%s", error)
        return 1

    if args.json:
        print(json.dumps(settings))
    else:
        print(_format_settings(settings))
    return 0


def _format_settings(settings: dict[str, Any]) -> str:
    lines = [f"CalibrationSettings(name={settings['name']!r}):"]
    for key, value in settings.items():
        if key != "name":
            lines.append(f"  {key}={value!r}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# b2caf-prompt-check


def prompt_check_main(argv: Sequence[str] | None = None) -> int:
    """Check the settings of prompt scripts and print every problem found."""
    parser = argparse.ArgumentParser(
        prog="b2caf-prompt-check",
        description="Checks the prompt calibration scripts of the basf2 release for problems.",
    )
    parser.add_argument("scripts", nargs="*", help="scripts to check (default: every script)")
    args = parser.parse_args(argv)
    _configure_logging()

    try:
        release = load_release()
    except ReleaseError as error:
        logger.error("%s", error)
        return 1
    problems = check_scripts(release, args.scripts)
    checked = len(args.scripts) if args.scripts else len(release.calibrations)
    for problem in problems:
        print(problem)
    if problems:
        logger.error("Found %d problems in the prompt scripts of %s", len(problems), release.name)
        return 1
    logger.info("All 'settings' variables imported successfully.")
    logger.info("No problems found in %d prompt scripts of %s", checked, release.name)
    return 0


# ---------------------------------------------------------------------------------------------------------
# b2caf-status


def status_main(argv: Sequence[str] | None = None) -> int:
    """Print or change the ``calibrations`` table of a CAF working folder."""
    parser = argparse.ArgumentParser(prog="b2caf-status", description="Shows or changes the CAF state table.")
    parser.add_argument(
        "--path", "-p", default=WORKING_DIR_NAME, help="CAF working folder (default: ./calibration_results)"
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("show", help="print the state of every calibration")
    update = commands.add_parser("update", help="change one column of a calibration (not while the CAF runs)")
    update.add_argument("cal_name", help="calibration name")
    update.add_argument("col_name", choices=("state", "checkpoint", "iteration"), help="column to change")
    update.add_argument("new_value", help="new value")
    args = parser.parse_args(argv)
    _configure_logging()

    db_path = Path(args.path, STATE_DB_NAME)
    if not db_path.is_file():
        print(f"No database at path: {db_path}")
        return 1
    connection = sqlite3.connect(db_path, timeout=30.0, isolation_level=None)
    try:
        if args.command == "update":
            value: str | int = int(args.new_value) if args.col_name == "iteration" else args.new_value
            changed = connection.execute(
                f"UPDATE calibrations SET {args.col_name} = ? WHERE name = ?", (value, args.cal_name)
            ).rowcount
            if not changed:
                logger.error(
                    "Calibration %r is not in %s: run b2caf-status show for the names", args.cal_name, db_path
                )
                return 1
        rows = connection.execute("SELECT name, state, checkpoint, iteration FROM calibrations").fetchall()
    finally:
        connection.close()
    print(_format_table(rows))
    return 0


def _format_table(rows: list[tuple[Any, ...]]) -> str:
    header = ("name", "state", "checkpoint", "iteration")
    cells = [header] + [tuple(str(value) for value in row) for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    lines = ["  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)) for row in cells]
    width = max(len(line) for line in lines)
    border = "=" * width
    return "\n".join([border, " Calibrations Table ".center(width), border, *lines, border])


# ---------------------------------------------------------------------------------------------------------
# b2caf-prompt-run


def _prompt_run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="b2caf-prompt-run",
        description="Runs the CAF calibrations of a prompt script on a backend (stand-in without basf2).",
        epilog="Type b2caf-prompt-run <backend> --help to see the options of each backend.",
    )
    backends = parser.add_subparsers(dest="backend", required=True, metavar="{" + ",".join(BACKENDS) + "}")
    local = backends.add_parser("Local", help="run the collector jobs as local processes")
    local.add_argument(
        "--max-processes",
        type=int,
        default=DEFAULT_MAX_PROCESSES,
        help=f"maximum number of concurrent processes (default: {DEFAULT_MAX_PROCESSES})",
    )
    batch_parsers = []
    for name in ("LSF", "PBS", "HTCondor"):
        batch = backends.add_parser(name, help=f"submit the collector jobs to {name}")
        if name == "HTCondor":
            batch.add_argument("--getenv", help="whether jobs inherit the submitting environment, e.g. false")
            batch.add_argument("--universe", help="HTCondor universe of the jobs, e.g. vanilla")
            batch.add_argument(
                "--path-prefix", help="prefix for local input file paths, e.g. root://host:1094"
            )
        else:
            batch.add_argument("--queue", help="batch queue of the jobs")
        batch.add_argument(
            "--global-job-limit",
            type=int,
            default=DEFAULT_GLOBAL_JOB_LIMIT,
            help=f"maximum number of active batch jobs of the user (default: {DEFAULT_GLOBAL_JOB_LIMIT})",
        )
        batch.add_argument(
            "--submission-check-heartbeat",
            type=int,
            default=DEFAULT_SUBMISSION_CHECK_HEARTBEAT,
            help="seconds between checks of the active job count "
            f"(default: {DEFAULT_SUBMISSION_CHECK_HEARTBEAT})",
        )
        batch_parsers.append(batch)

    for backend_parser in [local, *batch_parsers]:
        backend_parser.add_argument(
            "caf_config", help="caf_config.json: caf_script, database_chain, requested_iov"
        )
        backend_parser.add_argument(
            "input_data", help="input_data.json: input name -> [[path, [exp, run]], ...]"
        )
        backend_parser.add_argument(
            "--log-level", choices=LOG_LEVELS, default="INFO", help="log level (default: INFO)"
        )
        backend_parser.add_argument(
            "--debug-level", type=int, help="DEBUG level, sets the log level to DEBUG"
        )
        backend_parser.add_argument(
            "--heartbeat",
            type=int,
            default=DEFAULT_HEARTBEAT,
            help=f"seconds between checks of the collector jobs (default: {DEFAULT_HEARTBEAT})",
        )
        limits = backend_parser.add_mutually_exclusive_group()
        limits.add_argument("--max-files-per-subjob", type=int, help="maximum number of input files a subjob")
        limits.add_argument(
            "--max-subjobs", type=int, help="maximum number of collector subjobs a collection"
        )
        backend_parser.add_argument(
            "--dry-run", action="store_true", help="set up the CAF and print it, run nothing"
        )
        backend_parser.add_argument(
            "--overwrite-output-db", action="store_true", help="replace an existing output database folder"
        )
        backend_parser.add_argument(
            "--overwrite-working-dir", action="store_true", help="delete the working folder before starting"
        )
        backend_parser.add_argument(
            "--permissive",
            action="store_true",
            help="allow a script path outside the release and testing_payloads",
        )
        backend_parser.add_argument(
            "--working-dir",
            default=WORKING_DIR_NAME,
            help=f"CAF working folder (default: {WORKING_DIR_NAME})",
        )
        backend_parser.add_argument(
            "--output-db",
            default=OUTPUT_DB_DIR_NAME,
            help=f"output database folder (default: {OUTPUT_DB_DIR_NAME})",
        )
    return parser


class _StopRun(Exception):
    """Stop b2caf-prompt-run with an exit status after the error has been logged."""

    def __init__(self, exit_status: int) -> None:
        super().__init__(exit_status)
        self.exit_status = exit_status


def prompt_run_main(argv: Sequence[str] | None = None) -> int:
    """Run, resume or dry-run the CAF calibrations of a prompt script."""
    args = _prompt_run_parser().parse_args(argv)
    _configure_logging(args.log_level, args.debug_level)
    try:
        return _prompt_run(args)
    except _StopRun as stop:
        return stop.exit_status


def _prompt_run(args: argparse.Namespace) -> int:
    try:
        behaviour = FakeBehaviour.from_environ(os.environ)
    except ValueError as error:
        logger.error("%s", error)
        return 2

    input_data = _load_json_file(Path(args.input_data))
    if not isinstance(input_data, dict) or not _valid_input_shape(input_data):
        logger.error("%s must map input names to lists of [path, [exp, run]]", args.input_data)
        return 1
    logger.info("Gathering files from %s", args.input_data)
    input_files = resolve_input_files(input_data, getattr(args, "path_prefix", None) or "")
    if not input_files:
        logger.error("The input data dictionary is completely empty!")
        return 1

    caf_config = _load_json_file(Path(args.caf_config))
    if not isinstance(caf_config, dict):
        logger.error("%s must contain a JSON object", args.caf_config)
        return 1
    for key in ("caf_script", "database_chain", "requested_iov"):
        if key not in caf_config:
            logger.error("%s lacks the key %r: add it and rerun", args.caf_config, key)
            return 1
    try:
        requested_iov = IoV.from_list(caf_config["requested_iov"])
    except (TypeError, ValueError) as error:
        logger.error("requested_iov in %s is invalid: %s", args.caf_config, error)
        return 1

    plan = _make_plan(args, caf_config, input_files, requested_iov)
    if args.dry_run:
        logger.info("Dry run: the CAF is set up, nothing will be run")
        print("\n".join(plan.describe()))
        return 0

    working_dir = Path(args.working_dir)
    if args.overwrite_working_dir and working_dir.is_dir():
        logger.warning("Overwrite Working Dir set, removing '%s'...", working_dir)
        shutil.rmtree(working_dir)

    failed = FakeCaf(working_dir, plan, behaviour).run()
    logger.info("End of CAF processing.")
    logger.info("Checking for failures...")
    if failed:
        for name in failed:
            logger.error("%s failed!", name)
        return 1
    if not collect_output_databases(
        working_dir, Path(args.output_db), plan.calibrations, args.overwrite_output_db
    ):
        return 1
    return 0


def _load_json_file(path: Path) -> Any:
    """Read a JSON file, stopping as basf2 does when it is missing, unreadable or invalid."""
    if not path.is_file():
        # basf2 returns the errno of a FileNotFoundError raised without one, so the tool exits 0 here.
        logger.error("The file %s does not exist", path.as_posix())
        raise _StopRun(0)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        logger.error("The file %s does not exist or cannot be read: %s", path.as_posix(), error.strerror)
        raise _StopRun(0) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        logger.error("The file %s is not valid JSON: %s", path.as_posix(), error)
        raise _StopRun(1) from None


def _valid_input_shape(input_data: dict[str, Any]) -> bool:
    for entries in input_data.values():
        if not isinstance(entries, list):
            return False
        for entry in entries:
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
                return False
            exp_run = entry[1]
            if not (
                isinstance(exp_run, list) and len(exp_run) == 2 and all(isinstance(n, int) for n in exp_run)
            ):
                return False
    return True


def _make_plan(
    args: argparse.Namespace,
    caf_config: dict[str, Any],
    input_files: dict[str, list[tuple[str, tuple[int, int]]]],
    requested_iov: IoV,
) -> RunPlan:
    script = str(caf_config["caf_script"])
    try:
        release = load_release()
    except ReleaseError as error:
        logger.error("%s", error)
        raise _StopRun(1) from None

    if args.permissive and Path(script).name != script:
        if not Path(script).is_file():
            # basf2 imports the path, and the FileNotFoundError from the file system carries errno 2.
            logger.error("The file %s does not exist", script)
            raise _StopRun(2)
        logger.info("Loading prompt script %s from its path (--permissive)", script)
    try:
        entry = release.find_script(script)
    except ReleaseError:
        logger.error("Couldn't import prompt.calibrations.%s", Path(script).stem)
        raise _StopRun(1) from None
    logger.info("Running prompt script %s of %s", Path(script).name, release.name)

    required = sorted(entry.get("input_data_names", []))
    if not set(required).issubset(input_files):
        logger.error(
            "The input data does not contain all of the required input names. Required: %s Input: %s",
            required,
            sorted(input_files),
        )
        raise _StopRun(1)

    logger.info("Getting values for 'expert_config' from the prompt script.")
    expert_config = dict(entry.get("expert_config") or {})
    if "expert_config" in caf_config:
        logger.info("Overwriting values in 'expert_config' by using the values from the config JSON file.")
        expert_config.update(caf_config["expert_config"] or {})

    backend_args = dict(caf_config.get("backend_args") or {})
    for option in ("queue", "universe", "getenv", "path_prefix"):
        value = getattr(args, option, None)
        if value is not None:
            backend_args[option] = value
    if args.backend == "Local":
        backend_args["max_processes"] = args.max_processes
    logger.info("Requested use of %s backend", args.backend)
    logger.info("Default CAF backend_args: %s", backend_args)

    testing_payloads = caf_config.get("testing_payloads")
    if testing_payloads and not args.permissive:
        logger.warning("testing_payloads %s is ignored: it needs --permissive", testing_payloads)
        testing_payloads = None
    elif testing_payloads:
        logger.info("Adding local database %s with testing payloads", testing_payloads)

    used_inputs = {name: files for name, files in input_files.items() if name in required}
    subjobs = {
        name: split_subjobs(files, args.max_files_per_subjob, args.max_subjobs)
        for name, files in sorted(used_inputs.items())
    }
    calibrations = release.caf_calibrations(entry)
    for calibration in calibrations:
        logger.info("Applying prompt settings to Calibration(name=%s)", calibration.name)
        for global_tag in caf_config["database_chain"]:
            logger.info("Using global tag %s for %s", global_tag, calibration.name)
        _warn_runs_outside(calibration.name, used_inputs, requested_iov)
    return RunPlan(
        release=release.name,
        script=Path(script).name,
        calibrations=calibrations,
        input_files=used_inputs,
        subjobs=subjobs,
        requested_iov=requested_iov,
        database_chain=list(caf_config["database_chain"]),
        expert_config=expert_config,
        backend=args.backend,
        backend_args=backend_args,
        heartbeat=args.heartbeat,
        testing_payloads=testing_payloads,
    )


def _warn_runs_outside(
    calibration: str, input_files: dict[str, list[tuple[str, tuple[int, int]]]], requested_iov: IoV
) -> None:
    outside = sorted(
        {
            exp_run
            for files in input_files.values()
            for _, exp_run in files
            if not requested_iov.contains(*exp_run)
        }
    )
    if outside:
        logger.warning(
            "%d runs of the input data of %s lie outside the requested IoV %s, e.g. %s",
            len(outside),
            calibration,
            requested_iov.as_text(),
            outside[0],
        )
