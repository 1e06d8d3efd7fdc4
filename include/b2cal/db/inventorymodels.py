"""SQLAlchemy models of the site inventory: releases per site, discovery errors, skim quotas, storage.

They share :class:`b2cal.db.models.Base`, so the plugin's migrations create them with the other
plugin tables.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from b2cal.db.models import Base, utcnow

#: The release is installed at the site, its check passed and its catalog is imported.
AVAILABLE = "available"
#: The release is installed at the site, but its check, its settings or their import failed.
FAILED = "failed"
#: The site no longer lists the release. The row and the catalog are kept.
UNAVAILABLE = "unavailable"
SITE_RELEASE_STATES = (AVAILABLE, FAILED, UNAVAILABLE)


class SiteRelease(Base):
    """One basf2 release as release discovery last found it at one site.

    A request may use a release only at a site where its state is ``available``. A release that
    disappears from a site becomes ``unavailable`` and keeps its row, so the history stays.
    """

    __tablename__ = "b2cal_site_release"
    __table_args__ = (UniqueConstraint("site", "release"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(String(32), index=True)
    release: Mapped[str] = mapped_column(String(64))
    #: ``available``, ``failed`` or ``unavailable``.
    state: Mapped[str] = mapped_column(String(16))
    #: The error of the last failed check, settings read or import; empty otherwise.
    error: Mapped[str] = mapped_column(Text, default="")
    #: How the release got here: ``discovery`` or a manual import such as ``b2cal import-catalog``.
    source: Mapped[str] = mapped_column(String(255), default="discovery")
    #: How many prompt calibrations the imported catalog has; 0 when the release failed.
    calibrations: Mapped[int] = mapped_column(Integer, default=0)
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    checked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    unavailable_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: ``pending``, ``sent`` or ``skipped``: the state of the manager's ticket about the release.
    notice_state: Mapped[str] = mapped_column(String(16), default="skipped")
    #: The key of the Jira ticket that announced the release, once sent.
    notice_key: Mapped[str | None] = mapped_column(String(32), nullable=True)


class DiscoveryErrorRecord(Base):
    """One failure of release discovery at a site: the listing, a release's check, settings or import."""

    __tablename__ = "b2cal_discovery_error"
    __table_args__ = (Index("ix_b2cal_discovery_error_site_release", "site", "release"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(String(32))
    #: ``None`` when the listing of the site's releases failed.
    release: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: ``list``, ``check``, ``show``, ``import`` or ``compare``.
    stage: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    #: The command output that shows the failure, shortened.
    output: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SkimQuotaRecord(Base):
    """The runs chosen for one calibration skim of one bucket, and why.

    ``runs`` lists every candidate run: ``{"exp", "run", "luminosity_pb", "rank", "chosen",
    "reason"}``. ``summary`` is :meth:`b2cal.skimquota.SkimQuota.to_dict` without the runs.
    """

    __tablename__ = "b2cal_skim_quota"
    __table_args__ = (UniqueConstraint("exp_low", "run_low", "exp_high", "run_high", "data_tag"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    exp_low: Mapped[int] = mapped_column(Integer)
    run_low: Mapped[int] = mapped_column(Integer)
    exp_high: Mapped[int] = mapped_column(Integer)
    run_high: Mapped[int] = mapped_column(Integer)
    data_tag: Mapped[str] = mapped_column(String(64))
    #: The release whose calibrations' filters ranked the runs.
    release: Mapped[str] = mapped_column(String(64))
    #: Recorded luminosity the skim should reach, in pb^-1.
    target_pb: Mapped[float] = mapped_column(Float)
    #: Recorded luminosity of the chosen runs, in pb^-1.
    chosen_pb: Mapped[float] = mapped_column(Float)
    chosen_runs: Mapped[int] = mapped_column(Integer)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    runs: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    explanation: Mapped[str] = mapped_column(Text, default="")
    chosen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class StorageUsage(Base):
    """Bytes that one kind of data of one bucket takes at one site, as last measured.

    ``kind`` is ``skim``, ``cdst`` or ``payload``; ``data_tag`` is the skim for skims and cDSTs and
    empty for payloads.
    """

    __tablename__ = "b2cal_storage_usage"
    __table_args__ = (
        UniqueConstraint("exp_low", "run_low", "exp_high", "run_high", "site", "kind", "data_tag"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    exp_low: Mapped[int] = mapped_column(Integer)
    run_low: Mapped[int] = mapped_column(Integer)
    exp_high: Mapped[int] = mapped_column(Integer)
    run_high: Mapped[int] = mapped_column(Integer)
    site: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    data_tag: Mapped[str] = mapped_column(String(64), default="")
    files: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    #: Files whose size the source did not report; their bytes are missing from ``bytes``.
    unsized_files: Mapped[int] = mapped_column(Integer, default=0)
    #: Where the numbers come from, e.g. ``/data/skims/{tag}/e{exp:04d}/r{run:05d} (ssh)``.
    source: Mapped[str] = mapped_column(String(255), default="")
    measured_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
