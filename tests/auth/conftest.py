"""Fixtures of the login tests: one OpenLDAP server (Debian's slapd) for the whole test session."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_rules import require

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "ldap"))

from slapd_directory import (  # noqa: E402
    EXPERTS_GROUP,
    MANAGERS_GROUP,
    VIEWERS_GROUP,
    DirectoryUser,
    SlapdDirectory,
    missing_tools,
)

# mia and gus change groups during the tests; the others keep theirs.
TEST_USERS = (
    DirectoryUser("mona", (MANAGERS_GROUP,), given_name="Mona", surname="Manager"),
    DirectoryUser("erik", (EXPERTS_GROUP,), jira_username="erik.jira", given_name="Erik", surname="Expert"),
    DirectoryUser("vera", (VIEWERS_GROUP,), given_name="Vera", surname="Viewer"),
    DirectoryUser("otto", (), given_name="Otto", surname="Outsider"),
    DirectoryUser("mia", (MANAGERS_GROUP,), given_name="Mia", surname="Mover"),
    DirectoryUser("gus", (VIEWERS_GROUP,), given_name="Gus", surname="Groupchanger"),
)


def require_ldap_tools() -> None:
    """Skip (fail under CI=true) when slapd, ldap-utils or python-ldap are missing."""
    missing = missing_tools()
    require(
        not missing, f"the LDAP tests need {', '.join(missing)}; install them with `make system-packages`"
    )
    require(
        importlib.util.find_spec("ldap") is not None,
        "the LDAP tests need python-ldap; run `make system-packages`, then `pip install -e '.[dev]'`",
    )


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlapdDirectory]:
    """Start one slapd on 127.0.0.1 with the test users and groups, and stop it by PID at the end."""
    require_ldap_tools()
    directory = SlapdDirectory(tmp_path_factory.mktemp("slapd"), users=TEST_USERS)
    directory.start()
    try:
        yield directory
    finally:
        directory.stop()


@pytest.fixture
def directory(slapd: SlapdDirectory) -> Iterator[SlapdDirectory]:
    """The session's slapd, resumed after the test in case the test paused it."""
    yield slapd
    slapd.resume()
