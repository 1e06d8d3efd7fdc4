"""One development Jira for the Jira tests, with helpers to switch it between Server and Cloud."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from jira_support import DevJira

from b2cal.catalog import Catalog, load_packaged_release
from b2cal.devservices.config import DevServicesConfig, catalog_expert_usernames
from b2cal.devservices.server import DevServices, start_services

#: Projects of the development Jira in these tests: ``OPS`` runs the workflow whose ids differ.
PROJECTS = ("CAL", "OPS")


@pytest.fixture(scope="session")
def jira_config() -> DevServicesConfig:
    return DevServicesConfig(
        jira_projects=PROJECTS,
        jira_experts=(*catalog_expert_usernames(), "cdc-calibration-expert"),
        jira_workflows=(("OPS", "simple"),),
        runs_per_experiment=5,
    )


@pytest.fixture(scope="session")
def jira_services(jira_config: DevServicesConfig) -> Iterator[DevServices]:
    handle = start_services(jira_port=0, conddb_port=0, runregistry_port=0, config=jira_config)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_packaged_release()


@pytest.fixture
def dev_jira(jira_services: DevServices, jira_config: DevServicesConfig) -> DevJira:
    jira = DevJira(jira_services, jira_config)
    jira.reset()
    return jira
