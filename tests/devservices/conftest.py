"""Fixtures that run the development services on free loopback ports, once per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from b2cal.devservices.config import DevServicesConfig
from b2cal.devservices.server import DevServices, start_services

#: Expert accounts of the development Jira in these tests.
EXPERTS = ("cdc-calibration-expert", "ecl-calibration-expert")


@pytest.fixture(scope="module")
def config() -> DevServicesConfig:
    return DevServicesConfig(jira_experts=EXPERTS, runs_per_experiment=40)


@pytest.fixture(scope="module")
def services(config: DevServicesConfig) -> Iterator[DevServices]:
    handle = start_services(jira_port=0, conddb_port=0, runregistry_port=0, config=config)
    try:
        yield handle
    finally:
        handle.stop()
