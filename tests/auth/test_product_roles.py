"""The product roles, their permission sets and the user checks, with stand-in user objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from b2cal.roles import ROLE_ACTIONS, ProductAction, actions_of
from b2cal_airflow import auth
from b2cal_airflow.auth import (
    EXPERT_ROLE,
    MANAGER_ROLE,
    VIEWER_ROLE,
    PermissionDeniedError,
)
from b2cal_airflow.auth import (
    ProductAction as ExportedAction,
)

DAG = "DAG:b2cal_processing_request"


@dataclass
class FakeRole:
    name: str


@dataclass
class FakeUser:
    """Shaped like FAB's User: ``username``, ``roles`` and the ``perms`` set of (action, resource)."""

    username: str
    roles: list[FakeRole]
    perms: set[tuple[str, str]] | None = None


@dataclass
class FakeGroup:
    roles: list[FakeRole] = field(default_factory=list)


@dataclass
class SimpleUser:
    """Shaped like SimpleAuthManagerUser: one role name and no permissions."""

    username: str
    role: str


class FakeDirectory:
    def __init__(self, names: dict[str, str]) -> None:
        self.names = names
        self.lookups: list[str] = []

    def jira_username(self, login: str) -> str:
        self.lookups.append(login)
        return self.names.get(login, login)


def fab_user(username: str, *roles: str) -> FakeUser:
    perms: set[tuple[str, str]] = set()
    for role in roles:
        if role in ROLE_ACTIONS:
            perms |= auth.role_permissions(role)
    return FakeUser(username, [FakeRole(role) for role in roles], perms)


@pytest.fixture(autouse=True)
def empty_jira_cache() -> None:
    auth.forget_jira_usernames()


def test_role_names() -> None:
    assert auth.PRODUCT_ROLES == (MANAGER_ROLE, EXPERT_ROLE, VIEWER_ROLE)
    assert ExportedAction is ProductAction


def test_every_role_reads_the_product_dag() -> None:
    for role in auth.PRODUCT_ROLES:
        permissions = auth.airflow_permissions(role)
        assert ("can_read", DAG) in permissions
        assert ("can_read", "HITL Detail") in permissions
        assert ("can_read", "DAG Runs") in permissions
        assert ("can_read", "Task Logs") in permissions


@pytest.mark.parametrize("role", auth.PRODUCT_ROLES)
def test_no_role_reaches_other_dags(role: str) -> None:
    permissions = auth.airflow_permissions(role)
    assert ("can_read", "DAGs") not in permissions
    assert ("can_edit", "DAGs") not in permissions


def test_only_managers_operate_the_dag() -> None:
    manager = auth.airflow_permissions(MANAGER_ROLE)
    assert ("can_edit", DAG) in manager
    assert ("can_create", "DAG Runs") in manager
    assert ("can_edit", "DAG Runs") in manager
    assert ("can_edit", "Task Instances") in manager
    assert ("can_edit", "HITL Detail") in manager
    for role in (EXPERT_ROLE, VIEWER_ROLE):
        permissions = auth.airflow_permissions(role)
        assert ("can_edit", DAG) not in permissions
        assert ("can_edit", "HITL Detail") not in permissions
        assert ("can_edit", "Task Instances") not in permissions
        assert ("can_create", "DAG Runs") not in permissions


def test_permissions_for_more_dags() -> None:
    permissions = auth.airflow_permissions(MANAGER_ROLE, ["b2cal_processing_request", "b2cal_reprocessing"])
    assert ("can_edit", "DAG:b2cal_reprocessing") in permissions
    assert ("can_read", "DAG:b2cal_reprocessing") in permissions


def test_unknown_role_rejected() -> None:
    with pytest.raises(ValueError) as raised:
        auth.airflow_permissions("Op")
    assert "'Op' is not a product role" in str(raised.value)


def test_role_table() -> None:
    assert ROLE_ACTIONS[VIEWER_ROLE] == {ProductAction.READ}
    assert ProductAction.SIGN_OFF in ROLE_ACTIONS[MANAGER_ROLE]
    assert ProductAction.START_REQUEST in ROLE_ACTIONS[MANAGER_ROLE]
    assert ProductAction.CANCEL_REQUEST in ROLE_ACTIONS[MANAGER_ROLE]
    assert ProductAction.EDIT_SITES in ROLE_ACTIONS[MANAGER_ROLE]
    assert ProductAction.SIGN_OFF not in ROLE_ACTIONS[EXPERT_ROLE]
    assert ProductAction.START_REQUEST not in ROLE_ACTIONS[EXPERT_ROLE]
    assert ROLE_ACTIONS[EXPERT_ROLE] == {
        ProductAction.READ,
        ProductAction.COMMENT,
        ProductAction.RERUN_OWN_CALIBRATION,
        ProductAction.CLOSE_TICKET,
    }
    assert actions_of([VIEWER_ROLE, EXPERT_ROLE]) == ROLE_ACTIONS[EXPERT_ROLE]


def test_every_action_has_one_permission() -> None:
    assert set(auth.ACTION_PERMISSIONS) == set(ProductAction)
    assert len(set(auth.ACTION_PERMISSIONS.values())) == len(ProductAction)


def test_user_roles_of_fab_user() -> None:
    user = fab_user("mona", MANAGER_ROLE, "Public")
    assert auth.user_roles(user) == {MANAGER_ROLE, "Public"}
    assert auth.is_calibration_manager(user)
    assert not auth.is_calibration_expert(user)


def test_user_roles_include_loaded_groups() -> None:
    user = FakeUser("erik", [FakeRole("Public")])
    user.groups = [FakeGroup([FakeRole(EXPERT_ROLE)])]  # type: ignore[attr-defined]
    assert auth.user_roles(user) == {"Public", EXPERT_ROLE}
    assert auth.is_calibration_expert(user)


def test_user_roles_of_simple_user() -> None:
    assert auth.user_roles(SimpleUser("admin", "ADMIN")) == {"ADMIN"}
    assert auth.user_roles(None) == frozenset()


@pytest.mark.parametrize(
    ("roles", "allowed"),
    [
        ((MANAGER_ROLE,), ROLE_ACTIONS[MANAGER_ROLE]),
        ((EXPERT_ROLE,), ROLE_ACTIONS[EXPERT_ROLE]),
        ((VIEWER_ROLE,), {ProductAction.READ}),
        (("Public",), set()),
    ],
)
def test_is_allowed_by_permissions(roles: tuple[str, ...], allowed: set[ProductAction]) -> None:
    perms: set[tuple[str, str]] = set()
    for role in roles:
        if role in ROLE_ACTIONS:
            perms |= auth.role_permissions(role)
    user = FakeUser("someone", [FakeRole(role) for role in roles], perms)
    assert {action for action in ProductAction if auth.is_allowed(user, action)} == allowed


def test_is_allowed_follows_permissions_not_names() -> None:
    # FAB gives Airflow's Admin role every permission, the product's included.
    admin = FakeUser("admin", [FakeRole("Admin")], set(auth.role_permissions(MANAGER_ROLE)))
    assert auth.is_allowed(admin, ProductAction.SIGN_OFF)
    assert not auth.is_calibration_manager(admin)
    stripped = FakeUser("mona", [FakeRole(MANAGER_ROLE)], set())
    assert not auth.is_allowed(stripped, ProductAction.SIGN_OFF)


def test_is_allowed_by_role_names_without_perms() -> None:
    user = SimpleUser("mona", MANAGER_ROLE)
    assert auth.is_allowed(user, ProductAction.SIGN_OFF)
    assert not auth.is_allowed(SimpleUser("vera", "VIEWER"), ProductAction.READ)
    assert not auth.is_allowed(None, ProductAction.READ)


def test_check_allowed_message() -> None:
    viewer = fab_user("vera", VIEWER_ROLE, "Public")
    auth.check_allowed(viewer, ProductAction.READ)
    with pytest.raises(PermissionDeniedError) as raised:
        auth.check_allowed(viewer, ProductAction.SIGN_OFF)
    message = str(raised.value)
    assert "'vera'" in message
    assert "Calibration Viewer" in message
    assert "may not sign off" in message
    assert "Calibration Manager" in message


def test_check_allowed_start_request_names_role() -> None:
    expert = fab_user("erik", EXPERT_ROLE)
    with pytest.raises(PermissionDeniedError) as raised:
        auth.check_allowed(expert, ProductAction.START_REQUEST)
    assert "may not start request; this needs the role Calibration Manager" in str(raised.value)


def test_can_rerun_own_calibration_by_login() -> None:
    expert = fab_user("erik", EXPERT_ROLE)
    directory = FakeDirectory({})
    auth.jira_username(expert, directory)
    assert auth.can_rerun(expert, "erik")
    assert not auth.can_rerun(expert, "someone.else")


def test_can_rerun_own_calibration_by_jira_username() -> None:
    expert = fab_user("erik", EXPERT_ROLE)
    auth.jira_username(expert, FakeDirectory({"erik": "erik.jira"}))
    assert auth.can_rerun(expert, "erik.jira")


def test_manager_and_viewer_cannot_rerun() -> None:
    assert not auth.can_rerun(fab_user("mona", MANAGER_ROLE), "mona")
    assert not auth.can_rerun(fab_user("vera", VIEWER_ROLE), "vera")


def test_jira_username_cached() -> None:
    directory = FakeDirectory({"erik": "erik.jira"})
    user = fab_user("erik", EXPERT_ROLE)
    assert auth.jira_username(user, directory) == "erik.jira"
    assert auth.jira_username("erik", directory) == "erik.jira"
    assert directory.lookups == ["erik"]
    auth.forget_jira_usernames()
    assert auth.jira_username("erik", directory) == "erik.jira"
    assert directory.lookups == ["erik", "erik"]


def test_jira_username_without_directory() -> None:
    config: dict[str, Any] = {"AUTH_TYPE": 1}
    assert auth.directory_client(config) is None
    ldap_without_attribute: dict[str, Any] = {"AUTH_TYPE": 2, "AUTH_LDAP_SERVER": "ldap://127.0.0.1:1"}
    assert auth.directory_client(ldap_without_attribute) is None


def test_user_login_missing() -> None:
    with pytest.raises(ValueError) as raised:
        auth.user_login(object())
    assert "has no username" in str(raised.value)
