"""Fixtures of the sign-off tests: the development Jira and conditions database, a plugin database
holding one request whose tickets exist, and Airflow connections pointing at all three.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Airflow reads its home when first imported; keep it out of the user's ~/airflow.
if "AIRFLOW_HOME" not in os.environ:
    _home = tempfile.mkdtemp(prefix="b2cal-signoff-tests-airflow-")
    os.environ["AIRFLOW_HOME"] = _home
    import atexit

    atexit.register(shutil.rmtree, _home, True)

from signoff_support import CATALOG, CONFIG, PAYLOADS, RUNNING_TAG, Bucket  # noqa: E402

from b2cal.db import store  # noqa: E402
from b2cal.db.engine import session_scope, upgrade  # noqa: E402
from b2cal.devservices.server import DevServices, start_services  # noqa: E402
from b2cal.request import parse_request  # noqa: E402
from b2cal.tickets import plan_tickets  # noqa: E402


@pytest.fixture(scope="session")
def services() -> Iterator[DevServices]:
    handle = start_services(jira_port=0, conddb_port=0, runregistry_port=0, config=CONFIG)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def bucket(
    request: pytest.FixtureRequest, services: DevServices, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Bucket:
    """Return a request whose staging tag exists and is empty, next to a RUNNING tag with old payloads.

    The request selects "CDC badwire", or the calibrations given as the fixture's indirect parameter.
    """
    selected = list(getattr(request, "param", None) or ["CDC badwire"])
    services.conddb_state.reset()
    services.jira_state.reset()
    db_url = f"sqlite:///{tmp_path / 'b2cal.db'}"
    upgrade(db_url)
    conf = {
        "request_id": "prompt-e0026-b02",
        "kind": "prompt",
        "site": "BNL",
        "release": CATALOG.release,
        "bucket": [26, 100, 26, 200],
        "calibrations": selected,
        "staging_tag": "staging_e0026_b02",
        "running_tag": RUNNING_TAG,
        "requested_by": "manager",
    }
    result = Bucket(services, db_url, conf, tmp_path)
    with session_scope(db_url) as session:
        store.import_catalog(session, CATALOG, source="test")
        spec = parse_request(conf, store.load_catalog(session, CATALOG.release))
        store.save_request(session, spec, CATALOG).dag_run_id = "run-1"
    plan = plan_tickets(
        CATALOG,
        spec.calibrations,
        request_uid=spec.uid,
        project=CONFIG.jira_projects[0],
        kind=spec.kind,
        site=spec.site,
        bucket=spec.bucket.as_text(),
        staging_tag=spec.staging_tag,
    )
    result.keys = result.tree().ensure(plan)
    with session_scope(db_url) as session:
        for name, key in result.keys.items():
            store.update_progress(session, spec.uid, name, ticket_key=key, ticket_state="waiting_for_expert")

    client = result.conddb()
    client.create_global_tag(RUNNING_TAG, "running")
    old = tmp_path / "old"
    old.mkdir()
    for name in PAYLOADS:
        (old / f"dbstore_{name}_rev_1.root").write_bytes(f"{name}-old".encode())
    (old / "database.txt").write_text("".join(f"dbstore/{name} 1 26,0,-1,-1\n" for name in PAYLOADS))
    client.upload_database_folder(old, RUNNING_TAG)
    client.set_global_tag_state(RUNNING_TAG, "RUNNING")
    client.create_global_tag(conf["staging_tag"], "staging")

    connections = {
        "B2CAL_DB": {"conn_type": "generic", "extra": {"url": db_url}},
        "B2CAL_CONDDB": {"conn_type": "http", "host": services.conddb_url, "password": CONFIG.conddb_token},
        "B2CAL_JIRA": {
            "conn_type": "jira",
            "host": services.jira_url,
            "login": CONFIG.jira_bot_username,
            "password": CONFIG.jira_bot_password,
            "extra": {"project": CONFIG.jira_projects[0]},
        },
    }
    for name, value in connections.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{name}", json.dumps(value))
    return result
