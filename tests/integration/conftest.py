"""One running stack (development services plus Airflow) shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from b2cal.stack import Stack, StackConfig, free_port, running_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Start the whole product once per test session, with the autopilot closing tickets.

    Rucio runs too when ``.venv-rucio`` exists; without it the stack logs a warning and the Rucio tests
    skip, or fail under ``CI=true``.
    """
    config = StackConfig(
        home=tmp_path_factory.mktemp("stack"),
        api_port=free_port(),
        jira_port=free_port(),
        conddb_port=free_port(),
        runregistry_port=free_port(),
        poll_interval=4.0,
        job_seconds=3.0,
        autopilot=True,
        rucio=True,
    )
    with running_stack(config) as running:
        yield running
