"""The FAB login settings built from a plain mapping, without a directory server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from flask_appbuilder import const

from b2cal.ldapconfig import (
    AUTH_DB,
    AUTH_LDAP,
    AuthSettings,
    DirectorySettings,
    escape_filter_value,
    jira_username_from_entry,
    load_auth_settings,
    main,
    normalize_dn,
    render_webserver_config,
)
from b2cal.roles import EXPERT_ROLE, MANAGER_ROLE, VIEWER_ROLE

MANAGERS = "cn=calibration-managers,ou=groups,dc=lab,dc=example"
EXPERTS = "cn=calibration-experts,ou=groups,dc=lab,dc=example"
VIEWERS = "cn=calibration-viewers,ou=groups,dc=lab,dc=example"


def lab_mapping(**overrides: Any) -> dict[str, Any]:
    mapping: dict[str, Any] = {
        "url": "ldaps://ldap.lab.example:636",
        "bind_dn": "cn=airflow,ou=services,dc=lab,dc=example",
        "user_search_base": "ou=people,dc=lab,dc=example",
        "groups": {"managers": [MANAGERS], "experts": [EXPERTS], "viewers": VIEWERS},
    }
    mapping.update(overrides)
    return mapping


def test_auth_type_constants_match_flask_appbuilder() -> None:
    assert AUTH_DB == const.AUTH_DB
    assert AUTH_LDAP == const.AUTH_LDAP


def test_settings_defaults() -> None:
    settings = DirectorySettings.from_mapping(lab_mapping())
    assert settings.uid_attribute == "uid"
    assert settings.group_attribute == "memberOf"
    assert settings.bind_password_env == "B2CAL_LDAP_BIND_PASSWORD"
    assert settings.bind_password_file is None
    assert settings.restrict_to_groups is True
    assert settings.require_certificate is True
    assert settings.uses_tls is True
    assert settings.groups["viewers"] == (VIEWERS,)


def test_fab_settings_for_ldap() -> None:
    settings = DirectorySettings.from_mapping(lab_mapping(jira_username_attribute="jiraName"))
    fab = settings.fab_settings({"B2CAL_LDAP_BIND_PASSWORD": "service-secret"})
    assert fab["AUTH_TYPE"] == const.AUTH_LDAP
    assert fab["AUTH_LDAP_SERVER"] == "ldaps://ldap.lab.example:636"
    assert fab["AUTH_LDAP_BIND_USER"] == "cn=airflow,ou=services,dc=lab,dc=example"
    assert fab["AUTH_LDAP_BIND_PASSWORD"] == "service-secret"
    assert fab["AUTH_LDAP_SEARCH"] == "ou=people,dc=lab,dc=example"
    assert fab["AUTH_LDAP_USE_TLS"] is False
    assert fab["AUTH_LDAP_TLS_DEMAND"] is True
    assert fab["AUTH_LDAP_ALLOW_SELF_SIGNED"] is False
    assert fab["AUTH_ROLES_SYNC_AT_LOGIN"] is True
    assert fab["AUTH_USER_REGISTRATION"] is True
    assert fab["AUTH_USER_REGISTRATION_ROLE"] == "Public"
    assert fab["AUTH_ROLES_MAPPING"] == {
        MANAGERS: [MANAGER_ROLE],
        EXPERTS: [EXPERT_ROLE],
        VIEWERS: [VIEWER_ROLE],
    }
    assert fab["B2CAL_LDAP_JIRA_USERNAME_FIELD"] == "jiraName"


def test_fab_settings_start_tls_without_verification() -> None:
    settings = DirectorySettings.from_mapping(
        lab_mapping(url="ldap://ldap.lab.example", start_tls=True, require_certificate=False)
    )
    fab = settings.fab_settings({"B2CAL_LDAP_BIND_PASSWORD": "x"})
    assert fab["AUTH_LDAP_USE_TLS"] is True
    assert fab["AUTH_LDAP_TLS_DEMAND"] is False
    assert fab["AUTH_LDAP_ALLOW_SELF_SIGNED"] is True


def test_extra_roles_join_the_mapping() -> None:
    admins = "cn=airflow-admins,ou=groups,dc=lab,dc=example"
    settings = DirectorySettings.from_mapping(lab_mapping(extra_roles={admins: ["Admin"], MANAGERS: "Op"}))
    mapping = settings.roles_mapping()
    assert mapping[admins] == ["Admin"]
    assert mapping[MANAGERS] == [MANAGER_ROLE, "Op"]


def test_search_filter_limited_to_groups() -> None:
    settings = DirectorySettings.from_mapping(lab_mapping())
    assert settings.search_filter() == (
        f"(&(objectClass=inetOrgPerson)(|(memberOf={EXPERTS})(memberOf={MANAGERS})(memberOf={VIEWERS})))"
    )


def test_search_filter_unrestricted() -> None:
    settings = DirectorySettings.from_mapping(
        lab_mapping(restrict_to_groups=False, user_filter="(objectClass=person)")
    )
    assert settings.search_filter() == "(objectClass=person)"


def test_search_filter_escapes_group_dn() -> None:
    odd = r"cn=calib (prompt)*,ou=groups,dc=lab,dc=example"
    settings = DirectorySettings.from_mapping(lab_mapping(groups={"managers": odd}))
    assert settings.search_filter() == (
        r"(&(objectClass=inetOrgPerson)(|(memberOf=cn=calib \28prompt\29\2a,ou=groups,dc=lab,dc=example)))"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"colour": "blue"}, "unknown LDAP setting(s) ['colour']"),
        ({"url": ""}, "'url' is missing"),
        ({"url": "http://ldap.lab.example"}, "use ldap://host:port or ldaps://host:port"),
        ({"start_tls": True}, "already uses TLS"),
        ({"url": "ldap://ldap.lab.example"}, "sends passwords in clear text"),
        ({"groups": {"admins": MANAGERS}}, "unknown key(s) ['admins']"),
        ({"groups": {"managers": []}}, "names no group DN"),
        ({"groups": [MANAGERS]}, "must map"),
        ({"start_tls": "yes"}, "'start_tls' must be true or false"),
        ({"user_filter": "objectClass=person"}, "must be one filter in parentheses"),
        ({"timeout_seconds": 0}, "must be positive"),
        ({"timeout_seconds": "ten"}, "must be a number of seconds"),
        ({"ca_cert_file": "/nonexistent/ca.pem"}, "does not exist"),
        ({"bind_password_env": "A", "bind_password_file": "/etc/b"}, "not both"),
    ],
)
def test_settings_reject_invalid_mapping(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as raised:
        DirectorySettings.from_mapping(lab_mapping(**overrides))
    assert message in str(raised.value)


def test_plaintext_allowed_on_loopback() -> None:
    settings = DirectorySettings.from_mapping(lab_mapping(url="ldap://127.0.0.1:3890"))
    assert settings.uses_tls is False


def test_plaintext_allowed_when_asked() -> None:
    settings = DirectorySettings.from_mapping(
        lab_mapping(url="ldap://ldap.lab.example", allow_plaintext=True)
    )
    assert settings.uses_tls is False


def test_bind_password_from_missing_env() -> None:
    settings = DirectorySettings.from_mapping(lab_mapping(bind_password_env="LAB_LDAP_PASSWORD"))
    with pytest.raises(ValueError) as raised:
        settings.bind_password({})
    assert "LAB_LDAP_PASSWORD" in str(raised.value)


def test_bind_password_from_file(tmp_path: Path) -> None:
    secret = tmp_path / "bind.pw"
    secret.write_text("file-secret\n")
    settings = DirectorySettings.from_mapping(lab_mapping(bind_password_file=str(secret)))
    assert settings.bind_password({}) == "file-secret"


def test_bind_password_from_empty_file(tmp_path: Path) -> None:
    secret = tmp_path / "bind.pw"
    secret.write_text("\n")
    settings = DirectorySettings.from_mapping(lab_mapping(bind_password_file=str(secret)))
    with pytest.raises(ValueError) as raised:
        settings.bind_password({})
    assert "is empty" in str(raised.value)


def test_auth_settings_modes() -> None:
    assert AuthSettings.from_mapping({}).mode == "database"
    ldap = AuthSettings.from_mapping({"mode": "ldap", "ldap": lab_mapping()})
    assert ldap.ldap is not None
    assert ldap.ldap.url == "ldaps://ldap.lab.example:636"
    with pytest.raises(ValueError) as raised:
        AuthSettings.from_mapping({"mode": "oauth"})
    assert "'oauth' is not supported" in str(raised.value)
    with pytest.raises(ValueError) as raised:
        AuthSettings.from_mapping({"mode": "ldap"})
    assert "needs an 'ldap' table" in str(raised.value)


def test_load_auth_settings_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "b2cal-auth.toml"
    path.write_text(
        '[auth]\nmode = "ldap"\n\n[auth.ldap]\n'
        'url = "ldaps://ldap.lab.example"\n'
        'bind_dn = "cn=airflow,ou=services,dc=lab,dc=example"\n'
        'user_search_base = "ou=people,dc=lab,dc=example"\n\n'
        "[auth.ldap.groups]\n"
        f'managers = ["{MANAGERS}"]\n'
        f'experts = ["{EXPERTS}"]\n'
    )
    settings = load_auth_settings(path)
    assert settings.mode == "ldap"
    assert settings.ldap is not None
    assert settings.ldap.groups == {"managers": (MANAGERS,), "experts": (EXPERTS,)}


def test_main_writes_webserver_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = tmp_path / "b2cal-auth.toml"
    settings.write_text(
        '[auth]\nmode = "ldap"\n\n[auth.ldap]\n'
        'url = "ldaps://ldap.lab.example"\n'
        'bind_dn = "cn=airflow,ou=services,dc=lab,dc=example"\n'
        'bind_password_file = "/etc/b2cal/ldap-bind-password"\n'
        'user_search_base = "ou=people,dc=lab,dc=example"\n\n'
        "[auth.ldap.groups]\n"
        f'managers = ["{MANAGERS}"]\n'
    )
    output = tmp_path / "webserver_config.py"
    assert main([str(settings), str(output)]) == 0
    text = output.read_text()
    assert "AUTH_TYPE = AUTH_LDAP" in text
    assert "read_bind_password(env=None, file='/etc/b2cal/ldap-bind-password')" in text
    assert str(settings) in text
    assert "ldap logins" in capsys.readouterr().out


def test_main_rejects_invalid_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = tmp_path / "auth.json"
    settings.write_text(json.dumps({"mode": "ldap", "ldap": {"url": "ldaps://ldap.lab.example"}}))
    with pytest.raises(SystemExit) as raised:
        main([str(settings), str(tmp_path / "webserver_config.py")])
    assert raised.value.code == 2
    assert "'bind_dn' is missing" in capsys.readouterr().err
    assert not (tmp_path / "webserver_config.py").exists()


def test_load_auth_settings_from_json(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"mode": "database"}))
    assert load_auth_settings(path).mode == "database"


def test_render_database_config() -> None:
    text = render_webserver_config(AuthSettings())
    namespace: dict[str, Any] = {}
    exec(compile(text, "webserver_config.py", "exec"), namespace)
    assert namespace["AUTH_TYPE"] == const.AUTH_DB
    assert namespace["WTF_CSRF_ENABLED"] is True


def test_render_ldap_config_keeps_password_out(tmp_path: Path) -> None:
    settings = AuthSettings.from_mapping({"mode": "ldap", "ldap": lab_mapping(bind_password_env="LAB_BIND")})
    text = render_webserver_config(settings, source="lab.toml")
    assert "lab.toml" in text
    assert "read_bind_password(env='LAB_BIND', file=None)" in text
    path = tmp_path / "webserver_config.py"
    path.write_text(text)
    # Loading the file imports the FAB security manager, hence Airflow: do it in a fresh process.
    code = (
        "import json, sys\nfrom flask import Config\n"
        "config = Config('/')\nconfig.from_pyfile(sys.argv[1])\n"
        "print(json.dumps({key: config[key] for key in config if key.isupper()}, default=repr))\n"
    )
    env = {**os.environ, "LAB_BIND": "render-secret", "AIRFLOW_HOME": str(tmp_path / "airflow")}
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert "render-secret" not in text
    assert loaded["AUTH_LDAP_BIND_PASSWORD"] == "render-secret"
    assert loaded["AUTH_TYPE"] == const.AUTH_LDAP
    assert loaded["SECURITY_MANAGER_CLASS"] == "<class 'b2cal_airflow.security.B2CalSecurityManager'>"
    assert settings.ldap is not None
    expected = settings.ldap.fab_settings({"LAB_BIND": "render-secret"})
    for key, value in expected.items():
        assert loaded[key] == value, key


def test_settings_from_fab_config_round_trip() -> None:
    original = DirectorySettings.from_mapping(
        lab_mapping(jira_username_attribute="jiraName", timeout_seconds=4)
    )
    rebuilt = DirectorySettings.from_fab_config(original.fab_settings({"B2CAL_LDAP_BIND_PASSWORD": "x"}))
    assert rebuilt.url == original.url
    assert rebuilt.bind_dn == original.bind_dn
    assert rebuilt.user_search_base == original.user_search_base
    assert rebuilt.uid_attribute == original.uid_attribute
    assert rebuilt.jira_username_attribute == "jiraName"
    assert rebuilt.timeout_seconds == 4
    assert rebuilt.require_certificate is True


def test_settings_from_database_fab_config() -> None:
    with pytest.raises(ValueError) as raised:
        DirectorySettings.from_fab_config({"AUTH_TYPE": const.AUTH_DB})
    assert "not AUTH_LDAP" in str(raised.value)


@pytest.mark.parametrize(
    ("dn", "expected"),
    [
        (
            "CN=Calibration-Managers, OU=Groups,DC=Lab,DC=Example",
            "cn=calibration-managers,ou=groups,dc=lab,dc=example",
        ),
        (r"cn=Smith\, J ,ou=people", r"cn=smith\, j,ou=people"),
        ("cn=a,ou=b", "cn=a,ou=b"),
    ],
)
def test_normalize_dn(dn: str, expected: str) -> None:
    assert normalize_dn(dn) == expected


def test_escape_filter_value() -> None:
    assert escape_filter_value("a*b(c)d\\e\x00") == r"a\2ab\28c\29d\5ce\00"


def test_jira_username_from_entry() -> None:
    entry = {"jiraName": [b"erik.jira"], "empty": [b""]}
    assert jira_username_from_entry(entry, "jiraName", "erik") == "erik.jira"
    assert jira_username_from_entry(entry, "empty", "erik") == "erik"
    assert jira_username_from_entry(entry, "missing", "erik") == "erik"
    assert jira_username_from_entry(entry, None, "erik") == "erik"
