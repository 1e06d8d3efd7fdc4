"""The development Jira of the Jira tests and shortcuts to drive it."""

from __future__ import annotations

from typing import Any

import requests
from atlassian import Jira

from b2cal.catalog import Catalog
from b2cal.devservices.config import DevServicesConfig
from b2cal.devservices.jira_model import account_id_of
from b2cal.devservices.server import DevServices
from b2cal.jira_api import CLOUD, SERVER
from b2cal.tickets import TicketTree, plan_tickets


class DevJira:
    """The running development Jira and shortcuts to drive it the way the tests need."""

    def __init__(self, services: DevServices, config: DevServicesConfig) -> None:
        self.services = services
        self.config = config
        self.url = services.jira_url
        self.state = services.jira_state

    def reset(self, deployment: str = "Server", **settings: Any) -> None:
        requests.post(f"{self.url}/_dev/reset", timeout=10).raise_for_status()
        body = {"deployment": deployment, "latency": 0.0, "search_lag": 0.0, **settings}
        requests.post(f"{self.url}/_dev/settings", json=body, timeout=10).raise_for_status()

    def client(self, timeout: int = 10) -> Jira:
        return Jira(
            self.url,
            username=self.config.jira_bot_username,
            password=self.config.jira_bot_password,
            timeout=timeout,
        )

    def tree(self, mode: str = SERVER, timeout: int = 10, **options: Any) -> TicketTree:
        account_ids = (
            {name: account_id_of(name) for name in self.config.jira_users()} if mode == CLOUD else None
        )
        return TicketTree(self.client(timeout), mode=mode, account_ids=account_ids, **options)

    def fault(self, **body: Any) -> None:
        requests.post(f"{self.url}/_dev/faults", json=body, timeout=10).raise_for_status()

    def stats(self) -> dict[str, int]:
        return dict(requests.get(f"{self.url}/_dev/stats", timeout=10).json()["requests"])

    def calls(self) -> int:
        return sum(self.stats().values())

    def transition(self, key: str, category: str) -> None:
        """Move a ticket to a status of ``category`` the way an expert does, through the REST API."""
        self.tree(CLOUD if self.state.cloud else SERVER).transition_to(key, category)


def make_plugin_db(path: Any, request_uid: str, tickets: dict[str, str]) -> str:
    """Create a plugin database with one request whose calibrations have the given ticket keys."""
    from b2cal.db.engine import session_scope, upgrade
    from b2cal.db.models import CalibrationProgress, ProcessingRequest

    url = f"sqlite:///{path}"
    upgrade(url)
    with session_scope(url) as session:
        row = ProcessingRequest(
            uid=request_uid,
            kind="prompt",
            site="BNL",
            release="release-11-00-00",
            exp_low=26,
            run_low=0,
            exp_high=26,
            run_high=100,
            calibrations=list(tickets),
            staging_tag="staging",
            running_tag="running",
            requested_by="manager",
        )
        session.add(row)
        session.flush()
        for calibration, key in tickets.items():
            session.add(
                CalibrationProgress(request_id=row.id, calibration=calibration, phase="raw", ticket_key=key)
            )
    return url


def create_tickets(dev_jira: DevJira, catalog: Catalog, names: list[str], request_uid: str) -> dict[str, str]:
    """Create the tickets of ``names`` for a prompt request at BNL; return their keys by calibration."""
    plan = plan_tickets(
        catalog,
        names,
        request_uid=request_uid,
        project="CAL",
        kind="prompt",
        site="BNL",
        bucket="26,0,26,100",
        staging_tag="staging",
    )
    return dev_jira.tree().ensure(plan)
