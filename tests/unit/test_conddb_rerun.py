"""An upload that is already complete passes even when the tag no longer accepts changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from b2cal.conddb import ConditionsDB, ConditionsDBError
from b2cal.devservices.config import DevServicesConfig
from b2cal.devservices.server import start_services


@pytest.fixture(scope="module")
def client():
    config = DevServicesConfig.from_env(runs_per_experiment=3)
    with start_services(jira_port=0, conddb_port=0, runregistry_port=0, config=config) as services:
        yield ConditionsDB(services.conddb_url, token=config.conddb_token)


def write_folder(folder: Path, content: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "database.txt").write_text("dbstore/BeamSpot 1 26,0,-1,-1\n")
    (folder / "dbstore_BeamSpot_rev_1.root").write_bytes(content)
    return folder


def test_complete_upload_to_validated_tag_is_a_no_op(client, tmp_path):
    folder = write_folder(tmp_path / "db", b"first")
    client.prepare_staging_tag("staging_rerun", "rerun test")
    client.upload_database_folder(folder, "staging_rerun")
    client.set_global_tag_state("staging_rerun", "TESTING")
    client.set_global_tag_state("staging_rerun", "VALIDATED")
    again = client.upload_database_folder(folder, "staging_rerun")
    assert again.created_iovs == 0
    assert again.uploaded_payloads == 0
    assert again.skipped_iovs == 1
    assert len(client.global_tag_payloads("staging_rerun")) == 1


def test_new_content_to_validated_tag_is_rejected(client, tmp_path):
    client.prepare_staging_tag("staging_changed", "changed content test")
    client.upload_database_folder(write_folder(tmp_path / "a", b"first"), "staging_changed")
    client.set_global_tag_state("staging_changed", "TESTING")
    client.set_global_tag_state("staging_changed", "VALIDATED")
    with pytest.raises(ConditionsDBError, match="'staging_changed' is VALIDATED"):
        client.upload_database_folder(write_folder(tmp_path / "b", b"second"), "staging_changed")
    assert len(client.global_tag_payloads("staging_changed")) == 1
