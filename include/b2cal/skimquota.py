"""Calibration skim quota: per bucket and skim, the runs whose skim files add up to a fixed luminosity.

Every bucket needs the same amount of each calibration skim (2 fb^-1 by default, whatever the
bucket's size), so that skims become a smaller share of the data as the luminosity grows. For one
skim, :func:`choose_skim_quota` looks at the bucket's runs that have the skim and at the inputs of
the catalog's calibrations that read it (its *consumers*):

1. A run that no consumer's run-level filters accept (run type, beam energy, magnet, data quality)
   is never chosen: no calibration would read it.
2. The other runs are ranked by how many consumers accept them. Rank 0 passes every consumer's
   filters, which is the strictest combination the calibrations ask for. Inside a rank, runs are
   taken spread over the bucket (the first run, then the middle, then the quarters, and so on), so
   every part of the bucket, and so every payload segment, gets data.
3. Runs are chosen in that order until their recorded luminosity reaches the quota.
4. A consumer whose accepted runs among the chosen ones stay below the quota gets its own runs
   added in the same order, until it reaches the quota or the bucket has no more. This happens when
   it requires runs that the others do not accept, e.g. off-resonance runs.

Runs without recorded luminosity cannot count towards the quota. When no candidate run of a skim
has any (cosmic runs), the quota does not apply and every accepted run is kept. Every run gets a
reason, so the choice explains itself. Luminosities are in pb^-1 (2 fb^-1 = 2000 pb^-1).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from b2cal.catalog import Catalog
from b2cal.iov import IoV
from b2cal.runs import Run, RunFilter, RunKey

log = logging.getLogger(__name__)

#: Recorded luminosity that each calibration skim of a bucket should reach, in pb^-1 (2 fb^-1).
DEFAULT_QUOTA_PB = 2000.0


@dataclass(frozen=True)
class SkimConsumer:
    """One input of a calibration that reads a skim, with its compiled filter list."""

    calibration: str
    input_name: str
    run_filter: RunFilter

    @property
    def label(self) -> str:
        """``<calibration> / <input name>``."""
        return f"{self.calibration} / {self.input_name}"

    def accepts(self, tags: Mapping[str, Collection[str]]) -> bool:
        """Return whether the run-level filters (all but the data tags) accept a run's tags."""
        return self.run_filter.reject_reason_tags(tags) is None


def skim_consumers(catalog: Catalog) -> dict[str, list[SkimConsumer]]:
    """Return, per data tag, the calibration inputs of ``catalog`` that read that skim."""
    consumers: dict[str, list[SkimConsumer]] = {}
    for settings in catalog.calibrations.values():
        for input_name in settings.input_data_names:
            values = settings.input_data_filters.get(input_name, ())
            run_filter = RunFilter(values, catalog.vocabulary)
            for tag in run_filter.data_tags:
                consumers.setdefault(tag, []).append(SkimConsumer(settings.name, input_name, run_filter))
    return consumers


@dataclass
class QuotaRun:
    """One candidate run of a skim: its luminosity, who accepts it, and whether and why it was chosen."""

    key: RunKey
    luminosity_pb: float
    accepted_by: tuple[str, ...]
    #: 0 for runs every consumer accepts, 1 for runs one consumer fewer accepts, and so on.
    rank: int
    chosen: bool = False
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the run as JSON-ready data."""
        return {
            "exp": self.key[0],
            "run": self.key[1],
            "luminosity_pb": round(self.luminosity_pb, 6),
            "rank": self.rank,
            "accepted_by": list(self.accepted_by),
            "chosen": self.chosen,
            "reason": self.reason,
        }


@dataclass
class SkimQuota:
    """The runs chosen for one skim of one bucket.

    :ivar applied: whether the quota limited the runs; ``False`` when the candidates have no
        recorded luminosity and all accepted runs are kept.
    """

    data_tag: str
    target_pb: float
    consumers: list[str]
    runs: list[QuotaRun] = field(default_factory=list)
    applied: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def chosen(self) -> list[QuotaRun]:
        """The chosen runs, by run."""
        return sorted((run for run in self.runs if run.chosen), key=lambda run: run.key)

    @property
    def chosen_keys(self) -> frozenset[RunKey]:
        """The ``(exp, run)`` keys of the chosen runs."""
        return frozenset(run.key for run in self.runs if run.chosen)

    @property
    def chosen_pb(self) -> float:
        """The recorded luminosity of the chosen runs, in pb^-1."""
        return sum(run.luminosity_pb for run in self.runs if run.chosen)

    @property
    def available_pb(self) -> float:
        """The recorded luminosity of every candidate run, in pb^-1."""
        return sum(run.luminosity_pb for run in self.runs)

    @property
    def reached(self) -> bool:
        """Whether the chosen runs reach the quota."""
        return self.chosen_pb >= self.target_pb

    def explain(self) -> str:
        """Return a one-paragraph account of the choice."""
        chosen = self.chosen
        text = (
            f"{self.data_tag}: {len(chosen)} of {len(self.runs)} runs chosen, {self.chosen_pb:.1f} of "
            f"{self.available_pb:.1f} pb^-1 (quota {self.target_pb:.1f} pb^-1"
            f"{', reached' if self.reached else ', not reached: the bucket has too little'})"
        )
        if not self.applied:
            text = (
                f"{self.data_tag}: all {len(chosen)} accepted runs kept; the runs have no recorded "
                "luminosity, so the quota does not apply"
            )
        ranks = sorted({run.rank for run in chosen})
        if ranks and self.consumers:
            parts = []
            for rank in ranks:
                count = sum(1 for run in chosen if run.rank == rank)
                parts.append(
                    f"{count} accepted by {len(self.consumers) - rank} of {len(self.consumers)} inputs"
                )
            text += "; " + ", ".join(parts)
        if self.notes:
            text += ". " + " ".join(self.notes)
        return text

    def to_dict(self, *, with_runs: bool = True) -> dict[str, Any]:
        """Return the quota as JSON-ready data."""
        data: dict[str, Any] = {
            "data_tag": self.data_tag,
            "target_pb": self.target_pb,
            "chosen_pb": round(self.chosen_pb, 6),
            "available_pb": round(self.available_pb, 6),
            "chosen_runs": len(self.chosen),
            "candidate_runs": len(self.runs),
            "reached": self.reached,
            "applied": self.applied,
            "consumers": list(self.consumers),
            "notes": list(self.notes),
            "explanation": self.explain(),
        }
        if with_runs:
            data["runs"] = [run.to_dict() for run in sorted(self.runs, key=lambda run: run.key)]
        return data


def spread_order(count: int) -> list[int]:
    """Return the indices ``0..count-1`` in an order that spreads them evenly: 0, 1/2, 1/4, 3/4, ...

    The order is the bit-reversal permutation of the next power of two, without indices beyond
    ``count``, so every prefix covers the range about evenly.
    """
    if count <= 0:
        return []
    bits = max(1, (count - 1).bit_length())
    order = []
    for index in range(1 << bits):
        reversed_index = int(format(index, f"0{bits}b")[::-1], 2)
        if reversed_index < count:
            order.append(reversed_index)
    return order


def _ordered(runs: Sequence[QuotaRun]) -> list[QuotaRun]:
    """Order runs by rank, and inside a rank spread over the bucket."""
    ordered: list[QuotaRun] = []
    for rank in sorted({run.rank for run in runs}):
        same = sorted((run for run in runs if run.rank == rank), key=lambda run: run.key)
        ordered.extend(same[index] for index in spread_order(len(same)))
    return ordered


def choose_skim_quota(
    data_tag: str,
    runs: Iterable[Run],
    consumers: Sequence[SkimConsumer],
    *,
    target_pb: float = DEFAULT_QUOTA_PB,
    available: Collection[RunKey] | None = None,
) -> SkimQuota:
    """Choose the runs of one skim whose recorded luminosity reaches ``target_pb``.

    :param runs: the bucket's runs.
    :param consumers: the calibration inputs that read the skim (see :func:`skim_consumers`); with
        none, every run with the skim is a candidate of rank 0.
    :param available: the runs whose skim files exist, e.g. listed at the source site; the runs that
        list the skim in the run registry when ``None``.
    :raises ValueError: for a target that is not a positive number.
    """
    if isinstance(target_pb, bool) or not target_pb > 0:
        raise ValueError(f"skim quota {target_pb!r} pb^-1 for {data_tag} must be a positive luminosity")
    quota = SkimQuota(data_tag, float(target_pb), [consumer.label for consumer in consumers])
    rejected = 0
    for run in sorted(runs, key=lambda item: item.key):
        has_skim = run.key in available if available is not None else data_tag in run.skims
        if not has_skim:
            continue
        tags = run.tags()
        accepted = tuple(consumer.label for consumer in consumers if consumer.accepts(tags))
        if consumers and not accepted:
            rejected += 1
            continue
        quota.runs.append(
            QuotaRun(run.key, run.recorded_luminosity, accepted, rank=len(consumers) - len(accepted))
        )
    if rejected:
        quota.notes.append(
            f"{rejected} runs with the skim were left out because no input reading it accepts them."
        )

    if quota.runs and quota.available_pb <= 0:
        quota.applied = False
        for item in quota.runs:
            item.chosen = True
            item.reason = "kept: the skim's runs have no recorded luminosity, so the quota does not apply"
        return quota

    _fill_quota(quota)
    _cover_consumers(quota)
    for item in quota.runs:
        if not item.chosen and not item.reason:
            item.reason = (
                "no recorded luminosity" if item.luminosity_pb <= 0 else "not needed: the quota was reached"
            )
    log.debug("Skim quota %s", quota.explain())
    return quota


def _fill_quota(quota: SkimQuota) -> None:
    total = 0.0
    for item in _ordered(quota.runs):
        if total >= quota.target_pb:
            break
        if item.luminosity_pb <= 0:
            continue
        item.chosen = True
        item.reason = (
            f"rank {item.rank}: accepted by {len(item.accepted_by)} of {len(quota.consumers)} inputs"
            if quota.consumers
            else "has the skim"
        )
        total += item.luminosity_pb


def _cover_consumers(quota: SkimQuota) -> None:
    for label in quota.consumers:
        accepted = [item for item in quota.runs if label in item.accepted_by]
        total = sum(item.luminosity_pb for item in accepted if item.chosen)
        added = 0
        for item in _ordered(accepted):
            if total >= quota.target_pb:
                break
            if item.chosen or item.luminosity_pb <= 0:
                continue
            item.chosen = True
            item.reason = f"added so that {label} reaches the quota"
            total += item.luminosity_pb
            added += 1
        if added:
            quota.notes.append(f"{added} runs were added for {label}, which the first choice left short.")


@dataclass
class BucketQuota:
    """The skim quotas of one bucket, chosen with one release's calibrations."""

    bucket: IoV
    release: str
    quotas: dict[str, SkimQuota] = field(default_factory=dict)

    def runs_by_tag(self) -> dict[str, frozenset[RunKey]]:
        """Return the chosen runs per data tag, as :func:`b2cal.runs.select_inputs` takes them."""
        return {tag: quota.chosen_keys for tag, quota in self.quotas.items()}

    def explain(self) -> str:
        """Return one line per skim."""
        return "\n".join(quota.explain() for quota in self.quotas.values())


def choose_bucket_quota(
    catalog: Catalog,
    runs: Iterable[Run],
    bucket: IoV,
    *,
    target_pb: float = DEFAULT_QUOTA_PB,
    targets: Mapping[str, float] | None = None,
    data_tags: Iterable[str] | None = None,
    available: Mapping[str, Collection[RunKey]] | None = None,
) -> BucketQuota:
    """Choose the quota of every calibration skim of a bucket.

    :param data_tags: the skims to choose for; every skim the catalog's calibrations read by default.
    :param targets: a quota per data tag that replaces ``target_pb`` for that skim.
    :param available: per data tag, the runs whose skim files exist; the run registry's skim lists
        for tags it does not name.
    """
    consumers = skim_consumers(catalog)
    bucket_runs = [run for run in runs if bucket.contains(run.experiment, run.run)]
    tags = list(data_tags) if data_tags is not None else sorted(consumers)
    result = BucketQuota(bucket=bucket, release=catalog.release)
    for tag in tags:
        result.quotas[tag] = choose_skim_quota(
            tag,
            bucket_runs,
            consumers.get(tag, []),
            target_pb=(targets or {}).get(tag, target_pb),
            available=(available or {}).get(tag),
        )
    return result
