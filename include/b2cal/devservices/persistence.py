"""Save the state of the development services to JSON files and load it again at start.

With a data directory (``b2cal dev-services --data-dir``) each service keeps its state in one file
there: ``jira.json``, ``conddb.json`` and ``runregistry.json``. A :class:`StateSaver` writes a file
within :data:`SAVE_INTERVAL_SECONDS` after a request that may have changed the state, and once more
when the services stop, so a restarted process continues with the same issues, key numbering,
global tags, payloads and run list. Each write goes to a temporary file that then replaces the old
one, so a crash leaves either the old or the new file, never a partial one.

The files contain the webhook secrets and payload files, so they are readable by their owner only.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from fastapi import FastAPI, Request, Response

logger = logging.getLogger(__name__)

#: Version of the file layout; a file of another version is rejected instead of misread.
FORMAT_VERSION = 1
#: Seconds between two writes of a state file, so a change reaches the disk about this long after it
#: happens at the latest.
SAVE_INTERVAL_SECONDS = 0.5
#: Methods that never change a service's state, so requests with them need no save.
READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOCK_FILE = ".lock"


class StateFileError(ValueError):
    """A saved state file that cannot be loaded. The message names the file and how to start afresh."""


def encode_time(value: datetime | None) -> str | None:
    """Return a timestamp as ISO 8601 text, or ``None``."""
    return value.isoformat() if value is not None else None


def decode_time(text: str | None) -> datetime | None:
    """Return the timestamp that :func:`encode_time` wrote, or ``None``."""
    return datetime.fromisoformat(text) if text is not None else None


def encode_bytes(data: bytes) -> str:
    """Return binary content as base64 text."""
    return base64.b64encode(data).decode("ascii")


def decode_bytes(text: str) -> bytes:
    """Return the binary content that :func:`encode_bytes` wrote."""
    return base64.b64decode(text.encode("ascii"), validate=True)


def read_state(path: Path, service: str) -> dict[str, Any] | None:
    """Return the state saved in ``path``, or ``None`` when the file does not exist.

    :raises StateFileError: when the file is not valid JSON, belongs to another service or has
        another :data:`FORMAT_VERSION`
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    hint = "move the file away, or start from scratch with `b2cal demo --fresh`"
    try:
        document = json.loads(text)
    except ValueError as error:
        raise StateFileError(f"state file {path} is not valid JSON ({error}); {hint}") from None
    if not isinstance(document, dict) or document.get("service") != service:
        raise StateFileError(f"state file {path} does not contain the state of the {service} service; {hint}")
    if document.get("format") != FORMAT_VERSION:
        raise StateFileError(
            f"state file {path} has format {document.get('format')!r}, but this version reads format "
            f"{FORMAT_VERSION}; {hint}"
        )
    state = document.get("state")
    if not isinstance(state, dict):
        raise StateFileError(f"state file {path} has no 'state' object; {hint}")
    return state


def write_state(path: Path, service: str, state: dict[str, Any]) -> None:
    """Write a service's state to ``path`` atomically, readable by the owner only."""
    document = {"service": service, "format": FORMAT_VERSION, "state": state}
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(descriptor, "w", encoding="utf-8") as handle:
        json.dump(document, handle, separators=(",", ":"))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def restore_error(path: Path, error: Exception) -> StateFileError:
    """Return the error for a state file whose content does not fit the service's state."""
    return StateFileError(
        f"state file {path} could not be loaded: {error!r}; move the file away, or start from scratch "
        "with `b2cal demo --fresh`"
    )


class StateSaver:
    """Write one service's state to its file soon after every change, and once more at :meth:`stop`.

    :param export: returns the service's state as JSON-compatible data. It must take the service's
        lock, because it runs on the saver's thread.
    """

    def __init__(self, path: Path, service: str, export: Callable[[], dict[str, Any]]) -> None:
        self.path = path
        self.service = service
        self._export = export
        self._changed = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures = 0

    def mark_changed(self) -> None:
        """Mark the state as changed, so that the saver writes it within the save interval."""
        self._changed.set()

    def save(self) -> bool:
        """Write the state now; return whether the write succeeded.

        A failed write is logged, and the next change or :meth:`stop` tries again.
        """
        self._changed.clear()
        try:
            write_state(self.path, self.service, self._export())
        except (OSError, TypeError, ValueError) as error:
            self._failures += 1
            # Log the first failure and then every hundredth, so a full disk does not flood the log.
            if self._failures == 1 or self._failures % 100 == 0:
                logger.error(
                    "Saving the %s state to %s failed (%d failures so far): %s",
                    self.service,
                    self.path,
                    self._failures,
                    error,
                )
            self._changed.set()
            return False
        if self._failures:
            logger.info(
                "Saved the %s state to %s again after %d failures", self.service, self.path, self._failures
            )
            self._failures = 0
        return True

    def start(self) -> None:
        """Start the thread that writes the state after changes."""
        self._thread = threading.Thread(target=self._run, name=f"b2cal-dev-{self.service}-saver", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            if self._changed.wait(SAVE_INTERVAL_SECONDS) and not self._stopping.is_set():
                self.save()
                # Changes that come in a burst are written together at the next interval.
                self._stopping.wait(SAVE_INTERVAL_SECONDS)

    def stop(self) -> None:
        """Stop the thread and write the state a last time."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(SAVE_INTERVAL_SECONDS * 4)
            self._thread = None
        if self.save():
            logger.info("Saved the %s state to %s", self.service, self.path)


def track_changes(app: FastAPI, saver: StateSaver) -> None:
    """Make every request to ``app`` that is not read-only mark the state as changed after it is served.

    Every non-GET request counts, whatever its status, because a failed request can still have changed
    the state (for example a conditions database fault injected with ``apply``).
    """

    @app.middleware("http")
    async def mark_changed(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        if request.method not in READ_ONLY_METHODS:
            saver.mark_changed()
        return response


def lock_data_dir(folder: Path) -> TextIO:
    """Create ``folder`` and take its lock file, so no second process uses the same state files.

    The lock lasts until the returned file is closed or the process ends.

    :raises OSError: when another process has the lock
    """
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "a+")  # noqa: SIM115 - the caller closes it at stop
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        handle.close()
        raise OSError(
            error.errno,
            f"the data directory {folder} is in use by another b2cal dev-services process; stop it "
            "or choose another --data-dir",
        ) from None
    return handle
