"""ORM models. SQLAlchemy stays inside ``privtrain.platform.db``.

The naming convention has been in place since the first migration, so every
constraint and index has a predictable name that later batch migrations on
SQLite (which must drop and recreate constraints by name) can refer to. In a
migration, name constraints with ``op.f("ck_jobs_state")`` (the full, already
converted name): a plain ``"ck_jobs_state"`` would be run through the
convention again and become ``ck_jobs_ck_jobs_state``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from privtrain.platform.job_states import AlertState, JobState

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned timezone-aware (UTC).

    SQLite has no timestamp type and SQLAlchemy drops the offset when it
    writes one, so values are converted to UTC before they are stored and
    marked UTC when they are read. Naive datetimes are refused: their zone is
    a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}; pass a timezone-aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    """Return the current time, timezone-aware UTC."""
    return datetime.now(UTC)


def in_values_check(column: str, values: type[Enum]) -> str:
    """Return a SQL ``column IN (...)`` expression listing an enum's values."""
    listed = ", ".join(f"'{member.value}'" for member in values)
    return f"{column} IN ({listed})"


class Base(DeclarativeBase):
    metadata = metadata


class PrivacyLedger(Base):
    """One privacy budget (ε, δ), shared by every dataset released from the same source.

    ``epsilon_committed`` caches the composition, at ``delta_budget``, of the histories
    its entries charge (see :mod:`privtrain.platform.db.budget`); ``version`` grows with
    every change of the entries, so a reservation composed outside the write lock is
    only stored if nothing changed meanwhile.
    """

    __tablename__ = "privacy_ledgers"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_common_name: Mapped[str] = mapped_column(String(255))
    epsilon_budget: Mapped[float] = mapped_column(Float)
    delta_budget: Mapped[float] = mapped_column(Float)
    accountant: Mapped[str] = mapped_column(String(8))
    epsilon_committed: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    version: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    owner_common_name: Mapped[str] = mapped_column(String(255))
    ledger_id: Mapped[str] = mapped_column(ForeignKey("privacy_ledgers.id"), index=True)
    storage_path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    manifest_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    input_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    # 64-bit: a dataset file can be larger than 2 GiB.
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int] = mapped_column(BigInteger)
    manifest_json: Mapped[str] = mapped_column(Text)
    # The owner's train/test split (JSON) and the row counts published for it (noisy).
    split_json: Mapped[str | None] = mapped_column(Text)
    published_train_rows: Mapped[int | None] = mapped_column(BigInteger)
    published_test_rows: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Set when the owner withdrew it: its file is deleted, its ledger kept.
    withdrawn_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class DatasetGrant(Base):
    """A trainer the dataset's owner allowed to train on it (deleted when revoked)."""

    __tablename__ = "dataset_grants"

    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), primary_key=True)
    trainer_common_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    granted_by: Mapped[str] = mapped_column(String(255))
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Certificate(Base):
    """A person's certificate the CA issued (``certs issue`` / ``renew``), and its revocation.

    ``serial`` is the certificate's serial number in lower-case hex; a revoked one has
    ``revoked_at`` set and is refused on its next call.
    """

    __tablename__ = "certificates"
    __table_args__ = (CheckConstraint("role IN ('data-owner', 'trainer', 'admin')", name="role"),)

    serial: Mapped[str] = mapped_column(String(40), primary_key=True)
    common_name: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(16))
    fingerprint_sha256: Mapped[str] = mapped_column(String(64))
    not_before: Mapped[datetime] = mapped_column(UTCDateTime)
    not_after: Mapped[datetime] = mapped_column(UTCDateTime)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_by: Mapped[str | None] = mapped_column(String(255))
    revocation_reason: Mapped[str | None] = mapped_column(String(255))


class AuditEntry(Base):
    """One entry of the append-only, hash-chained audit log (see ``db/audit_log.py``)."""

    __tablename__ = "audit_entries"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    subject: Mapped[str] = mapped_column(String(255))
    serial: Mapped[str] = mapped_column(String(40))
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The chain's head: one row (id 1), locked by every append, so appends are serialized."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class AuditSignature(Base):
    """The head at ``seq`` signed with the server's Ed25519 signing key."""

    __tablename__ = "audit_signatures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    signature: Mapped[str] = mapped_column(String(128))
    signer_certificate_pem: Mapped[str] = mapped_column(Text)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (CheckConstraint(in_values_check("state", JobState), name="state"),
                      # A request_id names one submitter's request: another's may reuse it.
                      UniqueConstraint("submitter_common_name", "request_id"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    request_id: Mapped[str | None] = mapped_column(String(255))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    submitter_common_name: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16), default="train", server_default=text("'train'"))
    spec_json: Mapped[str] = mapped_column(Text)
    audit_json: Mapped[str | None] = mapped_column(Text)
    plan_json: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    error_detail: Mapped[str | None] = mapped_column(Text)
    result_json: Mapped[str | None] = mapped_column(Text)
    worker_pid: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The queue (db/leases.py): the host holding the job and until when; a RUNNING job
    # without an owner is resumed by the first host that claims it after lease_expires_at.
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The furthest step and release that reached the server, over all attempts.
    steps_done: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    releases_done: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class LedgerEntry(Base):
    """One charge against a ledger: a job's (σ, q, steps) history, a published row count,
    or a fixed (ε, δ) carried over from before composition by the accountant.

    A job charges ``planned_json`` until it is settled and ``spent_json`` after.
    """

    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ledger_id: Mapped[str] = mapped_column(ForeignKey("privacy_ledgers.id"), index=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    planned_json: Mapped[str] = mapped_column(Text)
    spent_json: Mapped[str | None] = mapped_column(Text)
    epsilon_fixed: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    delta_fixed: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    epsilon_spent: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    settled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    payload_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class JobMetric(Base):
    """One logged training step.

    ``loss`` is NULL both when no loss was reported (an empty Poisson batch)
    and when it was NaN; ``loss_is_nan`` tells the two apart, because SQLite
    cannot store NaN at all and would silently turn it into NULL.
    """

    __tablename__ = "job_metrics"
    __table_args__ = (UniqueConstraint("job_id", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)
    loss_is_nan: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    batch_size: Mapped[int] = mapped_column(Integer)
    samples_per_s: Mapped[float] = mapped_column(Float)
    epsilon: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Alert(Base):
    __tablename__ = "alerts"
    __table_args__ = (
        CheckConstraint(in_values_check("state", AlertState), name="state"),
        # At most one FIRING alert per (job, kind): makes fire() idempotent
        # even when two monitors race on PostgreSQL.
        Index(
            "uq_alerts_firing_job_id_kind",
            "job_id",
            "kind",
            unique=True,
            sqlite_where=text("state = 'FIRING'"),
            postgresql_where=text("state = 'FIRING'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    fired_at: Mapped[datetime] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    details_json: Mapped[str] = mapped_column(Text)
