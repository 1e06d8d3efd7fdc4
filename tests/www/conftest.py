"""Fixtures of the page tests: a plugin database with the packaged catalog, stand-in users and systems.

The pages run in a TestClient. Airflow's login is replaced by a user fixture shaped like FAB's user
(``username``, ``roles``, ``perms``), and Airflow's REST API by a recorder, so these tests need no
Airflow server; ``tests/integration`` runs the same pages inside a real API server.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from b2cal.catalog import Catalog, load_packaged_release, load_release
from b2cal.db import runcache, store
from b2cal.db.engine import get_engine, session_scope, upgrade
from b2cal.devservices.runregistry import generate_runs
from b2cal_airflow import auth
from b2cal_airflow.www.airflow_api import AirflowAPIError, airflow_client
from b2cal_airflow.www.app import create_app
from b2cal_airflow.www.context import PageSettings, current_user

RELEASE = "release-11-00-00"
NEXT_RELEASE = "release-11-01-00"
RUNS = generate_runs(seed=7, experiments=(25, 26), runs_per_experiment=150)
CSRF_INPUT = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')


@dataclass
class Role:
    name: str


@dataclass
class User:
    """Shaped like FAB's User as ``get_user_from_token`` returns it."""

    username: str
    roles: list[Role]
    perms: set[tuple[str, str]]

    def get_name(self) -> str:
        return self.username

    def get_id(self) -> str:
        return self.username


def make_user(username: str, *roles: str) -> User:
    """Return a user with the product roles' permissions."""
    perms: set[tuple[str, str]] = set()
    for role in roles:
        perms |= auth.role_permissions(role)
    return User(username, [Role(role) for role in roles], perms)


USERS = {
    "manager": make_user("manager", auth.MANAGER_ROLE),
    # FAB gives Airflow's Admin role every permission, the product's included, but not the product role.
    "admin": User(
        "admin", [Role("Admin")], set().union(*(auth.role_permissions(r) for r in auth.PRODUCT_ROLES))
    ),
    "expert": make_user("expert", auth.EXPERT_ROLE),
    "viewer": make_user("viewer", auth.VIEWER_ROLE),
}


class FakeRegistry:
    """The run registry client's ``iter_runs`` over a fixed run list; counts the calls."""

    def __init__(self, runs: list[dict[str, Any]]) -> None:
        self.runs = runs
        self.calls: list[dict[str, Any]] = []

    def iter_runs(self, **filters: Any) -> Iterator[dict[str, Any]]:
        self.calls.append(filters)
        for run in self.runs:
            if run["experiment"] < filters.get("min_experiment", 0):
                continue
            if run["experiment"] > filters.get("max_experiment", 10**9):
                continue
            if run["run"] < filters.get("min_run", 0) or run["run"] > filters.get("max_run", 10**9):
                continue
            yield run


@dataclass
class FakeAirflow:
    """Records the REST API calls the pages make; ``hitl`` is what the sign-off task shows.

    ``dag_params`` are the DAG's params as Airflow's DAG details return them; None stands for a DAG
    that Airflow does not have.

    Like Airflow, it rejects a second run with the same DAG and run id, with ``duplicate_status``:
    409, or 500 as Airflow on SQLite returns while the first insert still has the database locked.

    ``runs`` are DAG runs that Airflow has besides the triggered ones, by run id, each with its
    ``state``. ``run_updates`` records the state changes of DAG runs, and ``run_update_error``, when
    set, is raised instead of recording one.
    """

    triggered: list[dict[str, Any]] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)
    hitl: dict[str, Any] | None = None
    refuse: AirflowAPIError | None = None
    trigger_delay: float = 0.0
    duplicate_status: int = 409
    dag_params: dict[str, Any] | None = None
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    run_updates: list[dict[str, Any]] = field(default_factory=list)
    run_update_error: AirflowAPIError | None = None

    async def trigger(self, dag_id: str, run_id: str, conf: dict[str, Any], note: str = "") -> dict[str, Any]:
        if self.refuse is not None:
            raise self.refuse
        if self.trigger_delay:
            await asyncio.sleep(self.trigger_delay)
        if any(call["dag_id"] == dag_id and call["run_id"] == run_id for call in self.triggered):
            # Airflow's dag_run table has a unique constraint on (dag_id, run_id).
            if self.duplicate_status == 409:
                raise AirflowAPIError(
                    409, str({"reason": "Unique constraint violation", "statement": "INSERT"})
                )
            raise AirflowAPIError(self.duplicate_status, "Database error")
        self.triggered.append({"dag_id": dag_id, "run_id": run_id, "conf": conf, "note": note})
        return {"dag_run_id": run_id}

    async def get_run(self, dag_id: str, run_id: str) -> dict[str, Any] | None:
        if run_id in self.runs:
            return {"dag_run_id": run_id, **self.runs[run_id]}
        for call in self.triggered:
            if call["dag_id"] == dag_id and call["run_id"] == run_id:
                return {"dag_run_id": run_id, "conf": call["conf"], "state": "queued"}
        return None

    async def set_run_state(self, dag_id: str, run_id: str, state: str, note: str = "") -> dict[str, Any]:
        if self.run_update_error is not None:
            raise self.run_update_error
        run = await self.get_run(dag_id, run_id)
        if run is None:
            raise AirflowAPIError(
                404, f"The DagRun with dag_id: `{dag_id}` and run_id: `{run_id}` was not found"
            )
        self.run_updates.append({"dag_id": dag_id, "run_id": run_id, "state": state, "note": note})
        self.runs[run_id] = {**self.runs.get(run_id, {}), "state": state, "note": note}
        return {**run, "state": state, "note": note}

    async def dag_details(self, dag_id: str) -> dict[str, Any] | None:
        if self.dag_params is None:
            return None
        return {"dag_id": dag_id, "params": self.dag_params}

    async def hitl_detail(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1
    ) -> dict[str, Any] | None:
        return self.hitl

    async def respond(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        option: str,
        params_input: dict[str, Any] | None = None,
        map_index: int = -1,
    ) -> dict[str, Any]:
        if self.refuse is not None:
            raise self.refuse
        self.answers.append(
            {"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "option": option, "params": params_input}
        )
        if self.hitl is not None:
            self.hitl = {**self.hitl, "response_received": True, "chosen_options": [option]}
        return dict(self.hitl or {})


@dataclass
class Pages:
    """A TestClient on the pages with the stand-ins, and a way to log in as a user."""

    client: TestClient
    app: Any
    db_url: str
    registry: FakeRegistry
    airflow: FakeAirflow
    problems: dict[str, str]

    def login(self, name: str) -> None:
        """Act as one of :data:`USERS` from now on."""
        user = USERS[name]
        self.app.dependency_overrides[current_user] = lambda: user
        self.client.cookies.set("_token", f"session-of-{name}")

    def csrf(self, path: str) -> str:
        """Return the CSRF token of a page's form."""
        response = self.client.get(path)
        assert response.status_code == 200, response.text
        match = CSRF_INPUT.search(response.text)
        assert match, f"no CSRF field on {path}"
        return match.group(1)


def next_release() -> Catalog:
    """The packaged catalog changed as a later release might: one added, one removed, two changed."""
    data = load_packaged_release(RELEASE).to_dict()
    data["basf2_release"] = NEXT_RELEASE
    data["calibrations"] = [item for item in data["calibrations"] if item["name"] != "Example Complex"]
    for item in data["calibrations"]:
        if item["name"] == "CDC badwire":
            item["expert_config"] = {"min_hits": 100, "wire_list": []}
        if item["name"] == "KLM time":
            item["expert_username"] = "klm.expert2"
    data["calibrations"].append(
        {
            "name": "SVD occupancy",
            "expert_username": "svd.expert",
            "subsystem": "SVD",
            "description": "Occupancy per strip",
            "input_data_formats": ["raw"],
            "input_data_names": ["hadron_calib"],
            "input_data_filters": {"hadron_calib": ["hadron_calib", "physics", "Good"]},
            "depends_on": ["CDC Tracking"],
            "expert_config": {},
            "produced_payloads": ["SVDOccupancy"],
        }
    )
    return load_release(data)


@pytest.fixture
def db_url(tmp_path: Path) -> Iterator[str]:
    """A migrated plugin database with the packaged catalog and a later release imported."""
    url = f"sqlite:///{tmp_path / 'b2cal.db'}"
    upgrade(url)
    with session_scope(url) as session:
        store.import_catalog(session, load_packaged_release(RELEASE), source="test")
        store.import_catalog(session, next_release(), source="test")
    yield url
    get_engine(url).dispose()


@pytest.fixture
def pages(db_url: str, tmp_path: Path) -> Iterator[Pages]:
    """The pages on a fresh database, logged in as the calibration manager."""
    registry = FakeRegistry(RUNS)
    airflow = FakeAirflow()
    problems: dict[str, str] = {}
    docs = tmp_path / "docs"
    docs.mkdir()
    settings = PageSettings(
        db_url=lambda: db_url,
        jira_url=lambda: "http://jira.test",
        run_registry=lambda: registry,
        site_problem=lambda site: problems.get(f"site:{site}"),
        running_tag_problem=lambda tag: problems.get(f"tag:{tag}"),
        secret=lambda: b"test secret",
        docs_dir=docs,
    )
    app = create_app(settings)
    app.dependency_overrides[airflow_client] = lambda: airflow
    with TestClient(app, root_path="/b2cal") as client:
        result = Pages(client, app, db_url, registry, airflow, problems)
        result.login("manager")
        yield result


@pytest.fixture
def cached_runs(db_url: str) -> list[dict[str, Any]]:
    """Store the test runs as collected runs."""
    with session_scope(db_url) as session:
        runcache.store_runs(session, RUNS)
    return RUNS
