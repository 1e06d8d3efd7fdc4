"""One production-shaped stack shared by the live deployment tests.

Airflow runs with the CeleryExecutor and two workers. The broker is the Redis server of this machine,
on the database number of ``B2CAL_TEST_REDIS_URL`` (default ``/5``), emptied before and after. Airflow's
metadata database, the Celery result backend and the plugin database are fresh databases on the
PostgreSQL server, dropped afterwards. Two local calibration sites, BNL and DESY, run the jobs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from server_rules import POSTGRES_ADMIN_URL, require

from b2cal.production_stack import (
    ServerUnavailable,
    check_postgres,
    check_redis,
    production_config,
    redis_database,
    scratch_postgres_database,
)
from b2cal.stack import Stack, running_stack

REDIS_URL = os.environ.get("B2CAL_TEST_REDIS_URL", "redis://127.0.0.1:6379/5")


def require_servers() -> None:
    """Skip, or fail under ``CI=true``, when PostgreSQL or Redis is not reachable."""
    for check, url in ((check_postgres, POSTGRES_ADMIN_URL), (check_redis, REDIS_URL)):
        try:
            check(url)
        except ServerUnavailable as exc:
            require(False, str(exc))


@pytest.fixture(scope="session")
def docker_compose_installed() -> None:
    """Skip, or fail under ``CI=true``, when Debian's ``docker-compose`` is not installed."""
    require(
        shutil.which("docker-compose") is not None,
        "docker-compose is not installed; `make system-packages` installs it",
    )


@pytest.fixture(scope="session")
def production_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Start the production-shaped stack once per session, with the autopilot closing tickets."""
    require_servers()
    with (
        scratch_postgres_database(POSTGRES_ADMIN_URL, "b2cal_deploy_airflow") as airflow_db,
        scratch_postgres_database(POSTGRES_ADMIN_URL, "b2cal_deploy_plugin") as plugin_db,
        redis_database(REDIS_URL) as broker,
    ):
        config = production_config(
            tmp_path_factory.mktemp("production"),
            airflow_db_url=airflow_db,
            plugin_db_url=plugin_db,
            broker_url=broker,
            job_seconds=4.0,
        )
        with running_stack(config) as stack:
            yield stack
