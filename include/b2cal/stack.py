"""Run the whole product on one machine: development services plus Airflow 3 with the b2cal bundle.

Used by ``b2cal demo``, ``b2cal e2e`` and the end-to-end tests. Every process listens on 127.0.0.1
only. Airflow runs as separate components (api-server, scheduler, dag-processor, triggerer) with the
LocalExecutor, SQLite and the FAB auth manager; the scheduler and triggerer run without their log
servers, which would bind every interface, and the LocalExecutor reads task logs from local disk.

With :attr:`StackConfig.rucio` the stack also runs a Rucio server on SQLite from its own virtual
environment (``make rucio-server-venv``), so the request DAG registers its cDSTs and adds their rules
there. The server runs no transfer daemons, because they and the server would lock each other out of
the SQLite file. The rule at the request's site is OK at once, because the files are registered
there, but the archive rule stays REPLICATING.

A stack keeps its state in its home folder, so a stack started again on the same home continues where
the last one stopped: Airflow's and the plugin's databases, the development services' state files
(:attr:`StackConfig.devservices_home`), the Rucio server's database (:func:`start_rucio`), the site
folders, the passwords and the sshd keys. :func:`clear_home` deletes all of it, for a start from
scratch.

The deployment tests and benchmarks run the production shape instead: :attr:`StackConfig.executor`
set to ``CeleryExecutor`` with workers started by the stack, Airflow's metadata database and the
plugin database on PostgreSQL (:attr:`StackConfig.airflow_db_url`, :attr:`StackConfig.plugin_db_url`)
and more than one calibration site (:attr:`StackConfig.sites`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import requests

from b2cal.devservices.config import DevServicesConfig
from b2cal.devtools.sshd import LoopbackSSHD, sshd_available
from b2cal.rucio import site_rse

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "b2cal_processing_request"
RUNNING_TAG = "b2cal_prompt_running"
FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
EXECUTORS = ("LocalExecutor", "CeleryExecutor")
DEMO_USERS = (
    ("admin", ["Admin"]),
    ("manager", ["Calibration Manager"]),
    ("expert", ["Calibration Expert"]),
    ("viewer", ["Calibration Viewer"]),
)

#: The CAF backend and its options of each named site; any other site of the stack uses the Local backend.
#: BNL's jobs read their input through an xrootd door, which ``--path-prefix`` names; the demo's door is
#: a placeholder under the reserved domain ``.invalid``, because the stand-in tools only record the name.
SITE_BACKENDS: dict[str, dict[str, Any]] = {
    "KEK": {"backend": "LSF", "backend_options": {"queue": "l", "global_job_limit": 2000}},
    "BNL": {
        "backend": "HTCondor",
        "backend_options": {"universe": "vanilla", "path_prefix": "root://xrootd-door.bnl.invalid:1094"},
    },
    "DESY": {"backend": "HTCondor", "backend_options": {"universe": "vanilla", "getenv": "false"}},
}
#: The sites of the demo, and those it reaches over SSH through a loopback sshd.
DEMO_SITES = ("BNL", "KEK", "DESY")
DEMO_SSH_SITES = ("KEK", "DESY")
#: The script that starts and stops the local Rucio server; it lives in the repository, not the package.
RUCIOCTL = REPO_ROOT / "tools" / "rucio_server" / "rucioctl.py"
#: The RSE that archives the cDSTs of every site of the stack.
CDST_ARCHIVE_RSE = "DESY-DISK"
#: Seconds between two polls of Rucio while a task waits for rules, in place of the default 60.
RUCIO_POLL_INTERVAL = 3.0
#: The file in the Rucio server's home that records a database the next start may reuse: its RSEs and
#: the password of its root identity. The stack writes it once the database is set up.
RUCIO_STATE_FILE = "b2cal-stack.json"
#: The name under which the stack registers its webhook in the development Jira.
JIRA_WEBHOOK_NAME = "b2cal"
#: Everything a stack writes into its home folder. :func:`clear_home` deletes these and nothing else.
HOME_ENTRIES = (
    "airflow",
    "site",
    "devservices",
    "rucio",
    "sshd",
    "logs",
    "passwords.json",
    "users.json",
    "jira-webhook-secret",
)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class StackConfig:
    """Where the stack keeps its files and which ports it uses."""

    home: Path
    api_port: int = 8080
    jira_port: int = 8091
    conddb_port: int = 8092
    runregistry_port: int = 8093
    poll_interval: float = 5.0
    job_seconds: float = 20.0
    autopilot: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    #: ``LocalExecutor`` or ``CeleryExecutor``; with Celery the stack starts :attr:`celery_workers` workers.
    executor: str = "LocalExecutor"
    #: Airflow's metadata database; ``None`` means a SQLite file in :attr:`airflow_home`.
    airflow_db_url: str | None = None
    #: The plugin database; ``None`` means the SQLite file ``b2cal.db`` in :attr:`airflow_home`.
    plugin_db_url: str | None = None
    #: Celery broker, e.g. ``redis://127.0.0.1:6379/5``; required with the CeleryExecutor.
    celery_broker_url: str | None = None
    celery_workers: int = 2
    #: Task slots of each Celery worker.
    celery_concurrency: int = 3
    #: Calibration sites, each with the connection ``b2cal_site_<site>``.
    sites: tuple[str, ...] = ("BNL",)
    #: The sites among :attr:`sites` that jobs reach over SSH, through an sshd on 127.0.0.1 that the
    #: stack starts. Without Debian's openssh-server they use the local transport.
    ssh_sites: tuple[str, ...] = ()
    #: The port of that sshd; a free one when 0.
    ssh_port: int = 0
    #: Run a Rucio server and give every site the extras ``rucio_rse`` and ``cdst_archive_rse``. Without
    #: the server's venv the stack logs a warning and runs without Rucio.
    rucio: bool = False
    #: The Rucio server's port on 127.0.0.1; a free one when 0.
    rucio_port: int = 0
    #: The Rucio server's virtual environment; ``None`` means ``.venv-rucio`` in the repository.
    rucio_venv: Path | None = None

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            supported = ", ".join(EXECUTORS)
            raise ValueError(f"executor {self.executor!r} is not supported; use one of {supported}")
        if self.executor == "CeleryExecutor":
            if not self.celery_broker_url:
                raise ValueError(
                    "the CeleryExecutor needs celery_broker_url, e.g. 'redis://127.0.0.1:6379/5'"
                )
            if not (self.airflow_db_url or "").startswith("postgresql"):
                raise ValueError(
                    f"the CeleryExecutor needs a PostgreSQL airflow_db_url, got {self.airflow_db_url!r}: "
                    "its workers and the scheduler share the metadata database, which SQLite cannot serve"
                )
        if not self.sites:
            raise ValueError("sites is empty; give at least one site name, e.g. ('BNL',)")
        unknown = [site for site in self.ssh_sites if site not in self.sites]
        if unknown:
            raise ValueError(f"ssh_sites {unknown} are not among the sites {list(self.sites)}; add them")
        if self.ssh_sites and not self.ssh_port:
            self.ssh_port = free_port()
        if self.rucio and not self.rucio_port:
            self.rucio_port = free_port()

    @property
    def airflow_home(self) -> Path:
        """Airflow's home folder."""
        return self.home / "airflow"

    @property
    def api_url(self) -> str:
        """Base URL of the Airflow API server."""
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def site_root(self) -> Path:
        """Folder of the local site: job folders, skims and cDSTs."""
        return self.home / "site"

    @property
    def devservices_home(self) -> Path:
        """Folder of the development services' state files, which they load again at every start."""
        return self.home / "devservices"

    @property
    def rucio_home(self) -> Path:
        """Folder of the Rucio server: configuration, SQLite database, RSE folders and logs."""
        return self.home / "rucio"

    @property
    def plugin_db(self) -> str:
        """The plugin database URL."""
        return self.plugin_db_url or f"sqlite:///{self.airflow_home / 'b2cal.db'}"

    def work_root(self, site: str) -> Path:
        """Folder of a site's job folders.

        The first site keeps the folders of the single-site stack; every other site gets a folder of
        its own, so no two sites share a job or cDST folder. All sites read the same skims.
        """
        return self._site_folder(site) / "jobs"

    def cdst_root(self, site: str) -> Path:
        """Folder where a site's cDST production writes."""
        return self._site_folder(site) / "cdst"

    def _site_folder(self, site: str) -> Path:
        if site.upper() == self.sites[0].upper():
            return self.site_root
        return self.site_root / site.lower()


def jira_webhook_secret(home: Path) -> str:
    """Return the secret that signs the development Jira's webhook calls, made once per stack home."""
    path = home / "jira-webhook-secret"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def loopback_sshd(config: StackConfig) -> LoopbackSSHD | None:
    """Return the sshd that the stack's SSH sites use, with its keys made, or ``None`` when it has none.

    The keys stay in ``<home>/sshd``, so a restarted demo keeps its host key.
    """
    if not config.ssh_sites:
        return None
    if not sshd_available():
        log.warning(
            "openssh-server is not installed, so the sites %s use the local transport instead of SSH",
            ", ".join(config.ssh_sites),
        )
        return None
    server = LoopbackSSHD(config.home / "sshd", port=config.ssh_port)
    server.prepare()
    return server


def load_rucioctl() -> ModuleType:
    """Import ``tools/rucio_server/rucioctl.py``, which starts and stops the local Rucio server.

    The script is no part of the ``b2cal`` package, so it is loaded by its path. It uses only the
    standard library and imports neither Airflow nor Rucio.
    """
    if "rucioctl" in sys.modules:
        return sys.modules["rucioctl"]
    spec = importlib.util.spec_from_file_location("rucioctl", RUCIOCTL)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {RUCIOCTL} as a module")
    module = importlib.util.module_from_spec(spec)
    # The dataclasses in the script look their module up in sys.modules while they are built.
    sys.modules["rucioctl"] = module
    spec.loader.exec_module(module)
    return module


def rucio_server(config: StackConfig) -> Any | None:
    """Return the Rucio server the stack runs, not yet started, or ``None`` when it runs without Rucio."""
    if not config.rucio:
        return None
    venv = config.rucio_venv or REPO_ROOT / ".venv-rucio"
    if not RUCIOCTL.exists():
        log.warning(
            "%s is missing, so the stack runs without Rucio and requests skip the cDST registration; "
            "run the stack from a checkout of the repository to use Rucio",
            RUCIOCTL,
        )
        return None
    if not (venv / "bin" / "gunicorn").exists():
        log.warning(
            "No Rucio server venv at %s, so the stack runs without Rucio and requests skip the cDST "
            "registration; create the venv with 'make rucio-server-venv'",
            venv,
        )
        return None
    rucioctl = load_rucioctl()
    site_rses = [site_rse(site) for site in config.sites]
    rses = tuple(dict.fromkeys([*rucioctl.RSES, *site_rses, CDST_ARCHIVE_RSE]))
    return rucioctl.RucioServer(venv=venv, home=config.rucio_home, port=config.rucio_port, rses=rses)


def start_rucio(server: Any) -> bool:
    """Start the stack's Rucio server, on the database of an earlier start of the same home if possible.

    The database is reused when :data:`RUCIO_STATE_FILE` records it with the same RSEs and the server
    runs on SQLite. The server then gets the recorded password, because its root identity has that
    password in the database. Otherwise the server starts on a new database. A server or daemons of
    the same home that still run are stopped first, by their recorded PIDs. Return whether the
    database was reused.
    """
    marker = server.home / RUCIO_STATE_FILE
    try:
        saved = json.loads(marker.read_text())
    except FileNotFoundError:
        saved = None
    except ValueError as error:
        log.warning("%s is not valid JSON (%s), so the Rucio server starts on a new database", marker, error)
        saved = None
    reusable = (
        isinstance(saved, dict)
        and not server.postgres_admin_url
        and (server.home / "rucio.db").exists()
        and saved.get("rses") == list(server.rses)
        and isinstance(saved.get("password"), str)
    )
    if reusable:
        server.password = saved["password"]
        server.stop_daemons()
        server.stop_server()
        server.write_config()
        server.start()
        return True
    marker.unlink(missing_ok=True)
    server.up()
    descriptor = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(descriptor, "w") as handle:
        json.dump({"rses": list(server.rses), "password": server.password}, handle)
    return False


def clear_home(config: StackConfig) -> list[Path]:
    """Delete what earlier stacks left in ``config.home``, so the next start begins from scratch.

    Only the entries of :data:`HOME_ENTRIES` are deleted, so other files in the folder stay. A Rucio
    server or daemons left running by an earlier stack are stopped first, by the PIDs in their folder.
    Return the deleted paths.

    :raises RuntimeError: when a port of the stack is in use, because a stack that still runs on this
        home would lose its files
    """
    for port in (config.api_port, config.jira_port, config.conddb_port, config.runregistry_port):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                raise RuntimeError(
                    f"port {port} on 127.0.0.1 is in use, so a stack may still run on {config.home}. "
                    "Stop it (Ctrl-C) before starting from scratch"
                )
    pid_files = [config.rucio_home / "server.pid", config.rucio_home / "daemons.pid"]
    if RUCIOCTL.exists() and any(path.exists() for path in pid_files):
        rucioctl = load_rucioctl()
        venv = config.rucio_venv or REPO_ROOT / ".venv-rucio"
        leftover = rucioctl.RucioServer(venv=venv, home=config.rucio_home, port=0)
        leftover.stop_daemons()
        leftover.stop_server()
    removed = []
    for name in HOME_ENTRIES:
        path = config.home / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(path)
    log.info("Deleted %s", ", ".join(str(path) for path in removed) or f"nothing in {config.home}")
    return removed


def dev_services_argv(config: StackConfig) -> list[str]:
    """Return the command line that runs the stack's development services.

    The experts of the packaged release become Jira users. The site storage tree goes to the local
    site's folder, and the services' state files to :attr:`StackConfig.devservices_home`.
    """
    from b2cal.catalog import load_packaged_release

    experts = sorted({settings.expert_username for settings in load_packaged_release().calibrations.values()})
    return [
        str(Path(sys.executable).parent / "b2cal"),
        "dev-services",
        "--jira-port",
        str(config.jira_port),
        "--conddb-port",
        str(config.conddb_port),
        "--runregistry-port",
        str(config.runregistry_port),
        "--state-dir",
        str(config.site_root),
        "--data-dir",
        str(config.devservices_home),
        "--experts",
        ",".join(experts),
    ]


def rucio_connection(server: Any) -> dict[str, Any]:
    """Return the connection ``rucio_default`` to the stack's Rucio server, polling every few seconds."""
    values = dict(server.connection_values())
    values["extra"] = {**values["extra"], "poll_interval": RUCIO_POLL_INTERVAL}
    return values


def site_connection(
    config: StackConfig, site: str, sshd: LoopbackSSHD | None, rucio: bool = False
) -> dict[str, Any]:
    """Return the connection of one of the stack's sites: local, or over SSH to the loopback sshd.

    With ``rucio`` the site registers its cDSTs at ``<SITE>-DISK`` and archives them at ``DESY-DISK``.
    """
    extra: dict[str, Any] = {
        "site": site,
        "transport": "local",
        "work_root": str(config.work_root(site)),
        "backend": "Local",
        "backend_options": {"max_processes": 2},
        **SITE_BACKENDS.get(site.upper(), {}),
        "prompt_run_options": {"heartbeat": 1},
        "storage_root": str(config.site_root / "storage"),
        "cdst_root": str(config.cdst_root(site)),
        "database_chain": [],
        "env": {"B2CAL_FAKE_JOB_SECONDS": str(config.job_seconds)},
        "poll_interval": config.poll_interval,
    }
    if rucio:
        extra.update(rucio_rse=site_rse(site), cdst_archive_rse=CDST_ARCHIVE_RSE)
    if sshd is None or site not in config.ssh_sites:
        return {"conn_type": "generic", "extra": extra}
    # The "remote" side is this machine: the set-up command puts the basf2 stand-ins on PATH, as
    # sourcing b2setup puts basf2 on PATH at a real site.
    extra.update(
        transport="ssh",
        basf2_setup=f"export PATH={Path(sys.executable).parent}:$PATH",
        remote_python=sys.executable,
        **sshd.connection_extra(),
    )
    return {"conn_type": "ssh", **sshd.connection_fields(), "extra": extra}


def airflow_env(
    config: StackConfig, sshd: LoopbackSSHD | None = None, rucio: Any | None = None
) -> dict[str, str]:
    """Return the environment of every Airflow component of the stack.

    :param rucio: the stack's Rucio server, from :func:`rucio_server`; ``None`` leaves Rucio out.
    """
    dev = DevServicesConfig.from_env()
    bin_dir = Path(sys.executable).parent
    sshd = sshd or loopback_sshd(config)
    use_rucio = rucio is not None
    sites = {
        f"B2CAL_SITE_{site.upper()}": site_connection(config, site, sshd, rucio=use_rucio)
        for site in config.sites
    }
    connections = {
        "B2CAL_DB": {"conn_type": "generic", "extra": {"url": config.plugin_db}},
        "B2CAL_JIRA": {
            "conn_type": "jira",
            "host": f"http://127.0.0.1:{config.jira_port}",
            "login": dev.jira_bot_username,
            "password": dev.jira_bot_password,
            "extra": {
                "project": dev.jira_projects[0],
                "poll_interval": config.poll_interval,
                "webhook_secret": jira_webhook_secret(config.home),
            },
        },
        "B2CAL_CONDDB": {
            "conn_type": "http",
            "host": f"http://127.0.0.1:{config.conddb_port}",
            "password": dev.conddb_token,
        },
        "B2CAL_RUNREGISTRY": {
            "conn_type": "http",
            "host": f"http://127.0.0.1:{config.runregistry_port}",
            "password": dev.runregistry_api_key,
        },
        **sites,
    }
    if rucio is not None:
        connections["RUCIO_DEFAULT"] = rucio_connection(rucio)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(config.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(config.airflow_home / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": config.executor,
        "AIRFLOW__CORE__AUTH_MANAGER": FAB_AUTH_MANAGER,
        "AIRFLOW__CORE__PARALLELISM": "6",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "64",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{config.api_url}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(config.api_port),
        "AIRFLOW__API__BASE_URL": config.api_url,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "1200",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AIRFLOW__FAB__CONFIG_FILE": str(config.airflow_home / "webserver_config.py"),
        "AIRFLOW_VAR_B2CAL_AUTOPILOT": "true" if config.autopilot else "false",
        "B2CAL_DB_URL": config.plugin_db,
    }
    if config.airflow_db_url:
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = config.airflow_db_url
    if config.executor == "CeleryExecutor":
        env.update(_celery_env(config))
    for name, value in connections.items():
        env[f"AIRFLOW_CONN_{name}"] = json.dumps(value)
    env.update(config.extra_env)
    return env


def _celery_env(config: StackConfig) -> dict[str, str]:
    # The result backend shares the metadata database; Celery names the driver with a "db+" prefix.
    result_url = str(config.airflow_db_url).replace("postgresql+psycopg2://", "postgresql://", 1)
    return {
        "AIRFLOW__CELERY__BROKER_URL": str(config.celery_broker_url),
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{result_url}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(config.celery_concurrency),
        "AIRFLOW__CORE__PARALLELISM": str(config.celery_workers * config.celery_concurrency),
        # A killed worker's tasks stop heartbeating: find them in 30 s instead of the default 300 s, and
        # retry a task whose message a killed worker had taken but not started after 120 s, not 1200 s.
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "120",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    }


def _run(argv: list[str], env: dict[str, str], log_file: Path) -> None:
    with log_file.open("a") as handle:
        result = subprocess.run(argv, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{' '.join(argv[:3])} failed with exit status {result.returncode}:\n{tail}")


class Stack:
    """The running processes of a stack; stop them with :meth:`stop`."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.sshd = loopback_sshd(config)
        self.rucio = rucio_server(config)
        self.env = airflow_env(config, self.sshd, self.rucio)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = config.home / "logs"
        self.passwords: dict[str, str] = {}

    def setup(self) -> None:
        """Create the folders, migrate both databases, create the users and import the catalog."""
        folders = [self.config.airflow_home / "plugins", self.logs]
        folders += [self.config.work_root(site) for site in self.config.sites]
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
        webserver_config = self.config.airflow_home / "webserver_config.py"
        if not webserver_config.exists():
            webserver_config.write_text(
                '"""FAB settings of the b2cal stack: a local user database."""\n\n'
                "from flask_appbuilder.const import AUTH_DB\n\nAUTH_TYPE = AUTH_DB\nWTF_CSRF_ENABLED = True\n"
            )
        airflow = str(Path(sys.executable).parent / "airflow")
        _run([airflow, "db", "migrate"], self.env, self.logs / "setup.log")
        self.passwords = self._load_or_make_passwords()
        users = [
            {
                "username": name,
                "password": self.passwords[name],
                "roles": roles,
                "email": f"{name}@b2cal.invalid",
            }
            for name, roles in DEMO_USERS
        ]
        users_file = self.config.home / "users.json"
        users_file.write_text(json.dumps(users))
        users_file.chmod(0o600)
        try:
            _run(
                [sys.executable, "-m", "b2cal_airflow.security", str(users_file)],
                self.env,
                self.logs / "setup.log",
            )
        finally:
            users_file.unlink(missing_ok=True)
        from b2cal.catalog import load_packaged_release
        from b2cal.db import inventory, store
        from b2cal.db.engine import session_scope, upgrade

        url = self.env["B2CAL_DB_URL"]
        upgrade(url)
        with session_scope(url) as session:
            catalog = load_packaged_release()
            store.import_catalog(session, catalog, source="packaged release-11-00-00")
            # Requests may only use a release available at their site; the stack's sites have this one.
            for site in self.config.sites:
                inventory.register_release(session, site, catalog.release, source="packaged release-11-00-00")

    def _load_or_make_passwords(self) -> dict[str, str]:
        path = self.config.home / "passwords.json"
        if path.exists():
            return dict(json.loads(path.read_text()))
        passwords = {name: secrets.token_urlsafe(12) for name, _ in DEMO_USERS}
        path.write_text(json.dumps(passwords, indent=2))
        path.chmod(0o600)
        return passwords

    def _start(self, name: str, argv: list[str]) -> None:
        handle = (self.logs / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            argv, env=self.env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.info("Started %s (pid %s)", name, self.processes[name].pid)

    def start_services(self) -> None:
        """Start the development Jira, conditions database and run registry, and seed them.

        The services load the state that an earlier stack of the same home saved, and so does the
        Rucio server, so the seeding only adds what is missing.
        """
        self._start("dev-services", dev_services_argv(self.config))
        for port in (self.config.jira_port, self.config.conddb_port, self.config.runregistry_port):
            self._wait_for_port(port, "dev-services")
        if self.sshd is not None:
            self.sshd.start()
            log.info("Sites %s run jobs over the sshd on port %s", self.config.ssh_sites, self.sshd.port)
        if self.rucio is not None:
            reused = start_rucio(self.rucio)
            self.rucio.write_connection_file()
            database = "the database of the last start" if reused else "a new database"
            log.info(
                "Started the Rucio server on %s with %s (home %s)", self.rucio.url, database, self.rucio.home
            )
        self._seed_running_tag()
        self._register_jira_webhook()

    def _register_jira_webhook(self) -> None:
        """Make the development Jira sign and send ticket updates to the plugin's webhook receiver.

        The development Jira keeps webhooks across restarts. The ones that an earlier stack registered
        under the same name are deleted first, because otherwise every update would be delivered twice.
        """
        dev = DevServicesConfig.from_env()
        webhooks_url = f"http://127.0.0.1:{self.config.jira_port}/rest/webhooks/1.0/webhook"
        auth = (dev.jira_bot_username, dev.jira_bot_password)
        existing = requests.get(webhooks_url, auth=auth, timeout=30)
        existing.raise_for_status()
        for hook in existing.json():
            if hook["name"] == JIRA_WEBHOOK_NAME:
                requests.delete(hook["self"], auth=auth, timeout=30).raise_for_status()
        response = requests.post(
            webhooks_url,
            json={
                "name": JIRA_WEBHOOK_NAME,
                "url": f"{self.config.api_url}/b2cal/webhooks/jira",
                "events": ["jira:issue_updated"],
                "filters": {"issue-related-events-section": f"project = {dev.jira_projects[0]}"},
                "secret": jira_webhook_secret(self.config.home),
            },
            auth=auth,
            timeout=30,
        )
        response.raise_for_status()

    def _seed_running_tag(self) -> None:
        from b2cal.conddb import ConditionsDB

        dev = DevServicesConfig.from_env()
        client = ConditionsDB(f"http://127.0.0.1:{self.config.conddb_port}", token=dev.conddb_token)
        tag = client.get_global_tag(RUNNING_TAG)
        if tag is None:
            client.create_global_tag(RUNNING_TAG, "Running (prompt) global tag of the b2cal demo")
            tag = client.get_global_tag(RUNNING_TAG)
        if tag and tag["globalTagStatus"]["name"] == "OPEN":
            client.set_global_tag_state(RUNNING_TAG, "RUNNING")

    @property
    def components(self) -> list[str]:
        """Names of the Airflow components this stack runs, in start order."""
        names = ["api-server", "scheduler", "dag-processor", "triggerer"]
        if self.config.executor == "CeleryExecutor":
            names += [f"celery-worker-{number}" for number in range(1, self.config.celery_workers + 1)]
        return names

    def component_argv(self, name: str) -> list[str]:
        """Return the command line that starts an Airflow component."""
        airflow = str(Path(sys.executable).parent / "airflow")
        if name == "api-server":
            return [airflow, "api-server", "-H", "127.0.0.1", "-p", str(self.config.api_port)]
        if name in ("scheduler", "triggerer"):
            return [airflow, name, "--skip-serve-logs"]
        if name == "dag-processor":
            return [airflow, "dag-processor"]
        if name.startswith("celery-worker-") and name in self.components:
            # Each worker needs its own node name and pid file; --skip-serve-logs keeps it off port 8793,
            # which it would bind on every interface. The logs are read from the shared local folder.
            return [
                airflow,
                "celery",
                "worker",
                "--concurrency",
                str(self.config.celery_concurrency),
                "-q",
                "default",
                "--skip-serve-logs",
                "--celery-hostname",
                f"{name}@%h",
                "--pid",
                str(self.config.airflow_home / f"{name}.pid"),
            ]
        raise ValueError(f"unknown component {name!r}; this stack runs {', '.join(self.components)}")

    def start_component(self, name: str) -> None:
        """Start one Airflow component, or start it again after :meth:`kill`."""
        if name in self.processes and self.processes[name].poll() is None:
            raise RuntimeError(f"{name} is already running (pid {self.processes[name].pid})")
        self._start(name, self.component_argv(name))

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> int:
        """Kill a component and every process it started, as a crash would; return its pid.

        Each component runs in its own process group, so the signal also reaches the task processes of
        a worker or scheduler. Calibration jobs run in sessions of their own and survive, as batch jobs
        survive a crash of the Airflow host.
        """
        process = self.processes.pop(name)
        os.killpg(process.pid, sig)
        process.wait(timeout=30)
        log.info("Killed %s (pid %s) with %s", name, process.pid, sig.name)
        return process.pid

    def start_airflow(self) -> None:
        """Start the Airflow components and wait until the API responds and the DAG is parsed."""
        for name in self.components:
            self.start_component(name)
        self._wait_for_http(f"{self.config.api_url}/api/v2/monitor/health", "api-server", timeout=180)
        token = self.token("admin")
        headers = {"Authorization": f"Bearer {token}"}
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                url = f"{self.config.api_url}/api/v2/dags/{DAG_ID}"
                if requests.get(url, headers=headers, timeout=30).status_code == 200:
                    return
            except requests.RequestException as exc:
                # A busy machine can delay the API server's responses for a while, so keep waiting.
                log.info("API server did not respond yet: %s", exc)
            self._check_alive()
            time.sleep(1)
        raise RuntimeError(
            f"the DAG {DAG_ID} was not parsed within 300 s; see {self.logs / 'dag-processor.log'}"
        )

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = "\n".join((self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-30:])
                raise RuntimeError(f"{name} exited with status {process.returncode}:\n{tail}")

    def _wait_for_port(self, port: int, owner: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
            self._check_alive()
            time.sleep(0.2)
        raise RuntimeError(f"{owner} did not listen on 127.0.0.1:{port} within {timeout} s")

    def _wait_for_http(self, url: str, owner: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(url, timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            self._check_alive()
            time.sleep(0.5)
        raise RuntimeError(f"{owner} did not respond at {url} within {timeout} s; see its log in {self.logs}")

    def token(self, username: str) -> str:
        """Log in through Airflow's API and return a JWT for ``username``."""
        response = requests.post(
            f"{self.config.api_url}/auth/token",
            json={"username": username, "password": self.passwords[username]},
            timeout=30,
        )
        response.raise_for_status()
        return str(response.json()["access_token"])

    def api(self, method: str, path: str, username: str = "admin", **kwargs: Any) -> requests.Response:
        """Call Airflow's REST API as ``username``."""
        headers = {"Authorization": f"Bearer {self.token(username)}"}
        return requests.request(method, f"{self.config.api_url}{path}", headers=headers, timeout=60, **kwargs)

    def stop(self) -> None:
        """Stop every process the stack started, by its id."""
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for name, process in self.processes.items():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            log.info("Stopped %s", name)
        self.processes.clear()
        if self.sshd is not None:
            self.sshd.stop()
        if self.rucio is not None:
            # The server is stopped by the PID recorded in its home folder.
            self.rucio.down()
            log.info("Stopped the Rucio server of %s", self.rucio.home)


@contextmanager
def running_stack(config: StackConfig) -> Iterator[Stack]:
    """Set up and start a stack, and stop it on exit."""
    stack = Stack(config)
    try:
        stack.setup()
        stack.start_services()
        stack.start_airflow()
        yield stack
    finally:
        stack.stop()
