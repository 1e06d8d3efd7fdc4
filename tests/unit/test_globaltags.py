"""Check global tag contents and plan running updates on hand-built IoV lists."""

from __future__ import annotations

import pytest

from b2cal.globaltags import (
    PayloadIoV,
    ProblemKind,
    check_running_tag,
    check_staging_tag,
    end_before,
    find_overlaps_and_gaps,
    fingerprint,
    plan_running_update,
)
from b2cal.iov import IoV

_ids = iter(range(1000, 100000))


def entry(name: str, iov: str, payload_id: int = 1, revision: int = 1) -> PayloadIoV:
    return PayloadIoV(payload_id, name, revision, f"md5-{payload_id}", next(_ids), IoV.parse(iov))


def kinds(problems: list) -> list[str]:
    return [problem.kind for problem in problems]


def test_end_before_conventions() -> None:
    assert end_before((26, 100)) == (26, 99)
    assert end_before((26, 1)) == (26, 0)
    assert end_before((26, 0)) == (25, -1)
    with pytest.raises(ValueError, match="0,0"):
        end_before((0, 0))


def test_contiguous_iovs_have_no_problems() -> None:
    iovs = [
        entry("BeamSpot", "26,0,26,9", 1),
        entry("BeamSpot", "26,10,26,-1", 2),
        entry("BeamSpot", "27,0,-1,-1", 3),
        entry("CDCT0", "26,0,-1,-1", 4),
    ]
    assert find_overlaps_and_gaps(iovs) == []


def test_overlap_is_reported_with_both_iovs() -> None:
    problems = find_overlaps_and_gaps(
        [entry("BeamSpot", "26,0,26,20", 1), entry("BeamSpot", "26,15,-1,-1", 2)]
    )
    assert kinds(problems) == [ProblemKind.OVERLAP]
    assert problems[0].payload == "BeamSpot"
    assert "26,15,-1,-1" in problems[0].message
    assert "26,0,26,20" in problems[0].message


def test_overlap_with_an_earlier_long_iov() -> None:
    problems = find_overlaps_and_gaps(
        [entry("X", "26,0,26,100", 1), entry("X", "26,10,26,20", 2), entry("X", "26,50,-1,-1", 3)]
    )
    assert kinds(problems) == [ProblemKind.OVERLAP, ProblemKind.OVERLAP]


def test_gap_is_reported_with_the_missing_runs() -> None:
    problems = find_overlaps_and_gaps(
        [entry("BeamSpot", "26,0,26,9", 1), entry("BeamSpot", "26,20,-1,-1", 2)]
    )
    assert kinds(problems) == [ProblemKind.GAP]
    assert "from 26,10 to before 26,20" in problems[0].message


def test_gap_across_experiments() -> None:
    closed_run = find_overlaps_and_gaps([entry("X", "26,0,26,500", 1), entry("X", "27,0,-1,-1", 2)])
    assert kinds(closed_run) == [ProblemKind.GAP]
    skipped_experiment = find_overlaps_and_gaps([entry("X", "25,0,25,-1", 1), entry("X", "27,0,-1,-1", 2)])
    assert kinds(skipped_experiment) == [ProblemKind.GAP]


def test_names_are_checked_separately() -> None:
    assert find_overlaps_and_gaps([entry("A", "26,0,-1,-1", 1), entry("B", "26,0,-1,-1", 2)]) == []


def test_staging_tag_start_and_open_end() -> None:
    good = [entry("BeamSpot", "26,10,-1,-1")]
    assert check_staging_tag(good, (26, 10)) == []

    early = check_staging_tag([entry("BeamSpot", "26,5,-1,-1")], (26, 10))
    late = check_staging_tag([entry("BeamSpot", "26,20,-1,-1")], (26, 10))
    assert kinds(early) == [ProblemKind.WRONG_START]
    assert kinds(late) == [ProblemKind.WRONG_START]
    assert "26,10" in early[0].message

    closed = check_staging_tag([entry("BeamSpot", "26,10,26,99")], (26, 10))
    assert kinds(closed) == [ProblemKind.NOT_OPEN_ENDED]
    assert check_staging_tag([entry("BeamSpot", "26,10,26,99")], (26, 10), require_open_ended=False) == []


def test_staging_tag_missing_payloads() -> None:
    problems = check_staging_tag(
        [entry("BeamSpot", "26,10,-1,-1")], (26, 10), ["BeamSpot", "CDCT0", "ECLGain"]
    )
    assert kinds(problems) == [ProblemKind.MISSING_PAYLOAD, ProblemKind.MISSING_PAYLOAD]
    assert [problem.payload for problem in problems] == ["CDCT0", "ECLGain"]


def test_running_tag_conflicts() -> None:
    running = [
        entry("Fine", "26,0,-1,-1", 1),
        entry("ClosedBefore", "26,0,26,99", 2),
        entry("StartsLater", "26,150,-1,-1", 3),
        entry("EndsLater", "26,0,26,120", 4),
    ]
    problems = check_running_tag(running, (26, 100))
    assert kinds(problems) == [ProblemKind.RUNNING_CONFLICT, ProblemKind.RUNNING_CONFLICT]
    assert [problem.payload for problem in problems] == ["StartsLater", "EndsLater"]


def test_running_tag_ignores_iovs_already_added_from_staging() -> None:
    staged = entry("BeamSpot", "26,100,-1,-1", 7)
    assert check_running_tag([staged], (26, 100), staging=[staged]) == []


def test_plan_closes_open_iovs_just_before_first_run() -> None:
    running = [
        entry("BeamSpot", "26,0,-1,-1", 1),
        entry("CDCT0", "25,0,-1,-1", 2),
        entry("Untouched", "25,0,-1,-1", 3),
        entry("BeamSpot", "25,0,25,-1", 4),
    ]
    staging = [entry("BeamSpot", "26,100,-1,-1", 10, 2), entry("CDCT0", "26,100,-1,-1", 11, 5)]
    plan = plan_running_update(running, staging, (26, 100))

    assert plan.ok
    assert [(item.name, item.old.as_text(), item.new.as_text()) for item in plan.to_close] == [
        ("BeamSpot", "26,0,-1,-1", "26,0,26,99"),
        ("CDCT0", "25,0,-1,-1", "25,0,26,99"),
    ]
    assert [(item.name, item.payload_id, item.iov.as_text()) for item in plan.to_add] == [
        ("BeamSpot", 10, "26,100,-1,-1"),
        ("CDCT0", 11, "26,100,-1,-1"),
    ]
    assert plan.already_added == 0


def test_plan_closes_at_previous_experiment() -> None:
    plan = plan_running_update([entry("X", "25,3,-1,-1", 1)], [entry("X", "26,0,-1,-1", 2)], (26, 0))
    assert [item.new.as_text() for item in plan.to_close] == ["25,3,25,-1"]


def test_plan_after_partial_application_lists_only_the_rest() -> None:
    staging = [entry("A", "26,100,-1,-1", 10), entry("B", "26,100,-1,-1", 11)]
    running = [
        entry("A", "26,0,26,99", 1),
        entry("B", "26,0,26,99", 2),
        PayloadIoV(10, "A", 1, "md5-10", 55, IoV.parse("26,100,-1,-1")),
    ]
    plan = plan_running_update(running, staging, (26, 100))
    assert plan.ok
    assert plan.to_close == []
    assert [item.name for item in plan.to_add] == ["B"]
    assert plan.already_added == 1

    running.append(PayloadIoV(11, "B", 1, "md5-11", 56, IoV.parse("26,100,-1,-1")))
    finished = plan_running_update(running, staging, (26, 100))
    assert finished.is_empty
    assert finished.already_added == 2


def test_plan_reports_problems_of_both_tags() -> None:
    running = [entry("A", "26,200,-1,-1", 1)]
    staging = [entry("A", "26,100,26,150", 2)]
    plan = plan_running_update(running, staging, (26, 100), expected_payloads=["A", "B"])
    assert not plan.ok
    assert sorted(kinds(plan.problems)) == sorted(
        [ProblemKind.NOT_OPEN_ENDED, ProblemKind.MISSING_PAYLOAD, ProblemKind.RUNNING_CONFLICT]
    )


def test_plan_summary_names_the_counts() -> None:
    plan = plan_running_update([entry("A", "26,0,-1,-1", 1)], [entry("A", "26,10,-1,-1", 2)], (26, 10))
    plan.staging_tag, plan.running_tag = "staging", "running"
    assert plan.summary() == (
        "running update staging -> running from run 26,10 (dry run): close 1 IoVs, add 1, "
        "0 already added, 0 problems"
    )


def test_fingerprint_changes_with_any_iov_but_not_with_order() -> None:
    first = [entry("BeamSpot", "26,0,-1,-1", 1), entry("CDCT0", "26,0,-1,-1", 2)]
    assert fingerprint(first) == fingerprint(list(reversed(first)))
    moved = [first[0], PayloadIoV(2, "CDCT0", 1, "md5-2", first[1].iov_id, IoV.parse("26,1,-1,-1"))]
    assert fingerprint(moved) != fingerprint(first)
    assert fingerprint([*first, entry("ECLGain", "26,0,-1,-1", 3)]) != fingerprint(first)
    assert fingerprint([]) != fingerprint(first)


def test_operations_not_approved_are_named() -> None:
    running = [entry("BeamSpot", "26,0,-1,-1", 1), entry("CDCT0", "26,0,-1,-1", 2)]
    staging = [entry("BeamSpot", "26,100,-1,-1", 3), entry("CDCT0", "26,100,-1,-1", 4)]
    plan = plan_running_update(running, staging, (26, 100))
    keys = plan.operation_keys()
    assert [key.split()[0] for key in keys] == ["close", "close", "add", "add"]
    assert plan.unapproved(keys) == []
    assert plan.unapproved(keys[1:]) == [keys[0]]
    partly_applied = plan_running_update(
        [
            PayloadIoV(1, "BeamSpot", 1, "md5-1", running[0].iov_id, IoV.parse("26,0,26,99")),
            running[1],
            staging[0],
        ],
        staging,
        (26, 100),
    )
    assert partly_applied.unapproved(keys) == []
    assert len(partly_applied.operation_keys()) == 2
