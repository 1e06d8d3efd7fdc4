"""Plan the ticket tree and check webhook signatures without any server."""

from __future__ import annotations

from string import Template

import pytest

from b2cal.catalog import load_packaged_release
from b2cal.jira_api import adf_to_text, to_adf
from b2cal.ticket_events import SignatureError, check_signature, parse_issue_event, sign
from b2cal.tickets import parent_label, plan_tickets, request_label, ticket_label

CATALOG = load_packaged_release()


def full_plan(**options):
    return plan_tickets(
        CATALOG,
        CATALOG.names,
        request_uid="prompt-e0026-b01",
        project="CAL",
        kind="prompt",
        site="BNL",
        bucket="26,0,26,100",
        staging_tag="staging_e0026",
        **options,
    )


def test_labels_are_deterministic_and_distinct():
    assert ticket_label("r1", "CDC dedx") == ticket_label("r1", "CDC dedx")
    assert ticket_label("r1", "CDC dedx") != ticket_label("r2", "CDC dedx")
    assert ticket_label("r1", "CDC dedx") != ticket_label("r1", "CDC Tracking")
    assert parent_label("r1") != request_label("r1")
    assert " " not in ticket_label("request with spaces", "CDC dedx")


def test_plan_links_point_from_dependency_to_dependent():
    plan = full_plan()
    links = set(plan.links())
    assert ("CDC dedx", "CDC dedx Hadron Calibrations") in links
    assert ("CDC dedx Hadron Calibrations", "CDC dedx") not in links
    assert len(links) == sum(len(CATALOG[name].depends_on) for name in CATALOG.names)


def test_create_rounds_never_pair_linked_tickets():
    plan = full_plan()
    rounds = plan.create_rounds(CATALOG.names)
    round_of = {name: number for number, names in enumerate(rounds) for name in names}
    assert sorted(round_of) == sorted(CATALOG.names)
    for blocking, blocked in plan.links():
        assert round_of[blocking] != round_of[blocked], (blocking, blocked)
    # The catalog has triangles (BeamSpot, CDC dedx, CDC dedx hadron), so three rounds are needed.
    assert len(rounds) == 3


def test_create_rounds_only_for_missing_tickets():
    plan = full_plan()
    rounds = plan.create_rounds(["BeamSpot Calibrations", "BoostVector Calibrations"])
    assert sorted(map(sorted, rounds)) == [["BeamSpot Calibrations"], ["BoostVector Calibrations"]]
    assert plan.create_rounds([]) == []


def test_description_fills_every_placeholder():
    plan = full_plan(
        job_folders={"CDC dedx": "/work/r/CDC_dedx-1"},
        log_locations={"CDC dedx": "/work/r/CDC_dedx-1/attempt-*/job.log"},
        bucket_url="http://airflow.example/b2cal/requests/prompt-e0026-b01",
    )
    spec = next(item for item in plan.tickets if item.calibration == "CDC dedx")
    text = spec.fields["description"]
    assert "$" not in text
    assert "/work/r/CDC_dedx-1/attempt-*/job.log" in text
    assert "http://airflow.example/b2cal/requests/prompt-e0026-b01" in text
    assert "BeamSpot Calibrations" in text  # the calibrations it blocks
    assert spec.assignee == CATALOG["CDC dedx"].expert_username


def test_site_template_with_unknown_placeholder_is_rejected():
    with pytest.raises(ValueError, match="run_number"):
        full_plan(description="Run $run_number of $name")
    plan = full_plan(description=Template("Check $name in $bucket."))
    assert plan.tickets[0].fields["description"].startswith("Check ")


def test_parent_and_components_are_planned_on_request():
    plain = full_plan()
    assert plain.parent is None
    assert "components" not in plain.tickets[0].fields

    plan = full_plan(parent_issue_type="Epic", parent_link_field="customfield_10008", components=True)
    assert plan.parent is not None
    assert plan.parent.label == parent_label("prompt-e0026-b01")
    assert plan.parent.fields["issuetype"] == {"name": "Epic"}
    assert plan.parent.link_field == "customfield_10008"
    assert request_label("prompt-e0026-b01") not in plan.parent.fields["labels"]
    assert plan.tickets[0].fields["components"] == [{"name": CATALOG[plan.tickets[0].calibration].subsystem}]


def test_adf_round_trip_keeps_paragraphs_code_and_links():
    text = "Job started.\nPid 12.\n\nLog:\n{noformat}\nline 1\nline 2\n{noformat}\nSee http://host/page now."
    document = to_adf(text)
    assert document["type"] == "doc"
    kinds = [node["type"] for node in document["content"]]
    assert kinds == ["paragraph", "paragraph", "codeBlock", "paragraph"]
    link = [node for node in document["content"][3]["content"] if node.get("marks")]
    assert link[0]["marks"][0]["attrs"]["href"] == "http://host/page"
    assert "line 2" in adf_to_text(document)
    assert "Pid 12." in adf_to_text(document)


def test_signature_check_accepts_only_the_right_hmac():
    body = b'{"webhookEvent": "jira:issue_updated"}'
    check_signature("s3cret", body, sign("s3cret", body))
    check_signature("s3cret", body, sign("s3cret", body).upper().replace("SHA256", "sha256"))
    for header, reason in [
        (None, "missing"),
        ("", "missing"),
        ("md5=abc", "form"),
        (sign("other", body), "does not match"),
        (sign("s3cret", body + b" "), "does not match"),
    ]:
        with pytest.raises(SignatureError, match=reason):
            check_signature("s3cret", body, header)
    with pytest.raises(SignatureError, match="no webhook secret"):
        check_signature("", body, sign("", body))


def test_parse_issue_event_reads_the_status_change():
    event = parse_issue_event(
        {
            "webhookEvent": "jira:issue_updated",
            "user": {"name": "expert"},
            "issue": {
                "id": "10001",
                "key": "CAL-2",
                "fields": {"status": {"name": "Closed", "statusCategory": {"key": "done"}}},
            },
            "changelog": {"items": [{"field": "status", "fromString": "Open", "toString": "Closed"}]},
        }
    )
    assert event.issue_key == "CAL-2"
    assert event.status_category == "done"
    assert event.status_change == ("Open", "Closed")
    assert event.user == "expert"
    with pytest.raises(ValueError, match="issue key"):
        parse_issue_event({"webhookEvent": "jira:issue_updated", "issue": {}})
