"""Attachments in the development Jira: the XSRF header, the issue's list and the content, and the client."""

from __future__ import annotations

import pytest
import requests
from jira_support import DevJira

from b2cal.jira_api import CLOUD, SERVER, JiraApi, JiraApiError


def create_issue(dev_jira: DevJira) -> str:
    body = {"fields": {"project": {"key": "CAL"}, "issuetype": {"name": "Task"}, "summary": "attachments"}}
    response = requests.post(f"{dev_jira.url}/rest/api/2/issue", json=body, auth=auth(dev_jira), timeout=10)
    response.raise_for_status()
    return str(response.json()["key"])


def auth(dev_jira: DevJira) -> tuple[str, str]:
    return (dev_jira.config.jira_bot_username, dev_jira.config.jira_bot_password)


def post_file(dev_jira: DevJira, key: str, version: int = 2, **headers: str) -> requests.Response:
    return requests.post(
        f"{dev_jira.url}/rest/api/{version}/issue/{key}/attachments",
        files={"file": ("summary.txt", b"payload summary\n", "text/plain")},
        headers=headers,
        auth=auth(dev_jira),
        timeout=10,
    )


def test_upload_without_token_header_is_blocked(dev_jira: DevJira) -> None:
    key = create_issue(dev_jira)

    response = post_file(dev_jira, key)

    assert response.status_code == 403
    assert "XSRF check failed" in response.text
    assert dev_jira.state.get(key).attachments == []


def test_upload_lists_and_serves_the_file_on_server(dev_jira: DevJira) -> None:
    key = create_issue(dev_jira)

    response = post_file(dev_jira, key, **{"X-Atlassian-Token": "no-check"})

    assert response.status_code == 200
    [created] = response.json()
    assert created["filename"] == "summary.txt"
    assert created["size"] == len(b"payload summary\n")
    assert created["mimeType"] == "text/plain"
    issue = requests.get(
        f"{dev_jira.url}/rest/api/2/issue/{key}",
        params={"fields": "attachment"},
        auth=auth(dev_jira),
        timeout=10,
    ).json()
    [listed] = issue["fields"]["attachment"]
    assert listed["id"] == created["id"]
    assert listed["content"] == f"{dev_jira.url}/secure/attachment/{created['id']}/summary.txt"
    content = requests.get(listed["content"], auth=auth(dev_jira), timeout=10)
    assert content.status_code == 200
    assert content.content == b"payload summary\n"
    assert requests.get(listed["content"], timeout=10).status_code == 401
    meta = requests.get(
        f"{dev_jira.url}/rest/api/2/attachment/{created['id']}", auth=auth(dev_jira), timeout=10
    )
    assert meta.json()["filename"] == "summary.txt"


def test_cloud_serves_content_through_rest_v3(dev_jira: DevJira) -> None:
    dev_jira.reset("Cloud")
    key = create_issue(dev_jira)

    response = post_file(dev_jira, key, version=3, **{"X-Atlassian-Token": "no-check"})

    assert response.status_code == 200
    [created] = response.json()
    assert created["content"] == f"{dev_jira.url}/rest/api/3/attachment/content/{created['id']}"
    assert requests.get(created["content"], auth=auth(dev_jira), timeout=10).content == b"payload summary\n"


def test_upload_without_file_field_is_rejected(dev_jira: DevJira) -> None:
    key = create_issue(dev_jira)

    response = requests.post(
        f"{dev_jira.url}/rest/api/2/issue/{key}/attachments",
        files={"upload": ("a.txt", b"x", "text/plain")},
        headers={"X-Atlassian-Token": "no-check"},
        auth=auth(dev_jira),
        timeout=10,
    )

    assert response.status_code == 400
    assert "'file'" in response.json()["errorMessages"][0]


def test_unknown_attachment_is_not_found(dev_jira: DevJira) -> None:
    response = requests.get(f"{dev_jira.url}/secure/attachment/99999/a.txt", auth=auth(dev_jira), timeout=10)

    assert response.status_code == 404


@pytest.mark.parametrize("mode", [SERVER, CLOUD])
def test_client_attaches_and_lists(dev_jira: DevJira, mode: str) -> None:
    dev_jira.reset("Cloud" if mode == CLOUD else "Server")
    key = create_issue(dev_jira)
    api = JiraApi(dev_jira.client(), mode=mode)

    created = api.add_attachment(key, "plot.png", b"\x89PNG fake", "image/png")
    listed = api.attachments(key)

    assert [item["filename"] for item in created] == ["plot.png"]
    assert [(item["filename"], item["size"], item["mimeType"]) for item in listed] == [
        ("plot.png", 9, "image/png")
    ]


def test_client_error_names_the_file(dev_jira: DevJira) -> None:
    api = JiraApi(dev_jira.client(), mode=SERVER)

    with pytest.raises(JiraApiError, match="attaching plot.png to CAL-404") as caught:
        api.add_attachment("CAL-404", "plot.png", b"x")

    assert caught.value.status == 404
