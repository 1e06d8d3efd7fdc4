"""Shared parts of the b2cal operators: the plugin database and the request being processed."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator, Variable

from b2cal.catalog import Catalog
from b2cal.db import store
from b2cal.db.engine import session_scope
from b2cal.iov import IoV
from b2cal.request import RequestSpec
from b2cal_airflow.hooks.b2cal import PluginDatabaseHook

AUTOPILOT_VARIABLE = "b2cal_autopilot"


class RequestOperator(BaseOperator):
    """Base of the operators that act on one processing request.

    :param request_id: the request's id, usually ``"{{ params.request_id }}"``.
    :param db_conn_id: connection of the plugin database.
    """

    template_fields: Sequence[str] = ("request_id",)
    ui_color = "#dbeafe"

    def __init__(self, *, request_id: str, db_conn_id: str = "b2cal_db", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.request_id = request_id
        self.db_conn_id = db_conn_id

    @cached_property
    def db_url(self) -> str:
        """The plugin database URL."""
        return PluginDatabaseHook(self.db_conn_id).get_url()

    def load(self) -> tuple[RequestSpec, Catalog]:
        """Return the stored request and its release's catalog."""
        with session_scope(self.db_url) as session:
            row = store.get_request(session, self.request_id)
            catalog = store.load_catalog(session, row.release)
            spec = RequestSpec(
                uid=row.uid,
                kind=row.kind,
                site=row.site,
                release=row.release,
                bucket=IoV(row.exp_low, row.run_low, row.exp_high, row.run_high),
                calibrations=tuple(row.calibrations),
                staging_tag=row.staging_tag,
                running_tag=row.running_tag,
                requested_by=row.requested_by,
                filter_overrides=row.filter_overrides or {},
                expert_config_overrides=row.expert_config_overrides or {},
            )
        return spec, catalog

    def update_progress(self, calibration: str, **changes: Any) -> None:
        """Change a calibration's progress row."""
        with session_scope(self.db_url) as session:
            store.update_progress(session, self.request_id, calibration, **changes)

    def ticket_keys(self) -> dict[str, str]:
        """Return the ticket key of each calibration that has one."""
        with session_scope(self.db_url) as session:
            row = store.get_request(session, self.request_id)
            return {item.calibration: item.ticket_key for item in row.progress if item.ticket_key}

    def set_state(self, state: str, **detail: Any) -> None:
        """Change the request's state."""
        with session_scope(self.db_url) as session:
            store.set_request_state(session, self.request_id, state, **detail)


def autopilot_enabled() -> bool:
    """Return whether the demo autopilot closes tickets itself once payloads are uploaded.

    It reads the Airflow Variable ``b2cal_autopilot`` at run time, never at parse time.
    """
    value = Variable.get(AUTOPILOT_VARIABLE, default="false")
    return str(value).strip().lower() in ("1", "true", "yes", "on")
