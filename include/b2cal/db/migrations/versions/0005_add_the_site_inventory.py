"""add the site inventory: releases per site, discovery errors, skim quotas and storage usage

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "b2cal_site_release",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("site", sa.String(length=32), nullable=False),
        sa.Column("release", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.Column("calibrations", sa.Integer(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("unavailable_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("notice_state", sa.String(length=16), nullable=False),
        sa.Column("notice_key", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("site", "release"),
    )
    op.create_index("ix_b2cal_site_release_site", "b2cal_site_release", ["site"], unique=False)
    op.create_table(
        "b2cal_discovery_error",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("site", sa.String(length=32), nullable=False),
        sa.Column("release", sa.String(length=64), nullable=True),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("output", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_b2cal_discovery_error_site_release", "b2cal_discovery_error", ["site", "release"], unique=False
    )
    op.create_table(
        "b2cal_skim_quota",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("exp_low", sa.Integer(), nullable=False),
        sa.Column("run_low", sa.Integer(), nullable=False),
        sa.Column("exp_high", sa.Integer(), nullable=False),
        sa.Column("run_high", sa.Integer(), nullable=False),
        sa.Column("data_tag", sa.String(length=64), nullable=False),
        sa.Column("release", sa.String(length=64), nullable=False),
        sa.Column("target_pb", sa.Float(), nullable=False),
        sa.Column("chosen_pb", sa.Float(), nullable=False),
        sa.Column("chosen_runs", sa.Integer(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("runs", sa.JSON(), nullable=False),
        sa.Column("explanation", sa.Text(), nullable=False),
        sa.Column("chosen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("exp_low", "run_low", "exp_high", "run_high", "data_tag"),
    )
    op.create_table(
        "b2cal_storage_usage",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("exp_low", sa.Integer(), nullable=False),
        sa.Column("run_low", sa.Integer(), nullable=False),
        sa.Column("exp_high", sa.Integer(), nullable=False),
        sa.Column("run_high", sa.Integer(), nullable=False),
        sa.Column("site", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("data_tag", sa.String(length=64), nullable=False),
        sa.Column("files", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("unsized_files", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.Column("measured_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("exp_low", "run_low", "exp_high", "run_high", "site", "kind", "data_tag"),
    )


def downgrade() -> None:
    op.drop_table("b2cal_storage_usage")
    op.drop_table("b2cal_skim_quota")
    op.drop_index("ix_b2cal_discovery_error_site_release", table_name="b2cal_discovery_error")
    op.drop_table("b2cal_discovery_error")
    op.drop_index("ix_b2cal_site_release_site", table_name="b2cal_site_release")
    op.drop_table("b2cal_site_release")
