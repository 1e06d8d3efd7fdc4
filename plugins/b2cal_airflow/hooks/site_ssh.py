"""The shared SSH connection of each calibration site, used by :mod:`b2cal_airflow.hooks.site`.

Every trigger that waits for a job at the same site in the same triggerer shares one SSH connection
through :data:`SITE_CONNECTIONS`, and runs at most ``max_sessions`` commands over it at once. This
module imports asyncssh and the SSH provider, so DAG files, which import the site hook, do not pay for
them at parse time; :func:`b2cal_airflow.hooks.site.site_transport` imports it on first use.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
from airflow.providers.common.compat.connection import get_async_connection
from airflow.providers.ssh.hooks.ssh import SSHHookAsync

from b2cal.remote import CommandResult
from b2cal.sites import SiteConfigError, SiteSettings, check_host_key_extras
from b2cal_airflow.hooks.site import (
    RECONNECT_PAUSE,
    SiteFileError,
    SiteHostKeyError,
    SiteLoginError,
    SiteUnreachableError,
)

log = logging.getLogger(__name__)
# asyncssh logs every channel it opens and closes at INFO, several lines per poll of each job. Only its
# warnings and errors are kept, so that the triggerer's log stays readable.
logging.getLogger("asyncssh").setLevel(logging.WARNING)

T = TypeVar("T")


class SiteSSHHookAsync(SSHHookAsync):
    """The SSH provider's async hook, with host key checking required.

    The provider's hook reads the extras ``host_key``, ``known_hosts``, ``private_key``, ``key_file`` and
    ``passphrase``. This one first rejects a connection that names no host key or that turns host key
    checking off.
    """

    def _parse_extras(self, conn: Any) -> None:
        check_host_key_extras(conn.extra_dejson, conn.conn_id)
        super()._parse_extras(conn)


# ---------------------------------------------------------------------------------------------------------
# The shared SSH connection of each site


class _SiteConnection:
    """The one SSH connection to a site in one event loop, opened on first use and after a loss."""

    def __init__(
        self, settings: SiteSettings, loop: asyncio.AbstractEventLoop, opened: dict[str, int] | None = None
    ) -> None:
        self.settings = settings
        self.loop = loop
        self.opened = opened if opened is not None else {}
        self.users = 0
        self.connection: asyncssh.SSHClientConnection | None = None
        self.lock = asyncio.Lock()
        self.sessions = asyncio.Semaphore(settings.max_sessions)
        self.failure: tuple[float, SiteUnreachableError] | None = None

    async def get(self) -> asyncssh.SSHClientConnection:
        """Return the open connection, connecting first when there is none.

        :raises SiteUnreachableError: at once, without a new attempt, when the last attempt failed
            less than :data:`RECONNECT_PAUSE` seconds ago, so the users waiting for the lock do not each
            spend a connection timeout on a site that is down.
        """
        async with self.lock:
            if self.connection is not None and not self.connection.is_closed():
                return self.connection
            if self.failure is not None and time.monotonic() - self.failure[0] < RECONNECT_PAUSE:
                raise self.failure[1]
            try:
                self.connection = await _connect(self.settings)
            except SiteUnreachableError as exc:
                self.failure = (time.monotonic(), exc)
                raise
            self.failure = None
            conn_id = self.settings.conn_id
            self.opened[conn_id] = self.opened.get(conn_id, 0) + 1
            return self.connection

    def discard(self, connection: asyncssh.SSHClientConnection) -> None:
        """Drop a connection that failed, so the next use opens a new one; a newer connection is kept."""
        if self.connection is connection:
            self.connection = None
        connection.abort()

    async def close(self) -> None:
        """Close the connection."""
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.close()
            try:
                await asyncio.wait_for(connection.wait_closed(), 10)
            except (TimeoutError, OSError, asyncssh.Error):
                connection.abort()


class SiteConnectionPool:
    """Share one SSH connection per site among the users in the same event loop.

    A connection stays open while at least one user holds a lease on it, and closes with the last.
    :attr:`opened` counts the connections opened per connection id, for the benchmark and the tests.
    """

    def __init__(self) -> None:
        self._entries: dict[str, _SiteConnection] = {}
        self.opened: dict[str, int] = {}

    @asynccontextmanager
    async def lease(self, settings: SiteSettings) -> AsyncIterator[SSHTransport]:
        """Yield a transport over the site's shared connection."""
        loop = asyncio.get_running_loop()
        key = f"{id(loop)}/{settings.conn_id}"
        entry = self._entries.get(key)
        if entry is None or entry.loop is not loop:
            entry = _SiteConnection(settings, loop, self.opened)
            self._entries[key] = entry
        entry.users += 1
        try:
            yield SSHTransport(entry)
        finally:
            entry.users -= 1
            if entry.users == 0 and self._entries.get(key) is entry:
                del self._entries[key]
                await entry.close()


#: The connections of this process; the triggerer's triggers all use it.
SITE_CONNECTIONS = SiteConnectionPool()


class SSHTransport:
    """Run site scripts and move job files over the site's shared SSH connection."""

    def __init__(self, entry: _SiteConnection) -> None:
        self._entry = entry
        settings = entry.settings
        self.description = f"site {settings.name} (connection {settings.conn_id})"
        self.python = [settings.remote_python, "-"]

    async def run(self, argv: Sequence[str], stdin: str, timeout: float) -> CommandResult:
        """Run ``argv`` at the site with ``stdin``; the command line is quoted for a POSIX login shell."""
        command = shlex.join(argv)
        result = await self._with_connection(
            lambda connection: connection.run(command, input=stdin, timeout=timeout, check=False)
        )
        exit_status = None if result.exit_signal else result.exit_status
        return CommandResult(exit_status, _text(result.stdout), _text(result.stderr))

    async def write_files(self, folder: str, files: Mapping[str, str]) -> None:
        """Create ``folder`` with SFTP and write each file as a temporary file renamed into place."""

        async def write(connection: asyncssh.SSHClientConnection) -> None:
            async with connection.start_sftp_client() as sftp:
                await sftp.makedirs(folder, exist_ok=True)
                for name, text in files.items():
                    temporary = f"{folder}/.{name}.{uuid.uuid4().hex}"
                    async with sftp.open(temporary, "w") as handle:
                        await handle.write(text)
                    await sftp.posix_rename(temporary, f"{folder}/{name}")

        await self._with_connection(write)

    async def fetch_folder(self, remote_folder: str, local: Path) -> None:
        """Copy ``remote_folder`` and its content to ``local`` with SFTP."""

        async def fetch(connection: asyncssh.SSHClientConnection) -> None:
            async with connection.start_sftp_client() as sftp:
                await sftp.get(remote_folder, str(local), recurse=True)

        await self._with_connection(fetch)

    async def _with_connection(
        self, action: Callable[[asyncssh.SSHClientConnection], Coroutine[Any, Any, T]]
    ) -> T:
        connection = await self._entry.get()
        async with self._entry.sessions:
            try:
                return await action(connection)
            except asyncssh.TimeoutError as exc:
                raise TimeoutError(f"a command on {self.description} timed out: {exc}") from None
            except asyncssh.SFTPError as exc:
                raise SiteFileError(f"a file operation on {self.description} failed: {exc.reason}") from exc
            except (asyncssh.Error, OSError) as exc:
                self._entry.discard(connection)
                raise SiteUnreachableError(f"the SSH connection to {self.description} failed: {exc}") from exc


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


async def _connect(settings: SiteSettings) -> asyncssh.SSHClientConnection:
    hook = SiteSSHHookAsync(ssh_conn_id=settings.conn_id)
    where = f"site {settings.name} (connection {settings.conn_id})"
    try:
        connection = await asyncio.wait_for(hook.get_conn(), settings.command_timeout)
    except asyncssh.HostKeyNotVerifiable as exc:
        presented = await _presented_host_key(hook, settings)
        raise SiteHostKeyError(
            f"the SSH host key of {where} is not the one the connection lists ({exc.reason}){presented}. "
            "If the site changed its host key, confirm the new fingerprint with the site's administrators "
            "and put the key into the connection's extra host_key or its known_hosts file"
        ) from None
    except asyncssh.PermissionDenied as exc:
        raise SiteLoginError(
            f"the SSH server of {where} rejected the login ({exc.reason}): check the login and the private "
            "key or password of the connection"
        ) from None
    except SiteConfigError:
        raise
    except (asyncssh.Error, OSError, TimeoutError) as exc:
        raise SiteUnreachableError(f"could not connect to {where}: {exc or type(exc).__name__}") from exc
    log.info("Opened the SSH connection to %s", where)
    return connection


async def _presented_host_key(hook: SSHHookAsync, settings: SiteSettings) -> str:
    # Only the public host key is fetched, without logging in, to show which key the server presented.
    try:
        conn = await get_async_connection(settings.conn_id)
        key = await asyncio.wait_for(asyncssh.get_server_host_key(conn.host, conn.port or 22), 10)
    except (asyncssh.Error, OSError, TimeoutError):
        return ""
    if key is None:
        return ""
    return f"; the server presented {key.get_algorithm()} {key.get_fingerprint('sha256')}"
