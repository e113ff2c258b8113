"""Privacy ledgers composed by the accountant; datasets with the owner's split; job plans.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06

- ``privacy_ledgers``: a budget (ε, δ) shared by every release of one source; every
  existing dataset gets its own ledger (same id) with its budget.
- ``datasets``: ``ledger_id``; the manifest's and the input's SHA-256 (to bind
  re-uploads and later releases to one ledger); the owner's split and its published
  (noisy) row counts. The budget columns move to the ledger.
- ``ledger_entries`` replaces ``privacy_spend``: an existing reservation becomes a
  ``fixed`` entry charging what the old rule charged (the spend once settled, else the
  larger of reservation and spend; its δ unless it spent nothing), composed by basic
  composition with everything after it.
- ``jobs``: ``kind`` (train or audit), ``audit_json``, ``plan_json``, ``error_detail``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "privacy_ledgers",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("owner_common_name", sa.String(255), nullable=False),
        sa.Column("epsilon_budget", sa.Float(), nullable=False),
        sa.Column("delta_budget", sa.Float(), nullable=False),
        sa.Column("accountant", sa.String(8), nullable=False),
        sa.Column("epsilon_committed", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.Column("version", sa.Integer(), server_default=sa.text("0"), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_privacy_ledgers")),
    )
    bind = op.get_bind()
    datasets = list(bind.execute(sa.text(
        "SELECT id, owner_common_name, epsilon_budget, delta_budget, created_at FROM datasets")))
    spends = list(bind.execute(sa.text(
        "SELECT job_id, dataset_id, epsilon_reserved, delta_reserved, epsilon_spent, settled "
        "FROM privacy_spend")))
    committed: dict[str, float] = {}
    for _, dataset_id, reserved, _, spent, settled in spends:
        charged = spent if settled else max(reserved, spent)
        committed[dataset_id] = committed.get(dataset_id, 0.0) + charged
    ledgers = sa.table(
        "privacy_ledgers", sa.column("id"), sa.column("owner_common_name"),
        sa.column("epsilon_budget"), sa.column("delta_budget"), sa.column("accountant"),
        sa.column("epsilon_committed"), sa.column("version"), sa.column("created_at"),
    )
    if datasets:
        op.bulk_insert(ledgers, [
            {"id": d.id, "owner_common_name": d.owner_common_name, "epsilon_budget": d.epsilon_budget,
             "delta_budget": d.delta_budget, "accountant": "prv",
             "epsilon_committed": committed.get(d.id, 0.0), "version": 0, "created_at": d.created_at}
            for d in datasets
        ])
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("ledger_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("manifest_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("input_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("split_json", sa.Text(), nullable=True))
        batch.add_column(sa.Column("published_train_rows", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("published_test_rows", sa.BigInteger(), nullable=True))
    bind.execute(sa.text("UPDATE datasets SET ledger_id = id"))
    with op.batch_alter_table("datasets") as batch:
        batch.alter_column("ledger_id", existing_type=sa.String(36), nullable=False)
        batch.create_foreign_key(op.f("fk_datasets_ledger_id_privacy_ledgers"), "privacy_ledgers",
                                 ["ledger_id"], ["id"])
        batch.create_index(op.f("ix_datasets_ledger_id"), ["ledger_id"])
        batch.create_index(op.f("ix_datasets_sha256"), ["sha256"])
        batch.create_index(op.f("ix_datasets_manifest_sha256"), ["manifest_sha256"])
        batch.create_index(op.f("ix_datasets_input_sha256"), ["input_sha256"])
        batch.drop_column("epsilon_budget")
        batch.drop_column("delta_budget")

    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), server_default=sa.text("'train'"),
                                   nullable=False))
        batch.add_column(sa.Column("audit_json", sa.Text(), nullable=True))
        batch.add_column(sa.Column("plan_json", sa.Text(), nullable=True))
        batch.add_column(sa.Column("error_detail", sa.Text(), nullable=True))

    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ledger_id", sa.String(36), nullable=False),
        sa.Column("dataset_id", sa.String(36), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("planned_json", sa.Text(), nullable=False),
        sa.Column("spent_json", sa.Text(), nullable=True),
        sa.Column("epsilon_fixed", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.Column("delta_fixed", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.Column("epsilon_spent", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.Column("settled", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        _ts("created_at"),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"],
                                name=op.f("fk_ledger_entries_dataset_id_datasets")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_ledger_entries_job_id_jobs")),
        sa.ForeignKeyConstraint(["ledger_id"], ["privacy_ledgers.id"],
                                name=op.f("fk_ledger_entries_ledger_id_privacy_ledgers")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
        sa.UniqueConstraint("job_id", name=op.f("uq_ledger_entries_job_id")),
    )
    op.create_index(op.f("ix_ledger_entries_ledger_id"), "ledger_entries", ["ledger_id"])
    op.create_index(op.f("ix_ledger_entries_dataset_id"), "ledger_entries", ["dataset_id"])
    entries = sa.table(
        "ledger_entries", sa.column("ledger_id"), sa.column("dataset_id"), sa.column("job_id"),
        sa.column("kind"), sa.column("planned_json"), sa.column("spent_json"),
        sa.column("epsilon_fixed"), sa.column("delta_fixed"), sa.column("epsilon_spent"),
        sa.column("settled"), sa.column("created_at"),
    )
    created = {row.id: row.created_at for row in bind.execute(sa.text("SELECT id, created_at FROM jobs"))}
    if spends:
        op.bulk_insert(entries, [
            {"ledger_id": s.dataset_id, "dataset_id": s.dataset_id, "job_id": s.job_id, "kind": "fixed",
             "planned_json": "[]", "spent_json": "[]" if s.settled else None,
             "epsilon_fixed": s.epsilon_spent if s.settled else max(s.epsilon_reserved, s.epsilon_spent),
             "delta_fixed": 0.0 if s.settled and s.epsilon_spent <= 0 else s.delta_reserved,
             "epsilon_spent": s.epsilon_spent, "settled": bool(s.settled),
             "created_at": created[s.job_id]}
            for s in spends
        ])
    op.drop_index(op.f("ix_privacy_spend_dataset_id"), table_name="privacy_spend")
    op.drop_table("privacy_spend")


def downgrade() -> None:
    bind = op.get_bind()
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
    rows = list(bind.execute(sa.text(
        "SELECT e.job_id, e.dataset_id, e.kind, e.epsilon_fixed, e.delta_fixed, e.epsilon_spent, "
        "e.settled, j.plan_json FROM ledger_entries e JOIN jobs j ON j.id = e.job_id "
        "WHERE e.job_id IS NOT NULL")))
    spend = sa.table("privacy_spend", sa.column("job_id"), sa.column("dataset_id"),
                     sa.column("epsilon_reserved"), sa.column("delta_reserved"),
                     sa.column("epsilon_spent"), sa.column("settled"))
    converted = []
    for r in rows:
        # A job entry's own (ε, δ) under basic composition: its plan's target.
        plan = json.loads(r.plan_json) if r.plan_json else {}
        reserved = r.epsilon_fixed if r.kind == "fixed" else float(plan.get("epsilon", r.epsilon_spent))
        delta = r.delta_fixed if r.kind == "fixed" else float(plan.get("delta", 0.0))
        converted.append({"job_id": r.job_id, "dataset_id": r.dataset_id, "epsilon_reserved": reserved,
                          "delta_reserved": delta, "epsilon_spent": r.epsilon_spent,
                          "settled": bool(r.settled)})
    if converted:
        op.bulk_insert(spend, converted)
    op.drop_index(op.f("ix_ledger_entries_dataset_id"), table_name="ledger_entries")
    op.drop_index(op.f("ix_ledger_entries_ledger_id"), table_name="ledger_entries")
    op.drop_table("ledger_entries")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("error_detail")
        batch.drop_column("plan_json")
        batch.drop_column("audit_json")
        batch.drop_column("kind")
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("epsilon_budget", sa.Float(), nullable=True))
        batch.add_column(sa.Column("delta_budget", sa.Float(), nullable=True))
    bind.execute(sa.text(
        "UPDATE datasets SET epsilon_budget = (SELECT l.epsilon_budget FROM privacy_ledgers l "
        "WHERE l.id = datasets.ledger_id), delta_budget = (SELECT l.delta_budget FROM "
        "privacy_ledgers l WHERE l.id = datasets.ledger_id)"))
    with op.batch_alter_table("datasets") as batch:
        batch.alter_column("epsilon_budget", existing_type=sa.Float(), nullable=False)
        batch.alter_column("delta_budget", existing_type=sa.Float(), nullable=False)
        batch.drop_index(op.f("ix_datasets_input_sha256"))
        batch.drop_index(op.f("ix_datasets_manifest_sha256"))
        batch.drop_index(op.f("ix_datasets_sha256"))
        batch.drop_index(op.f("ix_datasets_ledger_id"))
        batch.drop_constraint(op.f("fk_datasets_ledger_id_privacy_ledgers"), type_="foreignkey")
        batch.drop_column("published_test_rows")
        batch.drop_column("published_train_rows")
        batch.drop_column("split_json")
        batch.drop_column("input_sha256")
        batch.drop_column("manifest_sha256")
        batch.drop_column("ledger_id")
    op.drop_table("privacy_ledgers")
