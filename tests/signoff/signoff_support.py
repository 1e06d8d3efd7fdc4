"""Shared parts of the sign-off tests: the request they use and a handle on its bucket.

The request is "CDC badwire", which adds its dependency "CDC Tracking" (four payloads).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atlassian import Jira

from b2cal.catalog import load_packaged_release
from b2cal.conddb import ConditionsDB
from b2cal.db import gate
from b2cal.db.engine import session_scope
from b2cal.devservices.config import DevServicesConfig, catalog_expert_usernames
from b2cal.devservices.server import DevServices
from b2cal.tickets import TicketTree
from b2cal.validation import CheckResult

CATALOG = load_packaged_release()
CONFIG = DevServicesConfig(jira_experts=catalog_expert_usernames(), runs_per_experiment=5)
RUNNING_TAG = "prompt_running"
CALIBRATIONS = ["CDC Tracking", "CDC badwire"]
PAYLOADS = list(CATALOG["CDC Tracking"].produced_payloads)


@dataclass
class Bucket:
    """One request in the plugin database, with tickets in the development Jira and tags to fill."""

    services: DevServices
    db_url: str
    conf: dict[str, Any]
    root: Path
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def uid(self) -> str:
        return str(self.conf["request_id"])

    @property
    def staging(self) -> str:
        return str(self.conf["staging_tag"])

    def conddb(self) -> ConditionsDB:
        return ConditionsDB(self.services.conddb_url, token=CONFIG.conddb_token, retries=0)

    def tree(self) -> TicketTree:
        client = Jira(
            self.services.jira_url, username=CONFIG.jira_bot_username, password=CONFIG.jira_bot_password
        )
        return TicketTree(client)

    def upload(self, payloads: list[str] | None = None, first: str = "26,100", salt: str = "new") -> Path:
        """Upload CDC Tracking's payloads to the staging tag, as its job would produce them."""
        names = PAYLOADS if payloads is None else payloads
        folder = self.root / f"output-{salt}-{first.replace(',', '_')}"
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            (folder / f"dbstore_{name}_rev_1.root").write_bytes(f"{name}-{salt}".encode())
        (folder / "database.txt").write_text("".join(f"dbstore/{name} 1 {first},-1,-1\n" for name in names))
        self.conddb().upload_database_folder(folder, self.staging)
        return folder

    def pass_checks(self, calibrations: list[str] = CALIBRATIONS) -> None:
        with session_scope(self.db_url) as session:
            for name in calibrations:
                gate.save_checks(
                    session, self.uid, name, [CheckResult("payloads_present", "passed", "all there")]
                )

    def close_tickets(self, calibrations: list[str] = CALIBRATIONS) -> None:
        tree = self.tree()
        for name in calibrations:
            tree.transition_to(self.keys[name])

    def make_ready(self) -> None:
        """Upload, pass the checks and close the tickets: a bucket ready for sign-off."""
        self.upload()
        self.pass_checks()
        self.close_tickets()
