from __future__ import annotations

import pytest
from sqlalchemy import inspect, select

from b2cal.catalog import load_packaged_release
from b2cal.db import store
from b2cal.db.engine import get_engine, session_scope, upgrade
from b2cal.db.models import AuditEntry
from b2cal.request import parse_request

CATALOG = load_packaged_release()
CONF = {
    "request_id": "r1",
    "site": "BNL",
    "release": "release-11-00-00",
    "bucket": [26, 1, 26, 50],
    "calibrations": ["CDC badwire"],
    "staging_tag": "staging_r1",
    "running_tag": "running",
    "requested_by": "manager",
}


def exercise(url: str) -> None:
    upgrade(url)
    upgrade(url)
    tables = set(inspect(get_engine(url)).get_table_names())
    assert {"b2cal_request", "b2cal_calibration_progress", "b2cal_audit", "b2cal_release"} <= tables
    with session_scope(url) as session:
        store.import_catalog(session, CATALOG, source="test")
    with session_scope(url) as session:
        store.import_catalog(session, CATALOG, source="test again")
    with session_scope(url) as session:
        loaded = store.load_catalog(session, "release-11-00-00")
        assert loaded.names == CATALOG.names
        spec = parse_request(CONF, loaded)
        first = store.save_request(session, spec, loaded)
        again = store.save_request(session, spec, loaded)
        assert first.id == again.id
        assert [item.calibration for item in first.progress] == ["CDC Tracking", "CDC badwire"]
    long_folder = "/work/" + "deep/" * 60 + "attempt-1"
    with session_scope(url) as session:
        store.update_progress(
            session, "r1", "CDC badwire", job_state="running", job_id=long_folder, actor="tester"
        )
    with session_scope(url) as session:
        assert store.get_progress(session, "r1", "CDC badwire").job_state == "running"
        assert store.get_progress(session, "r1", "CDC badwire").job_id == long_folder
        actions = session.scalars(select(AuditEntry.action).where(AuditEntry.request_uid == "r1")).all()
        assert actions == ["submit_request", "update_progress"]
    with session_scope(url) as session:
        store.set_request_state(session, "r1", "tickets_created")
    with session_scope(url) as session:
        assert store.advance_request_state(
            session, "r1", ["tickets_created"], "raw_phase", first="CDC Tracking"
        )
    with session_scope(url) as session:
        # A second calibration of the phase finds the request moved on already.
        assert not store.advance_request_state(session, "r1", ["tickets_created"], "raw_phase")
        assert store.get_request(session, "r1").state == "raw_phase"
        states = session.scalars(
            select(AuditEntry.message).where(
                AuditEntry.request_uid == "r1", AuditEntry.action == "request_state"
            )
        ).all()
        assert states == ["tickets_created", "raw_phase"]
    with session_scope(url) as session:
        with pytest.raises(store.NotFoundError, match="'missing'"):
            store.get_request(session, "missing")
        with pytest.raises(store.NotFoundError, match="release-0"):
            store.load_catalog(session, "release-0")


def test_store_on_sqlite(tmp_path):
    exercise(f"sqlite:///{tmp_path / 'b2cal.db'}")


def test_rollback_keeps_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'b2cal.db'}"
    upgrade(url)
    with pytest.raises(RuntimeError), session_scope(url) as session:
        store.import_catalog(session, CATALOG, source="test")
        raise RuntimeError("interrupted")
    with session_scope(url) as session:
        assert store.list_releases(session) == []


@pytest.mark.postgres
def test_store_on_postgres(postgres_url):
    exercise(postgres_url)
