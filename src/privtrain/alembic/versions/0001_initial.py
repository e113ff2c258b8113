"""Initial schema: datasets, jobs, privacy ledger, events, metrics, alerts.

Revision ID: 0001
Revises:
Create Date: 2026-11-30

Every constraint and index is named here, following the naming convention
of ``privtrain.platform.db.models``, so that later batch migrations on SQLite
can drop and recreate them by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the enum values as of this revision: a migration must not
# change meaning when the Python enum later grows.
_JOB_STATES = "'PENDING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED'"
_ALERT_STATES = "'FIRING', 'RESOLVED'"


def _ts(name: str, nullable: bool = False) -> sa.Column[datetime]:
    """A UTC timestamp column (models.UTCDateTime stores through this type)."""
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("owner_common_name", sa.String(255), nullable=False),
        sa.Column("storage_path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("manifest_json", sa.Text(), nullable=False),
        sa.Column("epsilon_budget", sa.Float(), nullable=False),
        sa.Column("delta_budget", sa.Float(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
        sa.UniqueConstraint("name", name=op.f("uq_datasets_name")),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("request_id", sa.String(255), nullable=True),
        sa.Column("dataset_id", sa.String(36), nullable=False),
        sa.Column("submitter_common_name", sa.String(255), nullable=False),
        sa.Column("spec_json", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result_json", sa.Text(), nullable=True),
        sa.Column("worker_pid", sa.Integer(), nullable=True),
        _ts("created_at"),
        _ts("started_at", nullable=True),
        _ts("finished_at", nullable=True),
        sa.CheckConstraint(f"state IN ({_JOB_STATES})", name=op.f("ck_jobs_state")),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_jobs_dataset_id_datasets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("request_id", name=op.f("uq_jobs_request_id")),
    )
    op.create_index(op.f("ix_jobs_dataset_id"), "jobs", ["dataset_id"])
    op.create_index(op.f("ix_jobs_state"), "jobs", ["state"])
    op.create_table(
        "privacy_spend",
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("dataset_id", sa.String(36), nullable=False),
        sa.Column("epsilon_reserved", sa.Float(), nullable=False),
        sa.Column("delta_reserved", sa.Float(), nullable=False),
        sa.Column("epsilon_spent", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.Column("settled", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_privacy_spend_dataset_id_datasets")
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_privacy_spend_job_id_jobs")),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_privacy_spend")),
    )
    op.create_index(op.f("ix_privacy_spend_dataset_id"), "privacy_spend", ["dataset_id"])
    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("payload_json", sa.Text(), nullable=False),
        _ts("created_at"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_events_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_events")),
    )
    op.create_index(op.f("ix_job_events_job_id"), "job_events", ["job_id"])
    op.create_table(
        "job_metrics",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("loss_is_nan", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("samples_per_s", sa.Float(), nullable=False),
        sa.Column("epsilon", sa.Float(), nullable=False),
        _ts("created_at"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_metrics_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_metrics")),
        sa.UniqueConstraint("job_id", "step", name=op.f("uq_job_metrics_job_id_step")),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(36), nullable=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        _ts("fired_at"),
        _ts("resolved_at", nullable=True),
        sa.Column("details_json", sa.Text(), nullable=False),
        sa.CheckConstraint(f"state IN ({_ALERT_STATES})", name=op.f("ck_alerts_state")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_alerts_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    op.create_index(op.f("ix_alerts_job_id"), "alerts", ["job_id"])
    op.create_index(
        "uq_alerts_firing_job_id_kind",
        "alerts",
        ["job_id", "kind"],
        unique=True,
        sqlite_where=sa.text("state = 'FIRING'"),
        postgresql_where=sa.text("state = 'FIRING'"),
    )


def downgrade() -> None:
    # Children before parents, so foreign keys never dangle in between.
    op.drop_table("alerts")
    op.drop_table("job_metrics")
    op.drop_table("job_events")
    op.drop_table("privacy_spend")
    op.drop_table("jobs")
    op.drop_table("datasets")
