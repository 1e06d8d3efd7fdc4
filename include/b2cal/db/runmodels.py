"""SQLAlchemy models of the collected runs, their change log, the buckets and the input selections.

They share :class:`b2cal.db.models.Base`, so the plugin's migrations create them with the other
plugin tables.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from b2cal.db.models import Base, utcnow


class CollectedRun(Base):
    """One run as the run registry last described it, with the flags the input data filters use.

    ``record`` is the registry's whole record. The flags are computed from it by
    :func:`b2cal.runsync.run_columns`. ``missing_since`` is set when the registry stopped returning
    the run; such a run is kept, but left out of buckets and input selection.
    """

    __tablename__ = "b2cal_collected_run"
    __table_args__ = (UniqueConstraint("experiment", "run"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment: Mapped[int] = mapped_column(Integer)
    run: Mapped[int] = mapped_column(Integer)
    start_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    stop_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    run_type: Mapped[str] = mapped_column(String(32))
    detectors: Mapped[list[str]] = mapped_column(JSON, default=list)
    solenoid_field: Mapped[str] = mapped_column(String(8), default="")
    beam_energy: Mapped[str] = mapped_column(String(16), default="")
    quality: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    overall_quality: Mapped[str] = mapped_column(String(16), default="")
    #: Recorded luminosity in pb^-1.
    recorded_luminosity: Mapped[float] = mapped_column(Float, default=0.0)
    good: Mapped[bool] = mapped_column(Boolean, default=False)
    good_or_recoverable: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The run lasted at least 30 minutes.
    long_run: Mapped[bool] = mapped_column(Boolean, default=False)
    bad_for_alignment: Mapped[bool] = mapped_column(Boolean, default=False)
    magnet_on: Mapped[bool] = mapped_column(Boolean, default=True)
    #: Every ``Data Quality Tag`` filter value the run matches.
    quality_tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    fetched_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    missing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class RunChange(Base):
    """One change of a collected run: new, changed upstream, missing upstream, or back again.

    ``changes`` maps each changed field of the registry record to ``[old, new]``.
    """

    __tablename__ = "b2cal_run_change"
    __table_args__ = (Index("ix_b2cal_run_change_run", "experiment", "run"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment: Mapped[int] = mapped_column(Integer)
    run: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    changes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class BucketRecord(Base):
    """A bucket: a run range calibrated together, ``open`` until its calibration is ``closed``."""

    __tablename__ = "b2cal_bucket"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    exp_low: Mapped[int] = mapped_column(Integer)
    run_low: Mapped[int] = mapped_column(Integer)
    exp_high: Mapped[int] = mapped_column(Integer)
    run_high: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="open")
    #: The luminosity the bucket was cut at, in pb^-1.
    target_luminosity_pb: Mapped[float] = mapped_column(Float)
    notes: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_by: Mapped[str] = mapped_column(String(128), default="system")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class InputSelectionRecord(Base):
    """The input selection of one input name of a calibration in a request, with its explanation.

    ``summary`` is :meth:`b2cal.runs.InputSelection.to_dict`. ``runs`` lists every run of the
    bucket with what happened to it: ``{"exp", "run", "files"}`` when kept, ``{"exp", "run",
    "dropped_by"}`` when dropped.
    """

    __tablename__ = "b2cal_input_selection"
    __table_args__ = (UniqueConstraint("request_uid", "calibration", "input_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_uid: Mapped[str] = mapped_column(String(64), index=True)
    calibration: Mapped[str] = mapped_column(String(64))
    input_name: Mapped[str] = mapped_column(String(64))
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    runs: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    explanation: Mapped[str] = mapped_column(Text, default="")
    selected_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
