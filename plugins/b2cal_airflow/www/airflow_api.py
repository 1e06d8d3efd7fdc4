"""Call Airflow's own REST API from the calibration pages, as the logged-in user.

Triggering a request, responding to the sign-off and cancelling a request go through Airflow's
public endpoints (``POST /api/v2/dags/{dag_id}/dagRuns``, ``PATCH .../hitlDetails`` and
``PATCH /api/v2/dags/{dag_id}/dagRuns/{dag_run_id}``) with the user's own JWT, so Airflow applies its
permissions, validates the input and writes its audit log exactly as for its own UI. The request
form also reads the DAG's params (``GET /api/v2/dags/{dag_id}/details``) for the default running
tag. The calls do not leave the process: they go to the API server's application
object through an ASGI transport. :class:`RootAppMiddleware`, installed by the plugin on the whole
API server, gives the pages that application.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any
from urllib.parse import quote

import httpx
from fastapi import Depends, HTTPException, Request

from b2cal_airflow.www.context import request_token

log = logging.getLogger(__name__)

ROOT_APP_KEY = "b2cal_root_app"


class RootAppMiddleware:
    """Remember, for the plugin's pages, the API server application that a request entered."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and "app" in scope:
            scope.setdefault("state", {})[ROOT_APP_KEY] = scope["app"]
        await self.app(scope, receive, send)


class AirflowAPIError(RuntimeError):
    """Airflow's REST API refused a call; ``status`` is the HTTP status and ``detail`` its reason."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"Airflow answered {status}: {detail}")
        self.status = status
        self.detail = detail


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return detail if isinstance(detail, str) else str(detail)[:500]


class AirflowClient:
    """Airflow's REST API, reached in process, authenticated with one user's JWT.

    :param app: the API server's ASGI application.
    :param token: the user's JWT.
    """

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.token = token

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call an endpoint under ``/api/v2`` and return its JSON.

        :raises AirflowAPIError: on any status of 300 or more.
        """
        transport = httpx.ASGITransport(app=self.app)
        headers = {"Authorization": f"Bearer {self.token}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://airflow-api-server") as client:
            response = await client.request(method, f"/api/v2{path}", json=body, headers=headers, timeout=60)
        if response.status_code >= 300:
            raise AirflowAPIError(response.status_code, _detail(response))
        return response.json() if response.content else None

    async def trigger(self, dag_id: str, run_id: str, conf: dict[str, Any], note: str = "") -> dict[str, Any]:
        """Start a DAG run with ``conf`` and return it."""
        body: dict[str, Any] = {"dag_run_id": run_id, "logical_date": None, "conf": conf}
        if note:
            body["note"] = note
        result = await self.call("POST", f"/dags/{quote(dag_id, safe='')}/dagRuns", body)
        log.info("Triggered %s run %s", dag_id, run_id)
        return dict(result)

    async def get_or_none(self, path: str) -> dict[str, Any] | None:
        """Return the JSON of a ``GET`` under ``/api/v2``, or None when Airflow returns 404."""
        try:
            return dict(await self.call("GET", path))
        except AirflowAPIError as exc:
            if exc.status == 404:
                return None
            raise

    async def get_run(self, dag_id: str, run_id: str) -> dict[str, Any] | None:
        """Return a DAG run, or None when Airflow has no run with that id."""
        return await self.get_or_none(f"/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}")

    async def set_run_state(self, dag_id: str, run_id: str, state: str, note: str = "") -> dict[str, Any]:
        """Set a DAG run's state, e.g. ``failed``, and its note when ``note`` is given; return the run.

        Airflow 3.3 validates ``state`` (``queued``, ``success`` or ``failed``) and a note of at most
        1000 characters together, and writes the note before the state, so both go in one call
        without ``update_mask``. A new note replaces the run's note. Marking a run failed makes
        Airflow fail its running and deferred task instances and skip those not started yet.
        """
        body: dict[str, Any] = {"state": state}
        if note:
            body["note"] = note
        path = f"/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}"
        result = await self.call("PATCH", path, body)
        log.info("Set %s run %s to %s", dag_id, run_id, state)
        return dict(result)

    async def dag_details(self, dag_id: str) -> dict[str, Any] | None:
        """Return a DAG's details, its params included, or None when Airflow has no such DAG."""
        return await self.get_or_none(f"/dags/{quote(dag_id, safe='')}/details")

    async def hitl_detail(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1
    ) -> dict[str, Any] | None:
        """Return a task's human-in-the-loop detail, or None when the task has not asked yet."""
        path = (
            f"/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}"
            f"/taskInstances/{quote(task_id, safe='')}/{map_index}/hitlDetails"
        )
        return await self.get_or_none(path)

    async def respond(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        option: str,
        params_input: dict[str, Any] | None = None,
        map_index: int = -1,
    ) -> dict[str, Any]:
        """Respond to a task's human-in-the-loop question with one option, e.g. ``Approve``.

        :param params_input: values of the parameters the task declares; none when it declares none.
        """
        path = (
            f"/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}"
            f"/taskInstances/{quote(task_id, safe='')}/{map_index}/hitlDetails"
        )
        body = {"chosen_options": [option], "params_input": params_input or {}}
        result = await self.call("PATCH", path, body)
        log.info("Responded to %s of %s run %s with %s", task_id, dag_id, run_id, option)
        return dict(result)


def airflow_client(request: Request) -> AirflowClient:
    """Return the REST API client for the user of this request."""
    app = request.scope.get("state", {}).get(ROOT_APP_KEY)
    if app is None:
        raise HTTPException(
            status_code=503,
            detail="The b2cal plugin's middleware is not installed in this API server, so the pages cannot "
            "reach Airflow's REST API; load the plugin through Airflow's plugin manager",
        )
    token = request_token(request)
    if not token:
        raise HTTPException(status_code=401, detail="Not authenticated")
    return AirflowClient(app, token)


AirflowDep = Annotated[AirflowClient, Depends(airflow_client)]
