"""The request form: proposals, the dependency picker's data, validation next to fields, preview, submit."""

from __future__ import annotations

import html
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import func, select

from b2cal.catalog import load_packaged_release
from b2cal.db import inventory, store
from b2cal.db.engine import session_scope
from b2cal.db.inventorymodels import FAILED, SiteRelease
from b2cal.db.models import AuditEntry, ProcessingRequest
from b2cal.db.runmodels import BucketRecord, CollectedRun
from b2cal.iov import IoV
from b2cal.request import RequestSpec
from b2cal_airflow.www import forms
from b2cal_airflow.www.airflow_api import AirflowAPIError

FORM = "/requests/new"


def form_data(token: str, **changes: Any) -> dict[str, Any]:
    """A valid form for two calibrations of experiment 26; ``changes`` replace or add fields."""
    data: dict[str, Any] = {
        "csrf_token": token,
        "release": "release-11-00-00",
        "kind": "prompt",
        "site": "BNL",
        "bucket": "26,0,26,60",
        "calibrations": ["CDC badwire", "BeamSpot Calibrations"],
        "request_id": "prompt-e26-test",
        "staging_tag": "staging_prompt_e26_test",
        "running_tag": "b2cal_prompt_running",
        "action": "preview",
    }
    data.update(changes)
    return data


def request_count(db_url: str) -> int:
    with session_scope(db_url) as session:
        return int(session.scalar(select(func.count()).select_from(ProcessingRequest)) or 0)


def test_form_lists_calibrations_with_dependencies_and_proposed_buckets(pages):
    register_at(pages.db_url, "BNL", "release-11-01-00")
    response = pages.client.get(FORM)

    assert response.status_code == 200
    assert 'value="CDC badwire"' in response.text
    assert 'value="SVD occupancy"' in response.text, "the latest release is the default"
    depends = response.text.split('data-depends="', 1)[1].split('"', 1)[0]
    graph = json.loads(html.unescape(depends))
    assert "CDC dedx Hadron Calibrations" in graph["BeamSpot Calibrations"]
    assert 'option value="25,' in response.text
    assert 'option value="26,' in response.text
    assert pages.registry.calls, "runs are collected when none is collected yet"
    with session_scope(pages.db_url) as session:
        assert session.scalar(select(func.count()).select_from(CollectedRun)) == 300


def test_form_uses_a_fresh_run_cache_without_asking_the_registry(pages, cached_runs):
    pages.client.get(FORM)

    assert pages.registry.calls == []


def test_preview_shows_the_plan_and_saves_nothing(pages):
    token = pages.csrf(FORM)

    response = pages.client.post(FORM, data=form_data(token))

    assert response.status_code == 200, response.text
    plan = response.text.split('id="plan"', 1)[1]
    added = plan.split('id="plan-added"', 1)[1].split("</span>", 1)[0]
    assert "CDC Tracking" in added
    assert "TOP pre-tracking calibration" in added
    assert "[prompt-e26-test] BeamSpot Calibrations" in plan
    badwire = plan.split('data-calibration="CDC badwire"', 1)[1].split("</tr>", 1)[0]
    assert "<td>CDC Tracking</td>" in badwire, "the ticket is blocked by its dependency's ticket"
    assert 'class="input-count">0<' not in badwire
    assert pages.airflow.triggered == []
    assert request_count(pages.db_url) == 0


def test_submit_triggers_the_dag_as_the_user_and_records_the_request(pages):
    token = pages.csrf(FORM)

    response = pages.client.post(FORM, data=form_data(token, action="submit"), follow_redirects=False)

    assert response.status_code == 303
    assert response.headers["location"].endswith("/requests/prompt-e26-test")
    [call] = pages.airflow.triggered
    assert call["dag_id"] == "b2cal_processing_request"
    conf = call["conf"]
    assert conf["request_id"] == "prompt-e26-test"
    assert conf["requested_by"] == "manager"
    assert conf["bucket"] == [26, 0, 26, 60]
    assert {"BeamSpot Calibrations", "CDC badwire", "CDC Tracking", "CDC dedx"} <= set(conf["calibrations"])
    assert conf["expert_config"] == {}
    assert conf["filter_overrides"] == {}
    with session_scope(pages.db_url) as session:
        row = session.scalar(select(ProcessingRequest))
        assert row.uid == "prompt-e26-test"
        assert row.dag_run_id == call["run_id"]
        actions = set(session.scalars(select(AuditEntry.action).where(AuditEntry.request_uid == row.uid)))
    assert {"submit_request", "trigger_dag_run"} <= actions


def test_changed_filters_and_expert_config_become_overrides(pages):
    register_at(pages.db_url, "BNL", "release-11-01-00")
    token = pages.csrf(FORM)
    data = form_data(
        token,
        action="submit",
        release="release-11-01-00",
        **{
            "filters::CDC badwire::mumu_tight_or_highm_calib": "Good Or Recoverable\n"
            "mumu_tight_or_highm_calib",
            "filters::CDC Tracking::hadron_calib": "hadron_calib\nGood\nOn",
            "expert_config::CDC badwire": '{"min_hits": 250, "wire_list": []}',
        },
    )
    form_page = pages.client.get(FORM).text
    assert "&#34;min_hits&#34;: 100" in form_page, "expert_config is pre-filled from the catalog"

    response = pages.client.post(FORM, data=data, follow_redirects=False)

    assert response.status_code == 303, response.text
    conf = pages.airflow.triggered[0]["conf"]
    assert conf["release"] == "release-11-01-00"
    assert conf["filter_overrides"] == {
        "CDC badwire": {"mumu_tight_or_highm_calib": ["Good Or Recoverable", "mumu_tight_or_highm_calib"]}
    }, "an unchanged filter list is no override"
    assert conf["expert_config"] == {"CDC badwire": {"min_hits": 250}}


def error_for(html: str, field: str) -> str:
    marker = f'data-error-for="{field}">'
    assert marker in html, f"no error next to {field}"
    return html.split(marker, 1)[1].split("</p>", 1)[0]


def test_bad_fields_are_shown_next_to_them_and_nothing_is_saved(pages):
    token = pages.csrf(FORM)
    data = form_data(
        token,
        action="submit",
        bucket="26,50,26,10",
        release="release-11-01-00",
        **{
            "filters::CDC badwire::mumu_tight_or_highm_calib": "Good\nmumu_calibb",
            "expert_config::CDC badwire": '{"no_such_key": 1}',
        },
    )

    response = pages.client.post(FORM, data=data)

    assert response.status_code == 422
    assert "ends before it starts" in error_for(response.text, "bucket")
    assert "mumu_calibb" in error_for(response.text, "filters::CDC badwire::mumu_tight_or_highm_calib")
    assert "no_such_key" in error_for(response.text, "expert_config::CDC badwire")
    assert 'value="26,50,26,10"' in response.text, "the typed value stays in the field"
    assert pages.airflow.triggered == []
    assert request_count(pages.db_url) == 0


def test_outside_checks_name_the_site_running_tag_and_an_empty_bucket(pages):
    register_at(pages.db_url, "KEK", "release-11-00-00")
    pages.problems["site:KEK"] = "site 'KEK' has no connection 'b2cal_site_kek'"
    pages.problems["tag:old_tag"] = "global tag 'old_tag' is PUBLISHED, not RUNNING"
    token = pages.csrf(FORM)

    response = pages.client.post(
        FORM,
        data=form_data(token, action="submit", site="KEK", running_tag="old_tag", bucket="26,5000,26,6000"),
    )

    assert response.status_code == 422
    assert "b2cal_site_kek" in error_for(response.text, "site")
    assert "PUBLISHED" in error_for(response.text, "running_tag")
    assert "no run in bucket" in error_for(response.text, "bucket")
    assert pages.airflow.triggered == []


def test_invalid_running_tag_is_not_looked_up(pages):
    pages.problems["tag:<b>x</b>"] = "global tag '<b>x</b>' does not exist in the conditions database"
    token = pages.csrf(FORM)

    response = pages.client.post(FORM, data=form_data(token, action="submit", running_tag="<b>x</b>"))

    assert response.status_code == 422
    message = error_for(response.text, "running_tag")
    assert "is invalid" in message
    assert "does not exist" not in message
    assert pages.airflow.triggered == []


def test_parse_request_errors_land_on_their_field(pages):
    token = pages.csrf(FORM)

    response = pages.client.post(FORM, data=form_data(token, staging_tag="same", running_tag="same"))

    assert response.status_code == 422
    assert "must differ" in error_for(response.text, "staging_tag")


def test_a_taken_request_id_is_refused(pages):
    token = pages.csrf(FORM)
    assert (
        pages.client.post(FORM, data=form_data(token, action="submit"), follow_redirects=False).status_code
        == 303
    )

    response = pages.client.post(FORM, data=form_data(token, action="submit", staging_tag="other_tag"))

    assert response.status_code == 422
    assert "is taken" in error_for(response.text, "request_id")
    assert len(pages.airflow.triggered) == 1


def test_a_staging_tag_of_a_running_request_is_refused(pages):
    token = pages.csrf(FORM)
    pages.client.post(FORM, data=form_data(token, action="submit"), follow_redirects=False)

    response = pages.client.post(FORM, data=form_data(token, action="submit", request_id="second"))

    assert response.status_code == 422
    assert "still running" in error_for(response.text, "staging_tag")


def test_id_and_staging_tag_are_filled_from_the_bucket(pages):
    token = pages.csrf(FORM)

    response = pages.client.post(FORM, data=form_data(token, request_id="", staging_tag=""))

    assert response.status_code == 200, response.text
    assert 'value="prompt-e0026-r00000"' in response.text
    assert 'value="staging_prompt_e0026_r00000"' in response.text


def test_no_calibration_chosen_is_an_error(pages):
    token = pages.csrf(FORM)

    response = pages.client.post(FORM, data=form_data(token, calibrations=[]))

    assert response.status_code == 422
    assert "at least one calibration" in error_for(response.text, "calibrations")


def test_airflow_refusal_is_shown_and_nothing_is_saved(pages):
    pages.airflow.refuse = AirflowAPIError(403, "Forbidden")
    token = pages.csrf(FORM)

    response = pages.client.post(FORM, data=form_data(token, action="submit"))

    assert response.status_code == 403
    assert "Airflow did not start the run" in response.text
    assert request_count(pages.db_url) == 0


def test_post_without_csrf_token_is_refused(pages):
    token = pages.csrf(FORM)
    data = form_data(token, action="submit")
    del data["csrf_token"]

    response = pages.client.post(FORM, data=data)

    assert response.status_code == 403
    assert "security token" in response.text
    assert pages.airflow.triggered == []


def test_csrf_token_of_another_login_is_refused(pages):
    token = pages.csrf(FORM)
    pages.client.cookies.set("_token", "a-later-login")

    response = pages.client.post(FORM, data=form_data(token, action="submit"))

    assert response.status_code == 403
    assert pages.airflow.triggered == []


def test_bearer_clients_need_no_csrf_token(pages):
    data = form_data("", action="submit")

    response = pages.client.post(
        FORM, data=data, headers={"Authorization": "Bearer script-token"}, follow_redirects=False
    )

    assert response.status_code == 303


def test_expert_config_of_the_wrong_type_is_refused(pages):
    token = pages.csrf(FORM)
    data = form_data(
        token, release="release-11-01-00", **{"expert_config::CDC badwire": '{"min_hits": "many"}'}
    )

    response = pages.client.post(FORM, data=data)

    assert response.status_code == 422
    assert "a number" in error_for(response.text, "expert_config::CDC badwire")


def test_viewers_and_experts_cannot_start_requests(pages):
    token = pages.csrf(FORM)
    for name in ("viewer", "expert"):
        pages.login(name)
        assert pages.client.get(FORM).status_code == 403
        response = pages.client.post(
            FORM, data=form_data("", action="submit"), headers={"Authorization": "Bearer x"}
        )
        assert response.status_code == 403
    pages.login("manager")
    assert pages.client.post(FORM, data=form_data(token)).status_code == 200
    assert pages.airflow.triggered == []


def test_preview_api_returns_the_plan(pages, cached_runs):
    conf = {
        "request_id": "api-preview",
        "release": "release-11-00-00",
        "site": "BNL",
        "bucket": [26, 0, 26, 60],
        "calibrations": ["BeamSpot Calibrations"],
        "staging_tag": "s",
        "running_tag": "r",
    }

    response = pages.client.post("/api/preview", json=conf)

    assert response.status_code == 200, response.text
    plan = response.json()
    assert set(plan["added_dependencies"]) == {
        "CDC dedx",
        "CDC dedx Hadron Calibrations",
        "caf_svd_dedx",
        "TOP post-tracking calibration",
        "TOP pre-tracking calibration",
        "KLM strip efficiency",
    }
    assert plan["bucket_runs"] > 0
    assert plan["inputs"]["BeamSpot Calibrations"][0]["runs_kept"] > 0


@pytest.fixture(autouse=True)
def bnl_has_the_packaged_release(db_url: str) -> None:
    """Make the packaged release available at BNL, the site of the valid form."""
    register_at(db_url, "BNL", "release-11-00-00")


def register_at(db_url: str, site: str, *releases: str) -> None:
    """Make imported releases available at ``site`` in the site inventory."""
    with session_scope(db_url) as session:
        for release in releases:
            inventory.register_release(session, site, release, source="test")


def offered_releases(page: str) -> list[str]:
    """Return the options of the form's release field."""
    select_html = page.split('id="release"', 1)[1].split("</select>", 1)[0]
    return [
        part.split("<", 1)[0].strip() for part in select_html.split(">")[1:] if part.startswith("release-")
    ]


def release_field(page: str) -> str:
    """Return the HTML of the release field, from its list to the end of its block."""
    return page.split('id="release"', 1)[1].split("</div>", 1)[0]


def test_form_offers_only_the_site_releases(pages):
    register_at(pages.db_url, "BNL", "release-11-00-00")
    register_at(pages.db_url, "DESY", "release-11-00-00", "release-11-01-00")

    bnl = pages.client.get(FORM + "?site=BNL").text
    desy = pages.client.get(FORM + "?site=DESY").text

    assert offered_releases(bnl) == ["release-11-00-00"]
    assert 'value="SVD occupancy"' not in bnl, "the calibrations are those of the site's release"
    assert "available at BNL" in release_field(bnl)
    assert 'id="site" list="sites" value="BNL"' in bnl
    assert offered_releases(desy) == ["release-11-00-00", "release-11-01-00"]
    assert 'value="SVD occupancy"' in desy, "the site's newest release is the default"


def test_form_leaves_out_failed_and_unavailable_releases(pages):
    register_at(pages.db_url, "BNL", "release-11-00-00", "release-11-01-00")
    with session_scope(pages.db_url) as session:
        row = session.query(SiteRelease).filter_by(site="BNL", release="release-11-01-00").one()
        row.state = FAILED

    page = pages.client.get(FORM + "?site=BNL&release=release-11-01-00").text

    assert offered_releases(page) == ["release-11-00-00"]
    assert 'value="SVD occupancy"' not in page, "a release the site lacks is not shown on a fresh form"


def test_form_offers_imported_catalogs_for_an_unknown_site(pages):
    register_at(pages.db_url, "BNL", "release-11-00-00")

    page = pages.client.get(FORM + "?site=KEK").text

    assert offered_releases(page) == ["release-11-00-00", "release-11-01-00"]
    note = release_field(page)
    assert "no releases of KEK" in note
    assert "b2cal_release_discovery" in note


def test_unknown_site_is_rejected_at_the_release(pages):
    token = pages.csrf(FORM)

    for action in ("preview", "submit"):
        response = pages.client.post(FORM, data=form_data(token, action=action, site="KEK"))

        assert response.status_code == 422, action
        message = error_for(response.text, "release")
        assert "is not available at site &#39;KEK&#39;; releases available there: none" in message
    assert pages.airflow.triggered == []
    assert request_count(pages.db_url) == 0


def test_release_missing_at_site_rejected(pages):
    register_at(pages.db_url, "BNL", "release-11-00-00")
    token = pages.csrf(FORM)

    for action in ("preview", "submit"):
        response = pages.client.post(
            FORM, data=form_data(token, action=action, release="release-11-01-00"), follow_redirects=False
        )

        assert response.status_code == 422, action
        field_html = release_field(response.text)
        assert 'data-error-for="release"' in field_html, "the error sits in the release field"
        message = error_for(response.text, "release")
        assert "release &#39;release-11-01-00&#39; is not available at site &#39;BNL&#39;" in message
        assert "releases available there: release-11-00-00" in message
        assert "release-11-01-00 (not available at BNL)" in field_html, "the chosen release stays chosen"
        assert 'id="plan"' not in response.text
    assert pages.airflow.triggered == []
    assert request_count(pages.db_url) == 0


def test_release_available_at_site_is_submitted(pages):
    register_at(pages.db_url, "BNL", "release-11-00-00")
    token = pages.csrf(FORM)

    response = pages.client.post(FORM, data=form_data(token, action="submit"), follow_redirects=False)

    assert response.status_code == 303, response.text
    [call] = pages.airflow.triggered
    assert call["conf"]["release"] == "release-11-00-00"
    assert call["conf"]["site"] == "BNL"
    assert request_count(pages.db_url) == 1


def test_preview_api_rejects_a_release_the_site_lacks(pages, cached_runs):
    register_at(pages.db_url, "BNL", "release-11-00-00")
    conf = {
        "request_id": "api-preview",
        "kind": "prompt",
        "site": "BNL",
        "release": "release-11-01-00",
        "bucket": [26, 0, 26, 60],
        "calibrations": ["CDC badwire"],
        "staging_tag": "staging_api_preview",
        "running_tag": "b2cal_prompt_running",
    }

    response = pages.client.post("/api/preview", json=conf)

    assert response.status_code == 422
    assert "not available at site 'BNL'" in response.json()["detail"]


# --- one run per request id -----------------------------------------------------------------------------


def test_repeated_submit_starts_one_run(pages):
    token = pages.csrf(FORM)

    responses = [
        pages.client.post(FORM, data=form_data(token, action="submit"), follow_redirects=False)
        for _ in range(4)
    ]

    for response in responses:
        assert response.status_code == 303, response.text
        assert response.headers["location"].endswith("/requests/prompt-e26-test")
    [call] = pages.airflow.triggered
    assert call["run_id"] == "b2cal__prompt-e26-test"
    assert request_count(pages.db_url) == 1
    with session_scope(pages.db_url) as session:
        assert session.scalar(select(ProcessingRequest.dag_run_id)) == "b2cal__prompt-e26-test"


def test_resubmit_starts_a_run_lost_before_the_trigger(pages):
    token = pages.csrf(FORM)
    assert (
        pages.client.post(FORM, data=form_data(token, action="submit"), follow_redirects=False).status_code
        == 303
    )
    # The web process stopped after storing the request and before Airflow had the run.
    lost = pages.airflow.triggered.pop()

    responses = [
        pages.client.post(FORM, data=form_data(token, action="submit"), follow_redirects=False)
        for _ in range(2)
    ]

    assert [response.status_code for response in responses] == [303, 303]
    [call] = pages.airflow.triggered
    assert call["run_id"] == lost["run_id"] == "b2cal__prompt-e26-test"
    assert call["conf"] == lost["conf"]
    assert request_count(pages.db_url) == 1
    with session_scope(pages.db_url) as session:
        messages = session.scalars(
            select(AuditEntry.message).where(AuditEntry.action == "trigger_dag_run").order_by(AuditEntry.id)
        ).all()
    assert len(messages) == 2
    assert "missing" in messages[1]


@pytest.mark.parametrize("duplicate_status", [409, 500])
def test_concurrent_submits_start_one_run(pages, duplicate_status):
    token = pages.csrf(FORM)
    pages.airflow.trigger_delay = 0.05
    pages.airflow.duplicate_status = duplicate_status
    start = threading.Barrier(4)

    def submit() -> int:
        start.wait()
        response = pages.client.post(FORM, data=form_data(token, action="submit"), follow_redirects=False)
        return response.status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(lambda _: submit(), range(4)))

    assert statuses == [303, 303, 303, 303]
    assert len(pages.airflow.triggered) == 1
    assert request_count(pages.db_url) == 1


def test_submit_losing_the_race_redirects_or_explains(pages, monkeypatch):
    token = pages.csrf(FORM)
    assert (
        pages.client.post(FORM, data=form_data(token, action="submit"), follow_redirects=False).status_code
        == 303
    )
    # A submission that passed its checks before the first one stored the request.
    monkeypatch.setattr(forms, "check_against_database", lambda session, form, catalog: None)

    same = pages.client.post(FORM, data=form_data(token, action="submit"), follow_redirects=False)
    other = pages.client.post(
        FORM, data=form_data(token, action="submit", staging_tag="other_tag"), follow_redirects=False
    )

    assert same.status_code == 303
    assert same.headers["location"].endswith("/requests/prompt-e26-test")
    assert other.status_code == 409
    message = error_for(other.text, "request_id")
    assert "request &#39;prompt-e26-test&#39; was already submitted by manager" in message
    assert "/b2cal/requests/prompt-e26-test" in message
    assert len(pages.airflow.triggered) == 1
    assert request_count(pages.db_url) == 1


def test_existing_airflow_run_is_explained(pages):
    pages.airflow.triggered.append(
        {"dag_id": "b2cal_processing_request", "run_id": "b2cal__prompt-e26-test", "conf": {}, "note": ""}
    )
    token = pages.csrf(FORM)

    response = pages.client.post(FORM, data=form_data(token, action="submit"))

    assert response.status_code == 409
    message = error_for(response.text, "request_id")
    assert "Airflow already has the run b2cal__prompt-e26-test" in message
    assert "Unique constraint" not in response.text
    assert request_count(pages.db_url) == 0


def test_failed_trigger_releases_the_request_id(pages):
    pages.airflow.refuse = AirflowAPIError(500, "Database error")
    token = pages.csrf(FORM)

    failed = pages.client.post(FORM, data=form_data(token, action="submit"))

    assert failed.status_code == 502
    assert request_count(pages.db_url) == 0
    with session_scope(pages.db_url) as session:
        entries = select(func.count()).where(AuditEntry.request_uid == "prompt-e26-test")
        assert session.scalar(entries) == 0
    pages.airflow.refuse = None
    retried = pages.client.post(FORM, data=form_data(token, action="submit"), follow_redirects=False)
    assert retried.status_code == 303
    assert len(pages.airflow.triggered) == 1


def test_preview_of_a_submitted_request_links_it(pages):
    token = pages.csrf(FORM)
    pages.client.post(FORM, data=form_data(token, action="submit"), follow_redirects=False)

    response = pages.client.post(FORM, data=form_data(token))

    assert response.status_code == 422
    assert "was already submitted" in error_for(response.text, "request_id")


# --- input checks -----------------------------------------------------------------------------------------


def test_unknown_release_is_rejected_not_swapped(pages):
    token = pages.csrf(FORM)

    for action in ("preview", "submit"):
        response = pages.client.post(FORM, data=form_data(token, action=action, release="release-99-00-00"))

        assert response.status_code == 422, action
        message = error_for(response.text, "release")
        assert "release &#39;release-99-00-00&#39; is not imported" in message
        assert "release-11-00-00, release-11-01-00" in message
        assert 'id="plan"' not in response.text
    assert pages.airflow.triggered == []
    assert request_count(pages.db_url) == 0


def test_missing_release_is_rejected(pages):
    token = pages.csrf(FORM)

    response = pages.client.post(FORM, data=form_data(token, action="submit", release=""))

    assert response.status_code == 422
    assert "release is missing" in error_for(response.text, "release")
    assert pages.airflow.triggered == []


def test_form_page_notes_an_unknown_release(pages):
    page = pages.client.get(FORM + "?release=release-99-00-00")

    assert page.status_code == 200
    assert "Release &#39;release-99-00-00&#39; is not imported" in page.text
    assert "The form shows release-11-00-00." in page.text


def test_unknown_calibration_is_a_field_error(pages):
    token = pages.csrf(FORM)

    response = pages.client.post(
        FORM, data=form_data(token, action="submit", calibrations=["CDC badwire", "No Such Calib"])
    )

    assert response.status_code == 422
    message = error_for(response.text, "calibrations")
    assert "calibration &#39;No Such Calib&#39; is not in the catalog of release-11-00-00" in message
    assert request_count(pages.db_url) == 0


def test_run_number_out_of_range_is_rejected(pages):
    token = pages.csrf(FORM)

    response = pages.client.post(FORM, data=form_data(token, bucket=f"24,0,24,{10**30}"))

    assert response.status_code == 422
    message = error_for(response.text, "bucket")
    assert f"run_high {10**30} is out of range" in message
    assert "from 0 to 2147483647" in message
    assert "run registry" not in message
    assert all(call.get("max_run", 0) < 2**31 for call in pages.registry.calls)


def test_unknown_site_names_its_connection(pages):
    pages.problems["site:XYZ"] = "site 'XYZ' has no Airflow connection 'b2cal_site_xyz'"
    token = pages.csrf(FORM)

    response = pages.client.post(FORM, data=form_data(token, action="submit", site="XYZ"))

    assert response.status_code == 422
    assert "b2cal_site_xyz" in error_for(response.text, "site")
    assert "not available at site &#39;XYZ&#39;" in error_for(response.text, "release")
    assert request_count(pages.db_url) == 0


NO_INPUT = {"filters::CDC badwire::mumu_tight_or_highm_calib": "mumu_tight_or_highm_calib\ncosmic"}


def test_submit_rejects_a_calibration_without_input(pages):
    token = pages.csrf(FORM)
    preview = pages.client.post(FORM, data=form_data(token, **NO_INPUT))
    assert "CDC badwire input &#39;mumu_tight_or_highm_calib&#39; keeps no run" in preview.text

    response = pages.client.post(FORM, data=form_data(token, action="submit", **NO_INPUT))

    assert response.status_code == 422
    message = error_for(response.text, "calibrations")
    assert "CDC badwire input &#39;mumu_tight_or_highm_calib&#39; keeps no run of the bucket" in message
    assert "Start even if an input keeps no run" in message
    assert 'id="plan"' in response.text
    assert pages.airflow.triggered == []
    assert request_count(pages.db_url) == 0


def test_start_anyway_submits_without_input(pages):
    token = pages.csrf(FORM)

    response = pages.client.post(
        FORM, data=form_data(token, action="submit", start_anyway="yes", **NO_INPUT), follow_redirects=False
    )

    assert response.status_code == 303, response.text
    assert len(pages.airflow.triggered) == 1


def test_plan_counts_are_pluralised(pages):
    token = pages.csrf(FORM)

    single = pages.client.post(FORM, data=form_data(token, calibrations=["CDC Tracking"]))
    several = pages.client.post(FORM, data=form_data(token))

    summary = single.text.split('id="plan-summary">', 1)[1]
    assert summary.startswith("1 calibration, 1 ticket, ")
    assert "tickets" in several.text.split('id="plan-summary">', 1)[1].split("</p>", 1)[0]


PREVIEW_CONF = {
    "request_id": "api-preview",
    "release": "release-11-00-00",
    "site": "BNL",
    "bucket": [26, 0, 26, 60],
    "calibrations": ["BeamSpot Calibrations"],
    "staging_tag": "s",
    "running_tag": "r",
}


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (
            "release",
            "release is missing; choose one of the imported releases: release-11-00-00, release-11-01-00",
        ),
        ("request_id", "request_id is missing"),
        ("site", "site is missing"),
        ("bucket", "bucket is missing"),
    ],
)
def test_preview_api_reports_missing_fields(pages, key, message):
    conf = {name: value for name, value in PREVIEW_CONF.items() if name != key}

    response = pages.client.post("/api/preview", json=conf)

    assert response.status_code == 422
    detail = response.json()["detail"]
    assert message in detail
    assert "None" not in detail


def test_preview_api_rejects_huge_run_numbers(pages):
    response = pages.client.post("/api/preview", json={**PREVIEW_CONF, "bucket": [24, 0, 24, 10**30]})

    assert response.status_code == 422
    assert "out of range" in response.json()["detail"]
    assert "2147483647" in response.json()["detail"]


# --- running tag ------------------------------------------------------------------------------------------

DAG_PARAMS = {
    "running_tag": {
        "value": "b2cal_prompt_running",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.+-]{1,128}$"},
        "description": "Running global tag",
        "source": "dag",
    },
}


def running_tag_field(page: str) -> str:
    """Return the HTML of the running tag field, from its input to the end of its block."""
    return page.split('id="running_tag"', 1)[1].split("</div>", 1)[0]


def test_first_form_takes_dag_running_tag(pages):
    pages.airflow.dag_params = DAG_PARAMS

    page = pages.client.get(FORM).text

    field = running_tag_field(page)
    assert field.startswith(' value="b2cal_prompt_running"')
    assert "Filled in from the default of the DAG b2cal_processing_request." in field


def test_configured_running_tag_beats_dag(pages):
    pages.airflow.dag_params = DAG_PARAMS
    pages.app.state.b2cal_settings.default_running_tag = "site_prompt_running"

    page = pages.client.get(FORM).text

    assert running_tag_field(page).startswith(' value="site_prompt_running"')


def test_running_tag_from_last_same_kind(pages):
    pages.airflow.dag_params = DAG_PARAMS
    token = pages.csrf(FORM)
    prompt = form_data(token, action="submit", running_tag="prompt_running_v2")
    reprocessing = form_data(
        token,
        action="submit",
        kind="reprocessing",
        request_id="reprocessing-e26-test",
        staging_tag="staging_reprocessing_e26_test",
        running_tag="reprocessing_running",
    )
    for data in (prompt, reprocessing):
        assert pages.client.post(FORM, data=data, follow_redirects=False).status_code == 303

    page = pages.client.get(FORM).text

    field = running_tag_field(page)
    assert field.startswith(' value="prompt_running_v2"'), "the form is for a prompt request"
    assert "Filled in from the last prompt request." in field


def test_form_without_running_tag_default(pages):
    page = pages.client.get(FORM)

    assert page.status_code == 200
    assert running_tag_field(page.text).startswith(' value=""')
    assert 'id="running-tag-source"' not in page.text


def test_empty_running_tag_is_missing(pages):
    pages.airflow.dag_params = DAG_PARAMS
    token = pages.csrf(FORM)

    response = pages.client.post(FORM, data=form_data(token, action="submit", running_tag=""))

    assert response.status_code == 422
    message = error_for(response.text, "running_tag")
    assert message.startswith("running_tag is missing; give the global tag that the signed-off bucket")
    assert "RUNNING in the conditions database" in message
    assert "&#39;b2cal_prompt_running&#39; from the default of the DAG" in message
    assert "invalid" not in message
    assert pages.airflow.triggered == []
    assert request_count(pages.db_url) == 0


def test_preview_api_empty_running_tag_missing(pages):
    response = pages.client.post("/api/preview", json={**PREVIEW_CONF, "running_tag": ""})

    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith("running_tag is missing; give letters")
    assert "invalid" not in detail


# --- site names -------------------------------------------------------------------------------------------


def test_site_in_any_case_is_stored_canonical(pages):
    register_at(pages.db_url, "KEK", "release-11-00-00")
    token = pages.csrf(FORM)

    preview = pages.client.post(FORM, data=form_data(token, site="kek"))
    submitted = pages.client.post(
        FORM, data=form_data(token, action="submit", site="Kek"), follow_redirects=False
    )

    assert preview.status_code == 200, preview.text
    assert 'id="site" list="sites" value="KEK"' in preview.text
    assert submitted.status_code == 303, submitted.text
    [call] = pages.airflow.triggered
    assert call["conf"]["site"] == "KEK"
    with session_scope(pages.db_url) as session:
        assert session.scalar(select(ProcessingRequest.site)) == "KEK"


def test_site_connection_checked_canonical_name(pages):
    register_at(pages.db_url, "KEK", "release-11-00-00")
    pages.problems["site:KEK"] = "site 'KEK' has no connection 'b2cal_site_kek'"
    token = pages.csrf(FORM)

    response = pages.client.post(FORM, data=form_data(token, site="kek"))

    assert response.status_code == 422
    assert "b2cal_site_kek" in error_for(response.text, "site")
    assert 'data-error-for="release"' not in response.text, "KEK has the release"


def test_form_page_takes_a_site_in_any_case(pages):
    register_at(pages.db_url, "DESY", "release-11-00-00", "release-11-01-00")

    page = pages.client.get(FORM + "?site=desy").text

    assert 'id="site" list="sites" value="DESY"' in page
    assert offered_releases(page) == ["release-11-00-00", "release-11-01-00"]


def test_preview_api_takes_a_site_in_any_case(pages, cached_runs):
    response = pages.client.post("/api/preview", json={**PREVIEW_CONF, "site": "bnl"})

    assert response.status_code == 200, response.text


def store_request(db_url: str, uid: str, bucket: IoV, state: str) -> None:
    """Store a prompt request for CDC Tracking and CDC badwire on ``bucket`` in ``state``."""
    catalog = load_packaged_release()
    spec = RequestSpec(
        uid=uid,
        kind="prompt",
        site="BNL",
        release=catalog.release,
        bucket=bucket,
        calibrations=("CDC Tracking", "CDC badwire"),
        staging_tag=f"staging_{uid.replace('-', '_')}",
        running_tag="b2cal_prompt_running",
        requested_by="manager",
    )
    with session_scope(db_url) as session:
        store.save_request(session, spec, catalog).state = state


def proposal_options(page: str) -> str:
    """Return the HTML of the proposed bucket field's options."""
    return page.split('id="proposed"', 1)[1].split("</select>", 1)[0]


@pytest.mark.parametrize("state", ["cancelled", "rejected"])
def test_ended_request_frees_proposed_bucket(pages, state):
    store_request(pages.db_url, "prompt-e0025-ended", IoV(25, 0, 25, 10_000), state)
    store_request(pages.db_url, "prompt-e0025-running", IoV(25, 0, 25, 10_000), "submitted")

    options = proposal_options(pages.client.get(FORM).text)

    assert "requested by prompt-e0025-running" in options
    assert "prompt-e0025-ended" not in options


@pytest.mark.parametrize("state", ["cancelled", "rejected"])
def test_ended_request_gives_no_overlap_warning(pages, state):
    store_request(pages.db_url, "prompt-e0026-ended", IoV(26, 0, 26, 60), state)
    store_request(pages.db_url, "prompt-e0026-running", IoV(26, 0, 26, 60), "submitted")
    token = pages.csrf(FORM)

    response = pages.client.post(FORM, data=form_data(token))

    assert response.status_code == 200, response.text
    warnings = response.text.split('id="plan-warnings"', 1)[1].split("</ul>", 1)[0]
    assert "overlaps the prompt request &#39;prompt-e0026-running&#39; (submitted)" in warnings
    assert "prompt-e0026-ended" not in warnings


@pytest.mark.parametrize("name", ["viewer", "expert"])
def test_post_checks_role_before_csrf(pages, name):
    pages.login(name)

    response = pages.client.post(FORM, data=form_data("", action="submit"))

    assert response.status_code == 403
    assert "may not start request" in response.text
    assert "security token" not in response.text
    assert pages.airflow.triggered == []
    assert request_count(pages.db_url) == 0


def test_stored_bucket_is_proposed_as_stored(pages, cached_runs):
    with session_scope(pages.db_url) as session:
        session.add(
            BucketRecord(
                name="e0026r00010-e0026r00060",
                exp_low=26,
                run_low=10,
                exp_high=26,
                run_high=60,
                state="open",
                target_luminosity_pb=9000.0,
                notes=[],
                created_by="b2cal_run_collection",
            )
        )

    options = proposal_options(pages.client.get(FORM).text)

    assert 'option value="26,10,26,60"' in options
    stored = options.split('option value="26,10,26,60"', 1)[1].split("</option>", 1)[0]
    assert "stored bucket" in stored
    assert "still filling" not in stored
    assert 'option value="26,0,26,9"' in options, "the runs before the stored bucket form their own"


def test_vocabulary_names_the_empty_value(pages):
    page = pages.client.get(FORM).text

    vocabulary = page.split("Filter vocabulary:", 1)[1].split("</p>", 1)[0]
    beam = vocabulary.split("<strong>Beam Energy</strong>:", 1)[1].split(";", 1)[0]
    assert beam.strip() == "No Beam, 4S, Continuum, Scan (and the empty value)"
