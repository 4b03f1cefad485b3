"""Candidates: peak time and duration may be unknown (a flash does not drift: no time axis).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # SQLite cannot relax NOT NULL in place: batch mode copies the table (foreign keys are
    # switched off around migrations by driftwatch.store.db.upgrade, so no row cascades away).
    with op.batch_alter_table("candidates") as batch:
        batch.alter_column("t_peak_s", existing_type=sa.Float(), nullable=True)
        batch.alter_column("duration_s", existing_type=sa.Float(), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("candidates") as batch:
        batch.alter_column("t_peak_s", existing_type=sa.Float(), nullable=False)
        batch.alter_column("duration_s", existing_type=sa.Float(), nullable=False)
