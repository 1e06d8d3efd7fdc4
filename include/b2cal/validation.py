"""Check a calibration's payloads after their upload to the staging global tag.

:func:`check_calibration` is pure: it compares the job's local output, the staging tag and the
running tag's payloads from before the bucket, and returns one :class:`CheckResult` per check.
:func:`validate_upload` reads those from the conditions database and runs the checks. The checks:

``payloads_present``
    Every payload in the calibration's ``produced_payloads`` is in the job's output and in the
    staging tag. A payload in the output that the catalog does not declare is a warning.
``iov_start``
    Each payload's IoVs start exactly at the bucket's first run and, when the calibration's
    ``expert_config`` declares ``payload_boundaries``, at each boundary inside the bucket.
``open_ended``
    Each payload's last IoV is open-ended, as prompt payloads are.
``overlaps_and_gaps``
    No two IoVs of one of the calibration's payloads overlap, and none leaves a gap.
``checksums``
    The payload that each uploaded IoV points to has the MD5 checksum of the local file, and, when
    the payload files were downloaded, the downloaded bytes have it too.
``unchanged_payload``
    A payload identical (same checksum) to the one the running tag holds for the run before the
    bucket is flagged as a warning: the calibration may not have seen new data.

A failed check keeps the bucket from being signed off; a warning is shown but does not.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from b2cal.conddb import read_database_folder
from b2cal.globaltags import PayloadIoV, end_before, find_overlaps_and_gaps
from b2cal.iov import IoV

logger = logging.getLogger(__name__)


class CheckName(StrEnum):
    """Names of the automatic checks, as stored in the plugin database."""

    PAYLOADS_PRESENT = "payloads_present"
    IOV_START = "iov_start"
    OPEN_ENDED = "open_ended"
    OVERLAPS_AND_GAPS = "overlaps_and_gaps"
    CHECKSUMS = "checksums"
    UNCHANGED_PAYLOAD = "unchanged_payload"
    SITE_VALIDATION = "site_validation"


class CheckStatus(StrEnum):
    """Outcome of one check, from best to worst."""

    PASSED = "passed"
    WARNING = "warning"
    FAILED = "failed"


_SEVERITY = {CheckStatus.PASSED: 0, CheckStatus.WARNING: 1, CheckStatus.FAILED: 2}
#: Every check that :func:`check_calibration` runs, in the order it reports them.
AUTOMATIC_CHECKS = (
    CheckName.PAYLOADS_PRESENT,
    CheckName.IOV_START,
    CheckName.OPEN_ENDED,
    CheckName.OVERLAPS_AND_GAPS,
    CheckName.CHECKSUMS,
    CheckName.UNCHANGED_PAYLOAD,
)


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check of one calibration."""

    name: str
    status: str
    message: str
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the result as JSON-compatible data."""
        return {
            "name": self.name,
            "status": self.status,
            "message": self.message,
            "detail": dict(self.detail),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckResult:
        """Build a result from :meth:`to_dict` data."""
        return cls(
            str(data["name"]), str(data["status"]), str(data["message"]), dict(data.get("detail") or {})
        )


@dataclass
class ValidationReport:
    """All check results of one calibration's upload."""

    calibration: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def status(self) -> str:
        """The worst status of any check; ``passed`` when there are none."""
        return worst_status(result.status for result in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        """The checks that failed."""
        return [result for result in self.results if result.status == CheckStatus.FAILED]

    def to_comment(self, staging_tag: str) -> str:
        """Return the results as a Jira comment in wiki markup."""
        icons = {CheckStatus.PASSED: "(/)", CheckStatus.WARNING: "(!)", CheckStatus.FAILED: "(x)"}
        verdict = {
            CheckStatus.PASSED: "passed every check",
            CheckStatus.WARNING: "passed, with warnings",
            CheckStatus.FAILED: f"FAILED {len(self.failed)} checks",
        }[CheckStatus(self.status)]
        lines = [f"Automatic checks of the payloads in the staging tag {staging_tag}: {verdict}."]
        lines += [
            f"{icons[CheckStatus(result.status)]} {result.name}: {result.message}" for result in self.results
        ]
        if self.failed:
            lines.append("The bucket cannot be signed off until these checks pass.")
        return "\n".join(lines)


def worst_status(statuses: Iterable[str]) -> str:
    """Return the worst of some check statuses, ``passed`` for none."""
    worst = CheckStatus.PASSED
    for status in statuses:
        if _SEVERITY[CheckStatus(status)] > _SEVERITY[worst]:
            worst = CheckStatus(status)
    return worst.value


@dataclass(frozen=True)
class LocalIoV:
    """One line of a job's ``database.txt``: a payload name, its file's MD5 checksum and its IoV."""

    name: str
    checksum: str
    iov: IoV


def read_local_iovs(folders: Iterable[Path | str]) -> list[LocalIoV]:
    """Return the IoVs of a job's local database folders, each with its file's MD5 checksum.

    :raises b2cal.conddb.LocalDatabaseError: if a folder cannot be read
    """
    return [
        LocalIoV(item.name, item.checksum, item.iov)
        for folder in folders
        for item in read_database_folder(folder)
    ]


def payload_boundaries(expert_config: Mapping[str, Any]) -> list[tuple[int, int]]:
    """Return the ``payload_boundaries`` of an ``expert_config`` as sorted ``(exp, run)`` pairs.

    :raises ValueError: naming the value when it is not a list of ``[exp, run]`` pairs
    """
    value = expert_config.get("payload_boundaries")
    if value in (None, [], ()):
        return []
    if not isinstance(value, list | tuple):
        raise ValueError(f"payload_boundaries {value!r} must be a list of [exp, run] pairs or null")
    pairs = []
    for item in value:
        if (
            not isinstance(item, list | tuple)
            or len(item) != 2
            or not all(isinstance(number, int) and number >= 0 for number in item)
        ):
            raise ValueError(
                f"payload boundary {item!r} in payload_boundaries must be a pair [exp, run] of "
                "non-negative integers"
            )
        pairs.append((int(item[0]), int(item[1])))
    return sorted(set(pairs))


def expected_starts(bucket: IoV, boundaries: Sequence[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    """Return where a payload's IoVs must start: the bucket's first run and the boundaries inside it."""
    starts = {bucket.first}
    starts |= {point for point in boundaries if bucket.first < point and bucket.contains(*point)}
    return sorted(starts)


def _text(point: tuple[int, int]) -> str:
    return f"{point[0]},{point[1]}"


def check_calibration(
    calibration: str,
    produced_payloads: Sequence[str],
    bucket: IoV,
    local: Sequence[LocalIoV],
    staging: Sequence[PayloadIoV],
    previous: Sequence[PayloadIoV] = (),
    boundaries: Sequence[tuple[int, int]] = (),
    downloaded_checksums: Mapping[int, str] | None = None,
) -> ValidationReport:
    """Run the automatic checks of one calibration's upload.

    :param calibration: the calibration's name
    :param produced_payloads: the payload names the catalog declares for it
    :param bucket: the request's run range
    :param local: the IoVs of the job's output folders
    :param staging: every IoV of the staging tag; only the calibration's payloads are checked
    :param previous: the running tag's IoVs that are valid for the run just before the bucket
    :param boundaries: the calibration's ``payload_boundaries``
    :param downloaded_checksums: MD5 of the downloaded file of each payload id, when downloaded
    """
    names = sorted(set(produced_payloads) | {item.name for item in local})
    mine = [item for item in staging if item.name in names]
    by_name: dict[str, list[PayloadIoV]] = defaultdict(list)
    for item in sorted(mine, key=lambda entry: (entry.name, entry.iov.first)):
        by_name[item.name].append(item)
    report = ValidationReport(calibration)
    report.results.append(_check_present(produced_payloads, local, by_name))
    report.results.append(_check_starts(names, by_name, bucket, boundaries))
    report.results.append(_check_open_ended(names, by_name))
    report.results.append(_check_overlaps(mine))
    report.results.append(_check_checksums(local, mine, downloaded_checksums or {}))
    report.results.append(_check_unchanged(names, by_name, bucket, previous))
    return report


def _check_present(
    produced: Sequence[str], local: Sequence[LocalIoV], by_name: Mapping[str, list[PayloadIoV]]
) -> CheckResult:
    in_output = {item.name for item in local}
    not_produced = sorted(set(produced) - in_output)
    not_uploaded = sorted(name for name in produced if name in in_output and name not in by_name)
    undeclared = sorted(in_output - set(produced))
    detail = {"not_produced": not_produced, "not_uploaded": not_uploaded, "undeclared": undeclared}
    problems = []
    if not_produced:
        problems.append(f"the job's output lacks {', '.join(not_produced)}")
    if not_uploaded:
        problems.append(f"the staging tag lacks {', '.join(not_uploaded)}")
    if problems:
        return CheckResult(CheckName.PAYLOADS_PRESENT, CheckStatus.FAILED, "; ".join(problems), detail)
    if undeclared:
        return CheckResult(
            CheckName.PAYLOADS_PRESENT,
            CheckStatus.WARNING,
            f"all {len(produced)} declared payloads are present; {', '.join(undeclared)} are produced but "
            "not declared in the catalog's produced_payloads",
            detail,
        )
    if not produced:
        return CheckResult(
            CheckName.PAYLOADS_PRESENT, CheckStatus.PASSED, "the catalog declares no payloads", detail
        )
    return CheckResult(
        CheckName.PAYLOADS_PRESENT,
        CheckStatus.PASSED,
        f"all {len(produced)} declared payloads are in the output and the staging tag",
        detail,
    )


def _check_starts(
    names: Sequence[str],
    by_name: Mapping[str, list[PayloadIoV]],
    bucket: IoV,
    boundaries: Sequence[tuple[int, int]],
) -> CheckResult:
    wanted = expected_starts(bucket, boundaries)
    wrong: dict[str, dict[str, list[str]]] = {}
    for name in names:
        starts = sorted({item.iov.first for item in by_name.get(name, [])})
        if not starts:
            continue
        unexpected = [_text(point) for point in starts if point not in wanted]
        missing = [_text(point) for point in wanted if point not in starts]
        if unexpected or missing:
            wrong[name] = {"unexpected": unexpected, "missing": missing}
    where = f"the bucket's first run {_text(bucket.first)}"
    if len(wanted) > 1:
        where += f" and the payload boundaries {', '.join(_text(point) for point in wanted[1:])}"
    if not wrong:
        return CheckResult(CheckName.IOV_START, CheckStatus.PASSED, f"every IoV starts at {where}")
    parts = []
    for name, problem in wrong.items():
        text = f"{name} starts at {', '.join(problem['unexpected']) or 'no expected run'}"
        if problem["missing"]:
            text += f" but has no IoV starting at {', '.join(problem['missing'])}"
        parts.append(text)
    return CheckResult(
        CheckName.IOV_START,
        CheckStatus.FAILED,
        f"IoVs must start at {where}: {'; '.join(parts)}",
        {"expected": [_text(point) for point in wanted], "payloads": wrong},
    )


def _check_open_ended(names: Sequence[str], by_name: Mapping[str, list[PayloadIoV]]) -> CheckResult:
    closed = {}
    for name in names:
        items = by_name.get(name, [])
        if items:
            last = max(items, key=lambda item: item.iov.last_key())
            if not last.iov.is_open_ended:
                closed[name] = last.iov.as_text()
    if not closed:
        return CheckResult(CheckName.OPEN_ENDED, CheckStatus.PASSED, "every payload's last IoV is open-ended")
    listed = ", ".join(f"{name} ends with {iov}" for name, iov in closed.items())
    return CheckResult(
        CheckName.OPEN_ENDED,
        CheckStatus.FAILED,
        f"the last IoV of a prompt payload must be open-ended (-1,-1): {listed}",
        {"closed": closed},
    )


def _check_overlaps(mine: Sequence[PayloadIoV]) -> CheckResult:
    problems = find_overlaps_and_gaps(mine)
    if not problems:
        return CheckResult(
            CheckName.OVERLAPS_AND_GAPS, CheckStatus.PASSED, "no IoVs overlap and none leaves a gap"
        )
    return CheckResult(
        CheckName.OVERLAPS_AND_GAPS,
        CheckStatus.FAILED,
        "; ".join(problem.message for problem in problems),
        {"problems": [{"kind": problem.kind, "payload": problem.payload} for problem in problems]},
    )


def _check_checksums(
    local: Sequence[LocalIoV], mine: Sequence[PayloadIoV], downloaded: Mapping[int, str]
) -> CheckResult:
    stored = {(item.name, item.iov): item for item in mine}
    mismatches = []
    for item in local:
        record = stored.get((item.name, item.iov))
        if record is None:
            mismatches.append(f"{item.name} {item.iov} is not in the staging tag")
        elif record.checksum != item.checksum:
            mismatches.append(
                f"{item.name} {item.iov} points to payload {record.payload_id} with MD5 {record.checksum}, "
                f"but the local file has {item.checksum}"
            )
        elif record.payload_id in downloaded and downloaded[record.payload_id] != record.checksum:
            mismatches.append(
                f"the stored file of {item.name} (payload {record.payload_id}) has MD5 "
                f"{downloaded[record.payload_id]}, not the {record.checksum} it is registered with"
            )
    if mismatches:
        return CheckResult(
            CheckName.CHECKSUMS, CheckStatus.FAILED, "; ".join(mismatches), {"mismatches": mismatches}
        )
    how = " and the downloaded files" if downloaded else ""
    return CheckResult(
        CheckName.CHECKSUMS,
        CheckStatus.PASSED,
        f"the {len(local)} uploaded IoVs point to payloads whose checksums match the local files{how}",
        {"downloaded": len(downloaded)},
    )


def _check_unchanged(
    names: Sequence[str],
    by_name: Mapping[str, list[PayloadIoV]],
    bucket: IoV,
    previous: Sequence[PayloadIoV],
) -> CheckResult:
    before = {item.name: item for item in previous}
    same = {}
    for name in names:
        first = next((item for item in by_name.get(name, []) if item.iov.first == bucket.first), None)
        old = before.get(name)
        if first is not None and old is not None and old.checksum == first.checksum:
            same[name] = {"revision": old.revision, "payload_id": old.payload_id, "iov": old.iov.as_text()}
    if not same:
        return CheckResult(
            CheckName.UNCHANGED_PAYLOAD,
            CheckStatus.PASSED,
            "every payload differs from the previous bucket's",
        )
    listed = ", ".join(
        f"{name} (revision {info['revision']}, IoV {info['iov']})" for name, info in same.items()
    )
    return CheckResult(
        CheckName.UNCHANGED_PAYLOAD,
        CheckStatus.WARNING,
        f"identical to the payload the running tag uses before this bucket: {listed}; "
        "check that the calibration saw this bucket's data",
        {"unchanged": same},
    )


def payloads_before(iovs: Iterable[PayloadIoV], first_run: tuple[int, int]) -> list[PayloadIoV]:
    """Return the IoVs valid for the run just before ``first_run``.

    For a first run 0 that is the last run of the previous experiment, whose number is not known
    here, so an IoV counts when it reaches the end of that experiment.
    """
    exp, run = end_before(first_run)
    if run >= 0:
        return [item for item in iovs if item.iov.contains(exp, run)]
    end_of_experiment = (float(exp), float("inf"))
    return [item for item in iovs if item.iov.exp_low <= exp and item.iov.last_key() >= end_of_experiment]


class ConditionsReader(Protocol):
    """The reads of :class:`b2cal.conddb.ConditionsDB` that :func:`validate_upload` needs."""

    def global_tag_payloads(self, name: str) -> list[PayloadIoV]: ...

    def get_global_tag(self, name: str) -> dict[str, Any] | None: ...


def validate_upload(
    client: ConditionsReader,
    calibration: str,
    produced_payloads: Sequence[str],
    bucket: IoV,
    local: Sequence[LocalIoV],
    staging_tag: str,
    running_tag: str,
    expert_config: Mapping[str, Any] | None = None,
    download: Mapping[int, bytes] | None = None,
) -> ValidationReport:
    """Read the staging and running tags and run :func:`check_calibration`.

    The running tag's payloads from before the bucket are those valid at the run just before the
    bucket's first run; a bucket starting at run 0,0 or a running tag that does not exist has none.

    :param download: the downloaded file of some payload ids, to check their MD5 as well
    """
    staging = client.global_tag_payloads(staging_tag)
    previous: list[PayloadIoV] = []
    if bucket.first > (0, 0) and client.get_global_tag(running_tag) is not None:
        previous = payloads_before(client.global_tag_payloads(running_tag), bucket.first)
    checksums = {payload_id: hashlib.md5(data).hexdigest() for payload_id, data in (download or {}).items()}
    report = check_calibration(
        calibration,
        produced_payloads,
        bucket,
        local,
        staging,
        previous,
        payload_boundaries(expert_config or {}),
        checksums,
    )
    logger.info(
        "Checks of %s in %s: %s (%s)",
        calibration,
        staging_tag,
        report.status,
        ", ".join(f"{result.name}={result.status}" for result in report.results),
    )
    return report
