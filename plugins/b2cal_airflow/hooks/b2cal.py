"""Hooks that build the b2cal library's clients from Airflow connections.

Connection ids and what they hold:

``b2cal_db``
    The plugin database, as a SQLAlchemy URI in the connection's URI or in the extra ``url``.
    Without it the plugin uses a SQLite file ``b2cal.db`` in ``AIRFLOW_HOME``.
``b2cal_jira``
    Jira; see :class:`b2cal_airflow.hooks.jira.TicketHook`, which this module re-exports.
``b2cal_conddb``
    The conditions database: ``host`` is the base URL of the REST API, ``password`` the bearer token.
``b2cal_runregistry``
    The run registry: ``host`` is the base URL, ``password`` the API key.
``b2cal_site_<site>``
    A calibration site; see :class:`b2cal_airflow.hooks.site.SiteHook`, which this module re-exports.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from b2cal.conddb import ConditionsDB
from b2cal.db.engine import default_url
from b2cal.runregistry import RunRegistry
from b2cal_airflow.hooks.jira import TicketHook
from b2cal_airflow.hooks.site import SiteHook

__all__ = ["ConditionsDBHook", "PluginDatabaseHook", "RunRegistryHook", "SiteHook", "TicketHook"]


def _optional_connection(conn_id: str) -> Any | None:
    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


def _base_url(conn: Any, what: str) -> str:
    host = (conn.host or "").rstrip("/")
    if not host.startswith(("http://", "https://")):
        raise ValueError(
            f"connection {conn.conn_id!r} has host {conn.host!r}; the {what} needs a full base URL "
            "such as 'https://server.example:8443/path' in the host field"
        )
    if conn.port and host.count(":") == 1:
        host = f"{host}:{conn.port}"
    return host


class PluginDatabaseHook(BaseHook):
    """Give the SQLAlchemy URL of the plugin database.

    :param db_conn_id: connection with the URL; when it does not exist the default SQLite file is used.
    """

    conn_name_attr = "db_conn_id"
    default_conn_name = "b2cal_db"
    conn_type = "generic"
    hook_name = "b2cal plugin database"

    def __init__(self, db_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.db_conn_id = db_conn_id

    def get_url(self) -> str:
        """Return the database URL."""
        conn = _optional_connection(self.db_conn_id)
        if conn is None:
            return default_url()
        url = conn.extra_dejson.get("url")
        return url or conn.get_uri()


class ConditionsDBHook(BaseHook):
    """Give a conditions database client configured from a connection."""

    conn_name_attr = "conddb_conn_id"
    default_conn_name = "b2cal_conddb"
    conn_type = "http"
    hook_name = "Conditions database"

    def __init__(self, conddb_conn_id: str = default_conn_name, timeout: float = 60.0) -> None:
        super().__init__()
        self.conddb_conn_id = conddb_conn_id
        self.timeout = timeout

    def get_conn(self) -> ConditionsDB:
        """Return the client."""
        conn = self.get_connection(self.conddb_conn_id)
        return ConditionsDB(
            _base_url(conn, "conditions database"),
            token=conn.password,
            timeout=self.timeout,
            token_source=f"the password of the Airflow connection {self.conddb_conn_id!r}",
        )


class RunRegistryHook(BaseHook):
    """Give a run registry client configured from a connection."""

    conn_name_attr = "runregistry_conn_id"
    default_conn_name = "b2cal_runregistry"
    conn_type = "http"
    hook_name = "Run registry"

    def __init__(self, runregistry_conn_id: str = default_conn_name, timeout: float = 60.0) -> None:
        super().__init__()
        self.runregistry_conn_id = runregistry_conn_id
        self.timeout = timeout

    def get_conn(self) -> RunRegistry:
        """Return the client."""
        conn = self.get_connection(self.runregistry_conn_id)
        return RunRegistry(_base_url(conn, "run registry"), api_key=conn.password, timeout=self.timeout)
