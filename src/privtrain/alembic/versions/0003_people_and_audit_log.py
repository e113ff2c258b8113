"""People, grants, withdrawn datasets and the hash-chained audit log.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06

- ``certificates``: every person's certificate the CA issued (serial, name, role,
  validity) and its revocation; a revoked serial is refused on its next call.
- ``dataset_grants``: the trainers a dataset's owner allowed on it.
- ``datasets.withdrawn_at``: set when the owner withdraws the dataset.
- ``audit_entries`` (append-only: triggers refuse UPDATE and DELETE), ``audit_head``
  (one row, seq 0 and the all-zero hash, locked by each append) and
  ``audit_signatures`` (signed heads).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY = "audit_entries is append-only"


def _ts(name: str, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(_ts("withdrawn_at", nullable=True))
    op.create_table(
        "dataset_grants",
        sa.Column("dataset_id", sa.String(36), nullable=False),
        sa.Column("trainer_common_name", sa.String(255), nullable=False),
        sa.Column("granted_by", sa.String(255), nullable=False),
        _ts("granted_at"),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"],
                                name=op.f("fk_dataset_grants_dataset_id_datasets")),
        sa.PrimaryKeyConstraint("dataset_id", "trainer_common_name", name=op.f("pk_dataset_grants")),
    )
    op.create_table(
        "certificates",
        sa.Column("serial", sa.String(40), nullable=False),
        sa.Column("common_name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("fingerprint_sha256", sa.String(64), nullable=False),
        _ts("not_before"),
        _ts("not_after"),
        _ts("issued_at"),
        _ts("revoked_at", nullable=True),
        sa.Column("revoked_by", sa.String(255), nullable=True),
        sa.Column("revocation_reason", sa.String(255), nullable=True),
        sa.CheckConstraint("role IN ('data-owner', 'trainer', 'admin')",
                           name=op.f("ck_certificates_role")),
        sa.PrimaryKeyConstraint("serial", name=op.f("pk_certificates")),
    )
    op.create_index(op.f("ix_certificates_common_name"), "certificates", ["common_name"])
    op.create_table(
        "audit_entries",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        _ts("at"),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("serial", sa.String(40), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_entries")),
    )
    op.create_index(op.f("ix_audit_entries_at"), "audit_entries", ["at"])
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
    )
    op.bulk_insert(sa.table("audit_head", sa.column("id"), sa.column("seq"), sa.column("hash")),
                   [{"id": 1, "seq": 0, "hash": "0" * 64}])
    op.create_table(
        "audit_signatures",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        _ts("signed_at"),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.Column("signer_certificate_pem", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_signatures")),
    )
    if op.get_bind().dialect.name == "sqlite":
        for event in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER audit_entries_no_{event.lower()} BEFORE {event} ON "
                       f"audit_entries BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END")
    else:
        op.execute("CREATE FUNCTION privtrain_audit_append_only() RETURNS trigger LANGUAGE plpgsql "
                   f"AS $$ BEGIN RAISE EXCEPTION '{APPEND_ONLY}'; END $$")
        op.execute("CREATE TRIGGER audit_entries_no_change BEFORE UPDATE OR DELETE ON audit_entries "
                   "FOR EACH ROW EXECUTE FUNCTION privtrain_audit_append_only()")
        op.execute("CREATE TRIGGER audit_entries_no_truncate BEFORE TRUNCATE ON audit_entries "
                   "FOR EACH STATEMENT EXECUTE FUNCTION privtrain_audit_append_only()")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER audit_entries_no_update")
        op.execute("DROP TRIGGER audit_entries_no_delete")
    else:
        op.execute("DROP TRIGGER audit_entries_no_truncate ON audit_entries")
        op.execute("DROP TRIGGER audit_entries_no_change ON audit_entries")
        op.execute("DROP FUNCTION privtrain_audit_append_only()")
    op.drop_table("audit_signatures")
    op.drop_table("audit_head")
    op.drop_index(op.f("ix_audit_entries_at"), table_name="audit_entries")
    op.drop_table("audit_entries")
    op.drop_index(op.f("ix_certificates_common_name"), table_name="certificates")
    op.drop_table("certificates")
    op.drop_table("dataset_grants")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("withdrawn_at")
