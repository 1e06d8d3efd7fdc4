"""Stored selection explanations, and the selection section in a ticket of the development Jira."""

from __future__ import annotations

from atlassian import Jira

from b2cal.catalog import load_packaged_release
from b2cal.db.engine import session_scope
from b2cal.explanations import (
    SECTION_END,
    SECTION_START,
    format_for_ticket,
    load_selections,
    publish_to_ticket,
    replace_section,
    save_selections,
)
from b2cal.filesources import FileEntry, StaticFileSource
from b2cal.iov import IoV
from b2cal.runs import InputSelection, Run, select_inputs

CATALOG = load_packaged_release()
BUCKET = IoV(26, 1, 26, 4)


def selections(luminosity: float = 10.0) -> dict[str, InputSelection]:
    runs = [
        Run(26, 1, "physics", recorded_luminosity=luminosity, duration_s=3600, quality={"overall": "GOOD"}),
        Run(26, 2, "cosmic", duration_s=3600),
        Run(26, 3, "physics", solenoid_field="Off", duration_s=3600),
        Run(26, 4, "physics", recorded_luminosity=luminosity, duration_s=3600),
    ]
    files = {("mumu_tight_or_highm_calib", (26, 1)): [FileEntry("/site/a|b.root")]}
    return select_inputs(
        CATALOG["CDC badwire"], runs, BUCKET, CATALOG.vocabulary, StaticFileSource(files, "BNL")
    )


def test_saved_selection_lists_every_run(db_url):
    with session_scope(db_url) as session:
        save_selections(session, "req-1", "CDC badwire", selections())
    with session_scope(db_url) as session:
        (stored,) = load_selections(session, "req-1")
    assert stored["calibration"] == "CDC badwire"
    assert stored["input_name"] == "mumu_tight_or_highm_calib"
    assert stored["summary"]["runs_kept"] == 1
    # CDC badwire sets no run type, so the cosmic run passes the filters and lacks only the skim.
    assert stored["summary"]["dropped_by"] == {"On": 1, "mumu_tight_or_highm_calib": 2}
    assert stored["runs"] == [
        {"exp": 26, "run": 1, "files": 1},
        {"exp": 26, "run": 2, "dropped_by": "mumu_tight_or_highm_calib"},
        {"exp": 26, "run": 3, "dropped_by": "On"},
        {"exp": 26, "run": 4, "dropped_by": "mumu_tight_or_highm_calib"},
    ]
    assert stored["explanation"].startswith("mumu_tight_or_highm_calib: 1 of 4 runs kept")


def test_saving_again_replaces(db_url):
    with session_scope(db_url) as session:
        save_selections(session, "req-1", "CDC badwire", selections(10.0))
    with session_scope(db_url) as session:
        save_selections(session, "req-1", "CDC badwire", selections(20.0))
    with session_scope(db_url) as session:
        stored = load_selections(session, "req-1", "CDC badwire")
        assert load_selections(session, "req-1", "CDC Tracking") == []
    assert len(stored) == 1
    assert stored[0]["summary"]["luminosity_kept_pb"] == 20.0


def test_ticket_section_is_a_wiki_table():
    text = format_for_ticket(selections(), BUCKET)
    lines = text.splitlines()
    assert lines[0] == SECTION_START
    assert lines[-1] == SECTION_END
    assert "||Step||Category||Runs dropped||Runs left||Files dropped||" in lines
    assert "|On|Magnet|1|3|0|" in lines
    assert "|Good|Data Quality Tag|0|3|0|" in lines
    assert "|mumu_tight_or_highm_calib (no files at BNL)|Data Tag|2|1|0|" in lines
    # A '|' in a value would break the table.
    assert "a|b" not in text


def test_section_is_replaced_not_repeated():
    first = replace_section("Calibration of the bucket.", "S1")
    assert first == "Calibration of the bucket.\n\nS1"
    section = f"{SECTION_START}\nold\n{SECTION_END}"
    text = replace_section("Intro.", section)
    again = replace_section(text + "\n\nOutro.", f"{SECTION_START}\nnew\n{SECTION_END}")
    assert again == f"Intro.\n\n{SECTION_START}\nnew\n{SECTION_END}\n\nOutro."
    assert replace_section(None, "S") == "S"


def test_publish_to_development_jira(services, config):
    jira = Jira(
        url=services.jira_url,
        username=config.jira_bot_username,
        password=config.jira_bot_password,
        cloud=False,
    )
    issue = jira.create_issue(
        fields={
            "project": {"key": "CAL"},
            "summary": "CDC badwire",
            "issuetype": {"name": "Task"},
            "description": "Hi.",
        }
    )
    key = issue["key"]
    publish_to_ticket(jira, key, selections(10.0), BUCKET)
    publish_to_ticket(jira, key, selections(20.0), BUCKET)
    description = jira.issue(key, fields="description")["fields"]["description"]
    assert description.startswith("Hi.\n\n" + SECTION_START)
    assert description.count(SECTION_START) == 1
    assert "20.0 pb^-1" in description
    assert "10.0 pb^-1" not in description
