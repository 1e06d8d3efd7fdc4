"""Build the readiness report that a calibration manager reads before signing off a bucket.

The report decides one question: may the staging tag be merged into the running tag now? It is
ready when every ticket is done, every calibration's automatic checks passed, the staging tag is
complete, free of overlaps and gaps and starts at the bucket's first run, the running tag is
RUNNING, and the running update's dry run has no problem. Everything missing is a
:class:`Blocker` that names who must act. The dry run's operations (each IoV to close and to add)
and a fingerprint of the staging tag are part of the report, so that the running update can refuse
to apply anything other than what the manager approved.

:func:`build_report` is pure; the operators fetch its inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from b2cal.catalog import Catalog
from b2cal.globaltags import PayloadIoV, ProblemKind, fingerprint, plan_running_update
from b2cal.iov import IoV
from b2cal.validation import CheckResult, CheckStatus, worst_status

#: The owner of a problem of the running tag: the conditions database managers.
CONDDB_MANAGERS = "the conditions database managers"
#: States of the staging tag from which the running update can proceed.
STAGING_STATES = ("OPEN", "TESTING", "VALIDATED")
DONE = "done"


class BlockerKind:
    """Kinds of :class:`Blocker`."""

    TICKET_MISSING = "ticket_missing"
    TICKET_OPEN = "ticket_open"
    CHECKS_MISSING = "checks_missing"
    CHECK_FAILED = "check_failed"
    STAGING_TAG = "staging_tag"
    RUNNING_TAG = "running_tag"


@dataclass(frozen=True)
class Blocker:
    """Something that keeps the bucket from being signed off, and who must act on it."""

    kind: str
    message: str
    #: A Jira username, or a description of a group such as :data:`CONDDB_MANAGERS`.
    owner: str
    calibration: str | None = None


@dataclass
class ReadinessReport:
    """Whether a request's staging tag may be merged, and what the merge will do."""

    request_uid: str
    bucket: str
    release: str
    site: str
    staging_tag: str
    running_tag: str
    manager: str
    staging_state: str | None
    running_state: str | None
    tickets_total: int
    tickets_done: int
    staging_iovs: int
    staging_fingerprint: str
    #: Per calibration: ``{"status": worst status, "results": [CheckResult.to_dict(), ...]}``.
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    blockers: list[Blocker] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: Keys of the running update's operations (see ``RunningUpdatePlan.operation_keys``).
    to_close: list[str] = field(default_factory=list)
    to_add: list[str] = field(default_factory=list)
    already_added: int = 0
    generated_at: str = ""

    @property
    def clean(self) -> bool:
        """Whether nothing blocks the sign-off."""
        return not self.blockers

    @property
    def operations(self) -> list[str]:
        """Every operation the running update will apply, closes first."""
        return [*self.to_close, *self.to_add]

    def owners(self) -> list[str]:
        """Return everyone who must act, each once, in the order the blockers name them."""
        return list(dict.fromkeys(blocker.owner for blocker in self.blockers))

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-compatible data."""
        data = asdict(self)
        data["clean"] = self.clean
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReadinessReport:
        """Build a report from :meth:`to_dict` data."""
        values = {key: value for key, value in data.items() if key != "clean"}
        values["blockers"] = [Blocker(**item) for item in data.get("blockers", [])]
        return cls(**values)

    def to_markdown(self) -> str:
        """Return the report as Markdown, as the sign-off form shows it."""
        checks = [info["status"] for info in self.checks.values()]
        passed = sum(1 for status in checks if status != CheckStatus.FAILED)
        warned = sum(1 for status in checks if status == CheckStatus.WARNING)
        lines = [
            f"## Sign-off of request {self.request_uid}",
            "",
            f"Bucket {self.bucket}, release {self.release}, site {self.site}, requested by {self.manager}. "
            f"Report made {self.generated_at}.",
            "",
            "| Item | State |",
            "|---|---|",
            f"| Tickets done | {self.tickets_done} of {self.tickets_total} |",
            f"| Automatic checks | {passed} of {len(self.checks)} calibrations passed, "
            f"{warned} with warnings |",
            f"| Staging tag `{self.staging_tag}` | {self.staging_state or 'missing'}, "
            f"{self.staging_iovs} IoVs |",
            f"| Running tag `{self.running_tag}` | {self.running_state or 'missing'} |",
            f"| Running update (dry run) | closes {len(self.to_close)} IoVs, adds {len(self.to_add)}, "
            f"{self.already_added} already added |",
            "",
        ]
        if self.blockers:
            lines += ["### Not ready", ""]
            lines += [f"- **{blocker.owner}**: {blocker.message}" for blocker in self.blockers]
            lines.append("")
        else:
            lines += ["**Every check passed.** Approving merges the staging tag into the running tag.", ""]
        if self.warnings:
            lines += ["### Warnings", ""]
            lines += [f"- {warning}" for warning in self.warnings]
            lines.append("")
        if self.operations:
            lines += ["### What the running update will do", ""]
            lines += [f"- {operation}" for operation in self.operations]
            lines.append("")
        lines += [
            f"Staging tag fingerprint `{self.staging_fingerprint[:16]}`: if the staging tag changes after "
            "this report, the running update does not run and a new report is needed.",
            "",
            "To reject, list the tickets or calibrations to rerun under *reopen* and explain why under "
            "*comment*; their dependents rerun as well.",
        ]
        return "\n".join(lines)


def build_report(
    *,
    request_uid: str,
    bucket: IoV,
    release: str,
    site: str,
    staging_tag: str,
    running_tag: str,
    manager: str,
    calibrations: Sequence[str],
    catalog: Catalog,
    ticket_keys: Mapping[str, str],
    ticket_categories: Mapping[str, str],
    checks: Mapping[str, Sequence[CheckResult]],
    staging: Sequence[PayloadIoV],
    running: Sequence[PayloadIoV],
    staging_state: str | None,
    running_state: str | None,
    now: datetime | None = None,
) -> ReadinessReport:
    """Build the readiness report of a request from the state of its tickets, checks and tags.

    :param manager: the calibration manager who requested the bucket, who owns every other problem
    :param ticket_categories: the status category key of each ticket (``new``, ``indeterminate``,
        ``done``)
    :param staging_state: the staging tag's state, ``None`` when the tag does not exist
    :param running_state: the running tag's state, ``None`` when the tag does not exist
    """
    first = bucket.first
    payload_owner = {payload: name for name in calibrations for payload in catalog[name].produced_payloads}
    plan = plan_running_update(running, staging, first, expected_payloads=sorted(payload_owner))
    report = ReadinessReport(
        request_uid=request_uid,
        bucket=bucket.as_text(),
        release=release,
        site=site,
        staging_tag=staging_tag,
        running_tag=running_tag,
        manager=manager,
        staging_state=staging_state,
        running_state=running_state,
        tickets_total=len(calibrations),
        tickets_done=sum(
            1 for name in calibrations if ticket_categories.get(ticket_keys.get(name, "")) == DONE
        ),
        staging_iovs=len(staging),
        staging_fingerprint=fingerprint(staging),
        to_close=[item.key for item in plan.to_close],
        to_add=[item.key for item in plan.to_add],
        already_added=plan.already_added,
        generated_at=(now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC"),
    )
    _ticket_blockers(report, calibrations, catalog, ticket_keys, ticket_categories, manager)
    _check_blockers(report, calibrations, catalog, checks, manager)
    _tag_blockers(report, plan.problems, payload_owner, catalog, manager)
    if staging_state is None:
        report.blockers.append(
            Blocker(BlockerKind.STAGING_TAG, f"staging tag {staging_tag} does not exist", manager)
        )
    elif staging_state not in STAGING_STATES:
        report.blockers.append(
            Blocker(
                BlockerKind.STAGING_TAG,
                f"staging tag {staging_tag} is {staging_state}; the running update needs it "
                f"{', '.join(STAGING_STATES)}",
                manager,
            )
        )
    if running_state != "RUNNING":
        report.blockers.append(
            Blocker(
                BlockerKind.RUNNING_TAG,
                f"running tag {running_tag} is {running_state or 'missing'}, not RUNNING: set it to RUNNING "
                "before the running update",
                CONDDB_MANAGERS,
            )
        )
    if not report.blockers and plan.is_empty:
        report.warnings.append(
            f"the running tag already holds all {plan.already_added} staging IoVs: approving changes nothing"
        )
    return report


def _ticket_blockers(
    report: ReadinessReport,
    calibrations: Sequence[str],
    catalog: Catalog,
    keys: Mapping[str, str],
    categories: Mapping[str, str],
    manager: str,
) -> None:
    for name in calibrations:
        key = keys.get(name)
        if key is None:
            report.blockers.append(
                Blocker(
                    BlockerKind.TICKET_MISSING,
                    f"{name} has no Jira ticket: run create_ticket_tree",
                    manager,
                    name,
                )
            )
        elif categories.get(key) != DONE:
            report.blockers.append(
                Blocker(
                    BlockerKind.TICKET_OPEN,
                    f"ticket {key} of {name} is not done ({categories.get(key, 'not found')}): check the "
                    "results and close it",
                    catalog[name].expert_username,
                    name,
                )
            )


def _check_blockers(
    report: ReadinessReport,
    calibrations: Sequence[str],
    catalog: Catalog,
    checks: Mapping[str, Sequence[CheckResult]],
    manager: str,
) -> None:
    for name in calibrations:
        results = list(checks.get(name, []))
        if not results:
            report.blockers.append(
                Blocker(
                    BlockerKind.CHECKS_MISSING,
                    f"{name} has no automatic check results: its payloads were not uploaded and checked; "
                    "rerun the calibration",
                    manager,
                    name,
                )
            )
            continue
        report.checks[name] = {
            "status": worst_status(result.status for result in results),
            "results": [result.to_dict() for result in results],
        }
        for result in results:
            if result.status == CheckStatus.FAILED:
                report.blockers.append(
                    Blocker(
                        BlockerKind.CHECK_FAILED,
                        f"check {result.name} of {name} failed: {result.message}",
                        catalog[name].expert_username,
                        name,
                    )
                )
            elif result.status == CheckStatus.WARNING:
                report.warnings.append(f"{name}, {result.name}: {result.message}")


def _tag_blockers(
    report: ReadinessReport,
    problems: Sequence[Any],
    payload_owner: Mapping[str, str],
    catalog: Catalog,
    manager: str,
) -> None:
    for problem in problems:
        if problem.kind == ProblemKind.RUNNING_CONFLICT:
            report.blockers.append(Blocker(BlockerKind.RUNNING_TAG, problem.message, CONDDB_MANAGERS))
            continue
        calibration = payload_owner.get(problem.payload)
        owner = catalog[calibration].expert_username if calibration else manager
        report.blockers.append(Blocker(BlockerKind.STAGING_TAG, problem.message, owner, calibration))
