"""Store the explanation of each input selection and publish it in the calibration's Jira ticket.

For every input name of a calibration, the selection funnel (runs dropped by each filter, files and
luminosity kept) is stored in the plugin table ``b2cal_input_selection`` with the fate of every run.
It is also written as a section of the Jira ticket's description. The section sits between two marker
lines, so a retried task replaces it instead of adding a second one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from b2cal.db.runmodels import InputSelectionRecord
from b2cal.iov import IoV
from b2cal.runs import InputSelection

logger = logging.getLogger(__name__)

SECTION_START = "{anchor:b2cal-input-selection}"
SECTION_END = "{anchor:b2cal-input-selection-end}"
_SECTION = re.compile(re.escape(SECTION_START) + r".*?" + re.escape(SECTION_END), re.DOTALL)


def run_fates(selection: InputSelection) -> list[dict[str, Any]]:
    """Return every run the selection considered, in run order, with its file count or drop reason."""
    fates: list[dict[str, Any]] = [
        {"exp": exp, "run": run, "files": count} for (exp, run), count in selection.run_files.items()
    ]
    fates += [
        {"exp": exp, "run": run, "dropped_by": reason}
        for (exp, run), reason in selection.dropped_runs.items()
    ]
    return sorted(fates, key=lambda item: (item["exp"], item["run"]))


def save_selections(
    session: Session, request_uid: str, calibration: str, selections: Mapping[str, InputSelection]
) -> None:
    """Store the selections of one calibration, replacing what a previous attempt stored."""
    stored = {
        row.input_name: row
        for row in session.scalars(
            select(InputSelectionRecord).where(
                InputSelectionRecord.request_uid == request_uid,
                InputSelectionRecord.calibration == calibration,
            )
        )
    }
    for input_name, selection in selections.items():
        row = stored.get(input_name)
        if row is None:
            row = InputSelectionRecord(
                request_uid=request_uid, calibration=calibration, input_name=input_name
            )
            session.add(row)
        row.summary = selection.to_dict()
        row.runs = run_fates(selection)
        row.explanation = selection.explain()
    session.flush()


def load_selections(
    session: Session, request_uid: str, calibration: str | None = None
) -> list[dict[str, Any]]:
    """Return the stored selections of a request (optionally of one calibration), as JSON-ready data."""
    query = select(InputSelectionRecord).where(InputSelectionRecord.request_uid == request_uid)
    if calibration is not None:
        query = query.where(InputSelectionRecord.calibration == calibration)
    return [
        {
            "calibration": row.calibration,
            "input_name": row.input_name,
            "summary": row.summary,
            "runs": row.runs,
            "explanation": row.explanation,
            "selected_at": row.selected_at.isoformat(),
        }
        for row in session.scalars(query.order_by(InputSelectionRecord.id))
    ]


def _cell(text: str) -> str:
    # A '|' would start a new cell in Jira's wiki markup.
    return text.replace("|", "/")


def format_for_ticket(selections: Mapping[str, InputSelection], bucket: IoV) -> str:
    """Return the selections as a Jira wiki markup section (Jira Server/Data Center, API v2)."""
    lines = [SECTION_START, f"h3. Input selection for bucket {bucket}"]
    for selection in selections.values():
        kept = f"{selection.runs_kept} of {selection.runs_considered} runs, {len(selection.files)} files"
        lines.append(
            f"*{_cell(selection.input_name)}*: {kept}, {selection.luminosity_kept:.1f} pb^-1, "
            f"from {_cell(selection.source)}"
        )
        lines.append("||Step||Category||Runs dropped||Runs left||Files dropped||")
        for step in selection.steps:
            label = step.label + (f" ({step.detail})" if step.detail and step.runs_dropped else "")
            lines.append(
                f"|{_cell(label)}|{_cell(step.category)}|{step.runs_dropped}|{step.runs_left}|{step.files_dropped}|"
            )
        for warning in selection.warnings:
            lines.append(f"(!) {_cell(warning)}")
    lines.append(SECTION_END)
    return "\n".join(lines)


def replace_section(description: str | None, section: str) -> str:
    """Return ``description`` with its input selection section replaced by ``section``, or appended."""
    text = description or ""
    if _SECTION.search(text):
        return _SECTION.sub(lambda _: section, text, count=1)
    return f"{text.rstrip()}\n\n{section}" if text.strip() else section


class IssueClient(Protocol):
    """The part of ``atlassian.Jira`` that editing a description needs."""

    def issue(self, key: str, fields: str = ...) -> Any: ...

    def update_issue_field(self, key: str, fields: Any, notify_users: bool = ...) -> Any: ...


def publish_to_ticket(
    client: IssueClient, key: str, selections: Mapping[str, InputSelection], bucket: IoV
) -> None:
    """Write the selections into the description of ticket ``key``, replacing an earlier section."""
    issue = client.issue(key, fields="description")
    description = (issue or {}).get("fields", {}).get("description")
    updated = replace_section(description, format_for_ticket(selections, bucket))
    if updated != description:
        client.update_issue_field(key, {"description": updated})
        logger.info("Wrote the input selection of %d inputs into the description of %s", len(selections), key)
