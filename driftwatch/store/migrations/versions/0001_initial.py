"""Initial schema: exposures, ccd_jobs, candidates, alerts.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "exposures",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("night", sa.String(10)),
        sa.Column("expnum", sa.Integer()),
        sa.Column("band", sa.String(16)),
        sa.Column("obstype", sa.String(32)),
        sa.Column("prodtype", sa.String(16)),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("field", sa.String(64)),
        sa.Column("date_obs", sa.String(32)),
        sa.Column("mjd_obs", sa.Float()),
        sa.Column("exptime", sa.Float()),
        sa.Column("checksum", sa.String(64)),
        sa.Column("size_bytes", sa.Integer()),
        sa.Column("dq_path", sa.String(1024)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("arrived_at", sa.DateTime(), nullable=False),
        sa.Column("planned_at", sa.DateTime()),
        sa.Column("finished_at", sa.DateTime()),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("path", name="uq_exposures_path"),
    )
    op.create_index("ix_exposures_night", "exposures", ["night"])
    op.create_index("ix_exposures_expnum", "exposures", ["expnum"])
    op.create_index("ix_exposures_field", "exposures", ["field"])

    op.create_table(
        "ccd_jobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("exposure_id", sa.Integer(),
                  sa.ForeignKey("exposures.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("ccd", sa.String(16), nullable=False),
        sa.Column("field", sa.String(64)),
        sa.Column("depends_on_id", sa.Integer(),
                  sa.ForeignKey("ccd_jobs.id", ondelete="SET NULL")),
        sa.Column("inputs", sa.Text()),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(128)),
        sa.Column("error", sa.Text()),
        sa.Column("input_checksum", sa.String(64)),
        sa.Column("pipeline_version", sa.String(64)),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("queued_at", sa.DateTime()),
        sa.Column("started_at", sa.DateTime()),
        sa.Column("finished_at", sa.DateTime()),
        sa.Column("duration_s", sa.Float()),
        sa.Column("product_path", sa.String(1024)),
        sa.Column("n_trails", sa.Integer()),
        sa.Column("n_matched", sa.Integer()),
        sa.Column("n_candidates", sa.Integer()),
        sa.Column("notes", sa.Text()),
        sa.UniqueConstraint("exposure_id", "kind", "ccd", name="uq_ccd_jobs_exposure_kind_ccd"),
    )
    op.create_index("ix_ccd_jobs_state", "ccd_jobs", ["state"])
    op.create_index("ix_ccd_jobs_exposure_id", "ccd_jobs", ["exposure_id"])
    op.create_index("ix_ccd_jobs_depends_on_id", "ccd_jobs", ["depends_on_id"])

    op.create_table(
        "candidates",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(),
                  sa.ForeignKey("ccd_jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("star_id", sa.String(64)),
        sa.Column("ra", sa.Float(), nullable=False),
        sa.Column("dec", sa.Float(), nullable=False),
        sa.Column("x", sa.Float(), nullable=False),
        sa.Column("y", sa.Float(), nullable=False),
        sa.Column("t_peak_s", sa.Float(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("amplitude", sa.Float(), nullable=False),
        sa.Column("significance", sa.Float(), nullable=False),
        sa.Column("mag", sa.Float()),
        sa.Column("stamp_path", sa.String(1024)),
        sa.Column("plot_path", sa.String(1024)),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_candidates_job_id", "candidates", ["job_id"])

    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("dedup_key", sa.String(255), nullable=False),
        sa.Column("route", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("sent_at", sa.DateTime()),
        sa.Column("next_attempt_at", sa.DateTime()),
        sa.Column("last_error", sa.Text()),
        sa.Column("candidate_id", sa.Integer(),
                  sa.ForeignKey("candidates.id", ondelete="SET NULL")),
        sa.Column("night", sa.String(10)),
        sa.UniqueConstraint("dedup_key", name="uq_alerts_dedup_key"),
    )
    op.create_index("ix_alerts_state_next", "alerts", ["state", "next_attempt_at"])
    op.create_index("ix_alerts_candidate_id", "alerts", ["candidate_id"])
    op.create_index("ix_alerts_night", "alerts", ["night"])


def downgrade() -> None:
    op.drop_table("alerts")
    op.drop_table("candidates")
    op.drop_table("ccd_jobs")
    op.drop_table("exposures")
