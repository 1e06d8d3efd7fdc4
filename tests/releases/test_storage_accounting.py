"""Storage accounting of a bucket: skims and cDSTs from the site's files, payloads from the conditions DB."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import set_ssh_site

from b2cal.catalog import load_packaged_release
from b2cal.conddb import ConditionsDB
from b2cal.db import inventory, store
from b2cal.db.engine import session_scope
from b2cal.db.runmodels import BucketRecord
from b2cal.devservices.config import DevServicesConfig
from b2cal.devservices.runregistry import generate_runs, write_storage_tree
from b2cal.devservices.server import DevServices, start_services
from b2cal.filesources import FileEntry, PathTemplateSource, StaticFileSource
from b2cal.iov import IoV
from b2cal.runsync import CollectionScope, sync_runs
from b2cal.storage import CDST, PAYLOAD, SKIM, format_bytes, measure_bucket, measure_files, measure_payloads
from b2cal_airflow.operators.inventory import StorageAccountingOperator

BUCKET = IoV(26, 0, 26, -1)
RECORDS = generate_runs(experiments=(26,), runs_per_experiment=12)


@pytest.fixture(scope="module")
def services() -> Iterator[DevServices]:
    handle = start_services(jira_port=0, conddb_port=0, runregistry_port=0, config=DevServicesConfig())
    try:
        yield handle
    finally:
        handle.stop()


def conddb(services: DevServices) -> ConditionsDB:
    return ConditionsDB(services.conddb_url, token=services.config.conddb_token)


def write_database(folder: Path, payloads: dict[str, int]) -> dict[str, int]:
    """Write a local database folder with one payload file of the given size per name; return the sizes."""
    folder.mkdir(parents=True)
    lines = []
    for name, size in payloads.items():
        (folder / f"dbstore_{name}_rev_1.root").write_bytes(b"root" + os.urandom(size - 4))
        lines.append(f"dbstore/{name} 1 26,0,-1,-1")
    (folder / "database.txt").write_text("\n".join(lines) + "\n")
    return payloads


def test_files_counted_per_tag_with_unsized_ones():
    source = StaticFileSource(
        {
            ("hadron_calib", (26, 1)): [FileEntry("/a", size=100), FileEntry("/b", size=50)],
            ("hadron_calib", (26, 2)): [FileEntry("/c")],
            ("hadron_calib", (27, 1)): [FileEntry("/d", size=7)],
        }
    )

    (line,) = measure_files(source, SKIM, ["hadron_calib"], [(26, 1), (26, 2)])

    assert (line.files, line.bytes, line.unsized_files) == (3, 150, 1)


def test_payloads_counted_once_with_file_sizes(services, tmp_path):
    client = conddb(services)
    sizes = write_database(tmp_path / "db", {"CDCBadWires": 3000, "BeamSpot": 1234})
    for tag in ("staging_a", "staging_b"):
        client.create_global_tag(tag, "test")
        client.upload_database_folder(tmp_path / "db", tag)

    line = measure_payloads(client, ["staging_a", "staging_b", "staging_missing"])

    assert line.files == 2
    assert line.bytes == sum(sizes.values())
    assert line.unsized_files == 0


def test_bucket_report_from_local_tree(services, tmp_path):
    write_storage_tree(RECORDS, tmp_path / "skims", files_per_skim=2)
    write_storage_tree(RECORDS[:3], tmp_path / "cdst", files_per_skim=1)
    keys = [(record["experiment"], record["run"]) for record in RECORDS]
    expected_skims = sum(
        path.stat().st_size
        for path in (tmp_path / "skims").rglob("*.root")
        if path.parts[-4] == "hadron_calib"
    )

    report = measure_bucket(
        BUCKET,
        "BNL",
        keys,
        ["hadron_calib"],
        skim_source=PathTemplateSource(tmp_path / "skims"),
        cdst_source=PathTemplateSource(tmp_path / "cdst"),
    )

    assert report.total(SKIM) == expected_skims
    assert report.total(CDST) == sum(
        path.stat().st_size
        for path in (tmp_path / "cdst").rglob("*.root")
        if path.parts[-4] in ("raw", "hadron_calib")
    )
    assert report.total(PAYLOAD) == 0
    assert "skims " in report.explain()


def test_format_bytes_uses_decimal_units():
    assert format_bytes(350 * 10**9) == "350.0 GB"
    assert format_bytes(13.2 * 10**12) == "13.2 TB"
    assert format_bytes(999) == "999 B"


def test_operator_measures_open_bucket_over_ssh(services, plugin_db, sshd, software, monkeypatch, tmp_path):
    storage = software.root / "storage"
    write_storage_tree(RECORDS, storage, files_per_skim=1)
    set_ssh_site(monkeypatch, "DESY", sshd, software)
    monkeypatch.setenv(
        "AIRFLOW_CONN_B2CAL_CONDDB",
        json.dumps(
            {"conn_type": "http", "host": services.conddb_url, "password": services.config.conddb_token}
        ),
    )
    catalog = load_packaged_release()
    with session_scope(plugin_db) as session:
        store.import_catalog(session, catalog, source="test")
        inventory.register_release(session, "DESY", catalog.release, source="test")
        sync_runs(session, RECORDS, CollectionScope(min_experiment=26, max_experiment=26))
        session.add(
            BucketRecord(
                name="e26", exp_low=26, run_low=0, exp_high=26, run_high=-1, target_luminosity_pb=1.0
            )
        )

    result = StorageAccountingOperator(task_id="measure_storage", site="DESY").execute({})

    assert list(result) == ["e26"]
    expected = sum(path.stat().st_size for path in storage.rglob("*.root") if path.parts[-4] != "raw")
    with session_scope(plugin_db) as session:
        totals = inventory.storage_usage(session, BUCKET)
        lines = inventory.storage_lines(session, BUCKET, "DESY")
    assert totals["DESY"][SKIM] == expected
    assert totals["DESY"][CDST] == 0
    assert {line.kind for line in lines} == {SKIM, CDST, PAYLOAD}
    assert all(line.source.startswith(str(storage)) for line in lines if line.kind == SKIM)
