"""Run the local stack in its production shape: PostgreSQL, Redis, the CeleryExecutor and two sites.

Used by the deployment tests and the benchmarks. :func:`scratch_postgres_database` creates a
database of its own on an existing PostgreSQL server and drops it afterwards; :func:`redis_database`
empties one Redis database number before and after use, so a broker never sees messages of an
earlier run; :func:`production_config` builds the :class:`~b2cal.stack.StackConfig` that puts
Airflow's metadata database, the Celery result backend and the plugin database on PostgreSQL.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from b2cal.conddb import ConditionsDB
from b2cal.devservices.config import DevServicesConfig
from b2cal.stack import Stack, StackConfig, free_port

log = logging.getLogger(__name__)

DEFAULT_POSTGRES_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/5"
#: The two sites of the production-shaped stack: prompt requests run at BNL, reprocessing at DESY.
SITES = ("BNL", "DESY")


class ServerUnavailable(RuntimeError):
    """A server the production-shaped stack needs does not answer."""


def check_postgres(admin_url: str) -> None:
    """Raise :class:`ServerUnavailable` unless the PostgreSQL server at ``admin_url`` answers."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    engine = create_engine(admin_url)
    try:
        with engine.connect() as connection:
            connection.execute(text("select 1"))
    except OperationalError as exc:
        raise ServerUnavailable(
            f"PostgreSQL is not reachable at {admin_url.split('@')[-1]}: {exc.orig}"
        ) from None
    finally:
        engine.dispose()


def check_redis(url: str) -> None:
    """Raise :class:`ServerUnavailable` unless the Redis server at ``url`` answers."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ServerUnavailable(f"Redis is not reachable at {url}: {exc}") from None
    finally:
        client.close()


@contextmanager
def scratch_postgres_database(admin_url: str, prefix: str) -> Iterator[str]:
    """Create a fresh database named ``<prefix>_<random>`` and yield its URL; drop it on exit."""
    from sqlalchemy import create_engine, text

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'create database "{name}"'))
    log.info("Created PostgreSQL database %s", name)
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        from b2cal.db.engine import get_engine

        get_engine.cache_clear()
        with admin.connect() as connection:
            connection.execute(text(f'drop database if exists "{name}" with (force)'))
        admin.dispose()
        log.info("Dropped PostgreSQL database %s", name)


@contextmanager
def redis_database(url: str) -> Iterator[str]:
    """Empty the Redis database of ``url`` (its number, e.g. ``/5``) before and after use."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
        yield url
    finally:
        client.flushdb()
        client.close()


def production_config(
    home: Path,
    *,
    airflow_db_url: str,
    plugin_db_url: str,
    broker_url: str,
    workers: int = 2,
    concurrency: int = 3,
    **overrides: Any,
) -> StackConfig:
    """Return a CeleryExecutor stack on PostgreSQL with the sites BNL and DESY, on free ports."""
    settings: dict[str, Any] = {
        "api_port": free_port(),
        "jira_port": free_port(),
        "conddb_port": free_port(),
        "runregistry_port": free_port(),
        "poll_interval": 3.0,
        "job_seconds": 3.0,
        "autopilot": True,
    }
    settings.update(overrides)
    return StackConfig(
        home=home,
        executor="CeleryExecutor",
        airflow_db_url=airflow_db_url,
        plugin_db_url=plugin_db_url,
        celery_broker_url=broker_url,
        celery_workers=workers,
        celery_concurrency=concurrency,
        sites=SITES,
        **settings,
    )


def seed_running_tag(stack: Stack, name: str) -> None:
    """Create the global tag ``name`` in the stack's conditions database and set it RUNNING."""
    client = ConditionsDB(
        f"http://127.0.0.1:{stack.config.conddb_port}", token=DevServicesConfig.from_env().conddb_token
    )
    tag = client.get_global_tag(name)
    if tag is None:
        client.create_global_tag(name, f"Running global tag {name} of the production-shaped stack")
        tag = client.get_global_tag(name)
    if tag is not None and ConditionsDB.tag_state(tag) == "OPEN":
        client.set_global_tag_state(name, "RUNNING")
