"""widen the job id to text

A job id is the job's folder path at its site, which can exceed 128 characters for long request ids
or deep work folders; PostgreSQL rejects such values in a VARCHAR(128).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("b2cal_calibration_progress") as batch:
        batch.alter_column(
            "job_id", existing_type=sa.String(length=128), type_=sa.Text(), existing_nullable=True
        )


def downgrade() -> None:
    with op.batch_alter_table("b2cal_calibration_progress") as batch:
        batch.alter_column(
            "job_id", existing_type=sa.Text(), type_=sa.String(length=128), existing_nullable=True
        )
