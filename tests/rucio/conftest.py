"""Fixtures of the Rucio tests: real Rucio servers started once per session by the project's scripts.

``rucio_server`` runs on SQLite with one single-threaded gunicorn worker, enough for tests that drive
transfers by marking replicas available. ``rucio_postgres_server`` runs on a fresh database of the
machine's PostgreSQL with 2 workers x 4 threads, for the tests where daemons and API calls run at the
same time. Both need the server venv made by ``make rucio-server-venv``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_rules import require

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "rucio_server"))

# Airflow reads its home when first imported; keep it out of the user's ~/airflow.
if "AIRFLOW_HOME" not in os.environ:
    _airflow_home = tempfile.mkdtemp(prefix="b2cal-rucio-tests-airflow-")
    atexit.register(shutil.rmtree, _airflow_home, True)
    os.environ["AIRFLOW_HOME"] = _airflow_home

from rucio_support import RecordingTaskInstance, connection_json  # noqa: E402
from rucioctl import RucioServer, RucioServerError, free_port  # noqa: E402

RUCIO_VENV = Path(os.environ.get("B2CAL_RUCIO_VENV", ROOT / ".venv-rucio"))
POSTGRES_ADMIN_URL = (
    os.environ.get("B2CAL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    .replace("postgresql+psycopg2://", "postgresql://")
    .replace("postgresql+psycopg://", "postgresql://")
)


def _require_venv() -> None:
    require(
        (RUCIO_VENV / "bin" / "gunicorn").exists(),
        f"no Rucio server venv at {RUCIO_VENV}: create it with 'make rucio-server-venv'",
    )


def _start(server: RucioServer) -> RucioServer:
    try:
        server.up()
    except RucioServerError as exc:
        server.down()
        pytest.fail(f"the Rucio server in {server.home} did not start: {exc}")
    return server


@pytest.fixture(scope="session")
def rucio_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RucioServer]:
    """Start a Rucio server on SQLite for the whole session."""
    _require_venv()
    home = tmp_path_factory.mktemp("rucio-sqlite")
    server = _start(RucioServer(venv=RUCIO_VENV, home=home, port=free_port()))
    try:
        yield server
    finally:
        server.down()


@pytest.fixture(scope="session")
def rucio_postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RucioServer]:
    """Start a Rucio server on a new PostgreSQL database for the whole session."""
    _require_venv()
    import psycopg

    try:
        psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        require(False, f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL.split('@')[-1]}: {exc}")
    server = RucioServer(
        venv=RUCIO_VENV,
        home=tmp_path_factory.mktemp("rucio-postgres"),
        port=free_port(),
        postgres_admin_url=POSTGRES_ADMIN_URL,
        workers=2,
        threads=4,
    )
    _start(server)
    try:
        yield server
    finally:
        server.down()


@pytest.fixture
def rucio_conn(rucio_server: RucioServer, monkeypatch: pytest.MonkeyPatch) -> RucioServer:
    """Point the connection ``rucio_default`` at the SQLite server."""
    monkeypatch.setenv("AIRFLOW_CONN_RUCIO_DEFAULT", connection_json(rucio_server))
    return rucio_server


@pytest.fixture
def rucio_postgres_conn(rucio_postgres_server: RucioServer, monkeypatch: pytest.MonkeyPatch) -> RucioServer:
    """Point the connection ``rucio_default`` at the PostgreSQL server."""
    monkeypatch.setenv("AIRFLOW_CONN_RUCIO_DEFAULT", connection_json(rucio_postgres_server))
    return rucio_postgres_server


@pytest.fixture
def unique() -> str:
    """Return a short random token that keeps names of different tests apart on a shared server."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def context() -> dict[str, Any]:
    """Return a minimal task context with a recording task instance."""
    return {"ti": RecordingTaskInstance()}
