"""Run the development Jira, conditions database and run registry together in one process.

:func:`start_services` serves the three applications with uvicorn in a background thread, one port
each, and returns a :class:`DevServices` handle with their URLs and state objects. :func:`main` is
the ``b2cal dev-services`` command, which runs them until SIGINT or SIGTERM. The services only ever
bind to a loopback address. They keep their state in memory, and with a data directory also in
files there (:mod:`b2cal.devservices.persistence`), which the next start loads.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TextIO

import uvicorn
from fastapi import FastAPI

from b2cal.devservices import conddb, jira, runregistry
from b2cal.devservices.conddb_store import ConditionsState
from b2cal.devservices.config import ENVIRONMENT_VARIABLES, DevServicesConfig
from b2cal.devservices.jira_store import JiraState
from b2cal.devservices.persistence import (
    StateSaver,
    lock_data_dir,
    read_state,
    restore_error,
    track_changes,
)
from b2cal.devservices.runregistry import RunRegistryState, write_storage_tree

logger = logging.getLogger(__name__)

#: Host names accepted for binding; anything else could expose the services to the network.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_JIRA_PORT = 8091
DEFAULT_CONDDB_PORT = 8092
DEFAULT_RUNREGISTRY_PORT = 8093
_STARTUP_TIMEOUT_SECONDS = 15.0


def check_loopback_host(host: str) -> str:
    """Return the address to bind for ``host``; raise ``ValueError`` unless it is a loopback host."""
    if host not in LOOPBACK_HOSTS:
        raise ValueError(
            f"host {host!r} is not allowed: the development services bind only to a loopback address, "
            f"use one of {', '.join(LOOPBACK_HOSTS)}"
        )
    return "127.0.0.1" if host == "localhost" else host


def _bind(address: str, port: int, option: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    # IPPROTO_TCP must be explicit: asyncio enables TCP_NODELAY only on sockets that declare it, and
    # without that every keep-alive request waits about 40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address, port))
    except OSError as error:
        sock.close()
        raise OSError(
            error.errno,
            f"cannot bind {address} port {port}: {error.strerror}; stop the process using it "
            f"or pass {option} 0 to pick a free port",
        ) from error
    return sock


def _url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}"


@dataclass
class DevServices:
    """Handle on the running development services: their URLs, state objects and :meth:`stop`."""

    config: DevServicesConfig
    jira_url: str
    conddb_url: str
    runregistry_url: str
    jira_state: JiraState
    conddb_state: ConditionsState
    runregistry_state: RunRegistryState
    #: Root of the site storage tree, or ``None`` when no state directory was given.
    storage_root: Path | None = None
    #: Folder of the saved state files, or ``None`` when the state lives in memory only.
    data_dir: Path | None = None
    _servers: list[uvicorn.Server] = field(default_factory=list, repr=False)
    _savers: list[StateSaver] = field(default_factory=list, repr=False)
    _lock_file: TextIO | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _failure: list[BaseException] = field(default_factory=list, repr=False)

    @property
    def running(self) -> bool:
        """Whether the server thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the three servers, wait up to ``timeout`` seconds for their thread, and save the state."""
        for server in self._servers:
            server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("Development services did not stop within %.0f s", timeout)
            else:
                logger.info("Development services stopped")
            self._thread = None
        for saver in self._savers:
            saver.stop()
        self._savers = []
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> DevServices:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


async def _serve_all(servers: list[uvicorn.Server], sockets: list[socket.socket]) -> None:
    await asyncio.gather(
        *(server.serve(sockets=[sock]) for server, sock in zip(servers, sockets, strict=True))
    )


def _serve_forever(
    servers: list[uvicorn.Server], sockets: list[socket.socket], failure: list[BaseException]
) -> None:
    try:
        asyncio.run(_serve_all(servers, sockets))
    except BaseException as error:  # uvicorn reports a failed startup as SystemExit
        logger.exception("Development services stopped with an error")
        failure.append(error)
    finally:
        for sock in sockets:
            sock.close()


def _load_and_track_state(
    data_dir: Path,
    apps: list[FastAPI],
    jira_state: JiraState,
    conddb_state: ConditionsState,
    runregistry_state: RunRegistryState,
) -> list[StateSaver]:
    """Load each service's state file from ``data_dir`` and return the savers that keep it up to date.

    :raises StateFileError: when a state file cannot be read or does not fit the service
    """

    def export_jira() -> dict[str, Any]:
        return {"issues": jira_state.export_state(), "webhooks": jira_state.webhooks.export_state()}

    def restore_jira(saved: dict[str, Any]) -> None:
        jira_state.restore_state(saved["issues"])
        jira_state.webhooks.restore_state(saved["webhooks"])

    entries: list[tuple[str, FastAPI, Callable[[], dict[str, Any]], Callable[[dict[str, Any]], object]]] = [
        ("jira", apps[0], export_jira, restore_jira),
        ("conddb", apps[1], conddb_state.export_state, conddb_state.restore_state),
        ("runregistry", apps[2], runregistry_state.export_state, runregistry_state.restore_state),
    ]
    savers = []
    for name, app, export, restore in entries:
        path = data_dir / f"{name}.json"
        saved = read_state(path, name)
        if saved is None:
            logger.info("No saved %s state in %s; starting empty", name, path)
        else:
            try:
                restore(saved)
            except (KeyError, TypeError, ValueError) as error:
                raise restore_error(path, error) from error
            logger.info("Loaded the %s state from %s", name, path)
        saver = StateSaver(path, name, export)
        track_changes(app, saver)
        savers.append(saver)
    return savers


def start_services(
    host: str = "127.0.0.1",
    jira_port: int = DEFAULT_JIRA_PORT,
    conddb_port: int = DEFAULT_CONDDB_PORT,
    runregistry_port: int = DEFAULT_RUNREGISTRY_PORT,
    state_dir: Path | None = None,
    config: DevServicesConfig | None = None,
    data_dir: Path | None = None,
) -> DevServices:
    """Start the development Jira, conditions database and run registry in a background thread.

    :param host: loopback address to bind: ``127.0.0.1``, ``localhost`` or ``::1``
    :param jira_port: port of the Jira service; 0 picks a free port, as do the other two
    :param conddb_port: port of the conditions database service
    :param runregistry_port: port of the run registry service
    :param state_dir: directory for files the services produce; the site storage tree of the
        generated runs goes to ``state_dir/storage``. Nothing is written when it is ``None``.
    :param config: settings and credentials; :meth:`DevServicesConfig.from_env` when ``None``
    :param data_dir: directory of the state files: the services load them at start and save every
        change there, so the next start with the same directory continues with the same issues,
        global tags, payloads and run list. The state lives in memory only when it is ``None``.
    :raises ValueError: if ``host`` is not a loopback host, or a state file cannot be loaded
    :raises OSError: if a port cannot be bound, or another process uses ``data_dir``
    """
    address = check_loopback_host(host)
    config = config or DevServicesConfig.from_env()
    jira_state = JiraState(config)
    conddb_state = ConditionsState(config)
    runregistry_state = RunRegistryState(config)
    apps: list[FastAPI] = [
        jira.create_app(jira_state),
        conddb.create_app(conddb_state),
        runregistry.create_app(runregistry_state),
    ]

    lock_file = None
    savers: list[StateSaver] = []
    sockets: list[socket.socket] = []
    try:
        if data_dir is not None:
            lock_file = lock_data_dir(Path(data_dir))
            savers = _load_and_track_state(Path(data_dir), apps, jira_state, conddb_state, runregistry_state)
        for port, option in (
            (jira_port, "--jira-port"),
            (conddb_port, "--conddb-port"),
            (runregistry_port, "--runregistry-port"),
        ):
            sockets.append(_bind(address, port, option))
    except (OSError, ValueError):
        for sock in sockets:
            sock.close()
        if lock_file is not None:
            lock_file.close()
        raise
    ports = [sock.getsockname()[1] for sock in sockets]
    jira_state.base_url = _url(address, ports[0])
    conddb_state.base_url = _url(address, ports[1])
    runregistry_state.base_url = _url(address, ports[2])

    storage_root = None
    if state_dir is not None:
        storage_root = Path(state_dir) / "storage"
        started = time.perf_counter()
        created = write_storage_tree(runregistry_state.runs, storage_root, config.files_per_skim)
        logger.info(
            "Site storage tree at %s: %d new files (%.1f s)",
            storage_root,
            created,
            time.perf_counter() - started,
        )

    servers = [
        uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")) for app in apps
    ]
    services = DevServices(
        config=config,
        jira_url=jira_state.base_url,
        conddb_url=conddb_state.base_url,
        runregistry_url=runregistry_state.base_url,
        jira_state=jira_state,
        conddb_state=conddb_state,
        runregistry_state=runregistry_state,
        storage_root=storage_root,
        data_dir=Path(data_dir) if data_dir is not None else None,
        _servers=servers,
        _savers=savers,
        _lock_file=lock_file,
    )
    thread = threading.Thread(
        target=_serve_forever,
        args=(servers, sockets, services._failure),
        name="b2cal-dev-services",
        daemon=True,
    )
    services._thread = thread
    thread.start()
    for saver in savers:
        saver.start()

    deadline = time.monotonic() + _STARTUP_TIMEOUT_SECONDS
    while not all(server.started for server in servers):
        if not thread.is_alive():
            reason = services._failure[0] if services._failure else "unknown reason"
            services.stop()
            raise RuntimeError(f"development services failed to start: {reason!r}")
        if time.monotonic() > deadline:
            services.stop()
            raise RuntimeError(f"development services did not start within {_STARTUP_TIMEOUT_SECONDS:.0f} s")
        time.sleep(0.01)
    logger.info(
        "Development services started: Jira %s, conditions database %s, run registry %s",
        services.jira_url,
        services.conddb_url,
        services.runregistry_url,
    )
    return services


def _host_argument(text: str) -> str:
    try:
        check_loopback_host(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _names_argument(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _experiments_argument(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"experiments {text!r} must be comma-separated integers, e.g. 24,25,26"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``b2cal dev-services``."""
    credentials = ", ".join(ENVIRONMENT_VARIABLES.values())
    parser = argparse.ArgumentParser(
        prog="b2cal dev-services",
        description=(
            "Run development versions of Jira (Server, REST v2), the conditions database (v2) and the "
            "run registry on the loopback interface until interrupted. They keep their state in memory, "
            "and with --data-dir also in files that the next start loads."
        ),
        epilog=f"Development credentials can be overridden with the environment variables {credentials}.",
    )
    parser.add_argument(
        "--host",
        type=_host_argument,
        default="127.0.0.1",
        help="loopback address to bind (default: %(default)s)",
    )

    parser.add_argument(
        "--jira-port",
        type=int,
        default=DEFAULT_JIRA_PORT,
        help="Jira port, 0 for a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--conddb-port",
        type=int,
        default=DEFAULT_CONDDB_PORT,
        help="conditions database port, 0 for a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--runregistry-port",
        type=int,
        default=DEFAULT_RUNREGISTRY_PORT,
        help="run registry port, 0 for a free one (default: %(default)s)",
    )

    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="directory for the site storage tree (written to STATE_DIR/storage); none is written if omitted",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="directory where the services save their issues, webhooks, global tags, payloads and run "
        "list, and load them from at start; without it everything is lost when they stop",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of the generated run list (default: 2024)"
    )
    parser.add_argument(
        "--experiments",
        type=_experiments_argument,
        default=None,
        help="comma-separated experiment numbers of the run list (default: 24,25,26)",
    )
    parser.add_argument(
        "--runs-per-experiment",
        type=int,
        default=None,
        help="number of generated runs per experiment (default: 120)",
    )
    parser.add_argument(
        "--files-per-skim", type=int, default=None, help="placeholder files per run and skim (default: 2)"
    )

    parser.add_argument(
        "--experts",
        type=_names_argument,
        default=None,
        help="comma-separated Jira usernames of the experts (default: the experts of the packaged catalogs)",
    )

    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log level (default: INFO)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``b2cal dev-services`` until SIGINT or SIGTERM; return the exit status."""
    arguments = build_parser().parse_args(argv)
    logging.basicConfig(level=arguments.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    overrides: dict[str, Any] = {}
    for name in ("seed", "experiments", "runs_per_experiment", "files_per_skim"):
        if getattr(arguments, name) is not None:
            overrides[name] = getattr(arguments, name)
    if arguments.experts is not None:
        overrides["jira_experts"] = arguments.experts
    try:
        config = DevServicesConfig.from_env(**overrides)
        services = start_services(
            host=arguments.host,
            jira_port=arguments.jira_port,
            conddb_port=arguments.conddb_port,
            runregistry_port=arguments.runregistry_port,
            state_dir=arguments.state_dir,
            config=config,
            data_dir=arguments.data_dir,
        )
    except (OSError, ValueError, RuntimeError) as error:
        print(f"b2cal dev-services: error: {error}", file=sys.stderr)
        return 1

    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        logger.info("Received %s, stopping", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    print(f"Jira (Server, REST v2):        {services.jira_url}", flush=True)
    print(f"Conditions database (v2):      {services.conddb_url}", flush=True)
    print(f"Run registry:                  {services.runregistry_url}", flush=True)
    if services.storage_root is not None:
        print(f"Site storage tree:             {services.storage_root}", flush=True)
    if services.data_dir is not None:
        print(f"Saved state:                   {services.data_dir}", flush=True)
    print(f"Jira users: {', '.join(config.jira_users())}. Press Ctrl+C to stop.", flush=True)

    while not stop_requested.wait(0.5):
        if not services.running:
            print("b2cal dev-services: error: the server thread stopped unexpectedly", file=sys.stderr)
            services.stop()
            return 1
    services.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
