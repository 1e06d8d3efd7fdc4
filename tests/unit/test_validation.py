"""Check the automatic checks of uploaded payloads, on hand-built tags and against the development service."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from b2cal.conddb import ConditionsDB
from b2cal.devservices.config import DevServicesConfig
from b2cal.devservices.server import DevServices, start_services
from b2cal.globaltags import PayloadIoV
from b2cal.iov import IoV
from b2cal.validation import (
    CheckName,
    CheckStatus,
    LocalIoV,
    check_calibration,
    expected_starts,
    payload_boundaries,
    payloads_before,
    read_local_iovs,
    validate_upload,
    worst_status,
)

BUCKET = IoV(26, 100, 26, 200)
_ids = iter(range(1, 100000))


def stored(name: str, iov: str, checksum: str | None = None, payload_id: int | None = None) -> PayloadIoV:
    number = payload_id if payload_id is not None else next(_ids)
    return PayloadIoV(number, name, 1, checksum or f"md5-{name}", next(_ids), IoV.parse(iov))


def local(name: str, iov: str, checksum: str | None = None) -> LocalIoV:
    return LocalIoV(name, checksum or f"md5-{name}", IoV.parse(iov))


def result(report, name: CheckName):
    return next(item for item in report.results if item.name == name)


def good_upload() -> tuple[list[LocalIoV], list[PayloadIoV]]:
    names = ["BeamSpot", "CDCT0"]
    return (
        [local(name, "26,100,-1,-1") for name in names],
        [stored(name, "26,100,-1,-1") for name in names] + [stored("Other", "26,0,-1,-1")],
    )


def test_clean_upload_passes_every_check() -> None:
    mine, staging = good_upload()
    report = check_calibration("X", ["BeamSpot", "CDCT0"], BUCKET, mine, staging)
    assert [item.name for item in report.results] == [
        "payloads_present",
        "iov_start",
        "open_ended",
        "overlaps_and_gaps",
        "checksums",
        "unchanged_payload",
    ]
    assert report.status == CheckStatus.PASSED
    assert report.failed == []


def test_payload_missing_from_output() -> None:
    mine, staging = good_upload()
    report = check_calibration("X", ["BeamSpot", "CDCT0", "CDCXT"], BUCKET, mine, staging)
    check = result(report, CheckName.PAYLOADS_PRESENT)
    assert check.status == CheckStatus.FAILED
    assert "output lacks CDCXT" in check.message
    assert check.detail["not_produced"] == ["CDCXT"]


def test_payload_missing_from_staging_tag() -> None:
    mine, staging = good_upload()
    report = check_calibration("X", ["BeamSpot", "CDCT0"], BUCKET, mine, staging[1:])
    check = result(report, CheckName.PAYLOADS_PRESENT)
    assert check.status == CheckStatus.FAILED
    assert check.detail["not_uploaded"] == ["BeamSpot"]
    assert result(report, CheckName.CHECKSUMS).status == CheckStatus.FAILED


def test_undeclared_payload_is_a_warning() -> None:
    mine, staging = good_upload()
    report = check_calibration("X", ["BeamSpot"], BUCKET, mine, staging)
    check = result(report, CheckName.PAYLOADS_PRESENT)
    assert check.status == CheckStatus.WARNING
    assert check.detail["undeclared"] == ["CDCT0"]
    assert report.status == CheckStatus.WARNING


def test_wrong_first_run_fails() -> None:
    mine = [local("BeamSpot", "26,90,-1,-1")]
    report = check_calibration("X", ["BeamSpot"], BUCKET, mine, [stored("BeamSpot", "26,90,-1,-1")])
    check = result(report, CheckName.IOV_START)
    assert check.status == CheckStatus.FAILED
    assert "BeamSpot starts at 26,90" in check.message
    assert "26,100" in check.message


def test_payload_boundaries_are_expected_starts() -> None:
    boundaries = payload_boundaries({"payload_boundaries": [[26, 150], [27, 0], [26, 150]]})
    assert boundaries == [(26, 150), (27, 0)]
    assert expected_starts(BUCKET, boundaries) == [(26, 100), (26, 150)]
    staging = [stored("BeamSpot", "26,100,26,149"), stored("BeamSpot", "26,150,-1,-1")]
    mine = [local("BeamSpot", "26,100,26,149"), local("BeamSpot", "26,150,-1,-1")]
    report = check_calibration("X", ["BeamSpot"], BUCKET, mine, staging, boundaries=boundaries)
    assert report.status == CheckStatus.PASSED

    single = [stored("BeamSpot", "26,100,-1,-1")]
    missing = check_calibration(
        "X", ["BeamSpot"], BUCKET, [local("BeamSpot", "26,100,-1,-1")], single, boundaries=boundaries
    )
    check = result(missing, CheckName.IOV_START)
    assert check.status == CheckStatus.FAILED
    assert "no IoV starting at 26,150" in check.message


@pytest.mark.parametrize("value", ["26,150", [[26]], [[26, -1]], [["a", 1]], 5])
def test_invalid_payload_boundaries_name_the_value(value: object) -> None:
    with pytest.raises(ValueError, match="payload"):
        payload_boundaries({"payload_boundaries": value})


def test_closed_last_iov_fails() -> None:
    staging = [stored("BeamSpot", "26,100,26,200")]
    report = check_calibration("X", ["BeamSpot"], BUCKET, [local("BeamSpot", "26,100,26,200")], staging)
    check = result(report, CheckName.OPEN_ENDED)
    assert check.status == CheckStatus.FAILED
    assert check.detail["closed"] == {"BeamSpot": "26,100,26,200"}


def test_overlap_fails() -> None:
    staging = [stored("BeamSpot", "26,100,26,160"), stored("BeamSpot", "26,150,-1,-1")]
    mine = [local("BeamSpot", "26,100,26,160"), local("BeamSpot", "26,150,-1,-1")]
    report = check_calibration("X", ["BeamSpot"], BUCKET, mine, staging, boundaries=[(26, 150)])
    check = result(report, CheckName.OVERLAPS_AND_GAPS)
    assert check.status == CheckStatus.FAILED
    assert "overlaps" in check.message


def test_gap_fails() -> None:
    staging = [stored("BeamSpot", "26,100,26,140"), stored("BeamSpot", "26,150,-1,-1")]
    mine = [local("BeamSpot", "26,100,26,140"), local("BeamSpot", "26,150,-1,-1")]
    report = check_calibration("X", ["BeamSpot"], BUCKET, mine, staging, boundaries=[(26, 150)])
    check = result(report, CheckName.OVERLAPS_AND_GAPS)
    assert check.status == CheckStatus.FAILED
    assert "26,141" in check.message


def test_other_calibrations_payloads_are_not_judged() -> None:
    mine, staging = good_upload()
    staging += [stored("Other", "26,0,26,10"), stored("Other", "26,50,-1,-1")]
    report = check_calibration("X", ["BeamSpot", "CDCT0"], BUCKET, mine, staging)
    assert report.status == CheckStatus.PASSED


def test_checksum_mismatch_fails() -> None:
    mine = [local("BeamSpot", "26,100,-1,-1", "aaa")]
    staging = [stored("BeamSpot", "26,100,-1,-1", "bbb")]
    report = check_calibration("X", ["BeamSpot"], BUCKET, mine, staging)
    check = result(report, CheckName.CHECKSUMS)
    assert check.status == CheckStatus.FAILED
    assert "MD5 bbb" in check.message
    assert "local file has aaa" in check.message


def test_downloaded_file_mismatch_fails() -> None:
    mine = [local("BeamSpot", "26,100,-1,-1", "aaa")]
    staging = [stored("BeamSpot", "26,100,-1,-1", "aaa", payload_id=7)]
    good = check_calibration("X", ["BeamSpot"], BUCKET, mine, staging, downloaded_checksums={7: "aaa"})
    assert result(good, CheckName.CHECKSUMS).status == CheckStatus.PASSED
    bad = check_calibration("X", ["BeamSpot"], BUCKET, mine, staging, downloaded_checksums={7: "ccc"})
    check = result(bad, CheckName.CHECKSUMS)
    assert check.status == CheckStatus.FAILED
    assert "stored file of BeamSpot (payload 7) has MD5 ccc" in check.message


def test_payload_identical_to_previous_bucket_is_flagged() -> None:
    mine, staging = good_upload()
    previous = [stored("BeamSpot", "26,0,-1,-1", "md5-BeamSpot"), stored("CDCT0", "26,0,-1,-1", "older")]
    report = check_calibration("X", ["BeamSpot", "CDCT0"], BUCKET, mine, staging, previous=previous)
    check = result(report, CheckName.UNCHANGED_PAYLOAD)
    assert check.status == CheckStatus.WARNING
    assert list(check.detail["unchanged"]) == ["BeamSpot"]
    assert report.failed == []


def test_payloads_before_a_bucket() -> None:
    running = [stored("A", "25,0,25,-1"), stored("A", "26,0,-1,-1"), stored("B", "24,0,-1,-1")]
    assert [item.name for item in payloads_before(running, (26, 100))] == ["A", "B"]
    assert [item.iov.as_text() for item in payloads_before(running, (26, 0))] == ["25,0,25,-1", "24,0,-1,-1"]
    assert payloads_before([stored("A", "26,100,-1,-1")], (26, 100)) == []


def test_worst_status_orders_outcomes() -> None:
    assert worst_status([]) == "passed"
    assert worst_status(["passed", "warning"]) == "warning"
    assert worst_status(["warning", "failed", "passed"]) == "failed"


def test_comment_names_each_check() -> None:
    mine, staging = good_upload()
    report = check_calibration("X", ["BeamSpot", "CDCT0", "Missing"], BUCKET, mine, staging)
    text = report.to_comment("staging_x")
    assert text.startswith("Automatic checks of the payloads in the staging tag staging_x: FAILED 1 checks.")
    assert "(x) payloads_present" in text
    assert "(/) checksums" in text
    assert "cannot be signed off" in text


# Against the development conditions database


@pytest.fixture(scope="module")
def services() -> Iterator[DevServices]:
    handle = start_services(
        jira_port=0,
        conddb_port=0,
        runregistry_port=0,
        config=DevServicesConfig(jira_experts=(), runs_per_experiment=5),
    )
    try:
        yield handle
    finally:
        handle.stop()


def write_output(folder: Path, payloads: dict[str, bytes], first: str = "26,100") -> Path:
    folder.mkdir(parents=True)
    for name, data in payloads.items():
        (folder / f"dbstore_{name}_rev_1.root").write_bytes(data)
    (folder / "database.txt").write_text("".join(f"dbstore/{name} 1 {first},-1,-1\n" for name in payloads))
    return folder


def test_validate_upload_reads_both_tags(services: DevServices, tmp_path: Path) -> None:
    services.conddb_state.reset()
    client = ConditionsDB(services.conddb_url, token=DevServicesConfig().conddb_token, retries=0)
    client.create_global_tag("running", "r")
    client.upload_database_folder(
        write_output(tmp_path / "old", {"BeamSpot": b"same", "CDCT0": b"old"}, "26,0"), "running"
    )
    client.set_global_tag_state("running", "RUNNING")
    client.create_global_tag("staging", "s")
    folder = write_output(tmp_path / "new", {"BeamSpot": b"same", "CDCT0": b"new"})
    client.upload_database_folder(folder, "staging")

    mine = read_local_iovs([folder])
    assert {item.checksum for item in mine} == {
        hashlib.md5(b"same").hexdigest(),
        hashlib.md5(b"new").hexdigest(),
    }
    downloads = client.download_payloads((item.name, item.checksum) for item in mine)
    assert sorted(downloads.values()) == [b"new", b"same"]
    report = validate_upload(
        client, "X", ["BeamSpot", "CDCT0"], BUCKET, mine, "staging", "running", download=downloads
    )
    assert report.failed == []
    assert result(report, CheckName.UNCHANGED_PAYLOAD).detail["unchanged"].keys() == {"BeamSpot"}
    assert result(report, CheckName.CHECKSUMS).detail["downloaded"] == 2

    without_running = validate_upload(client, "X", ["BeamSpot", "CDCT0"], BUCKET, mine, "staging", "missing")
    assert result(without_running, CheckName.UNCHANGED_PAYLOAD).status == CheckStatus.PASSED
