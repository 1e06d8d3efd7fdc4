"""Fixtures of the run tests: the development services, a plugin database, and a real Rucio server.

The development services run once per test module; the Rucio server (SQLite, one worker) once per
session, from the venv that ``make rucio-server-venv`` creates.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_rules import require

ROOT = Path(__file__).resolve().parents[2]
RUCIO_VENV = Path(os.environ.get("B2CAL_RUCIO_VENV", ROOT / ".venv-rucio"))

# Airflow reads its home when first imported; keep it out of the user's ~/airflow.
if "AIRFLOW_HOME" not in os.environ:
    _airflow_home = tempfile.mkdtemp(prefix="b2cal-runs-tests-airflow-")
    atexit.register(shutil.rmtree, _airflow_home, True)
    os.environ["AIRFLOW_HOME"] = _airflow_home

from b2cal.db.engine import upgrade  # noqa: E402
from b2cal.devservices.config import DevServicesConfig  # noqa: E402
from b2cal.devservices.server import DevServices, start_services  # noqa: E402

CONFIG = DevServicesConfig(jira_experts=("cdc-calibration-expert",), runs_per_experiment=60)


@pytest.fixture(scope="session")
def config() -> DevServicesConfig:
    """The configuration of the development services."""
    return CONFIG


@pytest.fixture(scope="module")
def services() -> Iterator[DevServices]:
    """Run the development Jira and run registry on free loopback ports."""
    handle = start_services(jira_port=0, conddb_port=0, runregistry_port=0, config=CONFIG)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def registry_state(services: DevServices) -> Iterator[Any]:
    """The run registry's state, regenerated before and after the test."""
    services.runregistry_state.reset()
    yield services.runregistry_state
    services.runregistry_state.reset()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A migrated plugin database in a SQLite file."""
    url = f"sqlite:///{tmp_path / 'b2cal.db'}"
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def rucio_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Start a Rucio server on SQLite for the whole session."""
    require(
        (RUCIO_VENV / "bin" / "gunicorn").exists(),
        f"no Rucio server venv at {RUCIO_VENV}: create it with 'make rucio-server-venv'",
    )
    sys.path.insert(0, str(ROOT / "tools" / "rucio_server"))
    from rucioctl import RucioServer, RucioServerError, free_port

    server = RucioServer(venv=RUCIO_VENV, home=tmp_path_factory.mktemp("rucio-runs"), port=free_port())
    try:
        server.up()
    except RucioServerError as exc:
        server.down()
        pytest.fail(f"the Rucio server in {server.home} did not start: {exc}")
    try:
        yield server
    finally:
        server.down()


@pytest.fixture
def rucio_conn(rucio_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Point the connection ``rucio_default`` at the Rucio server."""
    monkeypatch.setenv("AIRFLOW_CONN_RUCIO_DEFAULT", json.dumps(rucio_server.connection_values()))
    return rucio_server
