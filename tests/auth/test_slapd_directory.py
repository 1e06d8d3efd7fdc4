"""The test directory itself and the directory look-ups, against a real slapd on 127.0.0.1."""

from __future__ import annotations

import time

import pytest
from ldap_airflow_support import directory_mapping, free_port
from slapd_directory import (
    EXPERTS_GROUP,
    MANAGERS_GROUP,
    PEOPLE_DN,
    SERVICE_DN,
    VIEWERS_GROUP,
    SlapdDirectory,
    group_dn,
)

from b2cal.ldapconfig import DirectoryClient, DirectoryError, DirectorySettings, DirectoryUnavailableError

try:
    import ldap
except ImportError:  # the slapd fixture then skips these tests, or fails them under CI=true
    ldap = None


def client_for(directory: SlapdDirectory, **overrides: object) -> DirectoryClient:
    settings = DirectorySettings.from_mapping(directory_mapping(directory, **overrides))
    return DirectoryClient(settings, directory.bind_password)


def test_directory_listens_on_loopback_only(directory: SlapdDirectory) -> None:
    assert directory.url.startswith("ldap://127.0.0.1:")
    args = (directory.root / "slapd.args").read_text()
    assert f"-h ldap://127.0.0.1:{directory.port}/" in args


def test_passwords_stay_private(directory: SlapdDirectory) -> None:
    assert (directory.root / "passwords.json").stat().st_mode & 0o077 == 0
    assert (directory.root / "slapd.conf").stat().st_mode & 0o077 == 0


def test_member_of_kept_by_overlay(directory: SlapdDirectory) -> None:
    assert directory.member_of("mona") == [group_dn(MANAGERS_GROUP)]
    assert directory.member_of("erik") == [group_dn(EXPERTS_GROUP)]
    assert directory.member_of("otto") == []


def test_move_member_updates_member_of(directory: SlapdDirectory) -> None:
    directory.move_member("gus", VIEWERS_GROUP, EXPERTS_GROUP)
    try:
        assert directory.member_of("gus") == [group_dn(EXPERTS_GROUP)]
    finally:
        directory.move_member("gus", EXPERTS_GROUP, VIEWERS_GROUP)
    assert directory.member_of("gus") == [group_dn(VIEWERS_GROUP)]


def test_anonymous_search_sees_nothing(directory: SlapdDirectory) -> None:
    connection = ldap.initialize(directory.url)
    try:
        found = connection.search_s(PEOPLE_DN, ldap.SCOPE_SUBTREE, "(uid=mona)", ["uid"])
    except ldap.NO_SUCH_OBJECT:
        found = []
    assert found == []


def test_user_bind_checks_password(directory: SlapdDirectory) -> None:
    connection = ldap.initialize(directory.url)
    connection.simple_bind_s("uid=mona,ou=people,dc=b2cal,dc=test", directory.password("mona"))
    with pytest.raises(ldap.INVALID_CREDENTIALS):
        ldap.initialize(directory.url).simple_bind_s("uid=mona,ou=people,dc=b2cal,dc=test", "wrong")


def test_group_filter_admits_only_members(directory: SlapdDirectory) -> None:
    settings = DirectorySettings.from_mapping(directory_mapping(directory))
    connection = ldap.initialize(directory.url)
    connection.simple_bind_s(SERVICE_DN, directory.bind_password)
    found = connection.search_s(PEOPLE_DN, ldap.SCOPE_SUBTREE, settings.search_filter(), ["uid"])
    logins = {attributes["uid"][0].decode() for _, attributes in found}
    assert {"mona", "erik", "vera"} <= logins
    assert "otto" not in logins


def test_jira_username_from_directory(directory: SlapdDirectory) -> None:
    client = client_for(directory)
    assert client.jira_username("erik") == "erik.jira"
    assert client.jira_username("mona") == "mona"
    assert client.jira_username("nobody") == "nobody"


def test_jira_username_without_attribute(directory: SlapdDirectory) -> None:
    assert client_for(directory, jira_username_attribute=None).jira_username("erik") == "erik"


def test_start_tls_needs_the_ca(directory: SlapdDirectory) -> None:
    client = client_for(directory, ca_cert_file=None)
    with pytest.raises(DirectoryUnavailableError) as raised:
        client.probe()
    assert "StartTLS with the directory" in str(raised.value)
    assert "check ca_cert_file" in str(raised.value)


def test_start_tls_without_verification(directory: SlapdDirectory) -> None:
    client_for(directory, ca_cert_file=None, require_certificate=False).probe()


def test_plain_connection_on_loopback(directory: SlapdDirectory) -> None:
    assert client_for(directory, start_tls=False, ca_cert_file=None).jira_username("erik") == "erik.jira"


def test_wrong_bind_password(directory: SlapdDirectory) -> None:
    settings = DirectorySettings.from_mapping(directory_mapping(directory))
    with pytest.raises(DirectoryError) as raised:
        DirectoryClient(settings, "not-the-password").probe()
    assert not isinstance(raised.value, DirectoryUnavailableError)
    assert "rejected the service account" in str(raised.value)


def test_wrong_search_base(directory: SlapdDirectory) -> None:
    client = client_for(directory, user_search_base="ou=nobody,dc=b2cal,dc=test")
    with pytest.raises(DirectoryError) as raised:
        client.jira_username("erik")
    assert "'ou=nobody,dc=b2cal,dc=test' does not exist" in str(raised.value)


def test_closed_port_is_unavailable(directory: SlapdDirectory) -> None:
    client = client_for(directory, url=f"ldap://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(DirectoryUnavailableError) as raised:
        client.jira_username("erik")
    assert "did not respond" in str(raised.value)
    # A refused connection fails at once. The bound only separates it from a hang on a loaded machine.
    assert time.monotonic() - started < 10


def test_frozen_directory_times_out(directory: SlapdDirectory) -> None:
    client = client_for(directory, timeout_seconds=1)
    directory.pause()
    started = time.monotonic()
    with pytest.raises(DirectoryUnavailableError) as raised:
        client.probe()
    elapsed = time.monotonic() - started
    directory.resume()
    assert "did not respond" in str(raised.value)
    assert "Timed out" in str(raised.value)
    # Without the timeout the call would wait for the paused directory forever.
    assert elapsed < 15
