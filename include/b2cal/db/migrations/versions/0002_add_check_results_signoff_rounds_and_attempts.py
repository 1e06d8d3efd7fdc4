"""add check results, sign-off rounds and job attempts

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 16:34:26.228523
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "b2cal_calibration_check",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("calibration", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["request_id"], ["b2cal_request.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_id", "calibration", "name"),
    )
    op.create_table(
        "b2cal_signoff",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("dag_run_id", sa.String(length=250), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("clean", sa.Boolean(), nullable=False),
        sa.Column("staging_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("report_text", sa.Text(), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=True),
        sa.Column("decided_by", sa.String(length=128), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["request_id"], ["b2cal_request.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("b2cal_signoff", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_b2cal_signoff_request_id"), ["request_id"], unique=False)

    with op.batch_alter_table("b2cal_calibration_progress", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempt", sa.Integer(), server_default="1", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("b2cal_calibration_progress", schema=None) as batch_op:
        batch_op.drop_column("attempt")

    with op.batch_alter_table("b2cal_signoff", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_b2cal_signoff_request_id"))

    op.drop_table("b2cal_signoff")
    op.drop_table("b2cal_calibration_check")
