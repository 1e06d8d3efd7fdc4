"""The Rucio operators, executed with a minimal context against a real Rucio server on SQLite.

A deferring operator raises TaskDeferred. The test then runs the trigger it carries, as the triggerer
would, and passes the event to the method that the operator named.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowSkipException, TaskDeferred
from rucio_support import connection_json, run_trigger, write_run_files

from b2cal.iov import IoV
from b2cal.rucio import Did
from b2cal_airflow.hooks.rucio import RucioHook
from b2cal_airflow.operators.rucio import (
    RucioAddRuleOperator,
    RucioRegisterCdstOperator,
    RucioRegisterSkimsOperator,
    RucioReplicateSkimsOperator,
    RucioWaitForRulesOperator,
    as_iov,
    as_list,
)
from b2cal_airflow.triggers.rucio import RucioRulesTrigger


def set_site(monkeypatch: pytest.MonkeyPatch, site: str, root: Path, **extra: str) -> None:
    """Create the site connection ``b2cal_site_<site>`` with folders below ``root``."""
    values = {
        "work_root": str(root / "work"),
        "storage_root": str(root / "raw"),
        "cdst_root": str(root / "cdst"),
        **extra,
    }
    monkeypatch.setenv(
        f"AIRFLOW_CONN_B2CAL_SITE_{site.upper()}", json.dumps({"conn_type": "generic", "extra": values})
    )


def mark_available(rse: str, dids: list[Did]) -> None:
    RucioHook().get_conn().update_replicas_states(rse, [{**did.as_dict(), "state": "A"} for did in dids])


def deferred(operator, context) -> TaskDeferred:
    with pytest.raises(TaskDeferred) as caught:
        operator.execute(context)
    assert caught.value.method_name == "execute_complete"
    assert isinstance(caught.value.trigger, RucioRulesTrigger)
    return caught.value


def register_bucket(context, request_id: str) -> str:
    """Register the BNL cDSTs of runs 1-10 of experiment 26 for ``request_id`` and return the container."""
    register = RucioRegisterCdstOperator(
        task_id="register_cdst", request_id=request_id, site="BNL", bucket=[26, 1, 26, 10]
    )
    return register.execute(context)["container"]


def second_cdst_attempt(url: str, root: Path, request_id: str, runs: list[int]) -> None:
    """Record that cDST production ran again for ``request_id`` and write that attempt's files."""
    from b2cal.db import store
    from b2cal.db.engine import session_scope

    with session_scope(url) as session:
        store.set_cdst_attempt(session, request_id, 2)
    write_run_files(
        root / "cdst" / "attempts" / request_id / "attempt-2", "hadron_calib", 26, runs, 1, "_cdst.root"
    )


@pytest.fixture
def cdst_site(rucio_conn, tmp_path, monkeypatch) -> Path:
    """Return a BNL site whose cdst_root contains cDST files of runs 1-3 of experiment 26."""
    set_site(monkeypatch, "BNL", tmp_path)
    write_run_files(tmp_path / "cdst", "hadron_calib", 26, [1, 2, 3], 1, "_cdst.root")
    write_run_files(tmp_path / "cdst", "mumu_tight_or_highm_calib", 26, [2], 1, "_cdst.root")
    return tmp_path


class TestTemplatedValues:
    def test_as_list_parses_json_text(self):
        assert as_list('["a", "b"]', "x") == ["a", "b"]
        assert as_list("b2cal:x", "x") == ["b2cal:x"]
        assert as_list(None, "x") == []
        assert as_list(("a",), "x") == ["a"]

    def test_as_iov_accepts_text_and_lists(self):
        assert as_iov("[26, 1, 26, 10]", "bucket") == IoV(26, 1, 26, 10)
        assert as_iov("26,1,26,10", "bucket") == IoV(26, 1, 26, 10)
        assert as_iov([26, 1, 26, 10], "bucket") == IoV(26, 1, 26, 10)


class TestRegisterCdst:
    def test_register_pushes_container(self, cdst_site, context, unique):
        operator = RucioRegisterCdstOperator(
            task_id="register_cdst", request_id=f"op-{unique}", site="BNL", bucket=[26, 1, 26, 10]
        )
        summary = operator.execute(context)
        container = f"b2cal:cdst/op-{unique}/e0026r00001-e0026r00010"
        assert summary["container"] == container
        assert summary["registered"] == 4
        assert context["ti"].xcoms == {
            "container": container,
            "rse": "BNL-DISK",
            "files": 4,
            "archive_rse": "DESY-DISK",
        }

    def test_retry_registers_nothing_twice(self, cdst_site, context, unique):
        operator = RucioRegisterCdstOperator(
            task_id="register_cdst", request_id=f"op-{unique}", site="BNL", bucket="26,1,26,10"
        )
        operator.execute(context)
        again = operator.execute(context)
        assert again["registered"] == 0
        assert again["already_registered"] == 4

    def test_site_connection_names_rse(self, rucio_conn, tmp_path, monkeypatch, context, unique):
        set_site(monkeypatch, "DESY", tmp_path, rucio_rse="DESY-DISK")
        write_run_files(tmp_path / "cdst", "hadron_calib", 26, [5], 1, "_cdst.root")
        operator = RucioRegisterCdstOperator(
            task_id="register_cdst", request_id=f"re-{unique}", site="DESY", bucket=[26, 1, 26, 10]
        )
        assert operator.execute(context)["rse"] == "DESY-DISK"

    def store_request(self, monkeypatch, tmp_path, request_id: str) -> str:
        """Store a BNL request for runs 2-50 of experiment 26 in a new plugin database; return its URL."""
        from b2cal.catalog import load_packaged_release
        from b2cal.db import store
        from b2cal.db.engine import session_scope, upgrade
        from b2cal.request import parse_request

        url = f"sqlite:///{tmp_path / 'plugin.db'}"
        monkeypatch.setenv(
            "AIRFLOW_CONN_B2CAL_DB", json.dumps({"conn_type": "generic", "extra": {"url": url}})
        )
        upgrade(url)
        catalog = load_packaged_release()
        conf = {
            "request_id": request_id,
            "site": "BNL",
            "release": catalog.release,
            "bucket": [26, 2, 26, 50],
            "calibrations": [],
            "staging_tag": "staging_x",
            "running_tag": "running_x",
            "requested_by": "manager",
        }
        with session_scope(url) as session:
            store.import_catalog(session, catalog, source="test")
            store.save_request(session, parse_request(conf, catalog), catalog)
        return url

    def test_site_and_bucket_from_stored_request(self, cdst_site, context, unique, monkeypatch, tmp_path):
        self.store_request(monkeypatch, tmp_path, f"stored-{unique}")
        operator = RucioRegisterCdstOperator(task_id="register_cdst", request_id=f"stored-{unique}")
        summary = operator.execute(context)
        assert summary["container"] == f"b2cal:cdst/stored-{unique}/e0026r00002-e0026r00050"
        assert summary["rse"] == "BNL-DISK"
        assert summary["files"] == 3

    def test_new_cdst_attempt_registers_new_files(self, cdst_site, context, unique, monkeypatch, tmp_path):
        from b2cal.db import store
        from b2cal.db.engine import session_scope

        request_id = f"again-{unique}"
        url = self.store_request(monkeypatch, tmp_path, request_id)
        operator = RucioRegisterCdstOperator(task_id="register_cdst", request_id=request_id)
        first = operator.execute(context)
        # cDST production ran again after a rejection: files of the same names, with new contents.
        with session_scope(url) as session:
            store.set_cdst_attempt(session, request_id, 2)
        output = tmp_path / "cdst" / "attempts" / request_id / "attempt-2"
        write_run_files(output, "hadron_calib", 26, [2, 3], 1, "_cdst.root")

        second = operator.execute(context)
        retry = operator.execute(context)

        assert first["container"] == f"b2cal:cdst/{request_id}/e0026r00002-e0026r00050"
        assert second["container"] == f"b2cal:cdst/{request_id}/attempt-2/e0026r00002-e0026r00050"
        assert second["files"] == 2
        assert second["registered"] == 2
        assert context["ti"].xcoms["container"] == second["container"]
        assert context["ti"].xcoms["files"] == 2
        assert retry["registered"] == 0
        assert retry["already_registered"] == 2

    def test_new_cdst_attempt_ends_old_rules(self, cdst_site, context, unique, monkeypatch, tmp_path):
        from datetime import UTC, datetime, timedelta

        from sqlalchemy import select

        from b2cal.db.engine import session_scope
        from b2cal.db.models import AuditEntry

        request_id = f"retire-{unique}"
        url = self.store_request(monkeypatch, tmp_path, request_id)
        register = RucioRegisterCdstOperator(task_id="register_cdst", request_id=request_id)

        def register_and_rules() -> dict:
            summary = register.execute(context)
            for task_id, rse in (("stage_cdst", "BNL-DISK"), ("archive_cdst", "DESY-DISK")):
                RucioAddRuleOperator(
                    task_id=task_id, dids=[summary["container"]], rse_expression=rse
                ).execute(context)
            return summary

        first = register_and_rules()
        assert first["expired_rules"] == []
        old_container = Did.parse(first["container"])
        old_rules = {rule["id"]: rule for rule in RucioHook().list_did_rules(old_container)}
        assert len(old_rules) == 2
        assert all(rule["expires_at"] is None for rule in old_rules.values())

        second_cdst_attempt(url, tmp_path, request_id, [2, 3])
        began = datetime.now(UTC).replace(tzinfo=None)
        second = register_and_rules()
        retry = register.execute(context)

        assert sorted(second["expired_rules"]) == sorted(old_rules)
        assert retry["expired_rules"] == []
        ended = {rule["id"]: rule for rule in RucioHook().list_did_rules(old_container)}
        week = timedelta(days=7)
        for rule in ended.values():
            expires_at = rule["expires_at"]
            assert began + week - timedelta(minutes=2) <= expires_at <= began + week + timedelta(minutes=2)
        new_rules = RucioHook().list_did_rules(Did.parse(second["container"]))
        assert len(new_rules) == 2
        assert all(rule["expires_at"] is None for rule in new_rules)
        with session_scope(url) as session:
            entries = session.scalars(
                select(AuditEntry).where(
                    AuditEntry.request_uid == request_id, AuditEntry.action == "cdst_rules_expired"
                )
            ).all()
            assert [entry.detail["rules"] for entry in entries] == [second["expired_rules"]]

    def test_rules_that_end_sooner_keep_their_end(self, cdst_site, context, unique, monkeypatch, tmp_path):

        request_id = f"sooner-{unique}"
        url = self.store_request(monkeypatch, tmp_path, request_id)
        register = RucioRegisterCdstOperator(task_id="register_cdst", request_id=request_id)
        container = register.execute(context)["container"]
        RucioAddRuleOperator(
            task_id="stage_cdst", dids=[container], rse_expression="BNL-DISK", lifetime=3600
        ).execute(context)
        [before] = RucioHook().list_did_rules(Did.parse(container))
        second_cdst_attempt(url, tmp_path, request_id, [2])

        assert register.execute(context)["expired_rules"] == []
        [after] = RucioHook().list_did_rules(Did.parse(container))
        assert after["expires_at"] == before["expires_at"]

    def test_superseded_lifetime_must_be_positive(self):
        with pytest.raises(ValueError, match="superseded_lifetime 0 is invalid"):
            RucioRegisterCdstOperator(task_id="register_cdst", request_id="x", superseded_lifetime=0)

    def test_site_without_rse_skips(self, cdst_site, context, unique):
        operator = RucioRegisterCdstOperator(
            task_id="register_cdst",
            request_id=f"skip-{unique}",
            site="BNL",
            bucket=[26, 1, 26, 10],
            only_rucio_sites=True,
        )
        with pytest.raises(AirflowSkipException, match="site BNL does not use Rucio") as caught:
            operator.execute(context)
        assert "'rucio_rse' of connection 'b2cal_site_bnl'" in str(caught.value)
        assert context["ti"].xcoms == {}
        container = Did("b2cal", f"cdst/skip-{unique}/e0026r00001-e0026r00010")
        assert not list(RucioHook().get_conn().list_dids("b2cal", [{"name": container.name}]))

    def test_site_with_rse_registers(self, rucio_conn, tmp_path, monkeypatch, context, unique):
        set_site(monkeypatch, "BNL", tmp_path, rucio_rse="BNL-DISK", cdst_archive_rse="KEK-DISK")
        write_run_files(tmp_path / "cdst", "hadron_calib", 26, [4], 2, "_cdst.root")
        operator = RucioRegisterCdstOperator(
            task_id="register_cdst",
            request_id=f"only-{unique}",
            site="BNL",
            bucket=[26, 1, 26, 10],
            only_rucio_sites=True,
        )
        assert operator.execute(context)["files"] == 2
        assert context["ti"].xcoms["rse"] == "BNL-DISK"
        assert context["ti"].xcoms["archive_rse"] == "KEK-DISK"

    def test_empty_archive_rse_pushed_empty(self, rucio_conn, tmp_path, monkeypatch, context, unique):
        set_site(monkeypatch, "BNL", tmp_path, rucio_rse="BNL-DISK", cdst_archive_rse="")
        write_run_files(tmp_path / "cdst", "hadron_calib", 26, [4], 1, "_cdst.root")
        operator = RucioRegisterCdstOperator(
            task_id="register_cdst", request_id=f"noarch-{unique}", site="BNL", bucket=[26, 1, 26, 10]
        )
        operator.execute(context)
        assert context["ti"].xcoms["archive_rse"] == ""

    def test_no_cdst_files_fails(self, cdst_site, context, unique):
        operator = RucioRegisterCdstOperator(
            task_id="register_cdst", request_id=f"op-{unique}", site="BNL", bucket=[27, 1, 27, 10]
        )
        with pytest.raises(ValueError, match="no cDST files of bucket 27,1,27,10"):
            operator.execute(context)


class TestAddRule:
    def test_add_rule_and_wait_until_ok(self, cdst_site, context, unique):
        register = RucioRegisterCdstOperator(
            task_id="register_cdst", request_id=f"rule-{unique}", site="BNL", bucket=[26, 1, 26, 10]
        )
        summary = register.execute(context)
        operator = RucioAddRuleOperator(
            task_id="replicate_cdst",
            dids=[summary["container"]],
            rse_expression="DESY-DISK",
            activity="Data Consolidation",
            wait_for_completion=True,
            expected_files=summary["files"],
            poll_interval=0.2,
        )
        deferral = deferred(operator, context)
        rule_ids = context["ti"].xcoms["rule_ids"]
        assert len(rule_ids) == 1
        plan_files = [Did.parse(did) for did in _file_dids(summary["container"])]

        async def transfer() -> None:
            await asyncio.sleep(0.4)
            await asyncio.to_thread(mark_available, "DESY-DISK", plan_files)

        event = run_trigger(deferral.trigger, transfer)
        assert operator.execute_complete(context, event) == rule_ids
        assert RucioHook().get_rule(rule_ids[0])["activity"] == "Data Consolidation"

    def test_second_run_reuses_rule(self, cdst_site, context, unique):
        register = RucioRegisterCdstOperator(
            task_id="register_cdst", request_id=f"reuse-{unique}", site="BNL", bucket=[26, 1, 26, 10]
        )
        container = register.execute(context)["container"]
        operator = RucioAddRuleOperator(task_id="replicate_cdst", dids=container, rse_expression="DESY-DISK")
        assert operator.execute(context) == operator.execute(context)

    def test_rerun_register_and_archive_one_rule(self, cdst_site, context, unique):
        def register_and_archive() -> list[str]:
            register = RucioRegisterCdstOperator(
                task_id="register_cdst", request_id=f"arch-{unique}", site="BNL", bucket=[26, 1, 26, 10]
            )
            register.execute(context)
            xcoms = context["ti"].xcoms
            archive = RucioAddRuleOperator(
                task_id="archive_cdst",
                dids=[xcoms["container"]],
                rse_expression=xcoms["archive_rse"],
                activity="Data Consolidation",
                skip_without_rse=True,
            )
            return archive.execute(context)

        first = register_and_archive()
        second = register_and_archive()
        assert first == second
        container = Did.parse(context["ti"].xcoms["container"])
        rules = [
            rule for rule in RucioHook().list_did_rules(container) if rule["rse_expression"] == "DESY-DISK"
        ]
        assert len(rules) == 1
        assert rules[0]["activity"] == "Data Consolidation"

    def test_empty_rse_skips_when_allowed(self, context):
        operator = RucioAddRuleOperator(
            task_id="archive_cdst", dids=["b2cal:x"], rse_expression="", skip_without_rse=True
        )
        with pytest.raises(AirflowSkipException, match="empty RSE expression"):
            operator.execute(context)
        assert context["ti"].xcoms == {}

    def test_poll_interval_from_connection(self, cdst_site, rucio_conn, context, unique, monkeypatch):
        monkeypatch.setenv("AIRFLOW_CONN_RUCIO_DEFAULT", connection_json(rucio_conn, poll_interval=3))
        container = register_bucket(context, f"poll-{unique}")
        default = RucioAddRuleOperator(
            task_id="stage_cdst", dids=container, rse_expression="BNL-DISK", wait_for_completion=True
        )
        assert deferred(default, context).trigger.poll_interval == 3.0
        explicit = RucioAddRuleOperator(
            task_id="stage_cdst",
            dids=container,
            rse_expression="BNL-DISK",
            wait_for_completion=True,
            poll_interval=0.5,
        )
        assert deferred(explicit, context).trigger.poll_interval == 0.5

    def test_poll_interval_defaults_to_minute(self, cdst_site, context, unique):
        container = register_bucket(context, f"minute-{unique}")
        operator = RucioAddRuleOperator(
            task_id="stage_cdst", dids=container, rse_expression="BNL-DISK", wait_for_completion=True
        )
        assert deferred(operator, context).trigger.poll_interval == 60.0

    def test_invalid_poll_interval_extra_fails(self, rucio_conn, monkeypatch, context):
        monkeypatch.setenv("AIRFLOW_CONN_RUCIO_DEFAULT", connection_json(rucio_conn, poll_interval="soon"))
        operator = RucioAddRuleOperator(
            task_id="stage_cdst", dids="b2cal:x", rse_expression="BNL-DISK", wait_for_completion=True
        )
        with pytest.raises(ValueError, match="poll_interval 'soon'; use a positive number of seconds"):
            operator.resolve_poll_interval()

    def test_failed_wait_raises_with_message(self, context):
        operator = RucioAddRuleOperator(
            task_id="replicate_cdst", dids=["b2cal:x"], rse_expression="DESY-DISK"
        )
        event = {
            "status": "failed",
            "message": "1 of 1 rules stayed STUCK past the grace period",
            "rules": [],
        }
        with pytest.raises(AirflowException, match="stayed STUCK past the grace period"):
            operator.execute_complete(context, event)

    def test_bad_arguments_fail_at_construction(self):
        with pytest.raises(ValueError, match="copies 0 is invalid"):
            RucioAddRuleOperator(task_id="t", dids="b2cal:x", rse_expression="DESY-DISK", copies=0)
        with pytest.raises(ValueError, match="grouping 'FILE' is invalid"):
            RucioAddRuleOperator(task_id="t", dids="b2cal:x", rse_expression="DESY-DISK", grouping="FILE")


def _file_dids(container: str) -> list[str]:
    did = Did.parse(container)
    return [
        f"{item['scope']}:{item['name']}" for item in RucioHook().get_conn().list_files(did.scope, did.name)
    ]


class TestWiring:
    def test_xcom_outputs_set_dependencies(self):
        from airflow.sdk import DAG

        with DAG(dag_id="wiring", schedule=None):
            register = RucioRegisterCdstOperator(task_id="register_cdst", request_id="r1")
            at_site = RucioAddRuleOperator(
                task_id="cdst_at_site",
                dids=[register.output["container"]],
                rse_expression=register.output["rse"],
                expected_files=register.output["files"],
                wait_for_completion=True,
            )
        assert at_site.upstream_task_ids == {"register_cdst"}


class TestWaitForRules:
    def test_wait_by_did_and_expression(self, cdst_site, context, unique):
        register = RucioRegisterCdstOperator(
            task_id="register_cdst", request_id=f"wait-{unique}", site="BNL", bucket=[26, 1, 26, 10]
        )
        container = register.execute(context)["container"]
        RucioAddRuleOperator(task_id="pin", dids=container, rse_expression="BNL-DISK").execute(context)
        operator = RucioWaitForRulesOperator(
            task_id="wait_for_cdst", dids=[container], rse_expression="BNL-DISK", poll_interval=0.2
        )
        deferral = deferred(operator, context)
        assert deferral.trigger.watches[0]["did"] == container
        event = run_trigger(deferral.trigger, timeout=30)
        assert event["status"] == "success"
        assert event["rules"][0]["expected_locks"] == 4
        assert operator.execute_complete(context, event) == [event["rules"][0]["rule_id"]]

    def test_needs_rules_or_dids(self):
        with pytest.raises(ValueError, match="needs rule_ids, or dids with an rse_expression"):
            RucioWaitForRulesOperator(task_id="t")
        with pytest.raises(ValueError, match="dids without rse_expression"):
            RucioWaitForRulesOperator(task_id="t", dids=["b2cal:x"])


class TestSkims:
    def test_register_and_replicate_new_runs(self, rucio_conn, tmp_path, monkeypatch, context, unique):
        tag = f"bhabha_{unique}"
        set_site(monkeypatch, "KEK", tmp_path)
        files = write_run_files(tmp_path / "raw", tag, 26, [11, 12, 13], 2, ".root")
        register = RucioRegisterSkimsOperator(
            task_id="register_kek_skims", runs=[26, 0, 26, -1], data_tags=[tag]
        )
        summary = register.execute(context)
        assert summary["rse"] == "KEK-DISK"
        assert summary["files"] == 6
        assert len(summary["datasets"]) == 3

        replicate = RucioReplicateSkimsOperator(
            task_id="replicate_skims",
            destinations=["BNL-DISK"],
            data_tags=[tag],
            runs=[26, 12, 26, 13],
            lookback_hours=1,
            lifetime=86400,
            poll_interval=0.2,
        )
        deferral = deferred(replicate, context)
        assert len(deferral.trigger.watches) == 2
        skim_files = [
            Did("b2cal", f"skim/{tag}/e0026/r{path.parent.name[1:]}/{path.name}") for path in files[2:]
        ]

        async def transfer() -> None:
            await asyncio.sleep(0.4)
            await asyncio.to_thread(mark_available, "BNL-DISK", skim_files)

        event = run_trigger(deferral.trigger, transfer)
        rule_ids = replicate.execute_complete(context, event)
        assert len(rule_ids) == 2
        again = RucioReplicateSkimsOperator(
            task_id="replicate_skims", destinations="BNL-DISK", data_tags=tag, wait_for_completion=False
        )
        all_runs = again.execute(context)
        assert len(all_runs) == 3
        assert set(rule_ids) <= set(all_runs)
        assert len(RucioHook().list_did_rules(Did("b2cal", f"skim/{tag}/e0026/r00012"))) == 1

    def test_register_skips_without_site_connection(self, rucio_conn, context, monkeypatch):
        monkeypatch.delenv("AIRFLOW_CONN_B2CAL_SITE_KEK", raising=False)
        register = RucioRegisterSkimsOperator(task_id="register_kek_skims", data_tags=["hadron_calib"])
        with pytest.raises(AirflowSkipException, match="b2cal_site_kek"):
            register.execute(context)

    def test_no_new_datasets_means_no_wait(self, rucio_conn, context, unique):
        replicate = RucioReplicateSkimsOperator(
            task_id="replicate_skims", destinations=["BNL-DISK"], data_tags=[f"none_{unique}"]
        )
        assert replicate.execute(context) == []
