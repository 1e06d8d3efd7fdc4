"""Reads and writes of the site inventory: releases per site, discovery errors, skim quotas, storage.

:func:`apply_discovery` stores one discovery run at a site: it imports the catalogs of the releases
whose check passed, records the failed ones with their error, and marks the releases that the site no
longer lists as unavailable. A release is never deleted, and its catalog stays for the requests that
used it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, defer

from b2cal.buckets import list_buckets
from b2cal.catalog import Catalog, load_packaged_release
from b2cal.db import store
from b2cal.db.inventorymodels import (
    AVAILABLE,
    FAILED,
    UNAVAILABLE,
    DiscoveryErrorRecord,
    SiteRelease,
    SkimQuotaRecord,
    StorageUsage,
)
from b2cal.db.models import ProcessingRequest, Release, utcnow
from b2cal.iov import IoV
from b2cal.releases import (
    COMPARE_STAGE,
    DiscoveryPlan,
    ReleaseProbe,
    calibrations_differ,
    catalog_from_probe,
    describe_release_diff,
    previous_release,
    release_sort_key,
    sort_releases,
)
from b2cal.reports import CatalogDiff, diff_catalogs
from b2cal.runs import RunKey
from b2cal.skimquota import BucketQuota
from b2cal.storage import KINDS, StorageReport

log = logging.getLogger(__name__)

NOTICE_PENDING = "pending"
NOTICE_SENT = "sent"
NOTICE_SKIPPED = "skipped"
#: Characters of command output kept with a discovery error.
OUTPUT_LIMIT = 4000


# ---------------------------------------------------------------------------------------------------------
# Reading


def site_release_states(session: Session, site: str) -> dict[str, str]:
    """Return the state of every release stored for ``site``."""
    rows = session.execute(select(SiteRelease.release, SiteRelease.state).where(SiteRelease.site == site))
    return {release: state for release, state in rows}


def inventory_sites(session: Session) -> list[str]:
    """Return the sites that have a stored release or a discovery error, by name."""
    releases = session.scalars(select(SiteRelease.site).distinct())
    errors = session.scalars(select(DiscoveryErrorRecord.site).distinct())
    return sorted({*releases, *errors})


def canonical_site(session: Session, name: str, also_known: Collection[str] = ()) -> str:
    """Return the site whose name matches ``name`` in any case, e.g. ``KEK`` for ``kek``.

    The site inventory and the requests store a site as release discovery named it, while people
    type it in any case. The candidates are the inventory's sites and ``also_known``. A name that
    matches none of them, or more than one, is returned unchanged.
    """
    known = {*inventory_sites(session), *also_known}
    if name in known:
        return name
    matches = [site for site in known if site.casefold() == name.casefold()]
    return matches[0] if len(matches) == 1 else name


def available_releases(session: Session, site: str) -> list[str]:
    """Return the releases that requests at ``site`` may use, oldest first."""
    names = session.scalars(
        select(SiteRelease.release).where(SiteRelease.site == site, SiteRelease.state == AVAILABLE)
    )
    return sort_releases(names)


def release_sites(session: Session, release: str) -> dict[str, str]:
    """Return the state of ``release`` at every site that has a row for it."""
    rows = session.execute(select(SiteRelease.site, SiteRelease.state).where(SiteRelease.release == release))
    return {site: state for site, state in rows}


def list_site_releases(session: Session, site: str | None = None) -> list[SiteRelease]:
    """Return the stored releases of one site or of all sites, by site and then by version."""
    query = select(SiteRelease)
    if site is not None:
        query = query.where(SiteRelease.site == site)
    rows = list(session.scalars(query))
    return sorted(rows, key=lambda row: (row.site, release_sort_key(row.release)))


def discovery_errors(
    session: Session, *, site: str | None = None, release: str | None = None, limit: int = 50
) -> list[DiscoveryErrorRecord]:
    """Return the latest discovery errors, newest first."""
    query = (
        select(DiscoveryErrorRecord)
        .order_by(DiscoveryErrorRecord.at.desc(), DiscoveryErrorRecord.id.desc())
        .limit(limit)
    )
    if site is not None:
        query = query.where(DiscoveryErrorRecord.site == site)
    if release is not None:
        query = query.where(DiscoveryErrorRecord.release == release)
    return list(session.scalars(query))


def reference_vocabulary(session: Session) -> dict[str, list[str]]:
    """Return the filter vocabulary that discovered settings are checked against.

    ``b2caf-prompt-show`` prints the settings but not the vocabulary, so the vocabulary of the newest
    imported release is used, or that of the packaged release when none is imported. A new release
    that uses a filter value outside it fails its import with the value named.
    """
    names = sort_releases(session.scalars(select(Release.name)))
    vocabulary: Mapping[str, Iterable[str]] = {}
    if names:
        row = session.scalar(select(Release).where(Release.name == names[-1]))
        vocabulary = row.vocabulary if row is not None else {}
    if not vocabulary:
        vocabulary = load_packaged_release().vocabulary
    return {category: list(values) for category, values in vocabulary.items()}


# ---------------------------------------------------------------------------------------------------------
# Writing


def record_error(
    session: Session, site: str, release: str | None, stage: str, message: str, output: str = ""
) -> DiscoveryErrorRecord:
    """Store one discovery error."""
    row = DiscoveryErrorRecord(
        site=site, release=release, stage=stage, message=message, output=output[-OUTPUT_LIMIT:]
    )
    session.add(row)
    return row


def _row(session: Session, site: str, release: str) -> SiteRelease | None:
    return session.scalar(select(SiteRelease).where(SiteRelease.site == site, SiteRelease.release == release))


def register_release(
    session: Session, site: str, release: str, *, source: str, actor: str = "system"
) -> SiteRelease:
    """Make an imported release available at ``site`` by hand.

    This is for sites without release discovery and for development stacks; the next discovery at
    the site confirms or corrects the state.

    :raises store.NotFoundError: when the release's catalog is not imported.
    """
    catalog = store.load_catalog(session, release)
    now = utcnow()
    row = _row(session, site, release)
    if row is None:
        row = SiteRelease(site=site, release=release, first_seen_at=now, notice_state=NOTICE_SKIPPED)
        session.add(row)
    row.state = AVAILABLE
    row.error = ""
    row.source = source
    row.calibrations = len(catalog)
    row.last_seen_at = now
    row.unavailable_since = None
    store.audit(session, actor, "release_available", message=f"{release} at {site}", source=source)
    return row


@dataclass
class DiscoveryOutcome:
    """The changes of one discovery run at a site.

    :ivar available: releases that became available in this run.
    :ivar failed: release -> error, for the releases whose check, settings or import failed.
    :ivar gone: releases marked unavailable because the site no longer lists them.
    """

    site: str
    listed: list[str]
    available: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    gone: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return the outcome as JSON-ready data."""
        return {
            "site": self.site,
            "listed": list(self.listed),
            "available": list(self.available),
            "failed": dict(self.failed),
            "gone": list(self.gone),
            "unchanged": list(self.unchanged),
        }


def apply_discovery(
    session: Session,
    plan: DiscoveryPlan,
    probes: Sequence[ReleaseProbe],
    *,
    vocabulary: Mapping[str, Iterable[str]] | None = None,
    notify: bool = True,
    now: datetime | None = None,
) -> DiscoveryOutcome:
    """Store the result of one discovery run at ``plan.site``.

    A probe that passed imports its catalog, unless the release is imported already with the same
    calibrations. An imported catalog that differs fails the release at this site (stage
    ``compare``), because a request there would run settings other than the stored ones. Every
    failure is also kept as a :class:`~b2cal.db.inventorymodels.DiscoveryErrorRecord`.

    :param vocabulary: the filter vocabulary of the settings; :func:`reference_vocabulary` by default.
    :param notify: whether the manager is to be told about releases that become available; ignored
        on a site's first inventory, which only records what is there.
    """
    now = now or utcnow()
    site = plan.site
    vocabulary = vocabulary if vocabulary is not None else reference_vocabulary(session)
    outcome = DiscoveryOutcome(site=site, listed=list(plan.listed), unchanged=list(plan.unchanged))
    send_notices = notify and not plan.first_inventory

    for name in plan.unchanged:
        row = _row(session, site, name)
        if row is not None:
            row.last_seen_at = now
    for probe in probes:
        row = _row(session, site, probe.release)
        if row is None:
            row = SiteRelease(site=site, release=probe.release, first_seen_at=now, state=FAILED)
            session.add(row)
        row.last_seen_at = now
        row.checked_at = now
        row.unavailable_since = None
        result = _import_probe(session, site, probe, vocabulary)
        if isinstance(result, ReleaseProbe):
            row.state = FAILED
            row.error = result.error
            row.calibrations = 0
            outcome.failed[probe.release] = result.error
            record_error(session, site, probe.release, result.stage or "check", result.error, result.output)
            continue
        row.state = AVAILABLE
        row.error = ""
        row.source = "discovery"
        row.calibrations = len(result)
        if row.notice_state != NOTICE_SENT:
            row.notice_state = NOTICE_PENDING if send_notices else NOTICE_SKIPPED
        outcome.available.append(probe.release)
    for name in plan.gone:
        row = _row(session, site, name)
        if row is None or row.state == UNAVAILABLE:
            continue
        row.state = UNAVAILABLE
        row.unavailable_since = now
        outcome.gone.append(name)

    store.audit(
        session,
        "system",
        "release_discovery",
        message=(
            f"{site}: {len(plan.listed)} releases listed, {len(outcome.available)} became available, "
            f"{len(outcome.failed)} failed, {len(outcome.gone)} gone"
        ),
        **outcome.to_dict(),
    )
    return outcome


def _import_probe(
    session: Session, site: str, probe: ReleaseProbe, vocabulary: Mapping[str, Iterable[str]]
) -> Catalog | ReleaseProbe:
    """Import a passed probe's catalog and return it; return a failed probe for any failure."""
    if not probe.ok:
        return probe
    built = catalog_from_probe(probe, vocabulary)
    if isinstance(built, ReleaseProbe):
        return built
    exists = session.scalar(select(Release.id).where(Release.name == probe.release)) is not None
    if not exists:
        store.import_catalog(session, built, source=f"discovery at {site}")
        return built
    stored = store.load_catalog(session, probe.release)
    diff = diff_catalogs(stored, built)
    if calibrations_differ(diff):
        changes = describe_release_diff(diff)
        message = (
            f"the settings of {probe.release} at {site} differ from the imported catalog of that release: "
            + "; ".join(changes[:10])
            + ("; ..." if len(changes) > 10 else "")
        )
        return ReleaseProbe(probe.release, stage=COMPARE_STAGE, error=message)
    return stored


# ---------------------------------------------------------------------------------------------------------
# Notices and diffs


def pending_notices(session: Session, site: str | None = None) -> list[SiteRelease]:
    """Return the available releases whose notice to the manager is still to be sent."""
    query = select(SiteRelease).where(
        SiteRelease.state == AVAILABLE, SiteRelease.notice_state == NOTICE_PENDING
    )
    if site is not None:
        query = query.where(SiteRelease.site == site)
    return sorted(session.scalars(query), key=lambda row: (row.site, release_sort_key(row.release)))


def mark_notice_sent(session: Session, site: str, release: str, key: str) -> None:
    """Record that the manager's ticket ``key`` announced ``release`` at ``site``."""
    row = _row(session, site, release)
    if row is None:
        raise store.NotFoundError(f"release {release!r} has no inventory row at site {site!r}")
    row.notice_state = NOTICE_SENT
    row.notice_key = key
    store.audit(session, "system", "release_notice", message=f"{release} at {site}: {key}", ticket=key)


def release_diff(session: Session, old: str, new: str) -> CatalogDiff:
    """Return what changed between two imported releases.

    :raises store.NotFoundError: when either release is not imported.
    """
    return diff_catalogs(store.load_catalog(session, old), store.load_catalog(session, new))


def diff_to_previous(session: Session, release: str) -> CatalogDiff | None:
    """Return the diff from the imported release before ``release`` (see :func:`previous_release`)."""
    base = previous_release(release, session.scalars(select(Release.name)))
    if base is None:
        return None
    return release_diff(session, base, release)


# ---------------------------------------------------------------------------------------------------------
# Skim quotas


def _bucket_filter(
    model: type[SkimQuotaRecord] | type[StorageUsage], bucket: IoV
) -> list[ColumnElement[bool]]:
    """Return the conditions that select the rows of ``model`` that belong to exactly this bucket."""
    return [
        model.exp_low == bucket.exp_low,
        model.run_low == bucket.run_low,
        model.exp_high == bucket.exp_high,
        model.run_high == bucket.run_high,
    ]


def save_bucket_quota(session: Session, quota: BucketQuota) -> list[SkimQuotaRecord]:
    """Store the skim quotas of a bucket, replacing the ones of the same skims chosen before."""
    rows = []
    for tag, skim in quota.quotas.items():
        row = session.scalar(
            select(SkimQuotaRecord).where(
                *_bucket_filter(SkimQuotaRecord, quota.bucket), SkimQuotaRecord.data_tag == tag
            )
        )
        if row is None:
            row = SkimQuotaRecord(
                exp_low=quota.bucket.exp_low,
                run_low=quota.bucket.run_low,
                exp_high=quota.bucket.exp_high,
                run_high=quota.bucket.run_high,
                data_tag=tag,
            )
            session.add(row)
        data = skim.to_dict()
        row.release = quota.release
        row.target_pb = skim.target_pb
        row.chosen_pb = skim.chosen_pb
        row.chosen_runs = len(skim.chosen)
        row.runs = data.pop("runs")
        row.summary = data
        row.explanation = skim.explain()
        row.chosen_at = utcnow()
        rows.append(row)
    store.audit(
        session,
        "system",
        "skim_quota",
        message=f"bucket {quota.bucket}: {len(quota.quotas)} skims with {quota.release}",
        chosen={tag: len(skim.chosen) for tag, skim in quota.quotas.items()},
    )
    return rows


def bucket_quotas(session: Session, bucket: IoV, *, with_runs: bool = True) -> list[SkimQuotaRecord]:
    """Return the stored skim quotas of a bucket, by data tag.

    :param with_runs: whether to load every candidate run; pages that show only the totals leave
        the runs column unread, because it holds one entry per run of the bucket and skim.
    """
    query = (
        select(SkimQuotaRecord)
        .where(*_bucket_filter(SkimQuotaRecord, bucket))
        .order_by(SkimQuotaRecord.data_tag)
    )
    if not with_runs:
        query = query.options(defer(SkimQuotaRecord.runs, raiseload=True))
    return list(session.scalars(query))


def bucket_skim_runs(session: Session, bucket: IoV) -> dict[str, frozenset[RunKey]]:
    """Return the chosen runs per data tag of a bucket's stored quota, for ``select_inputs(skim_runs=...)``.

    A bucket without a stored quota gives an empty mapping, which limits no skim.
    """
    return {
        row.data_tag: frozenset((int(item["exp"]), int(item["run"])) for item in row.runs if item["chosen"])
        for row in bucket_quotas(session, bucket)
    }


def quota_runs_to_replicate(session: Session) -> dict[str, frozenset[RunKey]]:
    """Return the chosen runs per data tag over every open bucket: the skims to replicate to the sites."""
    chosen: dict[str, set[RunKey]] = {}
    for summary in list_buckets(session, state="open"):
        for tag, keys in bucket_skim_runs(session, summary.iov).items():
            chosen.setdefault(tag, set()).update(keys)
    return {tag: frozenset(keys) for tag, keys in chosen.items()}


# ---------------------------------------------------------------------------------------------------------
# Storage accounting


def save_storage_report(session: Session, report: StorageReport) -> list[StorageUsage]:
    """Store the lines of a storage report, replacing the previous measurement of the same lines."""
    rows = []
    now = utcnow()
    for line in report.lines:
        row = session.scalar(
            select(StorageUsage).where(
                *_bucket_filter(StorageUsage, report.bucket),
                StorageUsage.site == report.site,
                StorageUsage.kind == line.kind,
                StorageUsage.data_tag == line.data_tag,
            )
        )
        if row is None:
            row = StorageUsage(
                exp_low=report.bucket.exp_low,
                run_low=report.bucket.run_low,
                exp_high=report.bucket.exp_high,
                run_high=report.bucket.run_high,
                site=report.site,
                kind=line.kind,
                data_tag=line.data_tag,
            )
            session.add(row)
        row.files = line.files
        row.bytes = line.bytes
        row.unsized_files = line.unsized_files
        row.source = line.source[:255]
        row.measured_at = now
        rows.append(row)
    return rows


def storage_usage(session: Session, bucket: IoV) -> dict[str, dict[str, int]]:
    """Return the stored bytes of a bucket per site and kind.

    The result looks like ``{"BNL": {"skim": 9.8e12, "cdst": 1.3e13, "payload": 3.5e11}}``.
    """
    totals: dict[str, dict[str, int]] = {}
    for row in session.scalars(select(StorageUsage).where(*_bucket_filter(StorageUsage, bucket))):
        site = totals.setdefault(row.site, {kind: 0 for kind in KINDS})
        site[row.kind] = site.get(row.kind, 0) + row.bytes
    return totals


def storage_lines(session: Session, bucket: IoV, site: str | None = None) -> list[StorageUsage]:
    """Return the stored measurement lines of a bucket, by site, kind and data tag."""
    query = select(StorageUsage).where(*_bucket_filter(StorageUsage, bucket))
    if site is not None:
        query = query.where(StorageUsage.site == site)
    rows = session.scalars(query.order_by(StorageUsage.site, StorageUsage.kind, StorageUsage.data_tag))
    return list(rows)


def bucket_staging_tags(session: Session, bucket: IoV, site: str) -> list[str]:
    """Return the staging tags of the requests for exactly this bucket at ``site``."""
    rows = session.scalars(
        select(ProcessingRequest.staging_tag)
        .where(
            ProcessingRequest.exp_low == bucket.exp_low,
            ProcessingRequest.run_low == bucket.run_low,
            ProcessingRequest.exp_high == bucket.exp_high,
            ProcessingRequest.run_high == bucket.run_high,
            ProcessingRequest.site == site,
        )
        .order_by(ProcessingRequest.id)
    )
    return list(dict.fromkeys(rows))
