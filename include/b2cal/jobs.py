"""Jobs on the Airflow machine: the local transport, and the older detached local jobs.

:class:`LocalTransport` runs the scripts of :mod:`b2cal.remote` on this machine, so a site with the
``local`` transport keeps its jobs exactly as an SSH site does: a job folder per calibration, an
attempt folder per start with ``job.pid``, ``job.log`` and ``job.exit``.

:func:`start_local_job` and :class:`LocalJob` keep a job's files in one folder, for callers that run a
plain command without attempts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from b2cal.remote import CommandResult, calibration_key, job_key

log = logging.getLogger(__name__)

PID_FILE = "job.pid"
LOG_FILE = "job.log"
EXIT_FILE = "job.exit"
__all__ = ["LocalJob", "LocalTransport", "calibration_key", "job_key", "start_local_job"]


class LocalTransport:
    """Run site scripts and move job files on this machine.

    :param python: the command that reads a Python program on stdin; this interpreter by default.
    """

    description = "local"

    def __init__(self, python: Sequence[str] | None = None) -> None:
        self.python = list(python or (sys.executable, "-"))

    async def run(self, argv: Sequence[str], stdin: str, timeout: float) -> CommandResult:
        """Run ``argv`` with ``stdin`` as a child process and wait at most ``timeout`` seconds."""
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(stdin.encode()), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise TimeoutError(f"{shlex.join(argv)} did not finish within {timeout} s") from None
        exit_status = (
            process.returncode if process.returncode is not None and process.returncode >= 0 else None
        )
        return CommandResult(exit_status, stdout.decode(errors="replace"), stderr.decode(errors="replace"))

    async def write_files(self, folder: str, files: Mapping[str, str]) -> None:
        """Create ``folder`` and write each file into it through a temporary file and a rename."""
        await asyncio.to_thread(_write_files, Path(folder), dict(files))

    async def fetch_folder(self, remote: str, local: Path) -> None:
        """Copy the folder ``remote`` to ``local``."""
        await asyncio.to_thread(shutil.copytree, remote, local, dirs_exist_ok=True)


def _write_files(folder: Path, files: Mapping[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        temporary = folder / f".{name}.{uuid.uuid4().hex}"
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(folder / name)


@dataclass(frozen=True)
class LocalJob:
    """A job started in a folder of this machine."""

    folder: Path

    @property
    def pid(self) -> int | None:
        """The process id recorded when the job started, if any."""
        try:
            return int((self.folder / PID_FILE).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    @property
    def started(self) -> bool:
        """Whether the job was started in this folder."""
        return (self.folder / PID_FILE).exists()

    @property
    def exit_status(self) -> int | None:
        """The exit status, once the job ended."""
        try:
            return int((self.folder / EXIT_FILE).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def is_alive(self) -> bool:
        """Return whether the job's process still runs."""
        pid = self.pid
        if pid is None or self.exit_status is not None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # A finished child of this process stays a zombie until it is reaped.
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
            return finished == 0
        except ChildProcessError:
            return _not_zombie(pid)

    def log_tail(self, lines: int = 40) -> str:
        """Return the last lines of the job's log."""
        try:
            text = (self.folder / LOG_FILE).read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        """Return the whole log."""
        try:
            return (self.folder / LOG_FILE).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> bool:
        """Stop the job's process group; return whether a process was signalled."""
        pid = self.pid
        if pid is None or not self.is_alive():
            return False
        try:
            os.killpg(pid, 15)
        except ProcessLookupError:
            return False
        log.info("Stopped job %s (pid %s)", self.folder, pid)
        return True


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def start_local_job(folder: Path, argv: Sequence[str], env: Mapping[str, str] | None = None) -> LocalJob:
    """Start ``argv`` detached in ``folder``, unless a job was already started there.

    The command runs in a new session, so it outlives the task that started it. Its exit status is
    written by the wrapping shell, which runs only the quoted argument list.
    """
    folder.mkdir(parents=True, exist_ok=True)
    job = LocalJob(folder)
    if job.started:
        log.info("Job in %s already started (pid %s); attaching to it", folder, job.pid)
        return job
    script = f"{shlex.join(argv)} > {LOG_FILE} 2>&1; echo $? > {EXIT_FILE}"
    process = subprocess.Popen(  # noqa: S603 - a fixed shell wrapper around a quoted argument list
        ["/bin/sh", "-c", script],
        cwd=folder,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    tmp = folder / f"{PID_FILE}.tmp"
    tmp.write_text(str(process.pid))
    tmp.replace(folder / PID_FILE)
    log.info("Started job in %s with pid %s: %s", folder, process.pid, shlex.join(argv))
    return job
