"""The site inventory in the plugin database, and requests rejected for a release their site lacks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from conftest import CHANGED, NEW, OLD, new_release, old_release

from b2cal.catalog import load_packaged_release, load_release
from b2cal.db import inventory, store
from b2cal.db.engine import session_scope
from b2cal.releases import ReleaseProbe, plan_discovery
from b2cal.request import RequestError, parse_request
from b2cal_airflow.operators.releases import discovery_sites
from b2cal_airflow.operators.request import PrepareRequestOperator

PACKAGED = load_packaged_release()


def probe_of(content: dict) -> ReleaseProbe:
    return ReleaseProbe(content["basf2_release"], settings=[dict(entry) for entry in content["calibrations"]])


def discover(session, site, contents, states=None):
    listed = [content["basf2_release"] for content in contents]
    plan = plan_discovery(
        site, listed, inventory.site_release_states(session, site) if states is None else states
    )
    probes = [probe_of(content) for content in contents if content["basf2_release"] in plan.probe]
    return inventory.apply_discovery(session, plan, probes)


def request_conf(**changes):
    conf = {
        "request_id": "prompt-e0026-b01",
        "kind": "prompt",
        "site": "BNL",
        "release": "release-11-00-00",
        "bucket": [26, 1, 26, 400],
        "calibrations": ["CDC badwire"],
        "staging_tag": "staging_b01",
        "running_tag": "running",
        "requested_by": "manager",
    }
    conf.update(changes)
    return conf


def test_apply_discovery_marks_back_release_available(plugin_db):
    with session_scope(plugin_db) as session:
        discover(session, "BNL", [old_release()])
        discover(session, "BNL", [new_release()])
        assert inventory.release_sites(session, OLD) == {"BNL": "unavailable"}

        outcome = discover(session, "BNL", [old_release(), new_release()])

        assert outcome.available == [OLD]
        assert inventory.available_releases(session, "BNL") == [OLD, NEW]


def test_notices_skipped_on_first_inventory_then_pending(plugin_db):
    with session_scope(plugin_db) as session:
        discover(session, "BNL", [old_release()])
        assert inventory.pending_notices(session) == []

        discover(session, "BNL", [old_release(), new_release()])

        assert [(row.site, row.release) for row in inventory.pending_notices(session)] == [("BNL", NEW)]
        inventory.mark_notice_sent(session, "BNL", NEW, "CAL-7")
        assert inventory.pending_notices(session) == []


def test_differing_settings_fail_second_site(plugin_db):
    other = old_release()
    entry = next(item for item in other["calibrations"] if item["name"] == CHANGED)
    entry["produced_payloads"] = [*entry["produced_payloads"], "CDCExtraPayload"]
    with session_scope(plugin_db) as session:
        discover(session, "BNL", [old_release()])

        outcome = discover(session, "DESY", [other])

        assert outcome.available == []
        assert "CDCExtraPayload" in outcome.failed[OLD]
        assert inventory.release_sites(session, OLD) == {"BNL": "available", "DESY": "failed"}
        assert [error.stage for error in inventory.discovery_errors(session, site="DESY")] == ["compare"]
        # The stored catalog is the first site's.
        assert "CDCExtraPayload" not in store.load_catalog(session, OLD)[CHANGED].produced_payloads


def test_invalid_settings_fail_import_with_value(plugin_db):
    bad = old_release()
    bad["calibrations"][0]["input_data_filters"] = {
        name: ["no such filter"] for name in bad["calibrations"][0]["input_data_names"]
    }
    with session_scope(plugin_db) as session:
        outcome = discover(session, "BNL", [bad])

        assert "'no such filter'" in outcome.failed[OLD]
        assert OLD not in store.list_releases(session)
        assert inventory.discovery_errors(session)[0].stage == "import"


def test_reference_vocabulary_is_newest_release(plugin_db):
    newer = new_release()
    newer["input_data_filters"] = {
        **newer["input_data_filters"],
        "Run Type": ["physics", "cosmic", "calibration"],
    }
    with session_scope(plugin_db) as session:
        assert inventory.reference_vocabulary(session)["Run Type"] == list(PACKAGED.vocabulary["Run Type"])
        store.import_catalog(session, load_release(old_release()), source="test")
        store.import_catalog(session, load_release(newer), source="test")

        assert inventory.reference_vocabulary(session)["Run Type"] == ["physics", "cosmic", "calibration"]


def test_diff_to_previous_release(plugin_db):
    with session_scope(plugin_db) as session:
        store.import_catalog(session, load_release(old_release()), source="test")
        assert inventory.diff_to_previous(session, OLD) is None
        store.import_catalog(session, load_release(new_release()), source="test")

        diff = inventory.diff_to_previous(session, NEW)

        assert diff is not None
        assert diff.old_release == OLD
        assert CHANGED in diff.changed


def test_register_release_needs_imported_catalog(plugin_db):
    with session_scope(plugin_db) as session, pytest.raises(store.NotFoundError, match="not imported"):
        inventory.register_release(session, "BNL", "release-99-00-00", source="test")


def test_parse_request_rejects_release_missing_at_site():
    with pytest.raises(RequestError, match="not available at site 'BNL'.*release-10-00-00"):
        parse_request(request_conf(), PACKAGED, site_releases=["release-10-00-00"])


def test_parse_request_accepts_release_at_site():
    spec = parse_request(request_conf(), PACKAGED, site_releases=["release-11-00-00"])

    assert spec.release == "release-11-00-00"


def prepare(conf, started_by=None):
    dag_run = SimpleNamespace(triggering_user_name=started_by)
    return PrepareRequestOperator(task_id="validate_request").execute(
        {"params": conf, "run_id": "manual__test", "dag_run": dag_run}
    )


def test_prepare_request_refuses_release_site_lacks(plugin_db):
    with session_scope(plugin_db) as session:
        store.import_catalog(session, PACKAGED, source="test")
        inventory.register_release(session, "DESY", PACKAGED.release, source="test")

    with pytest.raises(AirflowException, match="not available at site 'BNL'; releases available there: none"):
        prepare(request_conf())

    with session_scope(plugin_db) as session:
        with pytest.raises(store.NotFoundError):
            store.get_request(session, "prompt-e0026-b01")


def test_prepare_request_invalid_input_is_not_retried(plugin_db):
    with session_scope(plugin_db) as session:
        store.import_catalog(session, PACKAGED, source="test")
        inventory.register_release(session, "BNL", PACKAGED.release, source="test")

    for conf in (
        request_conf(release="release-99-00-00"),
        request_conf(bucket=[26, 50, 26, 10]),
        request_conf(calibrations=["No Such Calib"]),
    ):
        with pytest.raises(AirflowFailException, match="invalid processing request"):
            prepare(conf)


def test_prepare_request_accepts_release_at_site(plugin_db):
    with session_scope(plugin_db) as session:
        store.import_catalog(session, PACKAGED, source="test")
        inventory.register_release(session, "BNL", PACKAGED.release, source="test")

    result = prepare(request_conf())

    assert result["request_id"] == "prompt-e0026-b01"
    assert "CDC badwire" in result["raw"]


def test_prepare_request_takes_site_in_any_case(plugin_db):
    with session_scope(plugin_db) as session:
        store.import_catalog(session, PACKAGED, source="test")
        inventory.register_release(session, "BNL", PACKAGED.release, source="test")

    prepare(request_conf(site="bnl"))

    with session_scope(plugin_db) as session:
        assert store.get_request(session, "prompt-e0026-b01").site == "BNL"


def test_canonical_site_leaves_unknown_and_ambiguous_names(plugin_db):
    with session_scope(plugin_db) as session:
        store.import_catalog(session, PACKAGED, source="test")
        inventory.register_release(session, "Desy", PACKAGED.release, source="test")
        inventory.register_release(session, "DESY", PACKAGED.release, source="test")

        assert inventory.canonical_site(session, "CERN") == "CERN"
        assert inventory.canonical_site(session, "desy") == "desy"
        assert inventory.canonical_site(session, "kek", also_known=["KEK"]) == "KEK"


@pytest.mark.parametrize(("started_by", "requester"), [("alice", "alice"), (None, "manager")])
def test_prepare_request_records_who_started_the_run(plugin_db, started_by, requester):
    with session_scope(plugin_db) as session:
        store.import_catalog(session, PACKAGED, source="test")
        inventory.register_release(session, "BNL", PACKAGED.release, source="test")

    prepare(request_conf(requested_by="manager"), started_by=started_by)

    with session_scope(plugin_db) as session:
        assert store.get_request(session, "prompt-e0026-b01").requested_by == requester


def test_discovery_sites_from_request_or_variable(monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_B2CAL_INVENTORY_SITES", '["BNL", "DESY", "BNL"]')

    assert discovery_sites(["KEK"]) == ["KEK"]
    assert discovery_sites([]) == ["BNL", "DESY"]


def test_discovery_sites_rejects_invalid_variable(monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_B2CAL_INVENTORY_SITES", "BNL")

    with pytest.raises(AirflowException, match="JSON list of site names"):
        discovery_sites(None)
