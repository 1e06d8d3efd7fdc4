"""SQLAlchemy models of the plugin database.

The plugin keeps its own database because Airflow 3 tasks may not use Airflow's metadata database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    """Return the current time in UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of every plugin table."""


class Release(Base):
    """A basf2 release whose prompt calibration settings were imported."""

    __tablename__ = "b2cal_release"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    vocabulary: Mapped[dict[str, Any]] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(255), default="")
    imported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    calibrations: Mapped[list[CalibrationSetting]] = relationship(
        back_populates="release", cascade="all, delete-orphan", order_by="CalibrationSetting.position"
    )


class CalibrationSetting(Base):
    """The settings of one prompt calibration of a release."""

    __tablename__ = "b2cal_calibration_setting"
    __table_args__ = (UniqueConstraint("release_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("b2cal_release.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer, default=0)
    name: Mapped[str] = mapped_column(String(64))
    phase: Mapped[str] = mapped_column(String(8))
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)

    release: Mapped[Release] = relationship(back_populates="calibrations")


class ProcessingRequest(Base):
    """A prompt or reprocessing request for one bucket."""

    __tablename__ = "b2cal_request"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    site: Mapped[str] = mapped_column(String(32))
    release: Mapped[str] = mapped_column(String(64))
    exp_low: Mapped[int] = mapped_column(Integer)
    run_low: Mapped[int] = mapped_column(Integer)
    exp_high: Mapped[int] = mapped_column(Integer)
    run_high: Mapped[int] = mapped_column(Integer)
    calibrations: Mapped[list[str]] = mapped_column(JSON)
    filter_overrides: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    expert_config_overrides: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    staging_tag: Mapped[str] = mapped_column(String(128))
    running_tag: Mapped[str] = mapped_column(String(128))
    requested_by: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(32), default="submitted")
    dag_run_id: Mapped[str | None] = mapped_column(String(250), nullable=True)
    #: The attempt of cDST production whose output the cdst-phase calibrations read. A rejection that
    #: sends a raw-phase calibration back raises it, so cDST production runs again in a new folder.
    cdst_attempt: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    progress: Mapped[list[CalibrationProgress]] = relationship(
        back_populates="request", cascade="all, delete-orphan", order_by="CalibrationProgress.id"
    )


class CalibrationProgress(Base):
    """Where one calibration of a request stands: ticket, job, upload."""

    __tablename__ = "b2cal_calibration_progress"
    __table_args__ = (UniqueConstraint("request_id", "calibration"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("b2cal_request.id", ondelete="CASCADE"))
    calibration: Mapped[str] = mapped_column(String(64))
    phase: Mapped[str] = mapped_column(String(8))
    ticket_key: Mapped[str | None] = mapped_column(String(32), nullable=True)
    ticket_state: Mapped[str | None] = mapped_column(String(32), nullable=True)
    job_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    job_state: Mapped[str] = mapped_column(String(32), default="pending")
    job_detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    upload_state: Mapped[str] = mapped_column(String(32), default="pending")
    upload_detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: The job attempt that runs now; a calibration rerun after a rejected sign-off gets the next one.
    attempt: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    request: Mapped[ProcessingRequest] = relationship(back_populates="progress")


class AuditEntry(Base):
    """One action taken on a request, by a person or by the system."""

    __tablename__ = "b2cal_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    request_uid: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    calibration: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    message: Mapped[str] = mapped_column(Text, default="")


class CalibrationCheck(Base):
    """The latest result of one automatic check of a calibration's uploaded payloads."""

    __tablename__ = "b2cal_calibration_check"
    __table_args__ = (UniqueConstraint("request_id", "calibration", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("b2cal_request.id", ondelete="CASCADE"))
    calibration: Mapped[str] = mapped_column(String(64))
    #: Which check, e.g. ``payloads_present`` (see ``b2cal.validation.CheckName``).
    name: Mapped[str] = mapped_column(String(64))
    #: ``passed``, ``warning`` or ``failed``.
    status: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: The job attempt whose payloads were checked.
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    checked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SignOffRound(Base):
    """One readiness report of a request and the manager's decision on it.

    The report holds the staging tag's fingerprint and the running update's dry run as the manager
    saw them; the running update refuses to apply anything else.
    """

    __tablename__ = "b2cal_signoff"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("b2cal_request.id", ondelete="CASCADE"), index=True)
    dag_run_id: Mapped[str | None] = mapped_column(String(250), nullable=True)
    #: ``blocked``, ``open``, ``approved``, ``rejected``, ``merging``, ``merged`` or ``invalidated``.
    state: Mapped[str] = mapped_column(String(16))
    clean: Mapped[bool] = mapped_column(Boolean, default=False)
    staging_fingerprint: Mapped[str] = mapped_column(String(64))
    report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    report_text: Mapped[str] = mapped_column(Text, default="")
    decision: Mapped[str | None] = mapped_column(String(16), nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
