"""Helpers of the deployment tests: what a request left in Jira, the sites and the conditions database."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import requests
from atlassian import Jira

from b2cal.devservices.config import DevServicesConfig
from b2cal.stack import Stack
from b2cal.tickets import TicketTree, request_label

DEV = DevServicesConfig.from_env()


def jira(stack: Stack) -> Jira:
    """Return a Jira client of the stack's development Jira, logged in as the bot."""
    return Jira(
        f"http://127.0.0.1:{stack.config.jira_port}",
        username=DEV.jira_bot_username,
        password=DEV.jira_bot_password,
    )


def tickets_by_label(stack: Stack, request_id: str) -> list[dict[str, Any]]:
    """Return every ticket that carries the request's label, with summary, labels and status."""
    return TicketTree(jira(stack)).search(
        f'labels = "{request_label(request_id)}"', fields="summary,labels,status"
    )


def all_tickets(stack: Stack) -> list[dict[str, Any]]:
    """Return every ticket of the development Jira's project."""
    return TicketTree(jira(stack)).search(f"project = {DEV.jira_projects[0]}", fields="summary,labels")


def job_folders(stack: Stack, site: str, request_id: str) -> list[Path]:
    """Return the attempt folders of a request's jobs at a site."""
    return sorted((stack.config.work_root(site) / request_id).glob("*/attempt-*"))


def conddb_state(stack: Stack) -> dict[str, Any]:
    """Return every tag, payload and IoV of the development conditions database."""
    response = requests.get(f"http://127.0.0.1:{stack.config.conddb_port}/_dev/state", timeout=30)
    response.raise_for_status()
    return dict(response.json())


def tag_rows(state: dict[str, Any], tag: str) -> list[tuple[str, int, int, int, int, int]]:
    """Return ``(payload name, revision, exp_low, run_low, exp_high, run_high)`` of each IoV in ``tag``."""
    tag_ids = [item["globalTagId"] for item in state["globalTags"] if item["name"] == tag]
    if not tag_ids:
        return []
    payloads = {item["payloadId"]: item for item in state["payloads"]}
    rows = []
    for iov in state["payloadIovs"]:
        if iov["globalTagId"] != tag_ids[0]:
            continue
        payload = payloads[iov["payloadId"]]
        rows.append(
            (
                payload["basf2Module"]["name"],
                payload["revision"],
                iov["expStart"],
                iov["runStart"],
                iov["expEnd"],
                iov["runEnd"],
            )
        )
    return sorted(rows)


def duplicated_payloads(state: dict[str, Any]) -> list[tuple[str, str]]:
    """Return the ``(name, checksum)`` pairs stored more than once: an upload that ran twice."""
    counts = Counter((item["basf2Module"]["name"], item["checksum"]) for item in state["payloads"])
    return sorted(key for key, count in counts.items() if count > 1)


def duplicated_iovs(state: dict[str, Any]) -> list[tuple[int, int, int, int, int, int]]:
    """Return the IoVs that exist twice for the same payload in the same tag."""
    counts = Counter(
        (
            item["globalTagId"],
            item["payloadId"],
            item["expStart"],
            item["runStart"],
            item["expEnd"],
            item["runEnd"],
        )
        for item in state["payloadIovs"]
    )
    return sorted(key for key, count in counts.items() if count > 1)
