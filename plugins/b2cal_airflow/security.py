"""Create the product's roles and local users, and log people in against a laboratory directory.

Run inside the Airflow environment after ``airflow db migrate``:

* ``python -m b2cal_airflow.security USERS_JSON`` creates the roles and the local users of the file,
  a list of ``{"username", "password", "roles", "email"}`` objects. Existing users get their roles
  and password updated, so running it again changes nothing else.
* ``python -m b2cal_airflow.security --roles-only`` only creates the roles and sets their
  permissions, which is all an installation with directory logins needs before the first login.

:class:`B2CalSecurityManager` is the FAB security manager that the generated ``webserver_config.py``
selects for LDAP logins (see ``b2cal.ldapconfig``).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from airflow.providers.fab.auth_manager.security_manager.override import FabAirflowSecurityManagerOverride
from flask import current_app, flash, has_request_context
from flask_appbuilder.const import AUTH_LDAP

from b2cal.ldapconfig import DirectoryClient, DirectoryError, DirectorySettings, normalize_dn
from b2cal_airflow.auth import (
    EXPERT_ROLE,
    MANAGER_ROLE,
    PRODUCT_DAG_IDS,
    PRODUCT_ROLES,
    VIEWER_ROLE,
    role_permissions,
)

log = logging.getLogger(__name__)

__all__ = [
    "EXPERT_ROLE",
    "MANAGER_ROLE",
    "PRODUCT_ROLES",
    "VIEWER_ROLE",
    "B2CalSecurityManager",
    "ensure_users",
    "main",
    "sync_product_roles",
]

DIRECTORY_DOWN_MESSAGE = (
    "The laboratory directory did not respond, so your password could not be checked. "
    "Try again in a few minutes, and tell the Airflow operators if this persists."
)


def sync_product_roles(security: Any, dag_ids: Iterable[str] = PRODUCT_DAG_IDS) -> dict[str, list[str]]:
    """Create the product roles and give each exactly its permissions; return the changes per role.

    Permissions that an administrator added to a product role by hand are removed again, because
    the product's pages and the sign-off rely on these roles meaning the same everywhere.
    """
    dag_ids = tuple(dag_ids)
    changes: dict[str, list[str]] = {}
    for name in PRODUCT_ROLES:
        role = security.find_role(name) or security.add_role(name)
        wanted = role_permissions(name, dag_ids)
        current = {
            (permission.action.name, permission.resource.name)
            for permission in role.permissions
            if permission.action and permission.resource
        }
        changed = []
        for action, resource in sorted(wanted - current):
            security.add_permission_to_role(role, security.create_permission(action, resource))
            changed.append(f"+{action} on {resource}")
        for action, resource in sorted(current - wanted):
            security.remove_permission_from_role(role, security.get_permission(action, resource))
            changed.append(f"-{action} on {resource}")
        if changed:
            log.info("Role %s: %s", name, ", ".join(changed))
        changes[name] = changed
    return changes


def ensure_users(users: list[dict]) -> list[str]:
    """Create the product roles and the given users; return the names of the users created."""
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    created = []
    with get_application_builder() as appbuilder:
        security = appbuilder.sm
        sync_product_roles(security)
        for user in users:
            roles = []
            for name in user["roles"]:
                role = security.find_role(name)
                if role is None:
                    raise SystemExit(f"role {name!r} of user {user['username']!r} does not exist")
                roles.append(role)
            existing = security.find_user(username=user["username"])
            if existing is None:
                security.add_user(
                    username=user["username"],
                    first_name=user["username"],
                    last_name="b2cal",
                    email=user.get("email") or f"{user['username']}@example.invalid",
                    role=roles,
                    password=user["password"],
                )
                created.append(user["username"])
            else:
                existing.roles = roles
                security.update_user(existing)
                security.reset_password(existing.id, user["password"])
    return created


def ensure_roles() -> dict[str, list[str]]:
    """Create the product roles and set their permissions, without touching any user."""
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    with get_application_builder() as appbuilder:
        return sync_product_roles(appbuilder.sm)


class B2CalSecurityManager(FabAirflowSecurityManagerOverride):
    """FAB's security manager with bounded LDAP waits, a distinct response when the directory is down,
    and group DNs compared without regard to case or spacing.

    FAB reports every failed LDAP login as invalid credentials. This class checks, after a failure,
    whether the directory responds at all. If not, the login page shows :data:`DIRECTORY_DOWN_MESSAGE`
    and ``POST /auth/token`` returns 503 instead of 401, unless the credentials belong to a local
    account in FAB's user table, which then logs in as usual.
    """

    def __init__(self, appbuilder: Any) -> None:
        super().__init__(appbuilder)
        if current_app.config.get("AUTH_TYPE") == AUTH_LDAP:
            apply_ldap_timeouts(float(current_app.config.get("B2CAL_LDAP_TIMEOUT") or 10.0))

    def auth_user_ldap(self, username: str, password: str, rotate_session_id: bool = True) -> Any:
        """Log in against the directory; tell a directory outage apart from wrong credentials."""
        user = super().auth_user_ldap(username, password, rotate_session_id=rotate_session_id)
        if user is not None:
            forget_cached_user(user.id)
            log.info("LDAP login of %s with roles %s", username, sorted(role.name for role in user.roles))
            return user
        if not username:
            return None
        problem = directory_problem(current_app.config)
        if problem is None:
            return None
        log.error("LDAP login of %s failed because the directory cannot be used: %s", username, problem)
        if has_request_context():
            flash(DIRECTORY_DOWN_MESSAGE, "danger")
            return None
        local_user = self.auth_user_db(username, password, rotate_session_id=False)
        if local_user is not None:
            log.warning("Local account %s logged in while the directory is unavailable", username)
            return local_user
        from fastapi import HTTPException, status

        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"The credentials could not be checked: {problem}. Try again later.",
        )

    def get_roles_from_keys(self, role_keys: list[str]) -> set[Any]:
        """Map directory group DNs to roles, comparing DNs without regard to case or spacing."""
        if self.auth_type != AUTH_LDAP:
            return super().get_roles_from_keys(role_keys)
        keys = {normalize_dn(key) for key in role_keys}
        roles = set()
        for group, role_names in self.auth_roles_mapping.items():
            if normalize_dn(group) not in keys:
                continue
            for role_name in role_names:
                role = self.find_role(role_name)
                if role is None:
                    log.warning(
                        "Role %s of group %s in AUTH_ROLES_MAPPING does not exist; run "
                        "`python -m b2cal_airflow.security --roles-only`",
                        role_name,
                        group,
                    )
                    continue
                roles.add(role)
        return roles


def apply_ldap_timeouts(seconds: float) -> None:
    """Bound how long python-ldap waits to connect and for each response, on every connection."""
    import ldap

    ldap.set_option(ldap.OPT_NETWORK_TIMEOUT, seconds)
    ldap.set_option(ldap.OPT_TIMEOUT, seconds)


def directory_problem(config: Any) -> str | None:
    """Return why the directory of the FAB settings cannot be used, or None when it responds."""
    import ldap

    try:
        settings = DirectorySettings.from_fab_config(config)
        DirectoryClient(settings, str(config.get("AUTH_LDAP_BIND_PASSWORD") or "")).probe()
    except DirectoryError as exc:
        return str(exc)
    except ldap.LDAPError:
        # Any other error, such as a rejected anonymous bind, shows that the directory is up.
        return None
    return None


def forget_cached_user(user_id: int) -> None:
    """Drop the API server's cached copy of a user so that roles synced at login apply at once.

    The FAB auth manager caches users by id for ``[fab] cache_ttl`` seconds (30 by default) in each
    process. Other API server processes keep their copy until it expires.
    """
    from airflow.providers.fab.auth_manager.fab_auth_manager import FabAuthManager

    try:
        FabAuthManager.cache.pop(user_id, None)
    except KeyError:  # expired between the lookup and the removal
        pass


def main(argv: list[str] | None = None) -> int:
    """Apply the users file named on the command line, or only the roles with ``--roles-only``."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--roles-only"]:
        changes = ensure_roles()
        changed = sum(len(items) for items in changes.values())
        print(f"b2cal roles ready: {', '.join(changes)}; permissions changed: {changed}")
        return 0
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m b2cal_airflow.security USERS_JSON | --roles-only", file=sys.stderr)
        return 2
    users = json.loads(Path(args[0]).read_text())
    created = ensure_users(users)
    print(f"b2cal roles ready; users created: {', '.join(created) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
