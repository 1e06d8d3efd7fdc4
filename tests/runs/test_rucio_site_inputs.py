"""Input selection at a site whose connection reads the skims through Rucio, against a real server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from b2cal.caf import input_data_json
from b2cal.catalog import CDST_PHASE, RAW_PHASE, load_packaged_release
from b2cal.db import store
from b2cal.db.engine import session_scope
from b2cal.devservices.runregistry import generate_runs
from b2cal.explanations import load_selections
from b2cal.filesources import PathTemplateSource, RucioFileSource
from b2cal.iov import IoV
from b2cal.request import parse_request
from b2cal.runs import input_data
from b2cal.runsync import CollectionScope, sync_runs
from b2cal.sites import parse_site_settings

CATALOG = load_packaged_release()
CALIBRATION = "CDC badwire"
MUMU = "mumu_tight_or_highm_calib"
# An experiment of its own, so the skim datasets of this module cannot meet those of other tests on
# the session's Rucio server.
EXPERIMENT = 31
RECORDS = generate_runs(experiments=(EXPERIMENT,), runs_per_experiment=8)
BUCKET = IoV(EXPERIMENT, 0, EXPERIMENT, -1)
RUNS = [record["run"] for record in RECORDS]
#: Files per run at KEK-DISK, and the subset replicated at BNL-DISK. One run has a dataset at KEK
#: only, one has part of its files at BNL, and the last run of the bucket has no dataset at all.
AT_KEK = {run: ["s0.root", "s1.root"] for run in RUNS[:6]}
AT_BNL = {RUNS[0]: ["s0.root", "s1.root"], RUNS[2]: ["s0.root", "s1.root"], RUNS[3]: ["s0.root"]}
ONLY_AT_KEK = RUNS[1]


def write_skims(root: Path, files: dict[int, list[str]]) -> None:
    for run, names in files.items():
        folder = root / MUMU / f"e{EXPERIMENT:04d}" / f"r{run:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            # The same bytes in both trees, so a file registered at both RSEs has one checksum.
            (folder / name).write_bytes(f"{run}/{name}".encode())


@pytest.fixture
def replicated_skims(rucio_conn: Any, tmp_path: Path) -> dict[str, Any]:
    """Register the skims at KEK-DISK, then a part of them at BNL-DISK, as replication would leave them."""
    from b2cal.rucio import plan_skim_registration
    from b2cal_airflow.hooks.rucio import RucioHook

    hook = RucioHook()
    for rse, files in (("KEK-DISK", AT_KEK), ("BNL-DISK", AT_BNL)):
        storage = tmp_path / f"storage-{rse}"
        write_skims(storage, files)
        plan = plan_skim_registration(storage, runs=BUCKET, scope=rucio_conn.scope, rse=rse)
        hook.register(plan)
    yield {"client": hook.get_conn(), "scope": rucio_conn.scope, "rse_root": Path(rucio_conn.rse_root)}
    hook.close()


def expected_bnl_files(rse_root: Path, scope: str) -> dict[tuple[int, int], list[str]]:
    """Return the files at BNL-DISK per run, found in the RSE's folder on disk instead of through Rucio."""
    found: dict[tuple[int, int], list[str]] = {}
    for run, names in AT_BNL.items():
        folder = rse_root / "BNL-DISK" / scope / "skim" / MUMU / f"e{EXPERIMENT:04d}" / f"r{run:05d}"
        paths = sorted(str(path) for path in folder.glob("*.root"))
        assert [Path(path).name for path in paths] == sorted(names), folder
        found[(EXPERIMENT, run)] = paths
    return found


def rucio_site(tmp_path: Path, **extra: Any) -> Any:
    base = {
        "work_root": str(tmp_path / "jobs"),
        # Empty on purpose: every file the selection finds must come from Rucio.
        "storage_root": str(tmp_path / "no-skims-here"),
        "file_source": "rucio",
        "rucio_rse": "BNL-DISK",
    }
    return parse_site_settings("BNL", {**base, **extra}, conn_id="b2cal_site_bnl")


def prepare_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request_id: str) -> Any:
    """Store the catalog, a request of CDC badwire and the bucket's runs.

    Return the operator, the request and the plugin database URL.
    """
    from b2cal.db.engine import upgrade
    from b2cal_airflow.operators.calibration import CalibrationOperator

    url = f"sqlite:///{tmp_path / 'b2cal.db'}"
    upgrade(url)
    monkeypatch.setenv("AIRFLOW_CONN_B2CAL_DB", json.dumps({"conn_type": "generic", "extra": {"url": url}}))
    conf = {
        "request_id": request_id,
        "kind": "prompt",
        "site": "BNL",
        "release": CATALOG.release,
        "bucket": BUCKET.as_list(),
        "calibrations": [CALIBRATION],
        "staging_tag": f"staging_{request_id}",
        "running_tag": "running",
        "requested_by": "manager",
        # Only the data tag: no run filter drops a run, so the site's files alone decide.
        "filter_overrides": {CALIBRATION: {MUMU: [MUMU]}},
    }
    spec = parse_request(conf, CATALOG)
    with session_scope(url) as session:
        store.import_catalog(session, CATALOG, source="test")
        store.save_request(session, spec, CATALOG)
        sync_runs(session, RECORDS, CollectionScope(min_experiment=EXPERIMENT, max_experiment=EXPERIMENT))
    operator = CalibrationOperator(task_id="raw_phase", request_id=spec.uid, calibration=CALIBRATION)
    return operator, spec, url


def test_rucio_site_selects_replicas_at_rse(
    replicated_skims: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    operator, spec, url = prepare_request(tmp_path, monkeypatch, "prompt-e0031-rucio")
    expected = expected_bnl_files(replicated_skims["rse_root"], replicated_skims["scope"])

    selections = operator._select_inputs(spec, CATALOG, rucio_site(tmp_path))

    selection = selections[MUMU]
    assert selection.source == f"Rucio {replicated_skims['scope']}@BNL-DISK"
    chosen: dict[tuple[int, int], list[str]] = {}
    for path, key in selection.files:
        chosen.setdefault(key, []).append(path)
    assert {key: sorted(paths) for key, paths in chosen.items()} == expected
    assert selection.run_files == {key: len(paths) for key, paths in expected.items()}
    assert selection.runs_considered == len(RUNS)
    assert selection.runs_kept == len(AT_BNL)
    assert selection.dropped_by[MUMU] == len(RUNS) - len(AT_BNL)

    written = json.loads(input_data_json(input_data(selections)))
    pairs = sorted((path, tuple(key)) for path, key in written[MUMU])
    assert pairs == sorted((path, key) for key, paths in expected.items() for path in paths)
    for path, _ in pairs:
        assert Path(path).is_file()


def test_rucio_site_explains_missing_dataset(
    replicated_skims: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    operator, spec, url = prepare_request(tmp_path, monkeypatch, "prompt-e0031-explained")

    operator._select_inputs(spec, CATALOG, rucio_site(tmp_path))

    with session_scope(url) as session:
        [stored] = load_selections(session, spec.uid, CALIBRATION)
    runs = {(item["exp"], item["run"]): item for item in stored["runs"]}
    # A dataset at KEK-DISK only is not at the site: the run is dropped by the data tag step.
    assert runs[(EXPERIMENT, ONLY_AT_KEK)]["dropped_by"] == MUMU
    assert runs[(EXPERIMENT, RUNS[-1])]["dropped_by"] == MUMU
    assert runs[(EXPERIMENT, RUNS[3])]["files"] == 1
    assert runs[(EXPERIMENT, RUNS[0])]["files"] == 2
    step = next(step for step in stored["summary"]["steps"] if step["filter"] == MUMU)
    assert step["detail"] == f"no files at Rucio {replicated_skims['scope']}@BNL-DISK"
    assert step["runs_dropped"] == len(RUNS) - len(AT_BNL)
    assert stored["summary"]["source"] == f"Rucio {replicated_skims['scope']}@BNL-DISK"


def test_rucio_site_with_path_prefix_gives_paths(
    replicated_skims: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    operator, spec, _ = prepare_request(tmp_path, monkeypatch, "prompt-e0031-prefix")
    site = rucio_site(
        tmp_path,
        backend="HTCondor",
        backend_options={"path_prefix": "root://xrootd-door.bnl.invalid:1094"},
        rucio_scheme="file",
    )

    selections = operator._select_inputs(spec, CATALOG, site)

    expected = expected_bnl_files(replicated_skims["rse_root"], replicated_skims["scope"])
    paths = [path for path, _ in selections[MUMU].files]
    assert sorted(paths) == sorted(path for files in expected.values() for path in files)
    assert all(path.startswith("/") for path in paths)
    assert selections[MUMU].source.endswith("BNL-DISK (file)")


def test_rucio_site_without_replicas_fails(
    replicated_skims: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    operator, spec, url = prepare_request(tmp_path, monkeypatch, "prompt-e0031-empty")
    from airflow.sdk.exceptions import AirflowFailException

    # Nothing was replicated to DESY-DISK, although the datasets exist. A retry would select the same
    # nothing, so the task fails without retries.
    with pytest.raises(AirflowFailException, match=MUMU):
        operator._select_inputs(spec, CATALOG, rucio_site(tmp_path, rucio_rse="DESY-DISK"))

    with session_scope(url) as session:
        progress = store.get_progress(session, spec.uid, CALIBRATION)
    assert progress.job_state == "no_input"
    assert progress.inputs[MUMU]["runs_kept"] == 0


def test_rucio_site_reads_cdst_from_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from b2cal_airflow.operators.calibration import CalibrationOperator

    operator = CalibrationOperator(task_id="cdst_phase", request_id="r", calibration="any")
    site = rucio_site(tmp_path, cdst_root=str(tmp_path / "cdst"))

    with operator._input_source(site, CDST_PHASE, lister=None) as source:
        assert isinstance(source, PathTemplateSource)
        assert source.root == str(tmp_path / "cdst")


def test_path_site_reads_storage_root(tmp_path: Path):
    from b2cal_airflow.operators.calibration import CalibrationOperator

    operator = CalibrationOperator(task_id="raw_phase", request_id="r", calibration="any")
    site = rucio_site(tmp_path, file_source="path")

    with operator._input_source(site, RAW_PHASE, lister=None) as source:
        assert isinstance(source, PathTemplateSource)
        assert source.root == str(tmp_path / "no-skims-here")
        assert not isinstance(source, RucioFileSource)
