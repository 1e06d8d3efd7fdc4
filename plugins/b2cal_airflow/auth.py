"""Roles, permission sets and user checks of the product, on top of Airflow's FAB auth manager.

The product's three roles (``b2cal.roles``) become FAB roles with two kinds of permissions:

* Airflow's own permissions, scoped to the product's DAGs. Every role reads them. Only managers
  may trigger, cancel and clear runs and respond to human-in-the-loop tasks, so the ``sign_off``
  approval is a manager's decision. Experts get no Airflow edit rights, because with them
  they could also mark the ``sign_off`` task as successful. A rerun of an expert's own
  calibration is a product permission instead, checked by :func:`can_rerun`; no page offers it yet.
  Comments go through the bucket page, which checks ``b2cal Comments``.
* Permissions on the product's own resources (``b2cal Requests``, ``b2cal Sign-off``, ...), checked by
  the calibration pages with :func:`is_allowed`.

The helpers take the user object that ``get_auth_manager().get_user_from_token()`` returns: a FAB
``User`` with ``roles`` and ``perms``. Objects without ``perms`` fall back to the role names.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from b2cal.roles import (
    EXPERT_ROLE,
    MANAGER_ROLE,
    PRODUCT_ROLES,
    ROLE_ACTIONS,
    VIEWER_ROLE,
    ProductAction,
    actions_of,
)

log = logging.getLogger(__name__)

__all__ = [
    "EXPERT_ROLE",
    "MANAGER_ROLE",
    "PRODUCT_DAG_IDS",
    "PRODUCT_ROLES",
    "VIEWER_ROLE",
    "PermissionDeniedError",
    "ProductAction",
    "airflow_permissions",
    "can_rerun",
    "check_allowed",
    "is_allowed",
    "is_calibration_expert",
    "is_calibration_manager",
    "jira_username",
    "role_permissions",
    "user_login",
    "user_roles",
]

PRODUCT_DAG_IDS = (
    "b2cal_processing_request",
    "b2cal_run_collection",
    "b2cal_skim_replication",
    "b2cal_release_discovery",
    "b2cal_bucket_inventory",
    "b2cal_deadline_reminders",
)

# FAB action and resource names, as in airflow.providers.fab.www.security.permissions (FAB provider
# 3.10); spelled out so that importing this module needs no Flask application.
CAN_READ = "can_read"
CAN_CREATE = "can_create"
CAN_EDIT = "can_edit"
MENU_ACCESS = "menu_access"
DAG_PREFIX = "DAG:"
RESOURCE_DAGS = "DAGs"
RESOURCE_DAG_RUN = "DAG Runs"
RESOURCE_TASK_INSTANCE = "Task Instances"
RESOURCE_HITL_DETAIL = "HITL Detail"

RESOURCE_REQUESTS = "b2cal Requests"
RESOURCE_SIGN_OFF = "b2cal Sign-off"
RESOURCE_SITES = "b2cal Sites"
RESOURCE_COMMENTS = "b2cal Comments"
RESOURCE_RERUNS = "b2cal Calibration Reruns"
RESOURCE_TICKETS = "b2cal Tickets"

ACTION_PERMISSIONS: dict[ProductAction, tuple[str, str]] = {
    ProductAction.READ: (CAN_READ, RESOURCE_REQUESTS),
    ProductAction.START_REQUEST: (CAN_CREATE, RESOURCE_REQUESTS),
    ProductAction.CANCEL_REQUEST: (CAN_EDIT, RESOURCE_REQUESTS),
    ProductAction.SIGN_OFF: (CAN_CREATE, RESOURCE_SIGN_OFF),
    ProductAction.EDIT_SITES: (CAN_EDIT, RESOURCE_SITES),
    ProductAction.COMMENT: (CAN_CREATE, RESOURCE_COMMENTS),
    ProductAction.RERUN_OWN_CALIBRATION: (CAN_CREATE, RESOURCE_RERUNS),
    ProductAction.CLOSE_TICKET: (CAN_EDIT, RESOURCE_TICKETS),
}

# Reading the product's DAGs, their runs, task instances, logs and approval requests, and seeing the
# menus and the plugin's pages. The DAG-level check keeps these to the DAGs in PRODUCT_DAG_IDS.
_READ_PERMISSIONS = frozenset(
    {
        (CAN_READ, "Website"),
        (CAN_READ, "My Profile"),
        (CAN_READ, "Plugins"),
        (CAN_READ, RESOURCE_DAG_RUN),
        (CAN_READ, RESOURCE_TASK_INSTANCE),
        (CAN_READ, "Task Logs"),
        (CAN_READ, "XComs"),
        (CAN_READ, RESOURCE_HITL_DETAIL),
        (CAN_READ, "DAG Code"),
        (CAN_READ, "DAG Dependencies"),
        (CAN_READ, "DAG Versions"),
        (CAN_READ, "DAG Warnings"),
        (CAN_READ, "Audit Logs"),
        (MENU_ACCESS, RESOURCE_DAGS),
        (MENU_ACCESS, RESOURCE_DAG_RUN),
        (MENU_ACCESS, RESOURCE_TASK_INSTANCE),
        (MENU_ACCESS, RESOURCE_HITL_DETAIL),
        (MENU_ACCESS, "Audit Logs"),
        (MENU_ACCESS, "Browse"),
        (MENU_ACCESS, "Plugins"),
    }
)
# Triggering (create run), cancelling (edit run), clearing task instances and responding to the sign-off.
# Airflow also demands can_edit on the DAG itself for each of them.
_OPERATE_PERMISSIONS = frozenset(
    {
        (CAN_CREATE, RESOURCE_DAG_RUN),
        (CAN_EDIT, RESOURCE_DAG_RUN),
        (CAN_EDIT, RESOURCE_TASK_INSTANCE),
        (CAN_EDIT, RESOURCE_HITL_DETAIL),
    }
)


class PermissionDeniedError(PermissionError):
    """A user tried a product action that none of their roles allows."""


def dag_resource(dag_id: str) -> str:
    """Return FAB's resource name for one DAG, e.g. ``DAG:b2cal_processing_request``."""
    return f"{DAG_PREFIX}{dag_id}"


def airflow_permissions(role: str, dag_ids: Iterable[str] = PRODUCT_DAG_IDS) -> frozenset[tuple[str, str]]:
    """Return Airflow's own ``(action, resource)`` permissions of a product role."""
    if role not in ROLE_ACTIONS:
        raise ValueError(f"role {role!r} is not a product role; use one of {list(PRODUCT_ROLES)}")
    dag_ids = tuple(dag_ids)
    permissions = set(_READ_PERMISSIONS)
    permissions |= {(CAN_READ, dag_resource(dag_id)) for dag_id in dag_ids}
    if role == MANAGER_ROLE:
        permissions |= _OPERATE_PERMISSIONS
        permissions |= {(CAN_EDIT, dag_resource(dag_id)) for dag_id in dag_ids}
    return frozenset(permissions)


def role_permissions(role: str, dag_ids: Iterable[str] = PRODUCT_DAG_IDS) -> frozenset[tuple[str, str]]:
    """Return every ``(action, resource)`` permission of a product role: Airflow's and the product's."""
    product = {ACTION_PERMISSIONS[action] for action in ROLE_ACTIONS[role]}
    return airflow_permissions(role, dag_ids) | frozenset(product)


def user_login(user: Any) -> str:
    """Return the login name of an Airflow user."""
    name = getattr(user, "username", None)
    if not name and hasattr(user, "get_name"):
        name = user.get_name()
    if not name:
        raise ValueError(f"the user object {user!r} has no username; pass the user from get_user_from_token")
    return str(name)


def user_roles(user: Any) -> frozenset[str]:
    """Return the names of a user's roles, including roles given through FAB groups."""
    if user is None:
        return frozenset()
    names: set[str] = set()
    for role in getattr(user, "roles", None) or ():
        names.add(str(getattr(role, "name", role)))
    # A user from get_user_from_token is detached from its database session and FAB loads groups
    # lazily, so reading them would raise. Groups count only when they are already loaded.
    for group in getattr(user, "__dict__", {}).get("groups") or ():
        for role in getattr(group, "roles", None) or ():
            names.add(str(getattr(role, "name", role)))
    single = getattr(user, "role", None)
    if isinstance(single, str) and single:
        names.add(single)
    return frozenset(names)


def is_calibration_manager(user: Any) -> bool:
    """Return whether the user has the Calibration Manager role."""
    return MANAGER_ROLE in user_roles(user)


def is_calibration_expert(user: Any) -> bool:
    """Return whether the user has the Calibration Expert role."""
    return EXPERT_ROLE in user_roles(user)


def is_allowed(user: Any, action: ProductAction) -> bool:
    """Return whether the user may take a product action.

    A FAB user is checked against its permissions, as FAB's ``is_authorized_custom_view`` does, so
    Airflow's Admin role (which FAB gives every permission) passes as well. Other user objects are
    checked against the product's role table by role name.
    """
    if user is None:
        return False
    permissions = getattr(user, "perms", None)
    if permissions is not None:
        return ACTION_PERMISSIONS[action] in permissions
    return action in actions_of(user_roles(user))


def check_allowed(user: Any, action: ProductAction) -> None:
    """Raise PermissionDeniedError unless the user may take the product action."""
    if is_allowed(user, action):
        return
    roles = ", ".join(sorted(user_roles(user))) or "none"
    needed = [role for role, actions in ROLE_ACTIONS.items() if action in actions]
    login = user_login(user) if user is not None else "anonymous"
    raise PermissionDeniedError(
        f"user {login!r} (roles: {roles}) may not {action.value.replace('_', ' ')}; "
        f"this needs the role {' or '.join(needed)}"
    )


def can_rerun(user: Any, calibration_expert: str) -> bool:
    """Return whether the user may rerun a calibration whose catalogue expert is ``calibration_expert``.

    Experts rerun only their own calibrations: the expert named in the catalogue must be the user's
    login or the user's Jira username.
    """
    if not is_allowed(user, ProductAction.RERUN_OWN_CALIBRATION):
        return False
    login = user_login(user)
    if calibration_expert == login:
        return True
    return calibration_expert == jira_username(user)


# Jira usernames change rarely; a short cache keeps the pages from searching the directory for
# every row they render.
JIRA_CACHE_SECONDS = 600.0
_jira_cache: dict[str, tuple[float, str]] = {}
_jira_cache_lock = threading.Lock()


def jira_username(user: Any, directory: Any | None = None) -> str:
    """Return the user's Jira username: the directory's attribute where configured, else the login.

    :param user: the Airflow user, or a login name.
    :param directory: an object with ``jira_username(login)``, such as ``b2cal.ldapconfig.DirectoryClient``;
        by default the one built from the FAB settings of this Airflow installation, or none when
        logins do not go through a directory.
    :raises b2cal.ldapconfig.DirectoryUnavailableError: when the directory does not respond.
    """
    login = user if isinstance(user, str) else user_login(user)
    now = time.monotonic()
    with _jira_cache_lock:
        cached = _jira_cache.get(login)
    if cached is not None and now - cached[0] < JIRA_CACHE_SECONDS:
        return cached[1]
    client = directory if directory is not None else directory_client()
    name = client.jira_username(login) if client is not None else login
    with _jira_cache_lock:
        _jira_cache[login] = (now, name)
    return name


def forget_jira_usernames() -> None:
    """Empty the Jira username cache, e.g. after the directory changed."""
    with _jira_cache_lock:
        _jira_cache.clear()


def directory_client(config: Any | None = None) -> Any | None:
    """Build a directory client from the FAB settings, or return None for logins without LDAP.

    :param config: a mapping of FAB settings. The default is the running FAB application's settings,
        or the file named by ``[fab] config_file`` when no application runs in this process (in a task).
    """
    from b2cal.ldapconfig import AUTH_LDAP, DirectoryClient, DirectorySettings

    config = fab_config() if config is None else config
    if config.get("AUTH_TYPE") != AUTH_LDAP or not config.get("B2CAL_LDAP_JIRA_USERNAME_FIELD"):
        return None
    settings = DirectorySettings.from_fab_config(config)
    return DirectoryClient(settings, str(config.get("AUTH_LDAP_BIND_PASSWORD", "")))


def fab_config() -> Any:
    """Return the FAB settings of this Airflow installation."""
    from flask import current_app, has_app_context

    if has_app_context():
        return current_app.config
    from airflow.api_fastapi.app import get_auth_manager

    try:
        flask_app = getattr(get_auth_manager(), "flask_app", None)
    except RuntimeError:  # no API server in this process, so no auth manager either
        flask_app = None
    if flask_app is not None:
        return flask_app.config
    return _config_from_file()


def _config_from_file() -> Any:
    from pathlib import Path

    from airflow.configuration import AIRFLOW_HOME, conf
    from flask import Config

    path = Path(conf.get("fab", "config_file", fallback="") or Path(AIRFLOW_HOME) / "webserver_config.py")
    config = Config(str(path.parent))
    if path.is_file():
        config.from_pyfile(str(path))
    else:
        log.warning("FAB config file %s not found; Jira usernames fall back to logins", path)
    return config
