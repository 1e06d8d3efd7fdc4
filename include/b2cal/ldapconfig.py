"""Build the FAB auth manager's login settings from a plain mapping.

Airflow's FAB auth manager reads its login settings from ``webserver_config.py`` (the file named by
``[fab] config_file``). This module turns a small mapping, for example a TOML table, into those
settings and renders the file. Two modes exist:

* ``database``: FAB's own user table with local passwords (the demo's default);
* ``ldap``: logins against a laboratory directory. A read-only service account searches for the
  user, the user's password is checked by binding as the user, and the directory groups listed for
  managers, experts and viewers become the product roles, synchronised at every login.

The bind password never appears in the rendered file. The file reads it at start-up from the
environment variable or file named in the mapping.

The module also looks up a person's Jira username in the directory, so that ticket assignment and
login use the same identity. It needs python-ldap only for that look-up, and imports no Airflow.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pprint
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from b2cal.roles import ROLE_KEYS

# Values of flask_appbuilder.const.AUTH_DB and AUTH_LDAP (flask-appbuilder 4 and 5).
AUTH_DB = 1
AUTH_LDAP = 2
# FAB gives every self-registered user this role in addition to the mapped ones; Airflow's "Public"
# role has no permissions, so a directory login grants only what the group mapping grants.
REGISTRATION_ROLE = "Public"
DEFAULT_BIND_PASSWORD_ENV = "B2CAL_LDAP_BIND_PASSWORD"
LOOPBACK_HOSTS = {"localhost"}

_LDAP_KEYS = {
    "url",
    "bind_dn",
    "bind_password_env",
    "bind_password_file",
    "user_search_base",
    "user_filter",
    "uid_attribute",
    "group_attribute",
    "first_name_attribute",
    "last_name_attribute",
    "email_attribute",
    "jira_username_attribute",
    "start_tls",
    "ca_cert_file",
    "require_certificate",
    "allow_plaintext",
    "timeout_seconds",
    "restrict_to_groups",
    "groups",
    "extra_roles",
}


class DirectoryError(RuntimeError):
    """The directory cannot be used for logins or look-ups."""


class DirectoryUnavailableError(DirectoryError):
    """The directory did not respond: connection refused, timed out or TLS failed."""


@dataclass(frozen=True)
class DirectorySettings:
    """Where the laboratory directory is and how its people and groups map to product roles.

    :param url: ``ldap://host:port`` or ``ldaps://host:port``.
    :param bind_dn: DN of the read-only service account that searches for users.
    :param bind_password_env: environment variable that contains the service account's password.
    :param bind_password_file: file that holds the password instead (first line, whitespace stripped).
    :param user_search_base: DN under which people are searched.
    :param user_filter: LDAP filter that every person entry matches, e.g. ``(objectClass=inetOrgPerson)``.
    :param groups: product role key (``managers``, ``experts``, ``viewers``) to directory group DNs.
    :param extra_roles: directory group DN to further Airflow role names, e.g. ``["Admin"]``.
    :param jira_username_attribute: attribute with the person's Jira username where it differs from
        the login; people without it keep their login as Jira username.
    :param start_tls: upgrade an ``ldap://`` connection with StartTLS.
    :param ca_cert_file: PEM file of the CA that signed the directory's certificate.
    :param require_certificate: reject a directory certificate that does not verify.
    :param allow_plaintext: accept ``ldap://`` without StartTLS to a host other than this machine.
    :param timeout_seconds: seconds to wait for a connection to the directory or for one response.
    :param restrict_to_groups: let only members of a mapped group log in.
    """

    url: str
    bind_dn: str
    user_search_base: str
    groups: Mapping[str, tuple[str, ...]]
    bind_password_env: str | None = DEFAULT_BIND_PASSWORD_ENV
    bind_password_file: str | None = None
    user_filter: str = "(objectClass=inetOrgPerson)"
    uid_attribute: str = "uid"
    group_attribute: str = "memberOf"
    first_name_attribute: str = "givenName"
    last_name_attribute: str = "sn"
    email_attribute: str = "mail"
    jira_username_attribute: str | None = None
    start_tls: bool = False
    ca_cert_file: str | None = None
    require_certificate: bool = True
    allow_plaintext: bool = False
    timeout_seconds: float = 10.0
    restrict_to_groups: bool = True
    extra_roles: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> DirectorySettings:
        """Validate a mapping (e.g. the ``[auth.ldap]`` table of a TOML file) and build the settings."""
        unknown = sorted(set(mapping) - _LDAP_KEYS)
        if unknown:
            raise ValueError(f"unknown LDAP setting(s) {unknown}; the accepted keys are {sorted(_LDAP_KEYS)}")

        for key in ("url", "bind_dn", "user_search_base", "groups"):
            if not mapping.get(key):
                raise ValueError(
                    f"the LDAP setting {key!r} is missing; see the operator's guide for an example"
                )

        groups = _parse_groups(mapping["groups"])
        extra_roles = {
            str(dn): _as_tuple(roles, f"extra_roles[{dn!r}]")
            for dn, roles in (mapping.get("extra_roles") or {}).items()
        }

        password_env = mapping.get("bind_password_env")
        password_file = mapping.get("bind_password_file")
        if password_env and password_file:
            raise ValueError("set either 'bind_password_env' or 'bind_password_file', not both")
        if not password_file and not password_env:
            password_env = DEFAULT_BIND_PASSWORD_ENV

        settings = cls(
            url=str(mapping["url"]),
            bind_dn=str(mapping["bind_dn"]),
            user_search_base=str(mapping["user_search_base"]),
            groups=groups,
            bind_password_env=password_env or None,
            bind_password_file=str(password_file) if password_file else None,
            user_filter=str(mapping.get("user_filter", cls.user_filter)),
            uid_attribute=str(mapping.get("uid_attribute", cls.uid_attribute)),
            group_attribute=str(mapping.get("group_attribute", cls.group_attribute)),
            first_name_attribute=str(mapping.get("first_name_attribute", cls.first_name_attribute)),
            last_name_attribute=str(mapping.get("last_name_attribute", cls.last_name_attribute)),
            email_attribute=str(mapping.get("email_attribute", cls.email_attribute)),
            jira_username_attribute=mapping.get("jira_username_attribute") or None,
            start_tls=_as_bool(mapping, "start_tls", False),
            ca_cert_file=str(mapping["ca_cert_file"]) if mapping.get("ca_cert_file") else None,
            require_certificate=_as_bool(mapping, "require_certificate", True),
            allow_plaintext=_as_bool(mapping, "allow_plaintext", False),
            timeout_seconds=_as_float(mapping, "timeout_seconds", cls.timeout_seconds),
            restrict_to_groups=_as_bool(mapping, "restrict_to_groups", True),
            extra_roles=extra_roles,
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ValueError when the settings cannot work or would send passwords in clear text."""
        parts = urlsplit(self.url)
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
            raise ValueError(f"LDAP url {self.url!r} is invalid; use ldap://host:port or ldaps://host:port")
        if self.start_tls and parts.scheme == "ldaps":
            raise ValueError(f"LDAP url {self.url!r} already uses TLS; set start_tls = false or use ldap://")
        if parts.scheme == "ldap" and not self.start_tls and not self.allow_plaintext:
            if not _is_loopback(parts.hostname):
                raise ValueError(
                    f"LDAP url {self.url!r} without StartTLS sends passwords in clear text; "
                    "set start_tls = true, use ldaps://, or set allow_plaintext = true"
                )
        if not (self.user_filter.startswith("(") and self.user_filter.endswith(")")):
            raise ValueError(f"LDAP user_filter {self.user_filter!r} must be one filter in parentheses")
        if self.timeout_seconds <= 0:
            raise ValueError(f"LDAP timeout_seconds {self.timeout_seconds!r} must be positive")
        if self.ca_cert_file and not Path(self.ca_cert_file).is_file():
            raise ValueError(
                f"LDAP ca_cert_file {self.ca_cert_file!r} does not exist; give the CA's PEM file"
            )

    @property
    def uses_tls(self) -> bool:
        """Whether the connection is encrypted, by ldaps:// or StartTLS."""
        return self.start_tls or urlsplit(self.url).scheme == "ldaps"

    def bind_password(self, environ: Mapping[str, str] | None = None) -> str:
        """Read the service account's password from its environment variable or file."""
        environ = os.environ if environ is None else environ
        if self.bind_password_file:
            path = Path(self.bind_password_file)
            if not path.is_file():
                raise ValueError(
                    f"LDAP bind_password_file {str(path)!r} does not exist; create it or fix the path"
                )
            lines = path.read_text().splitlines()
            password = lines[0].strip() if lines else ""
            if not password:
                raise ValueError(f"LDAP bind_password_file {str(path)!r} is empty; write the password to it")
            return password
        name = self.bind_password_env or DEFAULT_BIND_PASSWORD_ENV
        password = environ.get(name, "")
        if not password:
            raise ValueError(
                f"the environment variable {name} with the LDAP bind password is not set; set it for every "
                "Airflow component, or use bind_password_file"
            )
        return password

    def roles_mapping(self) -> dict[str, list[str]]:
        """Return FAB's ``AUTH_ROLES_MAPPING``: directory group DN to role names."""
        mapping: dict[str, list[str]] = {}
        for key, dns in self.groups.items():
            for dn in dns:
                mapping.setdefault(dn, []).append(ROLE_KEYS[key])
        for dn, roles in self.extra_roles.items():
            mapping.setdefault(dn, []).extend(role for role in roles if role not in mapping.get(dn, []))
        return mapping

    def search_filter(self) -> str:
        """Return FAB's ``AUTH_LDAP_SEARCH_FILTER``, limited to members of a mapped group when asked."""
        if not self.restrict_to_groups:
            return self.user_filter
        dns = sorted({dn for dns in self.groups.values() for dn in dns} | set(self.extra_roles))
        members = "".join(f"({self.group_attribute}={escape_filter_value(dn)})" for dn in dns)
        return f"(&{self.user_filter}(|{members}))"

    def fab_settings(self, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Return the ``webserver_config`` settings, with the bind password read now."""
        settings = self.fab_settings_without_password()
        settings["AUTH_LDAP_BIND_PASSWORD"] = self.bind_password(environ)
        return settings

    def fab_settings_without_password(self) -> dict[str, Any]:
        """Return the ``webserver_config`` settings except ``AUTH_LDAP_BIND_PASSWORD``."""
        return {
            "AUTH_TYPE": AUTH_LDAP,
            "AUTH_LDAP_SERVER": self.url,
            "AUTH_LDAP_USE_TLS": self.start_tls,
            "AUTH_LDAP_TLS_DEMAND": self.uses_tls and self.require_certificate,
            "AUTH_LDAP_ALLOW_SELF_SIGNED": self.uses_tls and not self.require_certificate,
            "AUTH_LDAP_TLS_CACERTFILE": self.ca_cert_file or "",
            "AUTH_LDAP_BIND_USER": self.bind_dn,
            "AUTH_LDAP_SEARCH": self.user_search_base,
            "AUTH_LDAP_SEARCH_FILTER": self.search_filter(),
            "AUTH_LDAP_UID_FIELD": self.uid_attribute,
            "AUTH_LDAP_GROUP_FIELD": self.group_attribute,
            "AUTH_LDAP_FIRSTNAME_FIELD": self.first_name_attribute,
            "AUTH_LDAP_LASTNAME_FIELD": self.last_name_attribute,
            "AUTH_LDAP_EMAIL_FIELD": self.email_attribute,
            "AUTH_USER_REGISTRATION": True,
            "AUTH_USER_REGISTRATION_ROLE": REGISTRATION_ROLE,
            "AUTH_ROLES_MAPPING": self.roles_mapping(),
            "AUTH_ROLES_SYNC_AT_LOGIN": True,
            "B2CAL_LDAP_TIMEOUT": self.timeout_seconds,
            "B2CAL_LDAP_JIRA_USERNAME_FIELD": self.jira_username_attribute or "",
        }

    @classmethod
    def from_fab_config(cls, config: Mapping[str, Any]) -> DirectorySettings:
        """Rebuild the settings from a loaded ``webserver_config`` (for look-ups inside Airflow)."""
        if config.get("AUTH_TYPE") != AUTH_LDAP:
            raise ValueError(f"AUTH_TYPE is {config.get('AUTH_TYPE')!r}, not AUTH_LDAP ({AUTH_LDAP})")
        url = str(config["AUTH_LDAP_SERVER"])
        uses_tls = bool(config.get("AUTH_LDAP_USE_TLS")) or url.startswith("ldaps://")
        return cls(
            url=url,
            bind_dn=str(config.get("AUTH_LDAP_BIND_USER", "")),
            user_search_base=str(config.get("AUTH_LDAP_SEARCH", "")),
            groups={},
            bind_password_env=None,
            user_filter=str(config.get("AUTH_LDAP_SEARCH_FILTER") or "(objectClass=*)"),
            uid_attribute=str(config.get("AUTH_LDAP_UID_FIELD", "uid")),
            group_attribute=str(config.get("AUTH_LDAP_GROUP_FIELD", "memberOf")),
            jira_username_attribute=config.get("B2CAL_LDAP_JIRA_USERNAME_FIELD") or None,
            start_tls=bool(config.get("AUTH_LDAP_USE_TLS")),
            ca_cert_file=config.get("AUTH_LDAP_TLS_CACERTFILE") or None,
            require_certificate=uses_tls and not config.get("AUTH_LDAP_ALLOW_SELF_SIGNED"),
            allow_plaintext=True,
            timeout_seconds=float(config.get("B2CAL_LDAP_TIMEOUT", 10.0)),
            restrict_to_groups=False,
        )


@dataclass(frozen=True)
class AuthSettings:
    """Login mode of the product: FAB's local user table, or a laboratory directory."""

    mode: str = "database"
    ldap: DirectorySettings | None = None

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> AuthSettings:
        """Build the settings from ``{"mode": "database"}`` or ``{"mode": "ldap", "ldap": {...}}``."""
        mode = str(mapping.get("mode", "database"))
        if mode == "database":
            return cls(mode=mode)
        if mode != "ldap":
            raise ValueError(f"auth mode {mode!r} is not supported; use 'database' or 'ldap'")
        table = mapping.get("ldap")
        if not isinstance(table, Mapping):
            raise ValueError("auth mode 'ldap' needs an 'ldap' table with the directory settings")
        return cls(mode=mode, ldap=DirectorySettings.from_mapping(table))


def load_auth_settings(path: Path) -> AuthSettings:
    """Read the ``[auth]`` table of a TOML file, or the top level of a JSON file, into settings."""
    import json
    import tomllib

    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    return AuthSettings.from_mapping(data.get("auth", data))


def render_webserver_config(settings: AuthSettings, source: str = "a b2cal auth mapping") -> str:
    """Render ``webserver_config.py`` for the FAB auth manager; the bind password is read at import."""
    header = (
        f'"""FAB login settings of b2cal, generated from {source}.\n\n'
        'Regenerate this file with ``python -m b2cal.ldapconfig`` instead of editing it.\n"""\n\n'
    )
    if settings.mode == "database" or settings.ldap is None:
        return (
            header
            + "from flask_appbuilder.const import AUTH_DB\n\n"
            + "AUTH_TYPE = AUTH_DB\nWTF_CSRF_ENABLED = True\n"
        )
    ldap = settings.ldap
    lines = [
        header.rstrip("\n"),
        "",
        "from flask_appbuilder.const import AUTH_LDAP",
        "",
        "from b2cal.ldapconfig import read_bind_password",
        "from b2cal_airflow.security import B2CalSecurityManager",
        "",
        "SECURITY_MANAGER_CLASS = B2CalSecurityManager",
        "WTF_CSRF_ENABLED = True",
    ]
    for key, value in ldap.fab_settings_without_password().items():
        if key == "AUTH_TYPE":
            lines.append("AUTH_TYPE = AUTH_LDAP")
        else:
            lines.append(f"{key} = {pprint.pformat(value, width=100, sort_dicts=True)}")
    env = ldap.bind_password_env if not ldap.bind_password_file else None
    lines.append(
        f"AUTH_LDAP_BIND_PASSWORD = read_bind_password(env={env!r}, file={ldap.bind_password_file!r})"
    )
    return "\n".join(lines) + "\n"


def read_bind_password(env: str | None = None, file: str | None = None) -> str:
    """Read the LDAP bind password for ``webserver_config.py`` from a file or an environment variable."""
    probe = DirectorySettings(
        url="ldap://localhost",
        bind_dn="",
        user_search_base="",
        groups={},
        bind_password_env=env,
        bind_password_file=file,
    )
    return probe.bind_password()


def normalize_dn(dn: str) -> str:
    """Return a DN in a form for comparison: no spaces around separators, lower case.

    Group DNs use attributes with case-insensitive matching (``cn``, ``ou``, ``dc``), so two
    spellings of the same group compare equal after this.
    """
    parts = []
    current = []
    escaped = False
    for char in dn:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    normalized = []
    for part in parts:
        attribute, _, value = part.partition("=")
        normalized.append(f"{attribute.strip().lower()}={value.strip().lower()}")
    return ",".join(normalized)


def escape_filter_value(value: str) -> str:
    """Escape a value for an LDAP search filter (RFC 4515)."""
    replacements = {"\\": r"\5c", "*": r"\2a", "(": r"\28", ")": r"\29", "\x00": r"\00"}
    return "".join(replacements.get(char, char) for char in value)


def jira_username_from_entry(attributes: Mapping[str, list[bytes]], attribute: str | None, login: str) -> str:
    """Return the Jira username stored in a directory entry, or the login when there is none."""
    if not attribute:
        return login
    values = attributes.get(attribute) or []
    for raw in values:
        name = raw.decode("utf-8").strip()
        if name:
            return name
    return login


class DirectoryClient:
    """Search the directory as the service account (python-ldap, imported on first use)."""

    def __init__(self, settings: DirectorySettings, bind_password: str) -> None:
        self.settings = settings
        self._bind_password = bind_password

    def find_person(self, login: str, attributes: list[str]) -> tuple[str, dict[str, list[bytes]]] | None:
        """Return the DN and the requested attributes of the person with this login, or None."""
        import ldap
        import ldap.filter

        connection = self._connect(ldap)
        try:
            query = f"(&{self.settings.user_filter}({self.settings.uid_attribute}="
            query += f"{ldap.filter.escape_filter_chars(login)}))"
            results = connection.search_s(
                self.settings.user_search_base, ldap.SCOPE_SUBTREE, query, attributes
            )
        except (ldap.SERVER_DOWN, ldap.TIMEOUT, ldap.CONNECT_ERROR) as exc:
            raise DirectoryUnavailableError(
                f"the directory {self.settings.url} did not respond ({describe_ldap_error(exc)})"
            ) from exc
        except ldap.NO_SUCH_OBJECT as exc:
            raise DirectoryError(
                f"user_search_base {self.settings.user_search_base!r} does not exist in {self.settings.url}; "
                "fix user_search_base"
            ) from exc
        finally:
            _unbind_quietly(ldap, connection)
        entries = [(dn, attrs) for dn, attrs in results if dn is not None and isinstance(attrs, dict)]
        if len(entries) != 1:
            return None
        return entries[0]

    def jira_username(self, login: str) -> str:
        """Return the person's Jira username from the configured attribute, or the login."""
        attribute = self.settings.jira_username_attribute
        if not attribute:
            return login
        found = self.find_person(login, [attribute])
        if found is None:
            return login
        return jira_username_from_entry(found[1], attribute, login)

    def probe(self) -> None:
        """Connect and bind as the service account; raise DirectoryError when that fails."""
        import ldap

        _unbind_quietly(ldap, self._connect(ldap))

    def _connect(self, ldap: Any) -> Any:
        settings = self.settings
        connection = ldap.initialize(settings.url)
        connection.set_option(ldap.OPT_REFERRALS, 0)
        connection.set_option(ldap.OPT_NETWORK_TIMEOUT, settings.timeout_seconds)
        connection.set_option(ldap.OPT_TIMEOUT, settings.timeout_seconds)
        if settings.uses_tls:
            if settings.ca_cert_file:
                connection.set_option(ldap.OPT_X_TLS_CACERTFILE, settings.ca_cert_file)
            demand = ldap.OPT_X_TLS_DEMAND if settings.require_certificate else ldap.OPT_X_TLS_ALLOW
            connection.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, demand)
            connection.set_option(ldap.OPT_X_TLS_NEWCTX, 0)
        try:
            if settings.start_tls:
                self._start_tls(ldap, connection)
            self._bind(ldap, connection)
        except (ldap.LDAPError, DirectoryError):
            _unbind_quietly(ldap, connection)
            raise
        return connection

    def _start_tls(self, ldap: Any, connection: Any) -> None:
        url = self.settings.url
        try:
            connection.start_tls_s()
        except (ldap.SERVER_DOWN, ldap.TIMEOUT) as exc:
            raise DirectoryUnavailableError(
                f"the directory {url} did not respond ({describe_ldap_error(exc)})"
            ) from exc
        except ldap.LDAPError as exc:
            raise DirectoryUnavailableError(
                f"StartTLS with the directory {url} failed ({describe_ldap_error(exc)}); "
                "check ca_cert_file and the directory's certificate"
            ) from exc

    def _bind(self, ldap: Any, connection: Any) -> None:
        url = self.settings.url
        try:
            connection.simple_bind_s(self.settings.bind_dn, self._bind_password)
        except (ldap.SERVER_DOWN, ldap.TIMEOUT, ldap.CONNECT_ERROR) as exc:
            raise DirectoryUnavailableError(
                f"the directory {url} did not respond ({describe_ldap_error(exc)})"
            ) from exc
        except ldap.INVALID_CREDENTIALS as exc:
            raise DirectoryError(
                f"the directory {url} rejected the service account {self.settings.bind_dn!r}; "
                "check the bind DN and the bind password"
            ) from exc


def _unbind_quietly(ldap: Any, connection: Any) -> None:
    # Closing a connection to a directory that stopped responding may fail too, which changes nothing.
    with contextlib.suppress(ldap.LDAPError):
        connection.unbind_s()


def describe_ldap_error(exc: Exception) -> str:
    """Return the description and detail of a python-ldap error as one line."""
    details = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    text = str(details.get("desc") or exc)
    info = details.get("info")
    if info and info != "(unknown error code)":
        text += f": {info}"
    return text


def _parse_groups(raw: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, Mapping):
        raise ValueError(f"LDAP 'groups' must map {sorted(ROLE_KEYS)} to lists of group DNs, got {raw!r}")
    unknown = sorted(set(raw) - set(ROLE_KEYS))
    if unknown:
        raise ValueError(f"LDAP 'groups' has unknown key(s) {unknown}; use {sorted(ROLE_KEYS)}")
    groups = {key: _as_tuple(value, f"groups.{key}") for key, value in raw.items()}
    groups = {key: dns for key, dns in groups.items() if dns}
    if not groups:
        raise ValueError(f"LDAP 'groups' names no group DN; list at least one under {sorted(ROLE_KEYS)}")
    return groups


def _as_tuple(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple):
        return tuple(str(item) for item in value)
    raise ValueError(f"LDAP setting {name} must be a string or a list of strings, got {value!r}")


def _as_bool(mapping: Mapping[str, Any], key: str, default: bool) -> bool:
    value = mapping.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"LDAP setting {key!r} must be true or false, got {value!r}")
    return value


def _as_float(mapping: Mapping[str, Any], key: str, default: float) -> float:
    value = mapping.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"LDAP setting {key!r} must be a number of seconds, got {value!r}")
    return float(value)


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    """Write ``webserver_config.py`` from an auth settings file (TOML ``[auth]`` table or JSON)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m b2cal.ldapconfig",
        description="Write the FAB auth manager's webserver_config.py from b2cal auth settings.",
    )
    parser.add_argument("settings", type=Path, help="TOML file with an [auth] table, or a JSON file")
    parser.add_argument(
        "output", type=Path, help="webserver_config.py to write, e.g. $AIRFLOW_HOME/webserver_config.py"
    )
    args = parser.parse_args(argv)
    try:
        settings = load_auth_settings(args.settings)
    except (OSError, ValueError) as exc:
        parser.exit(2, f"invalid auth settings in {args.settings}: {exc}\n")
    args.output.write_text(render_webserver_config(settings, source=str(args.settings)))
    print(f"wrote {args.output} ({settings.mode} logins)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
