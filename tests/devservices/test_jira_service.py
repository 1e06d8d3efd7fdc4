"""Drive the development Jira through the real ``atlassian.Jira`` client, as the DAGs do."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from atlassian import Jira
from requests import HTTPError

from b2cal.devservices.config import DevServicesConfig
from b2cal.devservices.server import DevServices

EXPERTS = ("cdc-calibration-expert", "ecl-calibration-expert")


@pytest.fixture
def jira(services: DevServices, config: DevServicesConfig) -> Jira:
    services.jira_state.reset()
    return Jira(services.jira_url, username=config.jira_bot_username, password=config.jira_bot_password)


def task(summary: str, **extra: Any) -> dict[str, Any]:
    return {"project": {"key": "CAL"}, "issuetype": {"name": "Task"}, "summary": summary, **extra}


def error_body(error: HTTPError) -> dict[str, Any]:
    assert error.response is not None
    return dict(error.response.json())


def transition_to_category(jira: Jira, key: str, category: str) -> str:
    """Move an issue along the first transition whose target status is in ``category``."""
    transitions = jira.get_issue_transitions_full(key)["transitions"]
    chosen = next(item for item in transitions if item["to"]["statusCategory"]["key"] == category)
    jira.set_issue_status_by_transition_id(key, chosen["id"])
    return str(chosen["id"])


def test_server_info_reports_server_deployment(jira: Jira) -> None:
    info = jira.get_server_info()
    assert info["deploymentType"] == "Server"
    assert info["versionNumbers"][0] >= 8


def test_myself_and_user_lookup(jira: Jira) -> None:
    assert jira.myself()["name"] == "b2cal-bot"
    assert jira.user(username=EXPERTS[0])["name"] == EXPERTS[0]
    with pytest.raises(HTTPError) as raised:
        jira.user(username="nobody")
    assert raised.value.response.status_code == 404


def test_wrong_password_rejected(services: DevServices) -> None:
    client = Jira(services.jira_url, username="b2cal-bot", password="wrong")
    with pytest.raises(HTTPError) as raised:
        client.myself()
    assert raised.value.response.status_code == 401


def test_create_issue_round_trip(jira: Jira) -> None:
    created = jira.create_issue(
        fields=task(
            "Calibrate CDC T0",
            description="Check the *residuals*.",
            labels=["b2cal", "req-42"],
            components=[{"name": "cdc"}],
            assignee={"name": EXPERTS[0]},
        )
    )
    assert created["key"] == "CAL-1"
    assert created["self"].endswith(f"/rest/api/2/issue/{created['id']}")

    fields = jira.issue("CAL-1")["fields"]
    assert fields["summary"] == "Calibrate CDC T0"
    assert fields["description"] == "Check the *residuals*."
    assert fields["labels"] == ["b2cal", "req-42"]
    assert fields["components"] == [{"name": "cdc"}]
    assert fields["assignee"]["name"] == EXPERTS[0]
    assert fields["reporter"]["name"] == "b2cal-bot"
    assert fields["status"]["name"] == "Open"
    assert fields["status"]["statusCategory"]["key"] == "new"
    assert fields["issuetype"]["name"] == "Task"
    assert fields["project"]["key"] == "CAL"
    assert fields["issuelinks"] == []
    assert fields["comment"]["total"] == 0


def test_get_issue_limits_fields(jira: Jira) -> None:
    jira.create_issue(fields=task("one"))
    issue = jira.get_issue("CAL-1", fields="status,summary")
    assert set(issue["fields"]) == {"status", "summary"}
    assert issue["key"] == "CAL-1"


@pytest.mark.parametrize(
    ("fields", "field_in_error"),
    [
        ({"project": {"key": "CAL"}, "issuetype": {"name": "Task"}}, "summary"),
        ({"issuetype": {"name": "Task"}, "summary": "s"}, "project"),
        ({"project": {"key": "NOPE"}, "issuetype": {"name": "Task"}, "summary": "s"}, "project"),
        ({"project": {"key": "CAL"}, "summary": "s"}, "issuetype"),
        (task("s", assignee={"name": "nobody"}), "assignee"),
        (task("s", labels=["has space"]), "labels"),
        (task("s", description={"type": "doc"}), "description"),
        (task("s", customfield_10000="x"), "customfield_10000"),
    ],
)
def test_create_issue_invalid_fields_rejected(
    jira: Jira, fields: dict[str, Any], field_in_error: str
) -> None:
    with pytest.raises(HTTPError) as raised:
        jira.create_issue(fields=fields)
    assert raised.value.response.status_code == 400
    body = error_body(raised.value)
    assert field_in_error in body["errors"]
    assert body["errorMessages"] == []


def test_subtask_needs_existing_parent(jira: Jira) -> None:
    with pytest.raises(HTTPError) as raised:
        jira.create_issue(fields={**task("child"), "issuetype": {"name": "Sub-task"}})
    assert "parent" in error_body(raised.value)["errors"]

    jira.create_issue(fields=task("parent"))
    jira.create_issue(fields={**task("child"), "issuetype": {"name": "Sub-task"}, "parent": {"key": "CAL-1"}})
    assert jira.issue("CAL-2")["fields"]["parent"]["key"] == "CAL-1"
    assert [item["key"] for item in jira.issue("CAL-1")["fields"]["subtasks"]] == ["CAL-2"]


def test_bulk_create_partial_failure(jira: Jira) -> None:
    result = jira.create_issues(
        [
            {"fields": task("first")},
            {"fields": {"project": {"key": "CAL"}, "issuetype": {"name": "Task"}}},
            {"fields": task("third", assignee={"name": "nobody"})},
            {"fields": task("fourth")},
        ]
    )
    assert [item["key"] for item in result["issues"]] == ["CAL-1", "CAL-2"]
    assert [item["failedElementNumber"] for item in result["errors"]] == [1, 2]
    assert "summary" in result["errors"][0]["elementErrors"]["errors"]
    assert "assignee" in result["errors"][1]["elementErrors"]["errors"]
    assert result["errors"][0]["status"] == 400
    assert jira.issue("CAL-2")["fields"]["summary"] == "fourth"


def test_bulk_create_rejects_more_than_50(jira: Jira, services: DevServices) -> None:
    with pytest.raises(HTTPError) as raised:
        jira.create_issues([{"fields": task(f"issue {number}")} for number in range(51)])
    assert raised.value.response.status_code == 400
    assert "50" in error_body(raised.value)["errorMessages"][0]
    assert services.jira_state.issues() == []

    result = jira.create_issues([{"fields": task(f"issue {number}")} for number in range(50)])
    assert len(result["issues"]) == 50
    assert result["issues"][-1]["key"] == "CAL-50"


def test_bulk_create_all_failed_is_400(jira: Jira) -> None:
    with pytest.raises(HTTPError) as raised:
        jira.create_issues([{"fields": {"summary": "no project"}}])
    assert raised.value.response.status_code == 400
    assert error_body(raised.value)["errors"][0]["failedElementNumber"] == 0


def test_blocks_link_direction_from_both_sides(jira: Jira) -> None:
    blocker = jira.create_issue(fields=task("CDC dE/dx electron"))["key"]
    blocked = jira.create_issue(fields=task("CDC dE/dx hadron"))["key"]
    link = {"type": {"name": "Blocks"}, "inwardIssue": {"key": blocker}, "outwardIssue": {"key": blocked}}
    jira.create_issue_link(link)
    jira.create_issue_link(link)

    on_blocker = jira.issue(blocker)["fields"]["issuelinks"]
    on_blocked = jira.issue(blocked)["fields"]["issuelinks"]
    assert len(on_blocker) == 1
    assert len(on_blocked) == 1
    assert on_blocker[0]["outwardIssue"]["key"] == blocked
    assert "inwardIssue" not in on_blocker[0]
    assert on_blocker[0]["type"]["outward"] == "blocks"
    assert on_blocked[0]["inwardIssue"]["key"] == blocker
    assert "outwardIssue" not in on_blocked[0]
    assert on_blocked[0]["type"]["inward"] == "is blocked by"


def test_link_to_missing_issue_is_404(jira: Jira) -> None:
    jira.create_issue(fields=task("alone"))
    with pytest.raises(HTTPError) as raised:
        jira.create_issue_link(
            {"type": {"name": "Blocks"}, "inwardIssue": {"key": "CAL-1"}, "outwardIssue": {"key": "CAL-99"}}
        )
    assert raised.value.response.status_code == 404


def test_links_at_create_time_follow_the_same_direction(jira: Jira) -> None:
    jira.create_issue(fields=task("blocker"))
    jira.create_issue(
        fields=task("blocked"),
        update={"issuelinks": [{"add": {"type": {"name": "Blocks"}, "inwardIssue": {"key": "CAL-1"}}}]},
    )
    assert jira.issue("CAL-1")["fields"]["issuelinks"][0]["outwardIssue"]["key"] == "CAL-2"
    assert jira.issue("CAL-2")["fields"]["issuelinks"][0]["inwardIssue"]["key"] == "CAL-1"


def test_assign_issue(jira: Jira) -> None:
    jira.create_issue(fields=task("assign me"))
    jira.assign_issue("CAL-1", EXPERTS[1])
    assert jira.issue("CAL-1")["fields"]["assignee"]["name"] == EXPERTS[1]

    with pytest.raises(HTTPError) as raised:
        jira.assign_issue("CAL-1", "nobody")
    assert raised.value.response.status_code == 400
    assert "assignee" in error_body(raised.value)["errors"]

    jira.assign_issue("CAL-1", None)
    assert jira.issue("CAL-1")["fields"]["assignee"] is None


def test_transition_ids_come_from_the_workflow(jira: Jira) -> None:
    jira.create_issue(fields=task("workflow"))
    ids = {int(item["id"]) for item in jira.get_issue_transitions("CAL-1")}
    assert ids
    assert not ids & {1, 2, 3}


def test_transition_to_done_and_back(jira: Jira) -> None:
    jira.create_issue(fields=task("close me"))
    transition_to_category(jira, "CAL-1", "indeterminate")
    assert jira.issue("CAL-1")["fields"]["status"]["name"] == "In Progress"

    done_id = transition_to_category(jira, "CAL-1", "done")
    fields = jira.issue("CAL-1")["fields"]
    assert fields["status"]["statusCategory"]["key"] == "done"
    assert fields["resolution"]["name"] == "Fixed"
    assert fields["resolutiondate"] is not None

    with pytest.raises(HTTPError) as raised:
        jira.set_issue_status_by_transition_id("CAL-1", done_id)
    assert raised.value.response.status_code == 400

    transition_to_category(jira, "CAL-1", "new")
    fields = jira.issue("CAL-1")["fields"]
    assert fields["status"]["name"] == "Reopened"
    assert fields["resolution"] is None


def test_comments(jira: Jira) -> None:
    jira.create_issue(fields=task("discuss"))
    comment = jira.issue_add_comment("CAL-1", "Job started in /work/jobs/1.")
    assert comment["body"] == "Job started in /work/jobs/1."
    comments = jira.issue("CAL-1")["fields"]["comment"]["comments"]
    assert [item["body"] for item in comments] == ["Job started in /work/jobs/1."]
    assert comments[0]["author"]["name"] == "b2cal-bot"


def make_search_fixture(jira: Jira) -> None:
    """CAL-1 open (label a), CAL-2 in progress (a, b), CAL-3 resolved (b), CAL-4 closed (no label)."""
    jira.create_issue(fields=task("one", labels=["a"]))
    jira.create_issue(fields=task("two", labels=["a", "b"]))
    jira.create_issue(fields=task("three", labels=["b"]))
    jira.create_issue(fields=task("four"))
    transition_to_category(jira, "CAL-2", "indeterminate")
    jira.set_issue_status_by_transition_id("CAL-3", 21)
    jira.set_issue_status_by_transition_id("CAL-4", 31)


@pytest.mark.parametrize(
    ("jql", "keys"),
    [
        ("labels = a", ["CAL-1", "CAL-2"]),
        ("LABELS IN (a, b) order by key", ["CAL-1", "CAL-2", "CAL-3"]),
        ("labels != a", ["CAL-3"]),
        ("key = cal-3", ["CAL-3"]),
        ("key in (CAL-1, CAL-4)", ["CAL-1", "CAL-4"]),
        ("project = CAL AND statusCategory = Done", ["CAL-3", "CAL-4"]),
        ("statusCategory != Done", ["CAL-1", "CAL-2"]),
        ('statusCategory in ("To Do", "In Progress")', ["CAL-1", "CAL-2"]),
        ("statusCategory = indeterminate", ["CAL-2"]),
        ('status = "In Progress"', ["CAL-2"]),
        ("status in (Resolved, Closed)", ["CAL-3", "CAL-4"]),
        ("labels = b AND (statusCategory = done OR key = CAL-2)", ["CAL-2", "CAL-3"]),
        ("labels = a OR labels = b AND statusCategory = Done", ["CAL-1", "CAL-2", "CAL-3"]),
        ("NOT labels = a AND key in (CAL-1, CAL-3)", ["CAL-3"]),
        ("labels is EMPTY", ["CAL-4"]),
        ("key in (CAL-1, CAL-2, CAL-3) ORDER BY key DESC", ["CAL-3", "CAL-2", "CAL-1"]),
        ("", ["CAL-1", "CAL-2", "CAL-3", "CAL-4"]),
    ],
)
def test_jql_search(jira: Jira, jql: str, keys: list[str]) -> None:
    make_search_fixture(jira)
    result = jira.jql(jql, fields="status,labels")
    assert [issue["key"] for issue in result["issues"]] == keys
    assert result["total"] == len(keys)


def test_jql_search_paginates(jira: Jira) -> None:
    jira.create_issues([{"fields": task(f"issue {number}", labels=["page"])} for number in range(7)])
    first = jira.jql("labels = page ORDER BY key", start=0, limit=3)
    last = jira.jql("labels = page ORDER BY key", start=6, limit=3)
    assert first["total"] == 7
    assert first["maxResults"] == 3
    assert [issue["key"] for issue in first["issues"]] == ["CAL-1", "CAL-2", "CAL-3"]
    assert [issue["key"] for issue in last["issues"]] == ["CAL-7"]
    assert last["startAt"] == 6


@pytest.mark.parametrize(
    ("jql", "message_part"),
    [
        ("summary ~ calibration", "summary"),
        ("labels ~ a", "'~'"),
        ("labels = a AND", "ended"),
        ('labels = "unterminated', "not closed"),
        ("assignee = currentUser()", "currentUser"),
        ("key in (CAL-1, CAL-99)", "CAL-99"),
        ("project = NOPE", "NOPE"),
        ("statusCategory = Finished", "Finished"),
        ("labels = a ORDER BY priority", "priority"),
    ],
)
def test_jql_invalid_query_is_400(jira: Jira, jql: str, message_part: str) -> None:
    jira.create_issue(fields=task("one", labels=["a"]))
    with pytest.raises(HTTPError) as raised:
        jira.jql(jql)
    assert raised.value.response.status_code == 400
    assert message_part in error_body(raised.value)["errorMessages"][0]


def test_jql_warn_mode_reports_missing_key(jira: Jira) -> None:
    jira.create_issue(fields=task("one"))
    result = jira.jql("key in (CAL-1, CAL-99)", validate_query="warn")
    assert [issue["key"] for issue in result["issues"]] == ["CAL-1"]
    assert "CAL-99" in result["warningMessages"][0]


def test_search_by_post(services: DevServices, jira: Jira, config: DevServicesConfig) -> None:
    jira.create_issue(fields=task("one", labels=["posted"]))
    response = requests.post(
        f"{services.jira_url}/rest/api/2/search",
        json={"jql": "labels = posted", "maxResults": 10, "fields": ["summary"]},
        auth=(config.jira_bot_username, config.jira_bot_password),
        timeout=10,
    )
    assert response.status_code == 200
    assert [issue["fields"] for issue in response.json()["issues"]] == [{"summary": "one"}]


def test_edit_issue_fields_and_labels(jira: Jira) -> None:
    jira.create_issue(fields=task("before", labels=["keep", "drop"]))
    jira.update_issue_field("CAL-1", {"summary": "after", "description": "new text"})
    jira.edit_issue("CAL-1", {"labels": [{"add": "added"}, {"remove": "drop"}]})
    fields = jira.issue("CAL-1")["fields"]
    assert fields["summary"] == "after"
    assert fields["description"] == "new text"
    assert fields["labels"] == ["keep", "added"]


def test_dev_endpoints_list_and_reset(services: DevServices, jira: Jira) -> None:
    jira.create_issue(fields=task("one"))
    listed = requests.get(f"{services.jira_url}/_dev/issues", timeout=10).json()
    assert [issue["key"] for issue in listed] == ["CAL-1"]

    assert requests.post(f"{services.jira_url}/_dev/reset", timeout=10).status_code == 204
    assert requests.get(f"{services.jira_url}/_dev/issues", timeout=10).json() == []
    assert jira.create_issue(fields=task("again"))["key"] == "CAL-1"
