"""Check the product's Jira traffic and the development Jira's answers against Atlassian's OpenAPI file.

Atlassian publishes an OpenAPI description of the Jira Cloud REST API (v3), not of Data Center. The
tests run the product's ticket operations against the development Jira, record every exchange, and
validate each request and response with openapi-core. Server traffic goes to ``/rest/api/2``, whose
shapes v3 shares except for text fields (strings instead of ADF, which the description leaves
free-form), so it is checked against the v3 paths. The description is read from the shared folder
beside the repository (or ``B2CAL_JIRA_OPENAPI``); without it the tests skip.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from jira_support import DevJira

from b2cal.catalog import Catalog
from b2cal.jira_api import CLOUD, SERVER
from b2cal.ticket_watch import TicketWatcher
from b2cal.tickets import TicketTree, plan_tickets

SPEC_PATH = Path(
    os.environ.get(
        "B2CAL_JIRA_OPENAPI",
        Path(__file__).resolve().parents[3] / "shared" / "jira" / "jira-cloud-platform-openapi-v3.json",
    )
)
#: The server the description names; paths are matched below it.
SPEC_SERVER = "https://your-domain.atlassian.net"
#: Jira's timestamps, e.g. ``2026-12-04T16:53:19.000+0000``. Jira servers send the offset without a
#: colon while the description declares RFC 3339 ``date-time``, so that one mismatch is accepted.
JIRA_TIME = re.compile(r"'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4}' is not a 'date-time'")


@pytest.fixture(scope="module")
def openapi() -> Any:
    if not SPEC_PATH.is_file():
        pytest.skip(f"Atlassian's OpenAPI description is not at {SPEC_PATH}")
    from openapi_core import Config, OpenAPI

    # Atlassian's file fails strict OpenAPI validation (e.g. a default outside its enum), so the
    # description itself is not validated, only the traffic against it.
    return OpenAPI.from_dict(json.loads(SPEC_PATH.read_text()), config=Config(spec_validator_cls=None))


@pytest.fixture
def recording(dev_jira: DevJira) -> Iterator[list[dict[str, Any]]]:
    exchanges: list[dict[str, Any]] = []
    dev_jira.state.recorder = exchanges
    try:
        yield exchanges
    finally:
        dev_jira.state.recorder = None


def run_product_operations(dev_jira: DevJira, catalog: Catalog, mode: str) -> None:
    """Run every Jira operation the product uses: tree, retry, search, transitions, comments, attachments,
    waiting."""
    link_field = "parent" if mode == CLOUD else "customfield_10008"
    plan = plan_tickets(
        catalog,
        catalog.names,
        request_uid="contract-1",
        project="CAL",
        kind="prompt",
        site="BNL",
        bucket="26,0,26,100",
        staging_tag="staging",
        parent_issue_type="Epic",
        parent_link_field=link_field,
    )
    tree = dev_jira.tree(mode)
    keys = tree.ensure(plan)
    tree.ensure(plan)
    key = keys["CDC Tracking"]
    tree.categories([key, "CAL-999"])
    tree.transition_to(key, "indeterminate")
    tree.transition_to(key)
    tree.transition_to(key, "new")
    tree.comment(
        key,
        "Job started.\n\n{noformat}\nlog line\n{noformat}\nhttp://airflow.example/b2cal/requests/contract-1",
    )
    tree.api.attachments(key)
    tree.api.add_attachment(key, "summary.txt", b"CDC deadboard: 1 payload\n", "text/plain")
    tree.api.attachments(key)
    if mode == CLOUD:
        TicketTree(dev_jira.client(), mode=CLOUD, account_email_domain="example.invalid").api.account_id(
            catalog["CDC Tracking"].expert_username
        )
        tree.api.search("labels = contract-1", ["status"], reconcile_ids=[dev_jira.state.get(key).id])
    watcher = TicketWatcher("contract", tree.categories, poll_interval=0.05, min_wait=0.0)
    tree.transition_to(key)

    async def wait() -> None:
        await asyncio.wait_for(watcher.wait([key]), 5)

    asyncio.run(wait())


def known_deviation(error: Exception, detail: list[str], item: dict[str, Any]) -> bool:
    """Return whether a response mismatch is one where Atlassian's description differs from Jira.

    The description declares a JSON body for answers that Jira sends empty (204 after a transition,
    201 after a link), and RFC 3339 timestamps where Jira sends ``+0000`` offsets.
    """
    if type(error).__name__ == "MissingData" and not item["response_body"]:
        return True
    return bool(detail) and all(JIRA_TIME.fullmatch(text) for text in detail)


def multipart_problems(item: dict[str, Any]) -> list[str]:
    """Check a multipart request body by hand: it must carry each file in a field named ``file``.

    Atlassian's description declares the attachment upload's multipart body as an array, which no
    multipart form deserialises to, so openapi-core cannot check it.
    """
    content_type = item["request_content_type"] or ""
    message = email.message_from_bytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + (item["request_body"] or b""),
        policy=email.policy.HTTP,
    )
    parts = list(message.iter_parts()) if message.is_multipart() else []
    names = [part.get_param("name", header="content-disposition") for part in parts]
    where = f"{item['method']} {item['path']}"
    if not parts:
        return [f"{where}: request: the multipart body has no parts"]
    problems = [
        f"{where}: request: multipart field {name!r} is not 'file'" for name in names if name != "file"
    ]
    problems += [
        f"{where}: request: a file part has no file name" for part in parts if not part.get_filename()
    ]
    return problems


def validate(openapi: Any, exchanges: list[dict[str, Any]]) -> tuple[list[str], int]:
    from openapi_core.testing import MockRequest, MockResponse

    problems = []
    checked = 0
    for item in exchanges:
        path = item["path"].replace("/rest/api/2/", "/rest/api/3/", 1)
        request = MockRequest(
            SPEC_SERVER,
            item["method"].lower(),
            path,
            args=dict(parse_qsl(item["query"])),
            headers={"Authorization": "Basic Y29udHJhY3Q6dGVzdA=="},
            data=item["request_body"] or None,
            content_type=item["request_content_type"] or "application/json",
        )
        response = MockResponse(
            item["response_body"],
            status_code=item["status"],
            content_type=(item["response_content_type"] or "application/json").split(";")[0],
        )
        where = f"{item['method']} {item['path']} -> {item['status']}"
        checks: list[tuple[str, Any]] = [("request", openapi.validate_request), ("response", None)]
        if (item["request_content_type"] or "").startswith("multipart/form-data"):
            problems += multipart_problems(item)
            checks = [("response", None)]
        for kind, check in checks:
            try:
                if check is not None:
                    check(request)
                else:
                    openapi.validate_response(request, response)
            except Exception as exc:  # noqa: BLE001 - collect every mismatch, not only the first
                cause = getattr(exc, "__cause__", None)
                detail = [str(error.message) for error in getattr(cause, "schema_errors", ()) or ()]
                if kind == "response" and known_deviation(exc, detail, item):
                    continue
                problems.append(f"{where}: {kind}: {exc!r} {detail or cause!r}")
        checked += 1
    return problems, checked


@pytest.mark.parametrize("mode", [CLOUD, SERVER])
def test_product_traffic_matches_the_published_api(
    openapi: Any, dev_jira: DevJira, catalog: Catalog, recording: list[dict[str, Any]], mode: str
) -> None:
    dev_jira.reset("Cloud" if mode == CLOUD else "Server")
    run_product_operations(dev_jira, catalog, mode)
    paths = {item["path"] for item in recording}
    assert any(path.endswith("/issue/bulk") for path in paths)
    assert any(path.endswith("/transitions") for path in paths)
    assert any(path.endswith("/comment") for path in paths)
    assert any(path.endswith("/attachments") for path in paths)
    assert any(path.endswith("/search/jql" if mode == CLOUD else "/search") for path in paths)
    assert any(item["status"] == 400 for item in recording) == (mode == CLOUD)  # the missing key

    problems, checked = validate(openapi, recording)
    assert checked == len(recording)
    assert problems == [], "\n".join(problems)


def test_contract_check_catches_a_wrong_shape(openapi: Any) -> None:
    """The validation is not vacuous: a link without outwardIssue, a numeric issue id, an attachment
    in a field other than ``file`` and a numeric attachment id are caught."""
    link = {"type": {"name": "Blocks"}, "inwardIssue": {"key": "CAL-1"}}
    search = {"issues": [{"id": 10001, "key": "CAL-1", "fields": {}}], "isLast": True}
    bad = [
        {
            "method": "POST",
            "path": "/rest/api/3/issueLink",
            "query": "",
            "request_body": json.dumps(link).encode(),
            "request_content_type": "application/json",
            "status": 201,
            "response_content_type": "application/json",
            "response_body": b"",
        },
        {
            "method": "POST",
            "path": "/rest/api/3/search/jql",
            "query": "",
            "request_body": json.dumps({"jql": "key = CAL-1"}).encode(),
            "request_content_type": "application/json",
            "status": 200,
            "response_content_type": "application/json",
            "response_body": json.dumps(search).encode(),
        },
    ]
    boundary = "b2cal-contract"
    wrong_field = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="upload"; filename="a.txt"\r\n'
        f"Content-Type: text/plain\r\n\r\nx\r\n--{boundary}--\r\n"
    ).encode()
    bad.append(
        {
            "method": "POST",
            "path": "/rest/api/3/issue/CAL-1/attachments",
            "query": "",
            "request_body": wrong_field,
            "request_content_type": f"multipart/form-data; boundary={boundary}",
            "status": 200,
            "response_content_type": "application/json",
            "response_body": json.dumps([{"id": 10000, "filename": "a.txt"}]).encode(),
        }
    )
    problems, _ = validate(openapi, bad)
    assert any("multipart field 'upload'" in problem for problem in problems)
    assert any("attachments" in problem and "response" in problem for problem in problems)
    assert any("issueLink" in problem and "request" in problem for problem in problems)
    assert any("search/jql" in problem and "response" in problem for problem in problems)
