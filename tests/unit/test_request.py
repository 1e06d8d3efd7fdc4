from __future__ import annotations

from dataclasses import replace

import pytest

from b2cal.catalog import load_packaged_release
from b2cal.iov import MAX_NUMBER
from b2cal.request import RequestError, parse_request, request_run_id

CATALOG = load_packaged_release()


def conf(**changes):
    values = {
        "request_id": "prompt-e0026-b01",
        "kind": "prompt",
        "site": "BNL",
        "release": "release-11-00-00",
        "bucket": [26, 1, 26, 400],
        "calibrations": ["BoostVector Calibrations"],
        "staging_tag": "staging_b01",
        "running_tag": "running",
        "requested_by": "manager",
    }
    values.update(changes)
    return values


def test_dependencies_added():
    spec = parse_request(conf(), CATALOG)
    assert "BeamSpot Calibrations" in spec.calibrations
    assert "BeamSpot Calibrations" in spec.added_dependencies
    assert "BoostVector Calibrations" not in spec.added_dependencies


def test_empty_selection_means_all():
    spec = parse_request(conf(calibrations=[]), CATALOG)
    assert len(spec.calibrations) == len(CATALOG)


def test_conf_round_trip():
    spec = parse_request(conf(), CATALOG)
    again = parse_request(spec.to_conf(), CATALOG)
    # The conf carries the closed selection, so nothing is added the second time.
    assert again == replace(spec, added_dependencies=())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"request_id": "bad id; rm -rf"}, "request_id"),
        ({"kind": "weekly"}, "kind 'weekly'"),
        ({"site": "../etc"}, "site"),
        ({"release": "release-99"}, "release-99"),
        ({"bucket": [26, 5]}, "bucket"),
        ({"bucket": [26, 9, 26, 3]}, "ends before it starts"),
        ({"bucket": [24, 0, 24, 10**30]}, f"run_high {10**30} is out of range.*from 0 to {MAX_NUMBER}"),
        ({"bucket": [2**31, 0, -1, -1]}, "exp_low 2147483648 is out of range"),
        ({"calibrations": ["Nope"]}, "'Nope'"),
        ({"running_tag": "staging_b01"}, "must differ"),
        ({"requested_by": ""}, "requested_by"),
        ({"staging_tag": "has space"}, "staging_tag"),
        ({"request_id": "prompt-e0026-b01\n"}, "request_id"),
        ({"staging_tag": "staging_b01\n"}, "staging_tag"),
        ({"site": "BNL\n"}, "site"),
        ({"filter_overrides": {"CDC Tracking": {}}}, "does not run"),
        ({"filter_overrides": {"BeamSpot Calibrations": {"other": []}}}, "input 'other'"),
        (
            {"filter_overrides": {"BeamSpot Calibrations": {"mumu_tight_or_highm_calib": ["Pink"]}}},
            "'Pink'",
        ),
        ({"expert_config": {"BeamSpot Calibrations": {"unknown_key": 1}}}, "unknown_key"),
    ],
)
def test_invalid_request_names_field(changes, message):
    with pytest.raises(RequestError, match=message):
        parse_request(conf(**changes), CATALOG)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("request_id", "request_id is missing; give letters"),
        ("site", "site is missing; give letters"),
        ("release", "release is missing; give the release of the catalog, 'release-11-00-00'"),
        ("bucket", r"bucket is missing; give the run range as \[exp_low"),
        ("staging_tag", "staging_tag is missing"),
        ("running_tag", "running_tag is missing"),
    ],
)
def test_missing_field_is_reported_missing(key, message):
    values = conf()
    del values[key]

    with pytest.raises(RequestError, match=message) as raised:
        parse_request(values, CATALOG)

    assert "None" not in str(raised.value)


def test_open_ended_bucket_is_valid():
    spec = parse_request(conf(bucket=[26, 1, -1, -1]), CATALOG)

    assert spec.bucket.is_open_ended


@pytest.mark.parametrize(
    ("bucket", "named"),
    [
        ([24.5, 0, 24, 1], "24.5"),
        ([True, 0, True, 1], "True"),
        (["24", 0, 24, 1], "'24'"),
        ("24,0,24,126", "'24,0,24,126'"),
    ],
)
def test_bucket_of_other_than_integers_is_refused(bucket, named):
    with pytest.raises(RequestError, match="bucket .* is invalid") as raised:
        parse_request(conf(bucket=bucket), CATALOG)

    assert named in str(raised.value)


def test_long_value_is_cut_in_the_error():
    with pytest.raises(RequestError, match="request_id") as raised:
        parse_request(conf(request_id="x" * 100_000), CATALOG)

    message = str(raised.value)
    assert "(100000 characters)" in message
    assert len(message) < 300


def test_calibrations_as_text_is_refused():
    with pytest.raises(RequestError, match="must be a list of calibration names") as raised:
        parse_request(conf(calibrations="CDC badwire"), CATALOG)

    assert "'C', 'D'" not in str(raised.value)


def test_run_id_depends_on_request_id_only():
    assert request_run_id("prompt-e0026-b01") == request_run_id("prompt-e0026-b01")
    assert request_run_id("prompt-e0026-b01") != request_run_id("prompt-e0026-b02")


def test_expert_config_override_merges():
    example = dict(CATALOG["CDC Tracking"].expert_config)
    spec = parse_request(conf(calibrations=["CDC Tracking"]), CATALOG)
    assert spec.expert_config(CATALOG, "CDC Tracking") == example
