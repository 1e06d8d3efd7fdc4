"""Create, find and close ticket trees in the development Jira through ``atlassian.Jira``."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
from jira_support import DevJira

from b2cal.catalog import Catalog
from b2cal.jira_api import CLOUD, SERVER
from b2cal.tickets import TicketError, TicketPlan, plan_tickets


def make_plan(catalog: Catalog, names: list[str] | None = None, **options: Any) -> TicketPlan:
    return plan_tickets(
        catalog,
        names or catalog.names,
        request_uid="prompt-e0026-b01",
        project=options.pop("project", "CAL"),
        kind="prompt",
        site="BNL",
        bucket="26,0,26,100",
        staging_tag="staging_e0026",
        **options,
    )


def blocks_pairs(dev_jira: DevJira) -> set[tuple[str, str]]:
    return {(link.inward, link.outward) for link in dev_jira.state.links() if link.type == "Blocks"}


@pytest.mark.parametrize("mode", [SERVER, CLOUD])
def test_full_tree_has_links_in_the_right_direction(dev_jira: DevJira, catalog: Catalog, mode: str) -> None:
    dev_jira.reset("Cloud" if mode == CLOUD else "Server")
    link_field = "parent" if mode == CLOUD else "customfield_10008"
    plan = make_plan(catalog, parent_issue_type="Epic", parent_link_field=link_field)
    result = dev_jira.tree(mode).ensure_tree(plan, first_attempt=True)

    keys = result.keys
    assert sorted(keys) == sorted(catalog.names)
    expected = {(keys[blocking], keys[blocked]) for blocking, blocked in plan.links()}
    assert blocks_pairs(dev_jira) == expected
    # The parent, then one bulk call per round: no call per ticket and none per link.
    assert dev_jira.calls() == 4
    assert result.links_created == 0

    api = "3" if mode == CLOUD else "2"
    hadron = dev_jira.client().get(f"rest/api/{api}/issue/{keys['CDC dedx Hadron Calibrations']}")
    inward = [link["inwardIssue"]["key"] for link in hadron["fields"]["issuelinks"] if "inwardIssue" in link]
    assert inward == [keys["CDC dedx"]]
    if mode == CLOUD:
        assert hadron["fields"]["parent"]["key"] == result.parent_key
        assert hadron["fields"]["assignee"]["accountId"]
        assert hadron["fields"]["description"]["type"] == "doc"
    else:
        assert hadron["fields"]["customfield_10008"] == result.parent_key
        assert hadron["fields"]["assignee"]["name"] == catalog["CDC dedx Hadron Calibrations"].expert_username


def test_second_run_creates_nothing(dev_jira: DevJira, catalog: Catalog) -> None:
    plan = make_plan(catalog, parent_issue_type="Epic", parent_link_field="customfield_10008")
    first = dev_jira.tree().ensure_tree(plan)
    before = dev_jira.calls()
    again = dev_jira.tree().ensure_tree(plan)
    assert again.keys == first.keys
    assert again.parent_key == first.parent_key
    assert again.created == []
    assert dev_jira.calls() - before == 1  # the label search only
    assert len(dev_jira.state.issues()) == len(catalog.names) + 1


def test_missing_link_between_existing_tickets_is_added(dev_jira: DevJira, catalog: Catalog) -> None:
    names = ["CDC Tracking", "CDC badwire"]
    keys = dev_jira.tree().ensure(make_plan(catalog, names))
    dev_jira.state._links.clear()  # as if an older version had created the tickets without links
    result = dev_jira.tree().ensure_tree(make_plan(catalog, names))
    assert result.links_created == 1
    assert blocks_pairs(dev_jira) == {(keys["CDC Tracking"], keys["CDC badwire"])}


@pytest.mark.parametrize("mode", [SERVER, CLOUD])
def test_retry_after_lost_response_creates_no_duplicate(
    dev_jira: DevJira, catalog: Catalog, mode: str
) -> None:
    dev_jira.reset("Cloud" if mode == CLOUD else "Server", search_lag=1.0 if mode == CLOUD else 0.0)
    dev_jira.fault(mode="lost_response", path_prefix=f"/rest/api/{'3' if mode == CLOUD else '2'}/issue/bulk")
    tree = dev_jira.tree(mode, settle_seconds=5.0, settle_interval=0.3)
    keys = tree.ensure(make_plan(catalog, ["CDC Tracking", "CDC badwire", "KLM channel status"]))

    issues = dev_jira.state.issues()
    assert len(issues) == 3
    assert sorted(keys.values()) == sorted(issue.key for issue in issues)
    assert blocks_pairs(dev_jira) == {(keys["CDC Tracking"], keys["CDC badwire"])}


def test_retry_after_timeout_creates_no_duplicate(dev_jira: DevJira, catalog: Catalog) -> None:
    dev_jira.fault(mode="timeout", delay=3.0, path_prefix="/rest/api/2/issue/bulk")
    tree = dev_jira.tree(timeout=1)
    started = time.monotonic()
    keys = tree.ensure(make_plan(catalog, ["CDC Tracking"]))
    assert time.monotonic() - started < 10
    time.sleep(2.5)  # the delayed request is served after the client gave up
    assert [issue.key for issue in dev_jira.state.issues()] == list(keys.values())


def test_search_before_create_is_needed(dev_jira: DevJira, catalog: Catalog) -> None:
    """A naive retry without the label search would create the ticket twice: the fault is real."""
    dev_jira.fault(mode="lost_response", path_prefix="/rest/api/2/issue/bulk")
    plan = make_plan(catalog, ["CDC Tracking"])
    body = {"issueUpdates": [{"fields": dict(plan.tickets[0].fields)}]}
    client = dev_jira.client()
    first = client.request("POST", "rest/api/2/issue/bulk", json=body, advanced_mode=True)
    assert first.status_code == 504
    client.request("POST", "rest/api/2/issue/bulk", json=body, advanced_mode=True)
    assert len(dev_jira.state.issues()) == 2


def test_server_error_per_item_is_retried(dev_jira: DevJira, catalog: Catalog) -> None:
    dev_jira.fault(mode="error", status=503, path_prefix="/rest/api/2/issue/bulk")
    keys = dev_jira.tree().ensure(make_plan(catalog, ["CDC Tracking", "CDC badwire"]))
    assert len(keys) == 2
    assert len(dev_jira.state.issues()) == 2


def test_bulk_partial_failure_unknown_assignee(dev_jira: DevJira, catalog: Catalog) -> None:
    plan = make_plan(catalog, ["CDC Tracking", "CDC badwire"])
    plan.tickets[1] = type(plan.tickets[1])(**{**plan.tickets[1].__dict__, "assignee": "nobody-here"})
    keys = dev_jira.tree().ensure(plan)
    issues = {issue.key: issue for issue in dev_jira.state.issues()}
    assert len(issues) == 2
    assert issues[keys["CDC Tracking"]].assignee == catalog["CDC Tracking"].expert_username
    assert issues[keys["CDC badwire"]].assignee is None
    assert blocks_pairs(dev_jira) == {(keys["CDC Tracking"], keys["CDC badwire"])}


def test_bulk_partial_failure_names_the_rejected_ticket(dev_jira: DevJira, catalog: Catalog) -> None:
    plan = make_plan(catalog, ["CDC Tracking", "KLM channel status"])
    broken = plan.tickets[1]
    plan.tickets[1] = type(broken)(
        **{**broken.__dict__, "fields": {**broken.fields, "issuetype": {"name": "Story"}}}
    )
    with pytest.raises(TicketError, match="KLM channel status") as raised:
        dev_jira.tree().ensure(plan)
    assert "issuetype" in str(raised.value)
    assert [issue.summary for issue in dev_jira.state.issues()] == ["[prompt-e0026-b01] CDC Tracking"]


def test_more_than_fifty_tickets_go_in_batches(dev_jira: DevJira, catalog: Catalog) -> None:
    plan = make_plan(catalog, ["Example Simple"])
    template = plan.tickets[0]
    plan.tickets = [
        type(template)(
            calibration=f"copy {number}",
            label=f"{template.label}-{number}",
            assignee=template.assignee,
            fields={**template.fields, "labels": [plan.label, f"{template.label}-{number}"]},
        )
        for number in range(120)
    ]
    keys = dev_jira.tree().ensure(plan, first_attempt=True)
    assert len(set(keys.values())) == 120
    assert dev_jira.stats()["POST /rest/api/2/issue/bulk"] == 3


def test_cloud_search_lag_hides_new_tickets(dev_jira: DevJira, catalog: Catalog) -> None:
    dev_jira.reset("Cloud", search_lag=30.0)
    tree = dev_jira.tree(CLOUD)
    keys = tree.ensure(make_plan(catalog, ["CDC Tracking"]))
    key = keys["CDC Tracking"]
    assert tree.find("b2cal-prompt-e0026-b01") == {}
    issue_id = dev_jira.state.get(key).id
    reconciled = tree.api.search("labels = b2cal-prompt-e0026-b01", ["status"], reconcile_ids=[issue_id])
    assert [item["key"] for item in reconciled] == [key]
    # Keys recorded by the first attempt are trusted, so a retry does not create a second ticket.
    again = tree.ensure(make_plan(catalog, ["CDC Tracking"]), known=keys)
    assert again == keys
    assert len(dev_jira.state.issues()) == 1


def test_duplicates_are_closed_keeping_the_lowest_key(dev_jira: DevJira, catalog: Catalog) -> None:
    plan = make_plan(catalog, ["CDC Tracking"])
    client = dev_jira.client()
    for _ in range(2):
        client.create_issue(fields=dict(plan.tickets[0].fields))
    result = dev_jira.tree().ensure_tree(plan)
    assert result.keys == {"CDC Tracking": "CAL-1"}
    assert result.duplicates_closed == ["CAL-2"]
    assert dev_jira.state.get("CAL-2").status in ("Resolved", "Closed")
    assert "Duplicate of CAL-1" in dev_jira.state.get("CAL-2").comments[0].body


def test_transitions_by_category_on_another_workflow(dev_jira: DevJira, catalog: Catalog) -> None:
    tree = dev_jira.tree()
    keys = tree.ensure(make_plan(catalog, ["CDC Tracking"], project="OPS"))
    key = keys["CDC Tracking"]
    assert dev_jira.state.get(key).status == "To Do"
    ids = {item["id"]: item["to"]["name"] for item in tree.api.transitions(key)}
    assert ids == {"21": "In Progress", "31": "Done"}  # 21 resolves on the classic workflow

    assert tree.transition_to(key, "indeterminate") is True
    assert tree.transition_to(key, "done") is True
    assert tree.transition_to(key, "done") is False
    assert tree.categories([key]) == {key: "done"}
    assert tree.transition_to(key, "new") is True
    assert dev_jira.state.get(key).status == "To Do"


def test_reopened_ticket_is_open_again(dev_jira: DevJira, catalog: Catalog) -> None:
    tree = dev_jira.tree()
    key = tree.ensure(make_plan(catalog, ["CDC Tracking"]))["CDC Tracking"]
    tree.transition_to(key)
    assert tree.categories([key]) == {key: "done"}
    tree.transition_to(key, "new")
    assert tree.categories([key]) == {key: "new"}
    assert dev_jira.state.get(key).resolution is None


@pytest.mark.parametrize("project", ["CAL", "OPS"])
def test_reopen_moves_done_tickets_only(dev_jira: DevJira, catalog: Catalog, project: str) -> None:
    tree = dev_jira.tree()
    key = tree.ensure(make_plan(catalog, ["CDC Tracking"], project=project))["CDC Tracking"]
    assert tree.reopen(key) is False
    tree.transition_to(key)

    assert tree.reopen(key) is True

    assert tree.categories([key]) == {key: "new"}
    assert tree.reopen(key) is False


@pytest.mark.parametrize("mode", [SERVER, CLOUD])
def test_categories_leave_out_missing_tickets(dev_jira: DevJira, catalog: Catalog, mode: str) -> None:
    dev_jira.reset("Cloud" if mode == CLOUD else "Server")
    tree = dev_jira.tree(mode)
    key = tree.ensure(make_plan(catalog, ["CDC Tracking"]))["CDC Tracking"]
    assert tree.categories([key, "CAL-999"]) == {key: "new"}


@pytest.mark.parametrize("mode", [SERVER, CLOUD])
def test_comments_in_the_deployments_format(dev_jira: DevJira, catalog: Catalog, mode: str) -> None:
    dev_jira.reset("Cloud" if mode == CLOUD else "Server")
    tree = dev_jira.tree(mode)
    key = tree.ensure(make_plan(catalog, ["CDC Tracking"]))["CDC Tracking"]
    tree.comment(key, "The job failed.\n\n{noformat}\nerror line\n{noformat}")
    stored = dev_jira.state.get(key).comments[0].body
    if mode == CLOUD:
        assert stored["type"] == "doc"
        assert stored["content"][1]["type"] == "codeBlock"
    else:
        assert stored.startswith("The job failed.")


def test_cloud_account_lookup_by_email(dev_jira: DevJira, catalog: Catalog) -> None:
    dev_jira.reset("Cloud")
    from b2cal.tickets import TicketTree

    tree = TicketTree(dev_jira.client(), mode=CLOUD, account_email_domain="example.invalid")
    key = tree.ensure(make_plan(catalog, ["CDC Tracking"]))["CDC Tracking"]
    assert dev_jira.state.get(key).assignee == catalog["CDC Tracking"].expert_username

    unmapped = TicketTree(dev_jira.client(), mode=CLOUD)
    other = unmapped.ensure(make_plan(catalog, ["KLM channel status"]))["KLM channel status"]
    assert dev_jira.state.get(other).assignee is None


def test_cloud_rejects_server_style_requests(dev_jira: DevJira) -> None:
    dev_jira.reset("Cloud")
    auth = (dev_jira.config.jira_bot_username, dev_jira.config.jira_bot_password)
    gone = requests.get(
        f"{dev_jira.url}/rest/api/2/search", params={"jql": "project = CAL"}, auth=auth, timeout=10
    )
    assert gone.status_code == 410
    body = {
        "fields": {
            "project": {"key": "CAL"},
            "issuetype": {"name": "Task"},
            "summary": "s",
            "description": "x",
        }
    }
    text = requests.post(f"{dev_jira.url}/rest/api/3/issue", json=body, auth=auth, timeout=10)
    assert text.status_code == 400
    assert "description" in text.json()["errors"]
    dev_jira.reset("Server")
    assert requests.get(f"{dev_jira.url}/rest/api/3/myself", auth=auth, timeout=10).status_code == 404


def test_rate_limited_create_is_repeated(dev_jira: DevJira, catalog: Catalog) -> None:
    dev_jira.fault(mode="error", status=429, path_prefix="/rest/api/2/issue/bulk")
    keys = dev_jira.tree().ensure(make_plan(catalog, ["CDC Tracking"]), first_attempt=True)
    assert len(keys) == 1
    assert len(dev_jira.state.issues()) == 1
    assert (
        dev_jira.stats()["POST /rest/api/2/issue/bulk"] == 1
    )  # the 429 came before routing, so it is not counted
