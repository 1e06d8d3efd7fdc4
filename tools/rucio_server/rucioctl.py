"""Start, configure and stop a local Rucio server for the tests, the benchmarks and the demo.

The server runs from its own virtual environment, made by ``make_venv.sh`` (``make rucio-server-venv``
makes ``.venv-rucio``), because the server's pinned dependencies clash with Airflow's. This file uses
only the standard library, so any Python 3.11 can run it, and it listens on 127.0.0.1 only.

A server lives in one folder, its *home*: ``rucio.cfg`` (read by the server, the daemons and the set-up
scripts through ``RUCIO_CONFIG``), the SQLite database, one folder per RSE below ``rse/``, the logs and
the PID files. Every process started here is stopped by the PID recorded in that folder.

Usage::

    python tools/rucio_server/rucioctl.py start --venv .venv-rucio --home .rucio --port 18080
    python tools/rucio_server/rucioctl.py start --venv .venv-rucio --home .rucio --port 18080 \\
        --postgres postgresql://postgres@127.0.0.1:5432/postgres --daemons
    python tools/rucio_server/rucioctl.py transfers --venv .venv-rucio --home .rucio
    python tools/rucio_server/rucioctl.py stop --home .rucio
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RSES = ("KEK-DISK", "BNL-DISK", "DESY-DISK")
SERVER_SIDE = Path(__file__).resolve().with_name("server_side.py")
DEFAULT_POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

CONFIG_TEMPLATE = """\
[common]
logdir = {home}/logs
loglevel = INFO

[client]
rucio_host = {url}
auth_host = {url}
auth_type = userpass
username = {username}
password = {password}
account = {account}
auth_token_file_path = {home}/client-token/token
request_retries = 3

[database]
default = {database_url}
pool_reset_on_return = rollback
echo = 0

[bootstrap]
userpass_identity = {username}
userpass_pwd = {password}
userpass_email = b2cal@localhost

[alembic]
cfg = {home}/alembic.ini

[policy]
permission = generic
schema = generic
lfn2pfn_algorithm_default = identity

[conveyor]
transfertool = mock
scheme = file,mock

# A closed loopback port: Rucio then falls back to a null cache instead of reaching for a memcached
# that might run on this machine and keep stale RSE ids across database resets.
[cache]
url = 127.0.0.1:1

[monitor]
enable_metrics = False
"""

ALEMBIC_TEMPLATE = """\
[alembic]
script_location = {script_location}
sqlalchemy.url = {database_url}

[loggers]
keys = root

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARN
handlers = console

[handler_console]
class = StreamHandler
args = (sys.stderr,)
formatter = generic

[formatter_generic]
format = %(levelname)s [%(name)s] %(message)s
"""


class RucioServerError(RuntimeError):
    """The local Rucio server could not be set up, started or stopped."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _process_command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _stop_pid_file(pid_file: Path, marker: str, timeout: float = 15.0) -> bool:
    """Stop the process recorded in ``pid_file`` if its command line contains ``marker``.

    The marker check guards against a PID that the system has reused for an unrelated process.
    Return whether a process was stopped.
    """
    if not pid_file.exists():
        return False
    try:
        pid = int(pid_file.read_text().strip())
    except ValueError:
        pid_file.unlink()
        return False
    if marker not in _process_command_line(pid):
        pid_file.unlink()
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _process_command_line(pid):
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                break
        except ChildProcessError:
            pass
        time.sleep(0.1)
    else:
        if _process_command_line(pid):
            os.kill(pid, signal.SIGKILL)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    pid_file.unlink(missing_ok=True)
    return True


@dataclass
class RucioServer:
    """A Rucio server with its database, RSE folders and optional transfer daemons, all below ``home``.

    :param venv: the server's virtual environment, made by ``make_venv.sh``.
    :param home: the folder that contains everything of this server.
    :param port: the TCP port on 127.0.0.1.
    :param postgres_admin_url: without it the server uses SQLite; with it the server gets its own
        PostgreSQL database, created through this URL and named ``database_name``.
    :param workers: gunicorn worker processes; SQLite needs 1, because a second writer hits
        "database is locked".
    :param threads: threads per worker; 1 for SQLite for the same reason.
    """

    venv: Path
    home: Path
    port: int
    postgres_admin_url: str | None = None
    database_name: str = ""
    workers: int = 1
    threads: int = 1
    username: str = "b2cal"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    account: str = "root"
    scope: str = "b2cal"
    rses: tuple[str, ...] = RSES

    def __post_init__(self) -> None:
        self.venv = Path(self.venv).resolve()
        self.home = Path(self.home).resolve()
        if self.postgres_admin_url and not self.database_name:
            self.database_name = f"b2cal_rucio_{secrets.token_hex(4)}"

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL of the server's database."""
        if self.postgres_admin_url:
            base = self.postgres_admin_url.rsplit("/", 1)[0].replace(
                "postgresql://", "postgresql+psycopg://", 1
            )
            return f"{base}/{self.database_name}"
        return f"sqlite:///{self.home / 'rucio.db'}"

    @property
    def rse_root(self) -> Path:
        """The folder that contains one storage folder per RSE."""
        return self.home / "rse"

    @property
    def config_file(self) -> Path:
        """The ``rucio.cfg`` shared by the server, the daemons and the set-up scripts."""
        return self.home / "rucio.cfg"

    @property
    def access_log(self) -> Path:
        """gunicorn's access log: one line per HTTP request."""
        return self.home / "access.log"

    @property
    def connection_file(self) -> Path:
        """The file with the Airflow connection to this server, readable by its owner only."""
        return self.home / "airflow-connection.json"

    def connection_values(self) -> dict[str, Any]:
        """Return the Airflow connection to this server in the JSON form of ``AIRFLOW_CONN_<ID>``.

        SQLite has no JSON metadata, so a server on SQLite gets the extra ``"metadata": "columns"``.
        """
        style = "json" if self.postgres_admin_url else "columns"
        return {
            "conn_type": "rucio",
            "host": self.url,
            "login": self.username,
            "password": self.password,
            "extra": {"account": self.account, "scope": self.scope, "metadata": style},
        }

    def write_connection_file(self) -> None:
        """Write :meth:`connection_values` to :attr:`connection_file`, keeping the password out of logs."""
        descriptor = os.open(self.connection_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(descriptor, "w") as handle:
            json.dump(self.connection_values(), handle)

    # -- set-up ------------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "RUCIO_HOME")}
        env["RUCIO_CONFIG"] = str(self.config_file)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _server_side(self, *args: str, timeout: float = 300.0) -> None:
        command = [str(self.venv / "bin" / "python"), str(SERVER_SIDE), *args]
        result = subprocess.run(command, env=self._env(), capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RucioServerError(
                f"{' '.join(args[:1])} failed with exit status {result.returncode}:\n{result.stderr[-4000:]}"
            )

    def _site_packages(self) -> Path:
        found = sorted(self.venv.glob("lib/python3*/site-packages/rucio"))
        if not found:
            raise RucioServerError(
                f"no Rucio server package in {self.venv}; create the venv with "
                f"'tools/rucio_server/make_venv.sh {self.venv}' (or 'make rucio-server-venv')"
            )
        return found[0].parent

    def write_config(self) -> None:
        """Write ``rucio.cfg`` and ``alembic.ini`` into the home folder."""
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)
        self.config_file.write_text(
            CONFIG_TEMPLATE.format(
                home=self.home,
                url=self.url,
                username=self.username,
                password=self.password,
                account=self.account,
                database_url=self.database_url,
            )
        )
        self.config_file.chmod(0o600)
        (self.home / "alembic.ini").write_text(
            ALEMBIC_TEMPLATE.format(
                script_location=self._site_packages() / "rucio" / "db" / "sqla" / "migrate_repo",
                database_url=self.database_url.replace("%", "%%"),
            )
        )
        saved = {
            "port": self.port,
            "venv": str(self.venv),
            "database": self.database_name,
            "postgres_admin_url": self.postgres_admin_url or "",
        }
        (self.home / "server.json").write_text(json.dumps(saved) + "\n")
        (self.home / "server.json").chmod(0o600)

    def bootstrap(self) -> None:
        """Create an empty database with Rucio's schema, the root account, the RSEs and the scope."""
        arguments = ["bootstrap", "--rse-root", str(self.rse_root), "--rses", ",".join(self.rses)]
        arguments += ["--scope", self.scope]
        if self.postgres_admin_url:
            arguments += ["--admin-url", self.postgres_admin_url, "--name", self.database_name]
        else:
            (self.home / "rucio.db").unlink(missing_ok=True)
        self._server_side(*arguments)

    def drop_database(self) -> None:
        """Drop the PostgreSQL database; SQLite needs nothing, its file goes with the home folder."""
        if self.postgres_admin_url:
            self._server_side(
                "drop-database", "--admin-url", self.postgres_admin_url, "--name", self.database_name
            )

    # -- server process ----------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Start gunicorn on 127.0.0.1 and return once the server responds to ``/ping``."""
        if _port_in_use(self.port):
            raise RucioServerError(
                f"port {self.port} on 127.0.0.1 is already in use; "
                "stop what listens there or choose another --port"
            )
        gunicorn = self.venv / "bin" / "gunicorn"
        command = [
            str(gunicorn),
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(self.workers),
            "--threads",
            str(self.threads),
            "--timeout",
            "120",
            "--graceful-timeout",
            "5",
            "--no-control-socket",
            # Rucio's tracebacks go to stderr; this puts them into server.log.
            "--capture-output",
            "--access-logfile",
            str(self.access_log),
            "--error-logfile",
            str(self.home / "server.log"),
            "--name",
            f"b2cal-rucio-{self.port}",
            "rucio.web.rest.flaskapi.v1.main:application",
        ]
        process = subprocess.Popen(
            command,
            env=self._env(),
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        (self.home / "server.pid").write_text(f"{process.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RucioServerError(
                    f"the Rucio server exited with status {process.returncode} while starting; "
                    f"see {self.home / 'server.log'}"
                )
            if self.ping():
                return
            time.sleep(0.1)
        self.stop_server()
        raise RucioServerError(f"the Rucio server did not respond on {self.url} within {timeout:.0f} s")

    def ping(self) -> bool:
        """Return whether the server responds to ``GET /ping``."""
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop_server(self) -> bool:
        """Stop the gunicorn master by its recorded PID; return whether it was running."""
        return _stop_pid_file(self.home / "server.pid", "gunicorn")

    def restart(self) -> None:
        """Stop the server process and start it again on the same port and database."""
        self.stop_server()
        self.start()

    # -- transfers ---------------------------------------------------------------------------------

    def run_transfers(self, repair: bool = False) -> None:
        """Run the judge evaluator and the conveyor with the mock transfer tool once.

        With ``repair`` the judge repairer runs before and after, which re-queues the transfers of
        STUCK rules and then moves the repaired rules back to OK.
        """
        self._server_side("transfers", *(["--repair"] if repair else []))

    def start_daemons(self, interval: float = 1.0, repair: bool = True) -> None:
        """Run the transfer steps in a background process every ``interval`` seconds.

        Use this with PostgreSQL only: daemons writing to SQLite while the server handles requests
        make both fail with "database is locked".
        """
        command = [str(self.venv / "bin" / "python"), str(SERVER_SIDE), "transfers", "--loop"]
        command += ["--interval", str(interval), *(["--repair"] if repair else [])]
        with open(self.home / "daemons.log", "ab") as log_file:
            process = subprocess.Popen(
                command,
                env=self._env(),
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (self.home / "daemons.pid").write_text(f"{process.pid}\n")

    def stop_daemons(self) -> bool:
        """Stop the background transfer process by its recorded PID; return whether it was running."""
        return _stop_pid_file(self.home / "daemons.pid", str(SERVER_SIDE))

    # -- whole life cycle --------------------------------------------------------------------------

    def up(self, daemons: bool = False) -> None:
        """Stop an earlier server of the same home, then set up, start and configure a fresh one."""
        self.stop_daemons()
        self.stop_server()
        self.write_config()
        self.bootstrap()
        self.start()
        if daemons:
            self.start_daemons()

    def down(self, drop: bool = True) -> None:
        """Stop the daemons and the server, and drop a PostgreSQL database unless ``drop`` is false."""
        self.stop_daemons()
        self.stop_server()
        if drop:
            self.drop_database()


def _load(home: Path, venv: Path | None) -> RucioServer:
    """Rebuild the server description of an existing home folder."""
    try:
        saved = json.loads((home / "server.json").read_text())
    except FileNotFoundError:
        raise RucioServerError(
            f"{home} contains no Rucio server; start one with the 'start' command"
        ) from None
    return RucioServer(
        venv=venv or Path(saved["venv"]),
        home=home,
        port=int(saved["port"]),
        postgres_admin_url=saved["postgres_admin_url"] or None,
        database_name=saved["database"],
    )


def main(argv: list[str] | None = None) -> int:
    """Run one command of the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="set up a fresh server in HOME and start it")
    start.add_argument(
        "--venv", type=Path, default=Path(".venv-rucio"), help="the server's virtual environment"
    )
    start.add_argument(
        "--home", type=Path, required=True, help="folder for the configuration, database and logs"
    )
    start.add_argument("--port", type=int, default=18080, help="TCP port on 127.0.0.1")
    start.add_argument(
        "--postgres",
        metavar="ADMIN_URL",
        help=f"use a new PostgreSQL database created through this URL (e.g. {DEFAULT_POSTGRES_ADMIN_URL})",
    )
    start.add_argument("--workers", type=int, help="gunicorn workers (default 1 on SQLite, 2 on PostgreSQL)")
    start.add_argument(
        "--threads", type=int, help="threads per worker (default 1 on SQLite, 4 on PostgreSQL)"
    )
    start.add_argument("--password", help="password of the userpass identity (default: a random one)")
    start.add_argument(
        "--daemons", action="store_true", help="also run the transfer daemons (PostgreSQL only)"
    )
    stop = commands.add_parser("stop", help="stop the server and daemons of HOME by their PIDs")
    stop.add_argument("--home", type=Path, required=True)
    stop.add_argument("--keep-database", action="store_true", help="do not drop the PostgreSQL database")
    transfers = commands.add_parser("transfers", help="run the judge and the mock conveyor once")
    transfers.add_argument("--venv", type=Path)
    transfers.add_argument("--home", type=Path, required=True)
    transfers.add_argument("--repair", action="store_true", help="also repair STUCK rules")
    args = parser.parse_args(argv)

    try:
        if args.command == "start":
            if args.daemons and not args.postgres:
                parser.error(
                    "--daemons needs --postgres: daemons and API calls on one SQLite file lock each other"
                )
            postgres = bool(args.postgres)
            server = RucioServer(
                venv=args.venv,
                home=args.home,
                port=args.port,
                postgres_admin_url=args.postgres,
                workers=args.workers or (2 if postgres else 1),
                threads=args.threads or (4 if postgres else 1),
            )
            if args.password:
                server.password = args.password
            started = time.monotonic()
            server.up(daemons=args.daemons)
            print(
                f"Rucio server on {server.url} ready in {time.monotonic() - started:.1f} s "
                f"(home {server.home})"
            )
            server.write_connection_file()
            print(f'export AIRFLOW_CONN_RUCIO_DEFAULT="$(cat {server.connection_file})"')
        elif args.command == "stop":
            server = _load(args.home.resolve(), None)
            server.down(drop=not args.keep_database)
            print(f"Rucio server of {server.home} stopped")
        elif args.command == "transfers":
            server = _load(args.home.resolve(), args.venv)
            server.run_transfers(repair=args.repair)
    except RucioServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
