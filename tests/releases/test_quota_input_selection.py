"""A calibration's input selection reads only the runs of its bucket's skim quota."""

from __future__ import annotations

from b2cal.catalog import load_packaged_release
from b2cal.db import inventory, store
from b2cal.db.engine import session_scope
from b2cal.devservices.runregistry import generate_runs, write_storage_tree
from b2cal.filesources import DEFAULT_PATH_TEMPLATE
from b2cal.iov import IoV
from b2cal.request import parse_request
from b2cal.runs import SKIM_QUOTA, Run
from b2cal.runsync import CollectionScope, sync_runs
from b2cal.sites import parse_site_settings
from b2cal.skimquota import choose_bucket_quota
from b2cal_airflow.operators.calibration import CalibrationOperator

CATALOG = load_packaged_release()
RECORDS = generate_runs(experiments=(26,), runs_per_experiment=60)
BUCKET = IoV(26, 0, 26, -1)
CALIBRATION = "CDC badwire"
MUMU = "mumu_tight_or_highm_calib"
CONF = {
    "request_id": "prompt-e0026-quota",
    "kind": "prompt",
    "site": "BNL",
    "release": CATALOG.release,
    "bucket": BUCKET.as_list(),
    "calibrations": [CALIBRATION],
    "staging_tag": "staging_quota",
    "running_tag": "running",
    "requested_by": "manager",
}


def test_calibration_reads_only_quota_runs(plugin_db, tmp_path):
    write_storage_tree(RECORDS, tmp_path / "storage", files_per_skim=1)
    quota = choose_bucket_quota(
        CATALOG, [Run.from_registry(record) for record in RECORDS], BUCKET, target_pb=500.0, data_tags=[MUMU]
    )
    spec = parse_request(CONF, CATALOG)
    with session_scope(plugin_db) as session:
        store.import_catalog(session, CATALOG, source="test")
        store.save_request(session, spec, CATALOG)
        sync_runs(session, RECORDS, CollectionScope(min_experiment=26, max_experiment=26))
        inventory.save_bucket_quota(session, quota)
    extra = {
        "work_root": str(tmp_path / "jobs"),
        "storage_root": str(tmp_path / "storage"),
        "cdst_root": str(tmp_path / "cdst"),
        "path_template": DEFAULT_PATH_TEMPLATE,
    }
    site = parse_site_settings("BNL", extra, conn_id="b2cal_site_bnl")
    operator = CalibrationOperator(task_id="raw_phase", request_id=spec.uid, calibration=CALIBRATION)

    selections = operator._select_inputs(spec, CATALOG, site)

    selection = selections[MUMU]
    chosen = quota.quotas[MUMU].chosen_keys
    with_skim = {(record["experiment"], record["run"]) for record in RECORDS if MUMU in record["skims"]}
    assert set(selection.run_files) <= chosen
    assert len(selection.run_files) > 0
    assert len(chosen) < len(with_skim)
    step = next(step for step in selection.steps if step.category == SKIM_QUOTA)
    assert step.runs_dropped > 0
    assert all(f"/{MUMU}/" in path for path, _ in selection.files)
