"""The optional site validation step: run the site's validation program, attach its files to the ticket.

A site whose connection has the extra ``validation`` (:class:`b2cal.sites.ValidationStep`) runs its
program after a calibration's payloads are uploaded and checked, in the calibration's job folder::

    <command> [options] <job folder> <job folder>/validation/attempt-<n>

The program writes its files into the validation folder and lists the ones to publish in
``validation_outputs.json`` there (``{"outputs": ["summary.txt", "plots/a.png"]}``, paths relative to
the folder). The step copies the folder back (SFTP for an SSH site), attaches each listed file to the
calibration's Jira ticket, and returns one :class:`~b2cal.validation.CheckResult` named
``site_validation`` that is stored with the payload checks.

The step can run again safely:

- a stored ``passed`` result for the same job attempt is kept, and nothing runs;
- a validation folder whose run exited 0 (``validation.exit``) is reused without running the program
  again, so a task that failed after the run only copies and attaches;
- a file is attached only when the ticket has no attachment of the same file name and size.

A run that exits non-zero, times out or lists files that are not there gives a ``failed`` result with
the exit status and the end of its log. The step raises nothing, because a failed validation must
block the sign-off, not rerun the calibration. The next pass of the task moves the failed folder aside
(``attempt-<n>.failed-<unix time>``) and runs the program again.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from b2cal.jira_api import JiraApiError
from b2cal.remote import ATTEMPT_PREFIX, RemoteCommandError, Transport
from b2cal.sites import ValidationStep
from b2cal.validation import CheckName, CheckResult, CheckStatus

log = logging.getLogger(__name__)

VALIDATION_DIR = "validation"
OUTPUTS_FILE = "validation_outputs.json"
LOG_FILE = "validation.log"
EXIT_FILE = "validation.exit"
#: Lines of the validation log that a failed result carries.
LOG_TAIL_LINES = 20
#: Exit status of coreutils ``timeout`` when it stopped the program.
TIMEOUT_STATUS = 124
#: Seconds the SSH command may take beyond the step's own timeout, for the set-up and ``tail``.
COMMAND_MARGIN = 60.0
_RESULT_PREFIX = "b2val-step:"


def validation_folder(job_dir: str, attempt: int) -> str:
    """Return the validation folder of one attempt of a job: ``<job>/validation/attempt-<n>``."""
    return f"{job_dir}/{VALIDATION_DIR}/{ATTEMPT_PREFIX}{attempt}"


@dataclass(frozen=True)
class ValidationRun:
    """The outcome of the validation program at the site.

    :param exit_status: the program's exit status as the shell reports it (128 + N after signal N,
        124 after ``timeout`` stopped it), ``None`` when the script printed none.
    :param log_tail: the last lines of ``validation.log``.
    :param reused: whether an earlier successful run in the same folder was taken instead.
    """

    exit_status: int | None
    log_tail: str
    reused: bool = False

    @property
    def succeeded(self) -> bool:
        """Whether the program exited 0."""
        return self.exit_status == 0


def build_validation_script(
    step: ValidationStep,
    job_dir: str,
    output_dir: str,
    *,
    setup_command: str = "",
    env: Mapping[str, str] | None = None,
) -> str:
    """Return the shell script that runs the validation program once in ``job_dir``.

    The script reuses a folder whose run exited 0 and moves a folder of a failed or unfinished run
    aside. It runs the program under coreutils ``timeout`` when the site has it and writes the exit
    status to ``validation.exit``. It prints the end of the log and, last, ``b2val-step: ran <status>``
    or ``b2val-step: reused 0``. Every value is quoted, and the set-up command is sourced as the job's is.
    """
    folder = shlex.quote(output_dir)
    exit_file = shlex.quote(f"{output_dir}/{EXIT_FILE}")
    log_file = shlex.quote(f"{output_dir}/{LOG_FILE}")
    outputs_file = shlex.quote(f"{output_dir}/{OUTPUTS_FILE}")
    argv = shlex.join(step.argv(job_dir, output_dir))
    seconds = f"{step.timeout:g}"
    lines = [
        "umask 022",
        f"cd {shlex.quote(job_dir)} || {{ echo 'b2val-step: cannot enter the job folder' >&2; exit 3; }}",
        f'if [ -f {exit_file} ] && [ "$(cat {exit_file})" = 0 ] && [ -f {outputs_file} ]; then',
        f"    tail -n {LOG_TAIL_LINES} {log_file} 2>/dev/null",
        f"    echo '{_RESULT_PREFIX} reused 0'",
        "    exit 0",
        "fi",
        f"if [ -e {folder} ]; then mv {folder} {folder}.failed-$(date +%s) || exit 4; fi",
        f"mkdir -p {folder} || {{ echo 'b2val-step: cannot create the validation folder' >&2; exit 4; }}",
        "(",
    ]
    if setup_command:
        lines += [
            f"{{ {setup_command}\n}} || {{",
            '    status=$?; echo "[b2cal] [ERROR] the basf2 set-up command failed with exit status $status"',
            '    exit "$status"',
            "}",
        ]
    for name, value in (env or {}).items():
        lines.append(f"export {name}={shlex.quote(value)}")
    lines += [
        "if command -v timeout >/dev/null 2>&1; then",
        f"    exec timeout --kill-after=10 {seconds} {argv}",
        "fi",
        f"exec {argv}",
        f") > {log_file} 2>&1 < /dev/null",
        "status=$?",
        f"printf '%s\\n' \"$status\" > {exit_file}",
        f"tail -n {LOG_TAIL_LINES} {log_file}",
        f'echo "{_RESULT_PREFIX} ran $status"',
    ]
    return "\n".join(lines) + "\n"


async def run_validation(
    transport: Transport,
    step: ValidationStep,
    job_dir: str,
    attempt: int,
    *,
    shell: str = "/bin/bash",
    setup_command: str = "",
    env: Mapping[str, str] | None = None,
) -> ValidationRun:
    """Run the validation program of one attempt of a job at the site, or reuse its successful run.

    :param shell: the shell that runs the script and sources ``setup_command`` (the site's
        ``remote_shell``).
    :raises RemoteCommandError: when the script itself fails, e.g. the job folder is missing.
    :raises TimeoutError: when the command outlives the step's timeout and its margin.
    """
    output_dir = validation_folder(job_dir, attempt)
    script = build_validation_script(step, job_dir, output_dir, setup_command=setup_command, env=env)
    result = await transport.run([shell, "-s"], script, step.timeout + COMMAND_MARGIN)
    lines = result.stdout.rstrip("\n").splitlines()
    if result.exit_status != 0 or not lines or not lines[-1].startswith(_RESULT_PREFIX):
        detail = result.stderr.strip()[-1000:] or result.stdout.strip()[-1000:] or "no output"
        raise RemoteCommandError(
            f"the validation step in {job_dir} on {transport.description} ended without a result: {detail}"
        )
    outcome, _, status_text = lines[-1].removeprefix(_RESULT_PREFIX).strip().partition(" ")
    status = int(status_text) if status_text.isdigit() else None
    return ValidationRun(status, "\n".join(lines[:-1]), reused=outcome == "reused")


@dataclass(frozen=True)
class OutputFile:
    """One file that the validation program listed, copied to this machine.

    :param name: the path relative to the validation folder, as listed.
    :param path: the local copy.
    :param size: bytes.
    """

    name: str
    path: Path
    size: int

    @property
    def filename(self) -> str:
        """The attachment's file name: the listed path with ``/`` replaced by ``_``."""
        return self.name.replace("/", "_")

    @property
    def mime_type(self) -> str:
        """The MIME type guessed from the file name, ``application/octet-stream`` when unknown."""
        return mimetypes.guess_type(self.filename)[0] or "application/octet-stream"


class OutputListError(ValueError):
    """``validation_outputs.json`` is missing or invalid, or names a file that is not there."""


def read_outputs(folder: Path) -> list[OutputFile]:
    """Return the files that ``validation_outputs.json`` in a copied validation folder lists.

    :raises OutputListError: naming the problem, when the list is missing or invalid, or a listed path
        is absolute, contains ``..``, or names no file.
    """
    listing = folder / OUTPUTS_FILE
    try:
        data = json.loads(listing.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OutputListError(f"the validation program wrote no {OUTPUTS_FILE}") from None
    except (OSError, ValueError) as exc:
        raise OutputListError(f"{OUTPUTS_FILE} is not valid JSON: {exc}") from None
    names = data.get("outputs") if isinstance(data, dict) else None
    if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
        raise OutputListError(f'{OUTPUTS_FILE} must be {{"outputs": ["<relative path>", ...]}}, not {data!r}')
    files = []
    root = folder.resolve()
    for name in names:
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise OutputListError(f"{OUTPUTS_FILE} lists {name!r}; give paths inside the validation folder")
        path = folder / relative
        if not path.is_file() or not path.resolve().is_relative_to(root):
            raise OutputListError(
                f"{OUTPUTS_FILE} lists {name!r}, which is not a file in the validation folder"
            )
        files.append(OutputFile(name, path, path.stat().st_size))
    return files


class AttachmentApi(Protocol):
    """The attachment calls of :class:`b2cal.jira_api.JiraApi`."""

    def attachments(self, key: str) -> list[dict[str, Any]]: ...

    def add_attachment(
        self, key: str, filename: str, content: bytes, mime_type: str = ...
    ) -> list[dict[str, Any]]: ...


@dataclass
class AttachResult:
    """The file names attached to a ticket now, and those it already had with the same size."""

    attached: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def attach_outputs(api: AttachmentApi, key: str, files: Sequence[OutputFile]) -> AttachResult:
    """Attach each file to the ticket ``key`` unless it has an attachment of the same name and size.

    :raises b2cal.jira_api.JiraApiError: when Jira fails; the files attached before stay attached.
    """
    existing = {(str(item.get("filename")), int(item.get("size") or 0)) for item in api.attachments(key)}
    result = AttachResult()
    for item in files:
        if (item.filename, item.size) in existing:
            result.skipped.append(item.filename)
            continue
        api.add_attachment(key, item.filename, item.path.read_bytes(), item.mime_type)
        existing.add((item.filename, item.size))
        result.attached.append(item.filename)
        log.info("Attached %s (%d bytes) to %s", item.filename, item.size, key)
    return result


def recorded_result(previous: CheckResult | None, attempt: int) -> CheckResult | None:
    """Return the stored result of the step when it passed for this job attempt, else ``None``."""
    if previous is None or previous.name != CheckName.SITE_VALIDATION:
        return None
    if previous.status != CheckStatus.PASSED or previous.detail.get("attempt") != attempt:
        return None
    return previous


def passed_result(
    command: str,
    key: str,
    attempt: int,
    run: ValidationRun,
    files: Sequence[OutputFile],
    attached: AttachResult,
) -> CheckResult:
    """Return the ``site_validation`` result of a run whose files are all on the ticket."""
    listed = ", ".join(item.filename for item in files) or "no files"
    message = f"{command} passed; {len(attached.attached)} files attached to {key}"
    if attached.skipped:
        message += f", {len(attached.skipped)} were attached before"
    message += f": {listed}"
    return CheckResult(
        CheckName.SITE_VALIDATION,
        CheckStatus.PASSED,
        message,
        {
            "attempt": attempt,
            "exit_status": run.exit_status,
            "reused_run": run.reused,
            "outputs": [item.filename for item in files],
            "attached": attached.attached,
            "already_attached": attached.skipped,
        },
    )


def failed_result(command: str, attempt: int, reason: str, log_tail: str = "") -> CheckResult:
    """Return a failed ``site_validation`` result whose message ends with the end of the log."""
    message = f"{command} {reason}"
    if log_tail.strip():
        message += f"; end of the log:\n{log_tail.strip()}"
    return CheckResult(
        CheckName.SITE_VALIDATION,
        CheckStatus.FAILED,
        message,
        {"attempt": attempt, "reason": reason, "log_tail": log_tail},
    )


class ValidationSite(Protocol):
    """The calls of a site that the step needs: run the program and copy a folder back."""

    def run_validation(
        self, step: ValidationStep, job_dir: str, attempt: int, *, setup_command: str, env: Mapping[str, str]
    ) -> ValidationRun: ...

    def fetch_folder(self, remote_folder: str, local: Path) -> Path: ...


def validate_at_site(
    site: ValidationSite,
    api: AttachmentApi,
    step: ValidationStep,
    *,
    job_dir: str,
    attempt: int,
    ticket_key: str | None,
    local_dir: Path,
    setup_command: str = "",
    env: Mapping[str, str] | None = None,
    previous: CheckResult | None = None,
    site_errors: tuple[type[BaseException], ...] = (RemoteCommandError, TimeoutError, OSError),
) -> CheckResult:
    """Run the validation step of one job attempt and return its ``site_validation`` result.

    :param local_dir: where the validation folder is copied; it is replaced.
    :param previous: the stored result of the step; a passed one of the same attempt is returned as it
        is, without running anything.
    :param site_errors: the errors of ``site`` that mean it could not run or copy, which become a failed
        result; other errors propagate.
    """
    recorded = recorded_result(previous, attempt)
    if recorded is not None:
        log.info("The validation of attempt %s in %s passed before; not running it again", attempt, job_dir)
        return recorded
    command = step.command
    try:
        run = site.run_validation(step, job_dir, attempt, setup_command=setup_command, env=dict(env or {}))
    except site_errors as exc:
        return failed_result(command, attempt, f"could not run at the site: {exc}")
    if not run.succeeded:
        return failed_result(command, attempt, run_failure_reason(run, step), run.log_tail)
    try:
        files = read_outputs(site.fetch_folder(validation_folder(job_dir, attempt), local_dir))
    except OutputListError as exc:
        return failed_result(command, attempt, f"exited 0, but {exc}", run.log_tail)
    except site_errors as exc:
        return failed_result(command, attempt, f"exited 0, but copying its folder failed: {exc}")
    if ticket_key is None:
        return failed_result(
            command, attempt, "exited 0, but the calibration has no Jira ticket to attach to"
        )
    try:
        attached = attach_outputs(api, ticket_key, files)
    except JiraApiError as exc:
        return failed_result(
            command,
            attempt,
            f"exited 0, but attaching its files to {ticket_key} failed: {exc}; clear the task to attach "
            "the remaining files",
        )
    return passed_result(command, ticket_key, attempt, run, files, attached)


def run_failure_reason(run: ValidationRun, step: ValidationStep) -> str:
    """Return why a run failed, e.g. ``failed with exit status 3``."""
    if run.exit_status == TIMEOUT_STATUS:
        return f"timed out after {step.timeout:g} s (exit status {TIMEOUT_STATUS})"
    if run.exit_status is None:
        return "ended without an exit status"
    if run.exit_status > 128:
        return f"was stopped by signal {run.exit_status - 128} (exit status {run.exit_status})"
    return f"failed with exit status {run.exit_status}"


__all__ = [
    "AttachResult",
    "OutputFile",
    "OutputListError",
    "ValidationRun",
    "attach_outputs",
    "build_validation_script",
    "failed_result",
    "passed_result",
    "read_outputs",
    "recorded_result",
    "run_failure_reason",
    "run_validation",
    "ValidationSite",
    "validate_at_site",
    "validation_folder",
]
