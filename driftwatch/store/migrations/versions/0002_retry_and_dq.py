"""Retry backoff and missing-DQ flag: ccd_jobs.next_attempt_at, ccd_jobs.config_hash,
exposures.dq_missing.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (SQLite supports it): no table copy, rows and foreign keys untouched.
    op.add_column("ccd_jobs", sa.Column("next_attempt_at", sa.DateTime()))
    op.add_column("ccd_jobs", sa.Column("config_hash", sa.String(32)))
    op.add_column("exposures", sa.Column("dq_missing", sa.Boolean(), nullable=False,
                                         server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("exposures") as batch:
        batch.drop_column("dq_missing")
    with op.batch_alter_table("ccd_jobs") as batch:
        batch.drop_column("config_hash")
        batch.drop_column("next_attempt_at")
