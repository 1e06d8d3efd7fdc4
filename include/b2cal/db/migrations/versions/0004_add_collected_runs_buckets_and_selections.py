"""add collected runs, their change log, buckets and input selections

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "b2cal_collected_run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment", sa.Integer(), nullable=False),
        sa.Column("run", sa.Integer(), nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stop_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("run_type", sa.String(length=32), nullable=False),
        sa.Column("detectors", sa.JSON(), nullable=False),
        sa.Column("solenoid_field", sa.String(length=8), nullable=False),
        sa.Column("beam_energy", sa.String(length=16), nullable=False),
        sa.Column("quality", sa.JSON(), nullable=False),
        sa.Column("overall_quality", sa.String(length=16), nullable=False),
        sa.Column("recorded_luminosity", sa.Float(), nullable=False),
        sa.Column("good", sa.Boolean(), nullable=False),
        sa.Column("good_or_recoverable", sa.Boolean(), nullable=False),
        sa.Column("long_run", sa.Boolean(), nullable=False),
        sa.Column("bad_for_alignment", sa.Boolean(), nullable=False),
        sa.Column("magnet_on", sa.Boolean(), nullable=False),
        sa.Column("quality_tags", sa.JSON(), nullable=False),
        sa.Column("record", sa.JSON(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("missing_since", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("experiment", "run"),
    )
    op.create_table(
        "b2cal_run_change",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment", sa.Integer(), nullable=False),
        sa.Column("run", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("changes", sa.JSON(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_b2cal_run_change_run", "b2cal_run_change", ["experiment", "run"], unique=False)
    op.create_table(
        "b2cal_bucket",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("exp_low", sa.Integer(), nullable=False),
        sa.Column("run_low", sa.Integer(), nullable=False),
        sa.Column("exp_high", sa.Integer(), nullable=False),
        sa.Column("run_high", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("target_luminosity_pb", sa.Float(), nullable=False),
        sa.Column("notes", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "b2cal_input_selection",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_uid", sa.String(length=64), nullable=False),
        sa.Column("calibration", sa.String(length=64), nullable=False),
        sa.Column("input_name", sa.String(length=64), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("runs", sa.JSON(), nullable=False),
        sa.Column("explanation", sa.Text(), nullable=False),
        sa.Column("selected_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_uid", "calibration", "input_name"),
    )
    op.create_index(
        "ix_b2cal_input_selection_request_uid", "b2cal_input_selection", ["request_uid"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_b2cal_input_selection_request_uid", table_name="b2cal_input_selection")
    op.drop_table("b2cal_input_selection")
    op.drop_table("b2cal_bucket")
    op.drop_index("ix_b2cal_run_change_run", table_name="b2cal_run_change")
    op.drop_table("b2cal_run_change")
    op.drop_table("b2cal_collected_run")
