"""Run calibration jobs at a site: checked values, job keys, quoted scripts and their outcome.

A job runs detached in its job folder at the site, which is the current folder of ``b2caf-prompt-run``
and contains the CAF files (``caf_config.json``, ``input_data.json``, ``calibration_results/``,
``caf_outputdb_results/``). Each start of the job is an *attempt* with its own folder:

.. code-block:: text

    <work_root>/<request>/<calibration>-<digest>/      job folder, see calibration_key()
        attempt-1/
            job.sh          the wrapper that ran: set-up command, environment, quoted command line
            job.pid         process id of the wrapper, which leads the job's process group
            job.log         stdout and stderr of the set-up command and of the job
            job.exit        exit status, written when the job ends
            job.cancelled   written when a user cancelled the job
        attempt-2/          a later start after attempt 1 failed; it resumes from the CAF checkpoint

``mkdir`` of the attempt folder claims the attempt, so two starts of the same attempt run one job: the
second finds the folder and attaches. The job key is derived from the request, the calibration and the
attempt (:func:`job_key`), which is how a retried task finds its running or finished job.

Nothing here reads a value into a shell command unquoted. Scripts are sent on the standard input of a
fixed command (``/bin/sh -s`` or ``python3 -``), so no value passes through the login shell of the site
account, whatever shell that is. Request fields that reach the site are checked first by
:func:`check_request_for_site`, which rejects shell metacharacters, control characters, ``..`` and
absolute paths.

A :class:`Transport` runs the scripts: :class:`b2cal.jobs.LocalTransport` on this machine, or the SSH
transport of the Airflow plugin. This module imports no Airflow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol

from b2cal.caf import (
    OUTPUT_DB_DIR_NAME,
    STATE_DB_NAME,
    WORKING_DIR_NAME,
    CafFacts,
    CafRow,
    JobVerdict,
    judge_facts,
)

log = logging.getLogger(__name__)

SAFE_PART = re.compile(r"[^A-Za-z0-9_.-]+")
ATTEMPT_PREFIX = "attempt-"
PID_FILE = "job.pid"
LOG_FILE = "job.log"
EXIT_FILE = "job.exit"
SCRIPT_FILE = "job.sh"
CANCELLED_FILE = "job.cancelled"
CONFIG_FILES = ("caf_config.json", "input_data.json")
#: Seconds after which a claimed attempt without a process id counts as a start that never happened.
START_GRACE_SECONDS = 120.0
#: Lines of the job's log that an outcome carries.
LOG_TAIL_LINES = 40

# Characters that a POSIX shell, bash or csh give a meaning to. A request field with one of them is
# rejected even though every value is quoted, so a quoting mistake cannot turn a field into a command.
SHELL_METACHARACTERS = frozenset("`$&|;<>()[]{}*?!~#'\"\\^")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")

JudgeKind = Literal["caf", "exit_status"]


class UnsafeValueError(ValueError):
    """A value that must not reach a site; the message names the field, the value and the rule."""


# ---------------------------------------------------------------------------------------------------------
# Checked values


def check_text(field_name: str, value: Any, *, path: bool = True) -> str:
    """Return ``value`` if it may reach a site as a file name part or a command argument.

    Rejected are non-strings, empty strings, control characters (newlines included), shell
    metacharacters, a leading ``-`` (it would read as an option), absolute paths and ``..`` components.

    :param field_name: the field, for the message, e.g. ``request_id``.
    :param path: whether ``/`` is allowed between parts; calibration names such as
        ``PXD hot/dead pixel calibration`` contain one.
    :raises UnsafeValueError: naming the field, the value and the rule it breaks.
    """
    if not isinstance(value, str) or not value.strip():
        raise UnsafeValueError(f"{field_name} {value!r} must be a non-empty string")
    controls = sorted({character for character in value if ord(character) < 32 or ord(character) == 127})
    if controls:
        raise UnsafeValueError(
            f"{field_name} {value!r} contains the control characters {controls!r}, e.g. a line break; "
            "remove them"
        )
    metacharacters = sorted(set(value) & SHELL_METACHARACTERS)
    if metacharacters:
        raise UnsafeValueError(
            f"{field_name} {value!r} contains the shell metacharacters {''.join(metacharacters)!r}; "
            "use letters, digits, spaces and '_.+-/' only"
        )
    if value.startswith("-"):
        raise UnsafeValueError(
            f"{field_name} {value!r} starts with '-' and would read as an option; rename it"
        )
    if value.startswith("/"):
        raise UnsafeValueError(f"{field_name} {value!r} is an absolute path; give a name, not a path")
    if ".." in value.split("/"):
        raise UnsafeValueError(f"{field_name} {value!r} contains the path component '..'; remove it")
    if not path and "/" in value:
        raise UnsafeValueError(f"{field_name} {value!r} contains '/'; give a single name")
    return value


def check_name(field_name: str, value: Any) -> str:
    """Return ``value`` if it is one name of letters, digits and ``_.+-``, starting with a letter or digit.

    :raises UnsafeValueError: naming the field and the value.
    """
    check_text(field_name, value, path=False)
    if not NAME.fullmatch(value):
        raise UnsafeValueError(
            f"{field_name} {value!r} is invalid; use letters, digits and '_.+-', "
            "starting with a letter or digit"
        )
    return value


def check_json_values(field_name: str, value: Any) -> None:
    """Check every key and string value of a JSON value with :func:`check_text`.

    :raises UnsafeValueError: naming the path of the first unsafe key or value.
    """
    if isinstance(value, str):
        check_text(field_name, value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            check_text(f"{field_name} key", key)
            check_json_values(f"{field_name}[{key!r}]", item)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_json_values(f"{field_name}[{index}]", item)
    elif value is not None and not isinstance(value, bool | int | float):
        raise UnsafeValueError(f"{field_name} {value!r} must be a JSON value")


class RequestFields(Protocol):
    """The fields of a processing request, as :class:`b2cal.request.RequestSpec` has them."""

    uid: str
    kind: str
    site: str
    release: str
    calibrations: tuple[str, ...]
    staging_tag: str
    running_tag: str
    requested_by: str
    filter_overrides: Mapping[str, Mapping[str, list[str]]]
    expert_config_overrides: Mapping[str, Mapping[str, Any]]


def check_request_for_site(spec: RequestFields) -> None:
    """Reject a request whose fields could change a command, a path or a file at the site.

    Every string field is checked: the ones that become folder names and command arguments
    (``request_id``, ``release``, calibration names), the ones written into ``caf_config.json``
    (``staging_tag``, ``expert_config``), and the others, so that no field needs an argument why it is safe.

    :raises UnsafeValueError: naming the first unsafe field.
    """
    check_name("request_id", spec.uid)
    check_name("kind", spec.kind)
    check_name("site", spec.site)
    check_name("release", spec.release)
    check_name("staging_tag", spec.staging_tag)
    check_name("running_tag", spec.running_tag)
    check_text("requested_by", spec.requested_by, path=False)
    for index, name in enumerate(spec.calibrations):
        check_text(f"calibrations[{index}]", name)
    check_json_values("filter_overrides", dict(spec.filter_overrides))
    check_json_values("expert_config", dict(spec.expert_config_overrides))


# ---------------------------------------------------------------------------------------------------------
# Job keys and paths


def calibration_key(request_uid: str, calibration: str) -> str:
    """Return the folder-safe key of a calibration's job folder in a request: ``<request>/<name>-<digest>``.

    The digest keeps two names apart that differ only in characters the readable part replaces.
    """
    readable = SAFE_PART.sub("_", calibration).strip("_.")[:40] or "calibration"
    digest = hashlib.sha1(f"{request_uid}\0{calibration}".encode()).hexdigest()[:8]
    request = SAFE_PART.sub("_", request_uid).strip(".") or "request"
    return f"{request}/{readable}-{digest}"


def job_key(request_uid: str, calibration: str, attempt: int = 1) -> str:
    """Return the key of one attempt of a calibration's job: ``<request>/<name>-<digest>/attempt-<n>``."""
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"attempt {attempt!r} must be an integer >= 1")
    return f"{calibration_key(request_uid, calibration)}/{ATTEMPT_PREFIX}{attempt}"


def job_folder(work_root: str, request_uid: str, calibration: str) -> str:
    """Return the job folder of a calibration below a site's ``work_root``."""
    return str(PurePosixPath(work_root) / calibration_key(request_uid, calibration))


@dataclass(frozen=True)
class JobPaths:
    """The files of one attempt of a job."""

    job_dir: str
    attempt: int

    @property
    def attempt_dir(self) -> str:
        """The attempt's folder."""
        return f"{self.job_dir}/{ATTEMPT_PREFIX}{self.attempt}"

    def file(self, name: str) -> str:
        """Return the path of a file in the attempt's folder."""
        return f"{self.attempt_dir}/{name}"


# ---------------------------------------------------------------------------------------------------------
# Scripts


@dataclass(frozen=True)
class JobLaunch:
    """The command line, set-up command and environment of one attempt of a job.

    :param paths: the job folder and the attempt.
    :param argv: the command line, e.g. from :func:`b2cal.caf.build_prompt_run_command`.
    :param setup_command: a shell command that sets up the software, e.g.
        ``source /cvmfs/belle.cern.ch/tools/b2setup release-11-00-00``.
    :param env: environment variables of the job.
    :param shell: the shell that runs the wrapper script and sources ``setup_command``.
    :param clean_start: move the CAF folders of earlier attempts aside, so the job starts from scratch.
    """

    paths: JobPaths
    argv: Sequence[str]
    setup_command: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    shell: str = "/bin/bash"
    clean_start: bool = False


def build_job_script(launch: JobLaunch) -> str:
    """Return the wrapper script that runs the job, records its process id and writes its exit status.

    The wrapper's process id is its process group id, because it is started by ``setsid``; stopping the
    job signals that group.
    """
    paths = launch.paths
    pid_file = shlex.quote(paths.file(PID_FILE))
    exit_file = shlex.quote(paths.file(EXIT_FILE))
    lines = [
        f'echo "$$" > {pid_file}.tmp && mv -f {pid_file}.tmp {pid_file}',
        f"exec >> {shlex.quote(paths.file(LOG_FILE))} 2>&1 < /dev/null",
        "b2cal_finish() {",
        f"    printf '%s\\n' \"$1\" > {exit_file}.tmp && mv -f {exit_file}.tmp {exit_file}",
        '    exit "$1"',
        "}",
        f"cd {shlex.quote(paths.job_dir)} || b2cal_finish 1",
        f'echo "[b2cal] attempt {paths.attempt} started on $(hostname) at $(date -u +%Y-%m-%dT%H:%M:%SZ)"',
    ]
    if launch.setup_command:
        lines += [
            f"{{ {launch.setup_command}\n}} || {{",
            '    status=$?; echo "[b2cal] [ERROR] the basf2 set-up command failed with exit status $status"',
            '    b2cal_finish "$status"',
            "}",
        ]
    for name, value in launch.env.items():
        lines.append(f"export {name}={shlex.quote(value)}")
    lines += [
        shlex.join(launch.argv),
        "status=$?",
        'echo "[b2cal] the job ended with exit status $status at $(date -u +%Y-%m-%dT%H:%M:%SZ)"',
        'b2cal_finish "$status"',
    ]
    return "\n".join(lines) + "\n"


def build_start_script(launch: JobLaunch, staged_files: Mapping[str, str] | None = None) -> str:
    """Return the ``/bin/sh`` script that claims the attempt and starts the job detached, or attaches.

    The script prints ``b2cal-start: started <pid>`` or ``b2cal-start: attached``. It ignores SIGHUP, so a
    connection lost halfway does not leave a claimed attempt without a job.

    :param launch: what to start.
    :param staged_files: final name -> staged name of files uploaded to the job folder for this start;
        they replace the final files only when this start claims the attempt.
    """
    paths = launch.paths
    _check_no_nul(launch)
    staged = dict(staged_files or {})
    job_dir = shlex.quote(paths.job_dir)
    attempt_dir = shlex.quote(paths.attempt_dir)
    shell = shlex.quote(launch.shell)
    remove_staged = " ".join(f"{job_dir}/{shlex.quote(name)}" for name in staged.values())
    lines = [
        "trap '' HUP",
        "umask 022",
        f"mkdir -p {job_dir} || {{ echo 'b2cal-start: cannot create the job folder' >&2; exit 3; }}",
        f"if ! mkdir {attempt_dir} 2>/dev/null; then",
        f"    [ -d {attempt_dir} ] || {{ echo 'b2cal-start: cannot create the attempt' >&2; exit 3; }}",
    ]
    if remove_staged:
        lines.append(f"    rm -f {remove_staged}")
    lines += ["    echo 'b2cal-start: attached'", "    exit 0", "fi"]
    if launch.clean_start:
        for name in (WORKING_DIR_NAME, OUTPUT_DB_DIR_NAME):
            source = f"{job_dir}/{name}"
            lines.append(f"if [ -e {source} ]; then mv {source} {attempt_dir}/discarded-{name} || exit 4; fi")
    for final, staged_name in staged.items():
        lines.append(f"mv -f {job_dir}/{shlex.quote(staged_name)} {job_dir}/{shlex.quote(final)} || exit 5")
    script_path = shlex.quote(paths.file(SCRIPT_FILE))
    lines += [
        f"printf '%s' {shlex.quote(build_job_script(launch))} > {script_path} || exit 6",
        f"cd {job_dir} || exit 7",
        "if command -v setsid >/dev/null 2>&1; then",
        f"    setsid {shell} {script_path} </dev/null >/dev/null 2>&1 &",
        "else",
        f"    nohup {shell} {script_path} </dev/null >/dev/null 2>&1 &",
        "fi",
        "waited=0",
        f'while [ ! -s {shlex.quote(paths.file(PID_FILE))} ] && [ "$waited" -lt 100 ]; do',
        "    sleep 0.1 2>/dev/null || sleep 1",
        "    waited=$((waited + 1))",
        "done",
        f'echo "b2cal-start: started $(cat {shlex.quote(paths.file(PID_FILE))} 2>/dev/null)"',
    ]
    return "\n".join(lines) + "\n"


def build_stop_script(paths: JobPaths) -> str:
    """Return the ``/bin/sh`` script that stops an attempt's process group and marks it cancelled.

    The process id must be an integer above 1, and on Linux its command line must name the attempt's
    wrapper script, so a process id that was reused after a reboot is never signalled.
    """
    attempt_dir = shlex.quote(paths.attempt_dir)
    marker = shlex.quote(paths.file(SCRIPT_FILE))
    return (
        "\n".join(
            [
                f"pid=$(cat {attempt_dir}/{PID_FILE} 2>/dev/null)",
                'case "$pid" in ""|*[!0-9]*) echo "b2cal-stop: no process id"; exit 0;; esac',
                '[ "$pid" -gt 1 ] || { echo "b2cal-stop: no process id"; exit 0; }',
                f'[ -e {attempt_dir}/{EXIT_FILE} ] && {{ echo "b2cal-stop: already ended"; exit 0; }}',
                'if [ -r "/proc/$pid/cmdline" ]; then',
                f"    tr '\\000' ' ' < \"/proc/$pid/cmdline\" | grep -qF -- {marker} || "
                '{ echo "b2cal-stop: process $pid is not this job"; exit 0; }',
                "fi",
                f"date -u +%Y-%m-%dT%H:%M:%SZ > {attempt_dir}/{CANCELLED_FILE}",
                'kill -s TERM -- "-$pid" 2>/dev/null || kill -s TERM "$pid" 2>/dev/null',
                "waited=0",
                'while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 50 ]; do',
                "    sleep 0.2 2>/dev/null || sleep 1",
                "    waited=$((waited + 1))",
                "done",
                'if kill -0 "$pid" 2>/dev/null; then',
                '    kill -s KILL -- "-$pid" 2>/dev/null || kill -s KILL "$pid"',
                "fi",
                'echo "b2cal-stop: stopped $pid"',
            ]
        )
        + "\n"
    )


def _check_no_nul(launch: JobLaunch) -> None:
    values = [*launch.argv, launch.setup_command, *launch.env.values(), launch.paths.job_dir]
    if any("\0" in value for value in values):
        raise UnsafeValueError("a job's command line, set-up command, environment or folder contains NUL")


# The probe runs on the site with the site's Python 3 (3.6 or newer, standard library only). The
# caller puts ``ARGS = {...}`` in front of it. It prints one JSON object.
PROBE_SOURCE = r"""
import fnmatch, json, os, re, sqlite3, sys, time
try:
    from urllib.parse import quote
except ImportError:
    from urllib import quote


def read_int(path):
    try:
        with open(path) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def process_alive(pid, marker):
    if pid is None or pid <= 1:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if not os.path.isdir("/proc/self"):
        return True
    try:
        with open("/proc/%d/stat" % pid) as handle:
            if handle.read().rsplit(") ", 1)[1][:1] == "Z":
                return False
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return marker in handle.read().decode("utf-8", "replace")
    except (OSError, IndexError):
        return False


def read_log(path, tail_lines, scan):
    tail, errors = [], []
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            handle.seek(max(0, size - 65536))
            tail = handle.read().decode("utf-8", "replace").splitlines()[-tail_lines:]
            if scan:
                handle.seek(0)
                for raw in handle:
                    line = raw.decode("utf-8", "replace").rstrip("\n")
                    if "[ERROR]" in line or "[FATAL]" in line:
                        errors.append(line[:2000])
                        if len(errors) >= 200:
                            break
    except OSError:
        pass
    return tail, errors


def folder_name(name):
    return name.replace("/", "_").replace("\\", "_")


def caf_facts(job_dir, working_dir, output_db_dir, state_db_name, status_name):
    facts = {"state_db_found": False, "rows": [], "subjobs": [0, 0, 0], "outputs": {}, "state_error": None}
    working = os.path.join(job_dir, working_dir)
    db_path = os.path.join(working, state_db_name)
    if not os.path.isfile(db_path):
        return facts
    facts["state_db_found"] = True
    try:
        uri = "file:%s?mode=ro" % quote(os.path.abspath(db_path))
        connection = sqlite3.connect(uri, uri=True, timeout=10)
        try:
            query = "SELECT name, state, checkpoint, iteration FROM calibrations"
            rows = connection.execute(query).fetchall()
        finally:
            connection.close()
    except sqlite3.Error as error:
        if "no such table" not in str(error):
            facts["state_error"] = str(error)
        rows = []
    for name, state, checkpoint, iteration in rows:
        facts["rows"].append([str(name), str(state), str(checkpoint), int(iteration)])
        iteration_dir = os.path.join(working, folder_name(str(name)), str(int(iteration)), "collector_output")
        for collection in sorted(os.listdir(iteration_dir)) if os.path.isdir(iteration_dir) else []:
            collection_dir = os.path.join(iteration_dir, collection)
            for subjob in os.listdir(collection_dir) if os.path.isdir(collection_dir) else []:
                subjob_dir = os.path.join(collection_dir, subjob)
                if not os.path.isdir(subjob_dir):
                    continue
                facts["subjobs"][1] += 1
                status = os.path.join(subjob_dir, status_name)
                if os.path.isfile(status):
                    facts["subjobs"][0] += 1
                    with open(status) as handle:
                        if handle.read().strip() != "0":
                            facts["subjobs"][2] += 1
        output = os.path.join(job_dir, output_db_dir, folder_name(str(name)))
        if os.path.isfile(os.path.join(output, "database.txt")):
            facts["outputs"][str(name)] = output
    return facts


def inspect(args):
    job_dir = args["job_dir"]
    result = {"job_dir_exists": os.path.isdir(job_dir), "attempts": [], "attempt": None, "now": time.time()}
    if result["job_dir_exists"]:
        for entry in os.listdir(job_dir):
            match = re.match(r"attempt-([0-9]+)$", entry)
            if match and os.path.isdir(os.path.join(job_dir, entry)):
                result["attempts"].append(int(match.group(1)))
    result["attempts"].sort()
    result["files"] = dict((name, os.path.isfile(os.path.join(job_dir, name))) for name in args["files"])
    attempt = args.get("attempt") or (result["attempts"][-1] if result["attempts"] else None)
    if attempt is not None and attempt in result["attempts"]:
        attempt_dir = os.path.join(job_dir, "attempt-%d" % attempt)
        pid = read_int(os.path.join(attempt_dir, "job.pid"))
        exit_status = read_int(os.path.join(attempt_dir, "job.exit"))
        alive = exit_status is None and process_alive(pid, os.path.join(attempt_dir, "job.sh"))
        scan = args["scan_log"] or not alive
        tail, errors = read_log(os.path.join(attempt_dir, "job.log"), args["tail_lines"], scan)
        result.update({
            "attempt": attempt,
            "pid": pid,
            "exit_status": exit_status,
            "alive": alive,
            "cancelled": os.path.exists(os.path.join(attempt_dir, "job.cancelled")),
            "claimed_age": time.time() - os.stat(attempt_dir).st_mtime,
            "log_tail": tail,
            "error_lines": errors,
        })
    if args["caf"]:
        names = [args[key] for key in ("working_dir", "output_db_dir", "state_db", "status_file")]
        result.update(caf_facts(job_dir, *names))
    return result


def list_folders(args):
    found = {}
    for folder in args["folders"]:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        files = []
        for name in names:
            path = os.path.join(folder, name)
            if fnmatch.fnmatchcase(name, args["pattern"]) and os.path.isfile(path):
                files.append([name, os.path.getsize(path)])
        found[folder] = sorted(files)
    return found


MODES = {"inspect": inspect, "list": list_folders}
sys.stdout.write(json.dumps(MODES[ARGS["mode"]](ARGS)) + "\n")
"""


def build_probe_program(mode: Literal["inspect", "list"], **arguments: Any) -> str:
    """Return the Python program that inspects a job folder or lists folders at the site.

    The arguments travel as a JSON text inside a Python string literal, so no value is parsed by a shell.
    """
    header = f"ARGS = json.loads({json.dumps({'mode': mode, **arguments})!r})\n"
    return "import json\n" + header + PROBE_SOURCE


# ---------------------------------------------------------------------------------------------------------
# Snapshots and outcomes


@dataclass
class JobSnapshot:
    """The state of a job folder as the probe read it: attempts, the latest attempt's process, CAF facts."""

    job_dir: str
    job_dir_exists: bool = False
    attempts: list[int] = field(default_factory=list)
    attempt: int | None = None
    pid: int | None = None
    exit_status: int | None = None
    alive: bool = False
    cancelled: bool = False
    claimed_age: float = 0.0
    files: dict[str, bool] = field(default_factory=dict)
    log_tail: list[str] = field(default_factory=list)
    error_lines: list[str] = field(default_factory=list)
    facts: CafFacts = field(default_factory=CafFacts)
    state_error: str | None = None

    @classmethod
    def from_probe(cls, job_dir: str, data: Mapping[str, Any]) -> JobSnapshot:
        """Build a snapshot from the probe's JSON output."""
        subjobs = list(data.get("subjobs") or [0, 0, 0])
        facts = CafFacts(
            rows=[
                CafRow(str(name), str(state), str(checkpoint), int(iteration))
                for name, state, checkpoint, iteration in data.get("rows", [])
            ],
            state_db_found=bool(data.get("state_db_found")),
            subjobs_done=int(subjobs[0]),
            subjobs_total=int(subjobs[1]),
            subjobs_failed=int(subjobs[2]),
            output_databases={
                str(name): PurePosixPath(path) for name, path in dict(data.get("outputs") or {}).items()
            },
        )
        return cls(
            job_dir=job_dir,
            job_dir_exists=bool(data.get("job_dir_exists")),
            attempts=[int(number) for number in data.get("attempts", [])],
            attempt=data.get("attempt"),
            pid=data.get("pid"),
            exit_status=data.get("exit_status"),
            alive=bool(data.get("alive")),
            cancelled=bool(data.get("cancelled")),
            claimed_age=float(data.get("claimed_age") or 0.0),
            files={str(name): bool(found) for name, found in dict(data.get("files") or {}).items()},
            log_tail=[str(line) for line in data.get("log_tail", [])],
            error_lines=[str(line) for line in data.get("error_lines", [])],
            facts=facts,
            state_error=data.get("state_error"),
        )

    @property
    def starting(self) -> bool:
        """Whether the latest attempt is claimed but its process id not yet written, within the grace time."""
        return (
            self.attempt is not None
            and self.pid is None
            and self.exit_status is None
            and self.claimed_age < START_GRACE_SECONDS
        )

    def log_text(self) -> str:
        """Return the error lines and the tail of the log, as the judgement reads them."""
        return "\n".join([*self.error_lines, *self.log_tail])


def judge_snapshot(snapshot: JobSnapshot, kind: JudgeKind = "caf") -> JobVerdict:
    """Judge the latest attempt of a job from a snapshot.

    ``caf`` jobs are judged by :func:`b2cal.caf.judge_facts` from the state table and output folder, and
    ``exit_status`` jobs (cDST production) by their exit status. A cancelled attempt failed. An attempt
    whose process is gone without an exit status failed too.

    :raises ValueError: if the snapshot has no attempt.
    """
    if snapshot.attempt is None:
        raise ValueError(f"job folder {snapshot.job_dir} has no attempt to judge")
    alive = snapshot.alive or snapshot.starting
    if snapshot.cancelled and not alive:
        return JobVerdict(state="failed", reason=f"attempt {snapshot.attempt} was cancelled by a user")
    if kind == "exit_status":
        if alive:
            return JobVerdict(
                state="running", reason=f"attempt {snapshot.attempt} is running (pid {snapshot.pid})"
            )
        if snapshot.exit_status is None:
            return JobVerdict(state="failed", reason="the process ended without writing an exit status")
        state: Literal["succeeded", "failed"] = "succeeded" if snapshot.exit_status == 0 else "failed"
        return JobVerdict(state=state, reason=f"exit status {snapshot.exit_status}")

    verdict = judge_facts(
        snapshot.facts, process_alive=alive, log_text=None if alive else snapshot.log_text()
    )
    if verdict.state == "failed" and alive:
        # The attempt counts as failed only once its process is gone, so the next attempt never runs
        # beside it in the same folder.
        verdict.state = "running"
        verdict.reason += "; waiting for b2caf-prompt-run to exit"
    if verdict.state == "failed" and snapshot.exit_status not in (None, 0):
        verdict.reason += f" (exit status {snapshot.exit_status})"
    if snapshot.state_error and verdict.state == "running":
        verdict.reason += f"; reading {STATE_DB_NAME} failed: {snapshot.state_error}"
    return verdict


@dataclass(frozen=True)
class SubmitDecision:
    """A task's next step with a job folder: attach to the running attempt, take the ended one, or start one.

    :param action: ``attach``, ``finished`` or ``start``.
    :param attempt: the attempt to attach to, take, or start.
    :param resume: for ``start``: whether the attempt resumes from the CAF checkpoint of the earlier ones.
    :param verdict: the latest attempt's verdict, if there is one.
    """

    action: Literal["attach", "finished", "start"]
    attempt: int
    resume: bool = False
    verdict: JobVerdict | None = None


class JobBusyError(RuntimeError):
    """An older attempt still runs in the job folder, so a newer one cannot start beside it."""


def decide_submission(
    snapshot: JobSnapshot, kind: JudgeKind = "caf", *, clean_start: bool = False, attempt: int = 1
) -> SubmitDecision:
    """Decide from a snapshot whether a task attaches to its job, takes its outcome, or starts an attempt.

    A running or starting attempt is attached to and a succeeded one is taken, so a retried task never
    starts a second job. After a failed attempt the next one starts; it resumes from the CAF checkpoint
    in the same folder unless ``clean_start`` requests a start from scratch.

    :param attempt: the lowest attempt the task may take. A calibration that runs again after its
        payloads were rejected gets a higher one; that attempt starts from scratch when the attempt
        before it succeeded.
    :raises JobBusyError: if an attempt below ``attempt`` still runs.
    """
    if snapshot.attempt is None:
        return SubmitDecision(action="start", attempt=max(1, attempt), resume=False)
    verdict = judge_snapshot(snapshot, kind)
    if snapshot.attempt < attempt:
        if verdict.state == "running":
            raise JobBusyError(
                f"attempt {snapshot.attempt} still runs in {snapshot.job_dir}, so attempt {attempt} cannot "
                "start; wait for it to end or cancel it, then run the task again"
            )
        resume = verdict.state == "failed" and not clean_start
        return SubmitDecision(action="start", attempt=attempt, resume=resume, verdict=verdict)
    if verdict.state == "running":
        return SubmitDecision(action="attach", attempt=snapshot.attempt, verdict=verdict)
    if verdict.state == "succeeded":
        return SubmitDecision(action="finished", attempt=snapshot.attempt, verdict=verdict)
    return SubmitDecision(
        action="start", attempt=max(snapshot.attempts) + 1, resume=not clean_start, verdict=verdict
    )


# ---------------------------------------------------------------------------------------------------------
# Transports and the operations over them


@dataclass(frozen=True)
class CommandResult:
    """The exit status (``None`` after a signal), stdout and stderr of a command run at a site."""

    exit_status: int | None
    stdout: str
    stderr: str


class RemoteCommandError(RuntimeError):
    """A script at the site failed; the message names the site, the script and its error output."""


class Transport(Protocol):
    """Runs scripts and moves files at a site."""

    #: The place commands run, for messages, e.g. ``site BNL (connection b2cal_site_bnl)``; never a secret.
    description: str
    #: The command that reads a Python program on stdin, e.g. ``["python3", "-"]``.
    python: Sequence[str]

    async def run(self, argv: Sequence[str], stdin: str, timeout: float) -> CommandResult:
        """Run ``argv`` with ``stdin`` and wait for it."""
        ...

    async def write_files(self, folder: str, files: Mapping[str, str]) -> None:
        """Create ``folder`` and write each file into it atomically."""
        ...

    async def fetch_folder(self, remote: str, local: Path) -> None:
        """Copy the folder ``remote`` with its content to ``local``."""
        ...


SHELL_ARGV = ("/bin/sh", "-s")


async def run_checked(
    transport: Transport, argv: Sequence[str], stdin: str, what: str, timeout: float
) -> str:
    """Run a script and return its stdout; raise :class:`RemoteCommandError` when it fails."""
    result = await transport.run(argv, stdin, timeout)
    if result.exit_status != 0:
        detail = result.stderr.strip()[-2000:] or result.stdout.strip()[-2000:] or "no output"
        status = "a signal" if result.exit_status is None else f"exit status {result.exit_status}"
        raise RemoteCommandError(f"{what} on {transport.description} failed with {status}: {detail}")
    return result.stdout


async def inspect_job(
    transport: Transport,
    job_dir: str,
    *,
    attempt: int | None = None,
    caf: bool = True,
    scan_log: bool = False,
    files: Iterable[str] = CONFIG_FILES,
    timeout: float = 120.0,
) -> JobSnapshot:
    """Inspect a job folder: its attempts, the latest (or the given) attempt's process and log, the CAF facts.

    :param scan_log: read the whole log for error lines even while the process runs; the log of an
        ended attempt is always read.
    """
    program = build_probe_program(
        "inspect",
        job_dir=job_dir,
        attempt=attempt,
        caf=caf,
        scan_log=scan_log,
        files=list(files),
        tail_lines=LOG_TAIL_LINES,
        working_dir=WORKING_DIR_NAME,
        output_db_dir=OUTPUT_DB_DIR_NAME,
        state_db=STATE_DB_NAME,
        status_file="__BACKEND_CMD_EXIT_STATUS__",
    )
    output = await run_checked(transport, transport.python, program, f"inspecting {job_dir}", timeout)
    return JobSnapshot.from_probe(job_dir, _last_json_line(output, transport, job_dir))


async def list_folders(
    transport: Transport, folders: Sequence[str], pattern: str = "*.root", timeout: float = 120.0
) -> dict[str, list[tuple[str, int | None]]]:
    """List the files matching ``pattern`` in each existing folder: ``{folder: [(name, size), ...]}``."""
    found: dict[str, list[tuple[str, int | None]]] = {}
    for start in range(0, len(folders), 2000):
        batch = list(folders[start : start + 2000])
        program = build_probe_program("list", folders=batch, pattern=pattern)
        output = await run_checked(transport, transport.python, program, "listing input folders", timeout)
        data = _last_json_line(output, transport, "input folders")
        for folder, files in data.items():
            found[str(folder)] = [(str(name), int(size)) for name, size in files]
    return found


@dataclass(frozen=True)
class LaunchResult:
    """The outcome of a start: the attempt, the wrapper's process id, and whether another start claimed it."""

    attempt: int
    pid: int | None
    attached: bool


async def launch_job(
    transport: Transport,
    launch: JobLaunch,
    files: Mapping[str, str] | None = None,
    *,
    timeout: float = 120.0,
) -> LaunchResult:
    """Start one attempt of a job detached, after uploading its files, unless another start claimed it.

    :param files: file name -> text to put into the job folder, e.g. ``caf_config.json``. They are
        uploaded under staged names and take their final names only if this start claims the attempt.
    """
    staged: dict[str, str] = {}
    if files:
        token = secrets.token_hex(6)
        staged = {name: f".{name}.{token}" for name in files}
        await transport.write_files(
            launch.paths.job_dir, {staged[name]: text for name, text in files.items()}
        )
    script = build_start_script(launch, staged)
    output = await run_checked(
        transport,
        SHELL_ARGV,
        script,
        f"starting attempt {launch.paths.attempt} in {launch.paths.job_dir}",
        timeout,
    )
    for line in reversed(output.splitlines()):
        if line == "b2cal-start: attached":
            return LaunchResult(launch.paths.attempt, None, attached=True)
        if line.startswith("b2cal-start: started"):
            pid_text = line.rsplit(" ", 1)[-1]
            return LaunchResult(
                launch.paths.attempt, int(pid_text) if pid_text.isdigit() else None, attached=False
            )
    raise RemoteCommandError(
        f"starting attempt {launch.paths.attempt} in {launch.paths.job_dir} on {transport.description} "
        f"printed no result: {output.strip()[-500:]!r}"
    )


async def stop_job(transport: Transport, paths: JobPaths, *, timeout: float = 60.0) -> str:
    """Stop an attempt's process group and mark it cancelled; return the stop script's message."""
    output = await run_checked(
        transport, SHELL_ARGV, build_stop_script(paths), f"stopping {paths.attempt_dir}", timeout
    )
    return output.strip().splitlines()[-1] if output.strip() else ""


def _last_json_line(output: str, transport: Transport, what: str) -> Any:
    # A login banner or a profile script may print before the program's own line, which comes last.
    for line in reversed(output.strip().splitlines()):
        if line.startswith(("{", "[")):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    raise RemoteCommandError(
        f"the probe of {what} on {transport.description} printed no JSON result: {output.strip()[-500:]!r}; "
        "check that the site's remote_python is Python 3"
    )
