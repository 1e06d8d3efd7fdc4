"""The calibration site hook: a site's settings, its transport, and one shared SSH connection per site.

A site is the Airflow connection ``b2cal_site_<site>`` (lower case). Its extras are the settings that
:func:`b2cal.sites.parse_site_settings` checks. With ``transport`` ``ssh`` (the default for a
connection of type ``ssh``) the connection's host, port, login, password or private key are the SSH
account at the site. The extra ``host_key`` or ``known_hosts`` is required, because host key checking
is always on.

Every trigger that waits for a job at the same site in the same triggerer shares one SSH connection
through :data:`~b2cal_airflow.hooks.site_ssh.SITE_CONNECTIONS`, and runs at most ``max_sessions``
commands over it at once. Opening a connection per job and poll would multiply the handshakes against
the site's ``sshd``, which limits unauthenticated connections (``MaxStartups``), and the login nodes of
a site count them.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from airflow.providers.common.compat.connection import get_async_connection
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from b2cal import remote
from b2cal.jobs import LocalTransport
from b2cal.remote import JobLaunch, JobPaths, JobSnapshot, LaunchResult, Transport
from b2cal.sites import SiteConfigError, SiteSettings, parse_site_settings

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Seconds after a failed connection attempt during which other users of the site's connection fail
#: at once instead of trying again.
RECONNECT_PAUSE = 5.0


def site_conn_id(site: str) -> str:
    """Return the id of a site's connection: ``b2cal_site_<site>`` in lower case."""
    return f"b2cal_site_{site.lower()}"


class SiteHostKeyError(RuntimeError):
    """The site's SSH server showed a host key that the connection does not list."""


class SiteLoginError(RuntimeError):
    """The site's SSH server rejected the login."""


class SiteUnreachableError(RuntimeError):
    """The site's SSH server could not be reached, or the connection to it was lost."""


class SiteFileError(OSError):
    """A file operation over SFTP failed at the site, e.g. because a folder does not exist."""


#: Errors that a retry will not cure: fail at once with the message.
PERMANENT_SITE_ERRORS: tuple[type[Exception], ...] = (SiteHostKeyError, SiteLoginError, SiteConfigError)
#: Errors that may pass: retry with backoff until the site's ``unreachable_timeout``.
TRANSIENT_SITE_ERRORS: tuple[type[Exception], ...] = (
    SiteUnreachableError,
    TimeoutError,
    remote.RemoteCommandError,
)


class SiteHook(BaseHook):
    """Read a calibration site's settings from the connection ``b2cal_site_<site>`` and reach the site.

    The extras are described in :mod:`b2cal.sites` and ``docs/sites.rst``. :attr:`settings` returns
    them as a dictionary, :attr:`site_settings` as :class:`b2cal.sites.SiteSettings`, and
    :meth:`session` runs jobs at the site from an operator.

    :param site: the site's name, e.g. ``BNL``.
    """

    conn_name_attr = "site_conn_id"
    conn_type = "ssh"
    hook_name = "Calibration site"

    def __init__(self, site: str) -> None:
        super().__init__()
        self.site = site
        self.site_conn_id = site_conn_id(site)

    @cached_property
    def site_settings(self) -> SiteSettings:
        """The site's checked settings.

        :raises SiteConfigError: if the connection is missing or an extra is invalid.
        """
        try:
            conn = self.get_connection(self.site_conn_id)
        except AirflowNotFoundException:
            raise SiteConfigError(
                f"site {self.site!r} has no connection {self.site_conn_id!r}; create it with the extras "
                "transport, work_root, backend and storage_root (docs/sites.rst lists them)"
            ) from None
        return parse_site_settings(
            self.site, conn.extra_dejson, conn_id=self.site_conn_id, conn_type=conn.conn_type
        )

    @cached_property
    def settings(self) -> dict[str, Any]:
        """The site's settings as a dictionary, with defaults filled in."""
        return self.site_settings.to_dict()

    def session(self) -> SiteSession:
        """Return a context manager that reaches the site over one connection from synchronous code."""
        return SiteSession(self.site_settings)


async def aget_site_settings(site: str) -> SiteSettings:
    """Read a site's settings from an async context, e.g. a trigger.

    :raises SiteConfigError: if the connection is missing or an extra is invalid.
    """
    conn_id = site_conn_id(site)
    try:
        conn = await get_async_connection(conn_id)
    except AirflowNotFoundException:
        raise SiteConfigError(f"site {site!r} has no connection {conn_id!r}") from None
    aextra = getattr(conn, "aextra_dejson", None)
    extra = await aextra() if aextra is not None else conn.extra_dejson
    return parse_site_settings(site, extra, conn_id=conn_id, conn_type=conn.conn_type)


# ---------------------------------------------------------------------------------------------------------
# Transports and the synchronous session of the operators


def site_transport(settings: SiteSettings) -> AbstractAsyncContextManager[Transport]:
    """Return a context manager that yields the site's transport: the shared SSH connection, or local."""
    if settings.is_ssh:
        # Imported here: asyncssh and the SSH provider cost DAG files a noticeable part of their parse time.
        from b2cal_airflow.hooks.site_ssh import SITE_CONNECTIONS

        return SITE_CONNECTIONS.lease(settings)
    return _local_transport()


@asynccontextmanager
async def _local_transport() -> AsyncIterator[Transport]:
    yield LocalTransport()


class SiteSession:
    """Reach a site from synchronous code over one connection: inspect, start and stop jobs, list files.

    Use it as a context manager. Each method runs its coroutine to completion on the session's own event
    loop, so the SSH connection stays open between the calls of one task.
    """

    def __init__(self, settings: SiteSettings) -> None:
        self.settings = settings
        self._runner: asyncio.Runner | None = None
        self._transport_context: AbstractAsyncContextManager[Transport] | None = None
        self._transport: Transport | None = None

    def __enter__(self) -> SiteSession:
        self._runner = asyncio.Runner()
        self._runner.__enter__()
        self._transport_context = site_transport(self.settings)
        try:
            self._transport = self._runner.run(self._transport_context.__aenter__())
        except BaseException:
            self._runner.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        assert self._runner is not None and self._transport_context is not None
        try:
            self._runner.run(self._transport_context.__aexit__(kind, value, traceback))
        finally:
            self._runner.close()

    @property
    def transport(self) -> Transport:
        """The session's transport."""
        if self._transport is None:
            raise RuntimeError("use SiteSession as a context manager: with hook.session() as session: ...")
        return self._transport

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        assert self._runner is not None
        return self._runner.run(coroutine)

    def inspect(self, job_dir: str, **options: Any) -> JobSnapshot:
        """Inspect a job folder; see :func:`b2cal.remote.inspect_job`."""
        options.setdefault("timeout", self.settings.command_timeout)
        return self._run(remote.inspect_job(self.transport, job_dir, **options))

    def launch(self, launch: JobLaunch, files: Mapping[str, str] | None = None) -> LaunchResult:
        """Start an attempt of a job, or attach to it; see :func:`b2cal.remote.launch_job`."""
        return self._run(
            remote.launch_job(self.transport, launch, files, timeout=self.settings.command_timeout)
        )

    def stop(self, paths: JobPaths) -> str:
        """Stop an attempt of a job; see :func:`b2cal.remote.stop_job`."""
        return self._run(remote.stop_job(self.transport, paths, timeout=self.settings.command_timeout))

    def list_directories(
        self, folders: Sequence[str], pattern: str
    ) -> dict[str, list[tuple[str, int | None]]]:
        """Return ``(file name, size)`` of the files matching ``pattern`` in each existing folder."""
        return self._run(
            remote.list_folders(self.transport, folders, pattern, timeout=self.settings.command_timeout)
        )

    def fetch_folder(self, remote_folder: str, local: Path) -> Path:
        """Copy a folder from the site to ``local``, replacing what was there; return ``local``."""
        if local.exists():
            shutil.rmtree(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        self._run(self.transport.fetch_folder(remote_folder, local))
        return local


#: Names that live in :mod:`b2cal_airflow.hooks.site_ssh`, importable from here as well.
_SSH_NAMES = frozenset(
    {"SITE_CONNECTIONS", "SiteConnectionPool", "SiteSSHHookAsync", "SSHTransport", "_SiteConnection"}
)


def __getattr__(name: str) -> Any:
    if name in _SSH_NAMES:
        from b2cal_airflow.hooks import site_ssh

        return getattr(site_ssh, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
