"""Decide what runs again after the calibration manager rejects a bucket at sign-off.

A rejected calibration runs again, and so does every calibration of the request that depends on it,
directly or not. cDST production reads the staging tag, which contains the payloads of every raw-phase
calibration, declared in ``produced_payloads`` or not. So when any raw-phase calibration runs again,
cDST production runs again too, and every cdst-phase calibration of the request runs again on the new
cDSTs, whether or not it declares a dependency on the rejected one. Rejecting only cdst-phase
calibrations leaves the cDSTs as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from b2cal.catalog import CDST_PHASE, RAW_PHASE, Catalog


def rerun_set(catalog: Catalog, calibrations: Sequence[str], named: Iterable[str]) -> list[str]:
    """Return the named calibrations and everything in the request that depends on them, directly or not.

    Names that are not in ``calibrations`` are ignored. The result is in the request's order.
    """
    chosen = set(calibrations)
    rerun: set[str] = set()
    stack = [name for name in named if name in chosen]
    while stack:
        name = stack.pop()
        if name in rerun:
            continue
        rerun.add(name)
        stack.extend(other for other in catalog.dependents(name) if other in chosen)
    return [name for name in calibrations if name in rerun]


@dataclass(frozen=True)
class RerunPlan:
    """The calibrations, and cDST production, that a rejection runs again, with the reason for each.

    :param named: the rejected calibrations of the request, in the order the manager named them.
    :param calibrations: every calibration that runs again, in the request's order.
    :param rejected_dependencies: for each calibration that runs again because it depends on a
        rejected one, those rejected calibrations, in the order they were named.
    :param cdst_production: whether cDST production runs again.
    :param cdst_causes: the rejected raw-phase calibrations that make cDST production run again.
    :param cdst_readers: the cdst-phase calibrations that run again on the new cDSTs.
    """

    named: tuple[str, ...] = ()
    calibrations: tuple[str, ...] = ()
    rejected_dependencies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    cdst_production: bool = False
    cdst_causes: tuple[str, ...] = ()
    cdst_readers: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.calibrations)

    def reopen_comment(self, calibration: str, manager: str, comment: str) -> str:
        """Return the Jira comment that explains why ``calibration`` runs again.

        :raises ValueError: if ``calibration`` does not run again.
        """
        if calibration not in self.calibrations:
            raise ValueError(
                f"calibration {calibration!r} does not run again after this rejection; "
                f"it reruns only {', '.join(self.calibrations) or 'nothing'}"
            )
        if calibration in self.named:
            return f"Rejected at sign-off by {manager}: {comment}\nThe calibration runs again."
        lines = []
        causes = self.rejected_dependencies.get(calibration, ())
        if causes:
            lines.append(
                f"Reopened because {_sentence_subject(causes)} rejected at sign-off by {manager}: {comment}"
            )
            lines.append(
                f"This calibration depends on {'it' if len(causes) == 1 else 'them'} and runs again."
            )
        if calibration in self.cdst_readers:
            cdst_reason = f"cDSTs are produced again because {_sentence_subject(self.cdst_causes)} rejected"
            # The manager's name and comment are given once, on the first line.
            lines.append(
                f"{cdst_reason}." if causes else f"{cdst_reason} at sign-off by {manager}: {comment}"
            )
            lines.append("This calibration reads cDSTs and runs again on the new ones.")
        return "\n".join(lines)


def plan_rerun(catalog: Catalog, calibrations: Sequence[str], named: Iterable[str]) -> RerunPlan:
    """Plan the rerun after a rejection that names ``named`` among the request's ``calibrations``.

    Names that are not calibrations of the request are ignored; an empty plan reruns nothing.
    """
    chosen = list(calibrations)
    rejected = [name for name in dict.fromkeys(named) if name in set(chosen)]
    affected = rerun_set(catalog, chosen, rejected)

    dependencies: dict[str, tuple[str, ...]] = {}
    for name in affected:
        if name in rejected:
            continue
        causes = tuple(cause for cause in rejected if name in rerun_set(catalog, chosen, [cause]))
        dependencies[name] = causes

    raw_rejected = tuple(cause for cause in rejected if catalog[cause].phase == RAW_PHASE)
    readers: tuple[str, ...] = ()
    if raw_rejected:
        readers = tuple(name for name in chosen if catalog[name].phase == CDST_PHASE)
        included = set(affected) | set(readers)
        affected = [name for name in chosen if name in included]
    return RerunPlan(
        named=tuple(rejected),
        calibrations=tuple(affected),
        rejected_dependencies=dependencies,
        cdst_production=bool(raw_rejected),
        cdst_causes=raw_rejected,
        cdst_readers=readers,
    )


def _sentence_subject(names: Sequence[str]) -> str:
    """Return ``"A was"`` or ``"A, B were"``, the subject and verb of a sentence about ``names``."""
    return f"{', '.join(names)} {'was' if len(names) == 1 else 'were'}"
