"""Release discovery without a site: names, plans, command output, scripts and diffs."""

from __future__ import annotations

import asyncio
import re

import pytest
from conftest import ADDED, CHANGED, NEW, OLD, REMOVED, new_release, old_release

from b2cal.catalog import load_release
from b2cal.jobs import LocalTransport
from b2cal.releases import (
    DEFAULT_RELEASE_PATTERN,
    DiscoveryError,
    build_release_notice,
    build_show_script,
    describe_release_diff,
    list_releases,
    parse_check_output,
    parse_discovery_config,
    parse_release_listing,
    parse_show_output,
    plan_discovery,
    previous_release,
    probe_release,
    release_diff_dict,
    sort_releases,
)
from b2cal.remote import UnsafeValueError
from b2cal.reports import diff_catalogs
from b2cal.sites import SiteConfigError, parse_site_settings

PATTERN = re.compile(DEFAULT_RELEASE_PATTERN)


def local_config(software, **overrides):
    extra = software.extra(**overrides)
    extra = {key: value for key, value in extra.items() if value is not None}
    settings = parse_site_settings("BNL", extra, conn_id="b2cal_site_bnl")
    return parse_discovery_config(settings, extra)


def test_listing_keeps_release_names_only():
    output = (
        "README\nexternals/\nrelease-08-01-05/\nrelease-10-00-00\nlight-2403-persian/\nprerelease-09-00-00a\n"
    )

    assert parse_release_listing(output, PATTERN) == [
        "release-08-01-05",
        "prerelease-09-00-00a",
        "release-10-00-00",
        "light-2403-persian",
    ]


def test_sort_releases_by_version_not_text():
    assert sort_releases(["release-10-00-00", "release-09-02-01", "release-09-10-00"]) == [
        "release-09-02-01",
        "release-09-10-00",
        "release-10-00-00",
    ]


def test_plan_probes_new_failed_and_returned_releases():
    states = {
        "release-a-1": "available",
        "release-b-1": "failed",
        "release-c-1": "unavailable",
        "gone-1": "available",
    }

    plan = plan_discovery("BNL", ["release-a-1", "release-b-1", "release-c-1", "release-d-1"], states)

    assert plan.probe == ["release-b-1", "release-c-1", "release-d-1"]
    assert plan.unchanged == ["release-a-1"]
    assert plan.gone == ["gone-1"]
    assert plan.first_inventory is False


def test_plan_unavailable_release_not_gone_again():
    plan = plan_discovery("BNL", ["release-a-1"], {"release-a-1": "available", "old-1": "unavailable"})

    assert plan.gone == []


def test_plan_first_inventory_when_nothing_stored():
    assert plan_discovery("BNL", ["release-a-1"], {}).first_inventory is True


def check_output(status: str, release: str = OLD, scripts: str = '["caf_a.py", "caf_b.py"]') -> str:
    return (
        f"b2cal-discovery: release {release}\n"
        "b2cal-discovery: check-begin\n"
        "[2026-01-01 00:00:00] [INFO] All 'settings' variables imported successfully.\n"
        + (
            "caf_a.py: depends_on names 'X', which no script of the release defines\n"
            if status != "0"
            else ""
        )
        + f"b2cal-discovery: check-status {status}\n"
        + (
            f"b2cal-discovery: scripts-begin\n{scripts}\nb2cal-discovery: scripts-status 0\n"
            if status == "0"
            else ""
        )
    )


def test_check_output_gives_scripts():
    assert parse_check_output(OLD, check_output("0")) == ["caf_a.py", "caf_b.py"]


def test_check_output_failure_names_problem():
    with pytest.raises(DiscoveryError, match="depends_on names 'X'") as raised:
        parse_check_output(OLD, check_output("1"))

    assert raised.value.stage == "check"
    assert "[INFO]" not in str(raised.value)


def test_check_output_other_release_rejected():
    with pytest.raises(DiscoveryError, match="set up 'release-10-00-00'"):
        parse_check_output(OLD, check_output("0", release="release-10-00-00"))


def test_check_output_unset_release_rejected():
    with pytest.raises(DiscoveryError, match="did not set BELLE2_RELEASE"):
        parse_check_output(OLD, check_output("0", release=""))


def test_show_output_missing_settings_named():
    output = (
        f"b2cal-discovery: release {OLD}\n"
        "b2cal-discovery: show-begin caf_a.py\n"
        '{"name": "A"}\n'
        "b2cal-discovery: show-status 0\n"
        "b2cal-discovery: show-begin caf_b.py\n"
        "[ERROR] Prompt script 'caf_b.py' is not in release\n"
        "b2cal-discovery: show-status 1\n"
    )

    with pytest.raises(DiscoveryError, match=r"caf_b.py --json .* printed no settings \(exit status 1\)"):
        parse_show_output(OLD, ["caf_a.py", "caf_b.py"], output)


def test_show_output_adds_script_name():
    output = (
        f"b2cal-discovery: release {OLD}\n"
        "b2cal-discovery: show-begin caf_a.py\n"
        "log line\n"
        '{"name": "A"}\n'
        "b2cal-discovery: show-status 0\n"
    )

    assert parse_show_output(OLD, ["caf_a.py"], output) == [{"name": "A", "script": "caf_a.py"}]


def test_show_script_rejects_unsafe_script_name(software):
    config = local_config(software)

    with pytest.raises(UnsafeValueError, match="prompt script name"):
        build_show_script(config, OLD, ["caf_a.py; rm -rf ~"])


def test_config_requires_list_command(software):
    with pytest.raises(SiteConfigError, match="release_list_command"):
        local_config(software, release_list_command=None)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"release_list_command": "ls /cvmfs"}, "list of arguments"),
        ({"release_list_command": ["ls", ""]}, "non-empty string"),
        ({"release_pattern": "release-("}, "not a valid regular expression"),
        ({"release_timeout": 0}, "positive number"),
    ],
)
def test_config_invalid_extras_rejected(software, overrides, message):
    with pytest.raises(SiteConfigError, match=message):
        local_config(software, **overrides)


def test_local_probe_reads_settings(software):
    config = local_config(software)

    async def probe():
        transport = LocalTransport()
        return await list_releases(transport, config), await probe_release(transport, config, OLD)

    listed, result = asyncio.run(probe())

    assert listed == [OLD]
    assert result.ok
    assert sorted(item["name"] for item in result.settings) == sorted(load_release(old_release()).names)
    assert (
        result.catalog(load_release(old_release()).vocabulary).to_dict()
        == load_release(old_release()).to_dict()
    )


def test_local_probe_wrong_setup_fails_release(software):
    config = local_config(software, basf2_setup="export BELLE2_RELEASE=release-10-00-00")

    result = asyncio.run(probe_release(LocalTransport(), config, OLD))

    assert result.stage == "check"
    assert "set up 'release-10-00-00'" in result.error


def test_local_listing_without_releases_is_an_error(software, tmp_path):
    (tmp_path / "empty").mkdir()
    config = local_config(software, release_list_command=["ls", str(tmp_path / "empty")])

    with pytest.raises(DiscoveryError, match="printed no name") as raised:
        asyncio.run(list_releases(LocalTransport(), config))

    assert raised.value.stage == "list"


def test_previous_release_is_newest_older():
    names = ["release-09-00-00", "release-11-00-00", "release-10-00-00", "release-12-00-00"]

    assert previous_release("release-11-00-00", names) == "release-10-00-00"
    assert previous_release("release-08-00-00", names) == "release-12-00-00"
    assert previous_release("release-08-00-00", ["release-08-00-00"]) is None


def test_diff_lines_name_each_change():
    diff = diff_catalogs(load_release(old_release()), load_release(new_release()))

    lines = describe_release_diff(diff)

    assert f"added calibration {ADDED!r}" in lines
    assert f"removed calibration {REMOVED!r}" in lines
    assert f"{CHANGED}: dependencies: added 'CDC deadboard'" in lines
    assert len(lines) == 3


def test_diff_lines_show_expert_config_keys():
    new = new_release()
    entry = next(item for item in new["calibrations"] if item["name"] == CHANGED)
    entry["expert_config"] = {**entry["expert_config"], "min_hits": 12}
    entry["expert_username"] = "new-cdc-expert"

    lines = describe_release_diff(diff_catalogs(load_release(old_release()), load_release(new)))

    assert f"{CHANGED}: expert_config: min_hits added (12)" in lines
    assert any(line.startswith(f"{CHANGED}: expert: ") and "'new-cdc-expert'" in line for line in lines)


def test_diff_dict_is_json_ready():
    data = release_diff_dict(diff_catalogs(load_release(old_release()), load_release(new_release())))

    assert data["old_release"] == OLD
    assert data["new_release"] == NEW
    assert data["added"] == [ADDED]
    assert data["changed"][CHANGED][0]["label"] == "dependencies"
    assert len(data["lines"]) == 3


def test_notice_without_earlier_release_says_so():
    notice = build_release_notice(OLD, "BNL", load_release(old_release()), None)

    assert "No earlier release" in notice.description
    assert notice.summary == f"New basf2 release {OLD} at BNL: 3 prompt calibrations"
    assert notice.label == f"b2cal-release-notice-{OLD}"


def test_local_probe_timeout_fails_release(software):
    config = local_config(software, basf2_setup="sleep 5", release_timeout=0.5)

    result = asyncio.run(probe_release(LocalTransport(), config, OLD))

    assert result.stage == "check"
    assert "timed out after 0.5 s" in result.error
