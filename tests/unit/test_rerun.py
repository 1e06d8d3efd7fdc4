"""The rerun decision after a rejection at sign-off, and the output folder of each cDST production attempt."""

from __future__ import annotations

import pytest

from b2cal.catalog import load_packaged_release
from b2cal.cdst import cdst_output_folder
from b2cal.rerun import plan_rerun, rerun_set

CATALOG = load_packaged_release()
#: Raw phase: CDC Tracking, CDC badwire (depends on CDC Tracking), KLM channel status.
#: Cdst phase: CDC dedx, CDC dedx Hadron Calibrations (depends on CDC dedx), KLM strip efficiency.
REQUEST = [
    "CDC Tracking",
    "CDC badwire",
    "KLM channel status",
    "CDC dedx",
    "CDC dedx Hadron Calibrations",
    "KLM strip efficiency",
]
CDST_PHASE = ["CDC dedx", "CDC dedx Hadron Calibrations", "KLM strip efficiency"]


def test_rerun_set_adds_dependents_in_request_order() -> None:
    request = ["CDC Tracking", "CDC badwire", "CDC Sigma fudge factor", "KLM channel status"]
    assert rerun_set(CATALOG, request, ["CDC Tracking"]) == request[:3]
    assert rerun_set(CATALOG, request, ["CDC badwire"]) == ["CDC badwire"]
    assert rerun_set(CATALOG, request, []) == []


def test_raw_rejection_reruns_cdst_production() -> None:
    plan = plan_rerun(CATALOG, REQUEST, ["KLM channel status"])

    assert plan.cdst_production is True
    assert plan.cdst_causes == ("KLM channel status",)
    assert plan.named == ("KLM channel status",)
    assert plan.calibrations == ("KLM channel status", *CDST_PHASE)
    assert plan.cdst_readers == tuple(CDST_PHASE)


def test_raw_rejection_keeps_dependents() -> None:
    plan = plan_rerun(CATALOG, REQUEST, ["CDC Tracking"])

    assert plan.calibrations == ("CDC Tracking", "CDC badwire", *CDST_PHASE)
    assert plan.rejected_dependencies == {"CDC badwire": ("CDC Tracking",)}
    assert plan.cdst_causes == ("CDC Tracking",)
    assert "KLM channel status" not in plan.calibrations


def test_cdst_rejection_keeps_the_cdsts() -> None:
    plan = plan_rerun(CATALOG, REQUEST, ["CDC dedx"])

    assert plan.cdst_production is False
    assert plan.cdst_causes == ()
    assert plan.cdst_readers == ()
    assert plan.calibrations == ("CDC dedx", "CDC dedx Hadron Calibrations")
    assert plan.rejected_dependencies == {"CDC dedx Hadron Calibrations": ("CDC dedx",)}


def test_rejection_of_nothing_is_empty() -> None:
    plan = plan_rerun(CATALOG, REQUEST, ["ARICH channel masks"])

    assert not plan
    assert plan.calibrations == ()
    assert plan.cdst_production is False


def test_comment_names_the_cdst_cause() -> None:
    plan = plan_rerun(CATALOG, REQUEST, ["KLM channel status"])

    text = plan.reopen_comment("KLM strip efficiency", "manager", "dead strips in sector 3")

    assert text.startswith(
        "cDSTs are produced again because KLM channel status was rejected at sign-off by manager: "
        "dead strips in sector 3"
    )
    assert text.endswith("runs again on the new ones.")


def test_comment_of_a_named_calibration() -> None:
    plan = plan_rerun(CATALOG, REQUEST, ["KLM channel status"])

    text = plan.reopen_comment("KLM channel status", "manager", "dead strips")

    assert text == "Rejected at sign-off by manager: dead strips\nThe calibration runs again."


def test_comment_of_a_dependent_names_only_its_causes() -> None:
    plan = plan_rerun(CATALOG, REQUEST, ["CDC Tracking", "KLM channel status"])

    text = plan.reopen_comment("CDC badwire", "manager", "T0 drifts")

    assert text.startswith("Reopened because CDC Tracking was rejected at sign-off by manager: T0 drifts")
    assert "KLM channel status" not in text
    assert "cDSTs" not in text


def test_comment_lists_several_cdst_causes() -> None:
    plan = plan_rerun(CATALOG, REQUEST, ["CDC Tracking", "KLM channel status"])

    text = plan.reopen_comment("CDC dedx", "manager", "T0 drifts")

    assert "because CDC Tracking, KLM channel status were rejected at sign-off" in text


def test_comment_for_a_calibration_not_rerun_raises() -> None:
    plan = plan_rerun(CATALOG, REQUEST, ["CDC dedx"])

    with pytest.raises(ValueError, match="'CDC Tracking' does not run again"):
        plan.reopen_comment("CDC Tracking", "manager", "x")


def test_first_cdst_attempt_writes_cdst_root() -> None:
    assert cdst_output_folder("/data/cdst", "prompt-e0026-b01", 1) == "/data/cdst"


def test_later_cdst_attempt_writes_a_new_folder() -> None:
    second = cdst_output_folder("/data/cdst", "prompt-e0026-b01", 2)
    third = cdst_output_folder("/data/cdst", "prompt-e0026-b01", 3)

    assert second == "/data/cdst/attempts/prompt-e0026-b01/attempt-2"
    assert third == "/data/cdst/attempts/prompt-e0026-b01/attempt-3"


@pytest.mark.parametrize("attempt", [0, -1, True, "2"])
def test_invalid_cdst_attempt_raises(attempt: object) -> None:
    with pytest.raises(ValueError, match="use an integer of at least 1"):
        cdst_output_folder("/data/cdst", "r", attempt)  # type: ignore[arg-type]
