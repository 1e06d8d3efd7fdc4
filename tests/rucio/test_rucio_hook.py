"""The Rucio hook against a real Rucio server on SQLite: connections, credentials, registration, rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rucio_support import connection_json, write_run_files

from b2cal.iov import IoV
from b2cal.rucio import Did, RucioPlanError, RuleRequest, plan_cdst_registration
from b2cal_airflow.hooks.rucio import RucioCredentialsError, RucioHook


def set_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, **values: object) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "rucio", **values}))


class TestConnectionSettings:
    def test_host_needs_scheme(self, monkeypatch):
        set_connection(monkeypatch, "rucio_bad", host="127.0.0.1", login="u", password="p")
        with pytest.raises(ValueError, match="host '127.0.0.1'; Rucio needs a full URL"):
            _ = RucioHook("rucio_bad").settings

    def test_port_is_appended(self, monkeypatch):
        set_connection(
            monkeypatch, "rucio_port", host="http://127.0.0.1", port=18080, login="u", password="p"
        )
        settings = RucioHook("rucio_port").settings
        assert settings.host == "http://127.0.0.1:18080"
        assert settings.auth_host == "http://127.0.0.1:18080"
        assert settings.account == "u"

    def test_unknown_auth_type(self, monkeypatch):
        set_connection(
            monkeypatch, "rucio_x509", host="http://h", login="u", password="p", extra={"auth_type": "x509"}
        )
        with pytest.raises(ValueError, match="auth_type 'x509'; use 'userpass' or 'token'"):
            _ = RucioHook("rucio_x509").settings

    def test_missing_password(self, monkeypatch):
        set_connection(monkeypatch, "rucio_nopw", host="http://h", login="u")
        with pytest.raises(ValueError, match="has no password"):
            _ = RucioHook("rucio_nopw").settings

    def test_token_needs_account(self, monkeypatch):
        set_connection(monkeypatch, "rucio_tok", host="http://h", password="t", extra={"auth_type": "token"})
        with pytest.raises(ValueError, match="names no Rucio account"):
            _ = RucioHook("rucio_tok").settings

    def test_describe_hides_secret(self, monkeypatch):
        set_connection(monkeypatch, "rucio_desc", host="http://h", login="u", password="s3cret-value")
        assert "s3cret-value" not in RucioHook("rucio_desc").settings.describe()


class TestCredentials:
    def test_userpass_authenticates(self, rucio_conn):
        ok, message = RucioHook().test_connection()
        assert ok, message
        assert "'root'" in message

    def test_wrong_password_is_rejected(self, rucio_server, monkeypatch):
        values = json.loads(connection_json(rucio_server))
        values["password"] = "wrong-password"
        monkeypatch.setenv("AIRFLOW_CONN_RUCIO_WRONG", json.dumps(values))
        hook = RucioHook("rucio_wrong")
        with pytest.raises(RucioCredentialsError, match="correct the login and password"):
            hook.get_conn()
        ok, message = RucioHook("rucio_wrong").test_connection()
        assert not ok
        assert "rejected the credentials" in message

    def test_wrong_password_after_a_valid_token(self, rucio_conn, rucio_server, monkeypatch):
        # A valid token cached by another hook of the same account must not let wrong credentials in.
        assert RucioHook().test_connection()[0]
        values = json.loads(connection_json(rucio_server))
        values["password"] = "wrong-password"
        monkeypatch.setenv("AIRFLOW_CONN_RUCIO_WRONG", json.dumps(values))
        with pytest.raises(RucioCredentialsError):
            RucioHook("rucio_wrong").get_conn()

    def test_token_authenticates(self, rucio_conn, rucio_server, monkeypatch):
        token = RucioHook().get_conn().auth_token
        set_connection(
            monkeypatch,
            "rucio_token",
            host=rucio_server.url,
            password=token,
            extra={"auth_type": "token", "account": "root"},
        )
        assert RucioHook("rucio_token").get_conn().whoami()["account"] == "root"

    def test_bad_token_is_rejected(self, rucio_server, monkeypatch):
        set_connection(
            monkeypatch,
            "rucio_badtoken",
            host=rucio_server.url,
            password="root-b2cal-not-a-token",
            extra={"auth_type": "token", "account": "root"},
        )
        hook = RucioHook("rucio_badtoken")
        with pytest.raises(RucioCredentialsError, match="put a valid token"):
            hook.get_conn()

    def test_close_removes_token(self, rucio_conn):
        hook = RucioHook()
        hook.get_conn()
        folder = Path(hook._token_folder or "")
        assert folder.is_dir()
        hook.close()
        assert not folder.exists()


@pytest.fixture
def cdst_plan(tmp_path: Path, unique: str):
    write_run_files(tmp_path / "cdst", "hadron_calib", 26, [1, 2], 2, "_cdst.root")
    write_run_files(tmp_path / "cdst", "mumu_calib", 26, [2], 1, "_cdst.root")
    return plan_cdst_registration(
        tmp_path / "cdst",
        request_id=f"hook-{unique}",
        bucket=IoV(26, 1, 26, 10),
        scope="b2cal",
        rse="BNL-DISK",
    )


class TestRegistration:
    def test_register_twice_registers_once(self, rucio_conn, cdst_plan):
        hook = RucioHook()
        first = hook.register(cdst_plan)
        second = hook.register(cdst_plan)
        assert first["registered"] == 5
        assert second["registered"] == 0
        assert second["already_registered"] == 5
        client = hook.get_conn()
        replicas = list(client.list_replicas([record.did.as_dict() for record in cdst_plan.files]))
        assert len(replicas) == 5
        assert all(replica["states"] == {"BNL-DISK": "AVAILABLE"} for replica in replicas)

    def test_files_land_on_the_rse(self, rucio_conn, cdst_plan):
        RucioHook().register(cdst_plan)
        record = cdst_plan.files[0]
        on_rse = rucio_conn.rse_root / "BNL-DISK" / "b2cal" / record.did.name
        assert on_rse.read_bytes() == record.path.read_bytes()

    def test_collections_and_metadata(self, rucio_conn, cdst_plan):
        hook = RucioHook()
        hook.register(cdst_plan)
        client = hook.get_conn()
        container = cdst_plan.container
        content = sorted(item["name"] for item in client.list_content(container.scope, container.name))
        assert content == sorted(dataset.did.name for dataset in cdst_plan.datasets)
        hadron = cdst_plan.datasets[0].did
        assert len(list(client.list_content(hadron.scope, hadron.name))) == 4
        meta = client.get_metadata(container.scope, container.name)
        assert meta["campaign"] == cdst_plan.container_metadata["request_id"]
        assert meta["version"] == "e0026r00001-e0026r00010"
        file_meta = client.get_metadata(cdst_plan.files[0].did.scope, cdst_plan.files[0].did.name)
        assert file_meta["run_number"] == 1
        assert file_meta["project"] == "26"

    def test_same_name_other_content_fails(self, rucio_conn, cdst_plan, tmp_path):
        hook = RucioHook()
        hook.register(cdst_plan)
        cdst_plan.files[0].path.write_bytes(b"another file with the same name")
        changed = plan_cdst_registration(
            tmp_path / "cdst",
            request_id=cdst_plan.container_metadata["request_id"],
            bucket=IoV(26, 1, 26, 10),
            scope="b2cal",
            rse="BNL-DISK",
        )
        with pytest.raises(RucioPlanError, match="a different file has the same name"):
            hook.register(changed)

    def test_json_metadata_on_sqlite_names_the_fix(self, rucio_conn, cdst_plan):
        with pytest.raises(RucioPlanError, match='"metadata": "columns"'):
            RucioHook().register(cdst_plan, metadata_style="json")


class TestRules:
    def test_identical_rule_is_reused(self, rucio_conn, cdst_plan):
        hook = RucioHook()
        hook.register(cdst_plan)
        request = RuleRequest(cdst_plan.container, "DESY-DISK", activity="Data Consolidation")
        first = hook.ensure_rule(request)
        second = hook.ensure_rule(request)
        assert first["created"]
        assert not second["created"]
        assert second["id"] == first["id"]
        assert len(hook.list_did_rules(cdst_plan.container)) == 1

    def test_reuse_raises_lifetime(self, rucio_conn, cdst_plan):
        hook = RucioHook()
        hook.register(cdst_plan)
        dataset = cdst_plan.datasets[1].did
        short = hook.ensure_rule(RuleRequest(dataset, "DESY-DISK", lifetime=3600))
        hook.ensure_rule(RuleRequest(dataset, "DESY-DISK", lifetime=30 * 86400))
        expires_at = hook.get_rule(short["id"])["expires_at"]
        created_at = hook.get_rule(short["id"])["created_at"]
        assert (expires_at - created_at).days >= 29

    def test_many_rules_in_bulk(self, rucio_conn, cdst_plan):
        hook = RucioHook()
        hook.register(cdst_plan)
        first = hook.ensure_rule(RuleRequest(cdst_plan.files[0].did, "DESY-DISK"))
        requests = [RuleRequest(record.did, "DESY-DISK") for record in cdst_plan.files]
        rules = hook.ensure_rules(requests)
        assert [rule["name"] for rule in rules] == [record.did.name for record in cdst_plan.files]
        assert rules[0]["id"] == first["id"]
        assert not rules[0]["created"]
        assert all(rule["created"] for rule in rules[1:])
        for rule in rules:
            stored = hook.get_rule(rule["id"])
            assert stored["name"] == rule["name"]
            assert stored["rse_expression"] == "DESY-DISK"
        again = hook.ensure_rules(requests)
        assert [rule["id"] for rule in again] == [rule["id"] for rule in rules]
        assert not any(rule["created"] for rule in again)

    def test_rule_on_unknown_did_fails(self, rucio_conn):
        from rucio.common.exception import DataIdentifierNotFound

        with pytest.raises(DataIdentifierNotFound):
            RucioHook().ensure_rule(RuleRequest(Did("b2cal", "no/such/dataset"), "DESY-DISK"))

    def test_count_files(self, rucio_conn, cdst_plan):
        hook = RucioHook()
        hook.register(cdst_plan)
        assert hook.count_files(cdst_plan.container) == 5
        assert hook.count_files(cdst_plan.datasets[1].did) == 1
        assert hook.count_files(cdst_plan.files[0].did) == 1
