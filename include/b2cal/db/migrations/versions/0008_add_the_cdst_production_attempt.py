"""add the cDST production attempt of a request

A rejection at sign-off that sends a raw-phase calibration back makes cDST production run again, as a
new attempt with its own output folder. The request stores which attempt the cdst-phase calibrations
and the Rucio registration read.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("b2cal_request") as batch:
        batch.add_column(sa.Column("cdst_attempt", sa.Integer(), server_default="1", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("b2cal_request") as batch:
        batch.drop_column("cdst_attempt")
