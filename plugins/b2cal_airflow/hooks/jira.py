"""The Jira hook of the ticket tree, on Jira Server/Data Center or Jira Cloud.

The connection ``b2cal_jira`` (type ``jira``) holds the base URL in ``host``, the bot account in
``login`` and ``password`` (on Cloud: the account's e-mail address and an API token), and these
extras:

``deployment``
    ``server`` (the default: Data Center, REST v2) or ``cloud`` (REST v3).
``project``, ``issue_type``
    Project key and issue type of the calibration tickets (``CAL``, ``Task``).
``parent_issue_type``
    Issue type of the request's parent ticket, ``Epic`` by default; empty for no parent ticket.
``parent_link_field``
    The field through which a ticket names its parent: ``parent`` (Cloud, and sub-tasks) or the
    Epic Link custom field of the Data Center site (its id differs per site, e.g.
    ``customfield_10008``). Defaults to ``parent`` on Cloud and ``customfield_10008`` on Server.
``components``
    ``true`` to set each ticket's component to its calibration's subsystem; the project must have
    those components.
``description_template``, ``parent_description_template``
    ``string.Template`` texts for the ticket descriptions; see :data:`b2cal.tickets.TICKET_PLACEHOLDERS`.
``account_ids``
    Cloud: ``{"<username>": "<accountId>"}`` for the experts of the catalog.
``account_email_domain``
    Cloud: look an expert up by the e-mail address ``<username>@<domain>`` when ``account_ids`` does
    not name it.
``poll_interval``
    Seconds between two Jira searches of a waiting request (30).
``search_settle_seconds``
    How long to search for a ticket whose create call failed ambiguously before creating it again
    (0 on Server, 30 on Cloud, whose search lags behind creates).
``timeout``
    Seconds a Jira request may take (30).
``webhook_secret``
    The secret of the Jira webhook whose calls the plugin's receiver accepts.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, cast

from airflow.providers.atlassian.jira.hooks.jira import JiraHook
from atlassian import Jira

from b2cal.jira_api import CLOUD, MODES, SERVER
from b2cal.tickets import DEFAULT_DESCRIPTION, DEFAULT_PARENT_DESCRIPTION, TicketTree

DEFAULT_TIMEOUT = 30
DEFAULT_EPIC_LINK_FIELD = "customfield_10008"


class TicketHook(JiraHook):
    """Jira hook that gives the ticket tree service of the b2cal library.

    It builds the provider's ``atlassian.Jira`` client with the connection's timeout and, on Cloud,
    with ``cloud=True``; the provider itself reads only the ``verify`` extra.

    :param jira_conn_id: the Jira connection.
    """

    default_conn_name = "b2cal_jira"

    def __init__(self, jira_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(jira_conn_id=jira_conn_id, **kwargs)

    @cached_property
    def extras(self) -> dict[str, Any]:
        """The connection's extras."""
        return dict(self.get_connection(self.jira_conn_id).extra_dejson)

    @property
    def mode(self) -> str:
        """``server`` or ``cloud``, from the extra ``deployment``."""
        mode = str(self.extras.get("deployment", SERVER)).lower()
        if mode not in MODES:
            raise ValueError(
                f"connection {self.jira_conn_id!r} has deployment {mode!r}; "
                "use 'server' (Data Center) or 'cloud'"
            )
        return mode

    @property
    def project(self) -> str:
        """The Jira project that holds the calibration tickets."""
        return str(self.extras.get("project", "CAL"))

    @property
    def issue_type(self) -> str:
        """The issue type of a calibration ticket."""
        return str(self.extras.get("issue_type", "Task"))

    @property
    def parent_issue_type(self) -> str | None:
        """The issue type of the request's parent ticket, or ``None`` for no parent ticket."""
        value = self.extras.get("parent_issue_type", "Epic")
        return str(value) if value else None

    @property
    def parent_link_field(self) -> str:
        """The field through which a calibration ticket names its parent ticket."""
        default = "parent" if self.mode == CLOUD else DEFAULT_EPIC_LINK_FIELD
        return str(self.extras.get("parent_link_field") or default)

    @property
    def poll_interval(self) -> float | None:
        """Seconds between two searches of a waiting request, when the connection sets it."""
        value = self.extras.get("poll_interval")
        return float(value) if value is not None else None

    def plan_options(self) -> dict[str, Any]:
        """Return the :func:`b2cal.tickets.plan_tickets` options that this connection sets."""
        extras = self.extras
        return {
            "project": self.project,
            "issue_type": self.issue_type,
            "components": _as_bool(self.extras.get("components", False)),
            "parent_issue_type": self.parent_issue_type,
            "parent_link_field": self.parent_link_field,
            "description": extras.get("description_template") or DEFAULT_DESCRIPTION,
            "parent_description": extras.get("parent_description_template") or DEFAULT_PARENT_DESCRIPTION,
        }

    def get_conn(self) -> Jira:
        """Return the ``atlassian.Jira`` client, built once, with the connection's timeout."""
        if self.client is None:
            conn = self.get_connection(self.jira_conn_id)
            extras = conn.extra_dejson
            deployment = str(extras.get("deployment", SERVER)).lower()
            self.client = Jira(
                url=cast("str", conn.host),
                username=conn.login,
                password=conn.password,
                verify_ssl=extras.get("verify", True),
                proxies=self.proxies,
                api_version=self.api_version,
                api_root=self.api_root,
                cloud=deployment == CLOUD,
                timeout=int(extras.get("timeout", DEFAULT_TIMEOUT)),
            )
        return self.client

    def get_tree(self) -> TicketTree:
        """Return the ticket tree service over this hook's client."""
        settle = self.extras.get("search_settle_seconds")
        return TicketTree(
            self.get_conn(),
            mode=self.mode,
            account_ids=self.extras.get("account_ids") or {},
            account_email_domain=self.extras.get("account_email_domain"),
            settle_seconds=float(settle) if settle is not None else None,
        )


def _as_bool(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")
