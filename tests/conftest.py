"""Shared fixtures: the machine's PostgreSQL server and the rule for missing servers.

A test that needs a server this machine runs skips with the reason when the server is absent, except
under ``CI=true``, where the same absence fails the test: CI must run everything.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from server_rules import POSTGRES_ADMIN_URL, require

#: Test folders that start a whole Airflow stack; they run first, each on a worker of its own.
STACK_FOLDERS = ("deploy", "integration")


def folder_scope(nodeid: str) -> str:
    """Return the pytest-xdist scope of a test: its folder below ``tests/``, or its file for unit tests.

    A scope runs on one worker, so a folder's session fixtures (a running stack, development services,
    an sshd) start once. The unit tests start nothing shared, so each of their files is a scope of
    its own and they spread over the workers.
    """
    parts = nodeid.split("::", 1)[0].split("/")
    if len(parts) < 3 or parts[0] != "tests":
        return "top"
    return "/".join(parts[1:3]) if parts[1] == "unit" else parts[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Start the whole-stack folders first, so that the other folders fill in around them."""
    items.sort(key=lambda item: folder_scope(item.nodeid) not in STACK_FOLDERS)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Schedule the tests of each folder on one pytest-xdist worker (see :func:`folder_scope`)."""
    from xdist.scheduler import LoadScopeScheduling

    class FolderScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return folder_scope(nodeid)

    # By default LoadScope hands out the scopes with the most tests first. That would put the
    # whole-stack folders, which have few but long tests, at the end of the run.
    config.option.loadscopereorder = False
    return FolderScheduling(config, log)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """Create a fresh PostgreSQL database on the local server and drop it afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text("select 1"))
    except OperationalError as exc:
        admin.dispose()
        require(False, f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL.split('@')[-1]}: {exc.orig}")
    name = f"b2cal_test_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(text(f'create database "{name}"'))
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        from b2cal.db.engine import get_engine

        get_engine.cache_clear()
        with admin.connect() as connection:
            connection.execute(text(f'drop database if exists "{name}" with (force)'))
        admin.dispose()
