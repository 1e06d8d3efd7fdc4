"""Build readiness reports from hand-built tickets, checks and tags: every blocker names who acts."""

from __future__ import annotations

from typing import Any

from b2cal.catalog import load_packaged_release
from b2cal.globaltags import PayloadIoV
from b2cal.iov import IoV
from b2cal.readiness import CONDDB_MANAGERS, BlockerKind, ReadinessReport, build_report
from b2cal.validation import CheckResult

CATALOG = load_packaged_release()
CALIBRATIONS = ["CDC Tracking", "CDC badwire"]
PAYLOADS = list(CATALOG["CDC Tracking"].produced_payloads)
EXPERT = CATALOG["CDC Tracking"].expert_username
KEYS = {"CDC Tracking": "CAL-1", "CDC badwire": "CAL-2"}
_ids = iter(range(1, 100000))


def iov(name: str, text: str, payload_id: int | None = None) -> PayloadIoV:
    number = payload_id if payload_id is not None else next(_ids)
    return PayloadIoV(number, name, 1, f"md5-{number}", next(_ids), IoV.parse(text))


def passed() -> dict[str, list[CheckResult]]:
    return {name: [CheckResult("payloads_present", "passed", "ok")] for name in CALIBRATIONS}


def report(**changes: Any) -> ReadinessReport:
    values: dict[str, Any] = {
        "request_uid": "r1",
        "bucket": IoV(26, 100, 26, 200),
        "release": CATALOG.release,
        "site": "BNL",
        "staging_tag": "staging_r1",
        "running_tag": "running",
        "manager": "manager",
        "calibrations": CALIBRATIONS,
        "catalog": CATALOG,
        "ticket_keys": KEYS,
        "ticket_categories": {"CAL-1": "done", "CAL-2": "done"},
        "checks": passed(),
        "staging": [iov(name, "26,100,-1,-1") for name in PAYLOADS],
        "running": [iov(name, "26,0,-1,-1") for name in PAYLOADS],
        "staging_state": "OPEN",
        "running_state": "RUNNING",
    }
    values.update(changes)
    return build_report(**values)


def kinds(built: ReadinessReport) -> list[str]:
    return [blocker.kind for blocker in built.blockers]


def test_clean_report_lists_the_dry_run() -> None:
    built = report()
    assert built.clean
    assert built.tickets_done == 2
    assert len(built.to_close) == len(built.to_add) == len(PAYLOADS)
    assert all(
        key.startswith("close CDC") and key.endswith("26,0,-1,-1 -> 26,0,26,99") for key in built.to_close
    )
    assert all(key.endswith("26,100,-1,-1") for key in built.to_add)
    text = built.to_markdown()
    assert "**Every check passed.**" in text
    assert "| Tickets done | 2 of 2 |" in text
    assert built.to_add[0] in text
    assert built.staging_fingerprint[:16] in text


def test_open_ticket_is_for_its_expert() -> None:
    built = report(ticket_categories={"CAL-1": "indeterminate", "CAL-2": "done"})
    assert kinds(built) == [BlockerKind.TICKET_OPEN]
    assert built.blockers[0].owner == EXPERT
    assert "CAL-1" in built.blockers[0].message
    assert built.owners() == [EXPERT]


def test_missing_ticket_is_for_the_manager() -> None:
    built = report(ticket_keys={"CDC Tracking": "CAL-1"})
    assert kinds(built) == [BlockerKind.TICKET_MISSING]
    assert built.blockers[0].owner == "manager"


def test_failed_and_missing_checks_block() -> None:
    checks = {"CDC Tracking": [CheckResult("checksums", "failed", "MD5 differs")]}
    built = report(checks=checks)
    assert sorted(kinds(built)) == [BlockerKind.CHECK_FAILED, BlockerKind.CHECKS_MISSING]
    failed = next(blocker for blocker in built.blockers if blocker.kind == BlockerKind.CHECK_FAILED)
    assert failed.owner == EXPERT
    assert "MD5 differs" in failed.message
    missing = next(blocker for blocker in built.blockers if blocker.kind == BlockerKind.CHECKS_MISSING)
    assert missing.calibration == "CDC badwire"


def test_warnings_do_not_block() -> None:
    checks = passed()
    checks["CDC Tracking"].append(CheckResult("unchanged_payload", "warning", "same as before"))
    built = report(checks=checks)
    assert built.clean
    assert built.warnings == ["CDC Tracking, unchanged_payload: same as before"]
    assert built.checks["CDC Tracking"]["status"] == "warning"


def test_missing_payload_blocks() -> None:
    built = report(staging=[iov(name, "26,100,-1,-1") for name in PAYLOADS[1:]])
    assert kinds(built) == [BlockerKind.STAGING_TAG]
    assert PAYLOADS[0] in built.blockers[0].message
    assert built.blockers[0].owner == EXPERT


def test_overlap_blocks() -> None:
    staging = [iov(name, "26,100,-1,-1") for name in PAYLOADS] + [iov(PAYLOADS[0], "26,150,-1,-1")]
    built = report(staging=staging)
    assert BlockerKind.STAGING_TAG in kinds(built)
    assert any("overlaps" in blocker.message for blocker in built.blockers)


def test_gap_blocks() -> None:
    staging = [iov(name, "26,100,-1,-1") for name in PAYLOADS[1:]]
    staging += [iov(PAYLOADS[0], "26,100,26,120"), iov(PAYLOADS[0], "26,130,-1,-1")]
    built = report(staging=staging)
    assert any("no IoV covers the runs from 26,121" in blocker.message for blocker in built.blockers)


def test_wrong_first_run_blocks() -> None:
    built = report(staging=[iov(name, "26,90,-1,-1") for name in PAYLOADS])
    assert set(kinds(built)) == {BlockerKind.STAGING_TAG}
    assert all("must start at the bucket's first run 26,100" in blocker.message for blocker in built.blockers)


def test_running_tag_not_running_blocks() -> None:
    built = report(running_state="OPEN")
    assert kinds(built) == [BlockerKind.RUNNING_TAG]
    assert built.blockers[0].owner == CONDDB_MANAGERS
    assert "is OPEN, not RUNNING" in built.blockers[0].message
    missing = report(running_state=None, running=[])
    assert "is missing, not RUNNING" in missing.blockers[0].message


def test_running_tag_conflict_blocks() -> None:
    built = report(
        running=[iov(name, "26,0,-1,-1") for name in PAYLOADS] + [iov("CDCBadBoards", "26,150,-1,-1")]
    )
    assert kinds(built) == [BlockerKind.RUNNING_TAG]
    assert "26,150" in built.blockers[0].message


def test_staging_tag_in_wrong_state_blocks() -> None:
    built = report(staging_state="PUBLISHED")
    assert kinds(built) == [BlockerKind.STAGING_TAG]
    assert "PUBLISHED" in built.blockers[0].message


def test_already_merged_bucket_warns() -> None:
    staging = [iov(name, "26,100,-1,-1", payload_id=500 + index) for index, name in enumerate(PAYLOADS)]
    running = [iov(name, "26,0,26,99") for name in PAYLOADS] + [
        PayloadIoV(item.payload_id, item.name, 1, item.checksum, next(_ids), item.iov) for item in staging
    ]
    built = report(staging=staging, running=running)
    assert built.clean
    assert built.operations == []
    assert "changes nothing" in built.warnings[0]


def test_report_round_trips_through_json() -> None:
    built = report(ticket_categories={"CAL-1": "new", "CAL-2": "done"})
    data = built.to_dict()
    assert data["clean"] is False
    again = ReadinessReport.from_dict(data)
    assert again == built
    assert again.to_markdown() == built.to_markdown()
