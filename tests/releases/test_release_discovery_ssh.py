"""Release discovery through the operator, against the basf2 stand-ins over a real OpenSSH server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException
from conftest import (
    ADDED,
    BROKEN,
    CHANGED,
    CHECK_ERROR,
    NEW,
    OLD,
    REMOVED,
    broken_release,
    new_release,
    old_release,
    set_ssh_site,
)

from b2cal.catalog import load_release
from b2cal.db import inventory, store
from b2cal.db.engine import session_scope
from b2cal.devservices.config import DevServicesConfig
from b2cal.devservices.server import DevServices, start_services
from b2cal.releases import notice_label
from b2cal_airflow.operators.releases import ReleaseDiscoveryOperator

SITE = "DESY"
MANAGER = "calibration-manager"


@pytest.fixture(scope="module")
def jira() -> Iterator[DevServices]:
    """Run the development Jira (and its sibling services) once for the module."""
    config = DevServicesConfig(jira_experts=(MANAGER,), runs_per_experiment=5)
    services = start_services(jira_port=0, conddb_port=0, runregistry_port=0, config=config)
    try:
        yield services
    finally:
        services.stop()


@pytest.fixture
def site(monkeypatch, sshd, software, plugin_db, jira):
    """Connect the site DESY over SSH and Jira with the manager; return the software area."""
    jira.jira_state.reset()
    set_ssh_site(monkeypatch, SITE, sshd, software)
    conn = {
        "conn_type": "jira",
        "host": jira.jira_url,
        "login": jira.config.jira_bot_username,
        "password": jira.config.jira_bot_password,
        "extra": {"project": "CAL", "manager_username": MANAGER},
    }
    monkeypatch.setenv("AIRFLOW_CONN_B2CAL_JIRA", json.dumps(conn))
    return software


def discover(**kwargs: Any) -> dict[str, Any]:
    return ReleaseDiscoveryOperator(task_id="discover_releases", site=SITE, **kwargs).execute({})


def notice_tickets(jira: DevServices, release: str) -> list[Any]:
    label = notice_label(release)
    return [issue for issue in jira.jira_state.issues() if label in issue.labels]


def test_first_discovery_imports_passing_and_records_failing(site, plugin_db, jira):
    site.install(broken_release())

    result = discover()

    assert result["listed"] == [OLD, BROKEN]
    assert result["available"] == [OLD]
    assert list(result["failed"]) == [BROKEN]
    assert CHECK_ERROR in result["failed"][BROKEN]
    assert result["notices"] == {}
    with session_scope(plugin_db) as session:
        assert inventory.available_releases(session, SITE) == [OLD]
        assert inventory.release_sites(session, BROKEN) == {SITE: "failed"}
        assert len(store.load_catalog(session, OLD)) == 3
        assert BROKEN not in store.list_releases(session)
        errors = inventory.discovery_errors(session, site=SITE, release=BROKEN)
        assert [error.stage for error in errors] == ["check"]
        assert CHECK_ERROR in errors[0].output
    # The first inventory of a site records what is there without announcing it.
    assert notice_tickets(jira, OLD) == []


def test_new_release_imported_diffed_and_announced_once(site, plugin_db, jira):
    discover()
    site.install(new_release())

    result = discover()

    assert result["available"] == [NEW]
    assert result["unchanged"] == [OLD]
    key = result["notices"][NEW]
    tickets = notice_tickets(jira, NEW)
    assert [ticket.key for ticket in tickets] == [key]
    description = tickets[0].description
    assert f"added calibration {ADDED!r}" in description
    assert f"removed calibration {REMOVED!r}" in description
    assert f"{CHANGED}: dependencies: added 'CDC deadboard'" in description
    assert f"Changes from {OLD}" in description
    assert tickets[0].assignee == MANAGER
    with session_scope(plugin_db) as session:
        assert inventory.available_releases(session, SITE) == [OLD, NEW]
        catalog = store.load_catalog(session, NEW)
        assert ADDED in catalog
        assert REMOVED not in catalog
        assert "CDC deadboard" in catalog[CHANGED].depends_on

    again = discover()

    assert again["available"] == []
    assert again["notices"] == {}
    assert len(notice_tickets(jira, NEW)) == 1


def test_release_gone_marked_unavailable_not_deleted(site, plugin_db):
    discover()
    site.uninstall(OLD)
    site.install(new_release())

    result = discover()

    assert result["gone"] == [OLD]
    assert result["available"] == [NEW]
    with session_scope(plugin_db) as session:
        assert inventory.available_releases(session, SITE) == [NEW]
        assert inventory.release_sites(session, OLD) == {SITE: "unavailable"}
        assert len(store.load_catalog(session, OLD)) == 3


def test_failed_listing_changes_nothing(site, plugin_db, monkeypatch, sshd):
    with session_scope(plugin_db) as session:
        store.import_catalog(session, load_release(old_release()), source="test")
        inventory.register_release(session, SITE, OLD, source="test")
    set_ssh_site(
        monkeypatch, SITE, sshd, site, release_list_command=["ls", str(site.releases_dir / "missing")]
    )

    with pytest.raises(AirflowException, match="release list command"):
        discover()

    with session_scope(plugin_db) as session:
        assert inventory.available_releases(session, SITE) == [OLD]
        errors = inventory.discovery_errors(session, site=SITE)
        assert errors[0].stage == "list"
        assert errors[0].release is None


def test_missing_list_command_named_in_error(site, monkeypatch, sshd):
    set_ssh_site(monkeypatch, SITE, sshd, site, release_list_command=None)

    with pytest.raises(AirflowException, match="release_list_command"):
        discover()
