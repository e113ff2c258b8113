"""Job leases: any worker host takes a job from the queue, and a dead one's job resumes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06

- ``jobs.lease_owner`` / ``lease_expires_at``: the worker host running the job and until
  when its lease holds (renewed by heartbeat); a RUNNING job without an owner waits in
  the queue to be resumed from its checkpoint once ``lease_expires_at`` has passed.
- ``jobs.attempts`` (worker starts) and ``failed_attempts`` (starts whose worker process
  died without an outcome); the job fails after the configured number.
- ``jobs.cancel_requested_at``: a cancel any host sees on its next heartbeat.
- ``jobs.steps_done`` / ``releases_done``: the furthest step and accuracy release that
  reached the server, over all attempts (what a job that ends early is charged).
- ``request_id`` is unique per submitter, not across submitters.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(128), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), server_default=sa.text("0"),
                                   nullable=False))
        batch.add_column(sa.Column("failed_attempts", sa.Integer(), server_default=sa.text("0"),
                                   nullable=False))
        batch.add_column(sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("steps_done", sa.Integer(), server_default=sa.text("0"),
                                   nullable=False))
        batch.add_column(sa.Column("releases_done", sa.Integer(), server_default=sa.text("0"),
                                   nullable=False))
        batch.drop_constraint(op.f("uq_jobs_request_id"), type_="unique")
        batch.create_unique_constraint(op.f("uq_jobs_submitter_common_name_request_id"),
                                       ["submitter_common_name", "request_id"])
    op.create_index(op.f("ix_jobs_lease_expires_at"), "jobs", ["lease_expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_jobs_lease_expires_at"), table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("uq_jobs_submitter_common_name_request_id"), type_="unique")
        batch.create_unique_constraint(op.f("uq_jobs_request_id"), ["request_id"])
        for column in ("releases_done", "steps_done", "cancel_requested_at", "failed_attempts",
                       "attempts", "lease_expires_at", "lease_owner"):
            batch.drop_column(column)
