"""The audit log's storage: append-only entries, the head row, signed heads.

Appends are serialized on the head row: each one locks it (``SELECT ... FOR UPDATE``
on PostgreSQL; on SQLite every write transaction starts with ``BEGIN IMMEDIATE``,
which takes the database's write lock), reads (seq, hash), stores the entry chained
to that hash and moves the head, in one transaction. Two writers, threads or
processes (the server and an operator's ``certs issue``), therefore never chain to
the same predecessor. The migration adds triggers that refuse UPDATE and DELETE on
``audit_entries``, so no code path of ours can change the log; someone with the
database file still can, which :func:`privtrain.platform.audit_chain.verify_chain`
then reports.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from privtrain.errors import FailedPrecondition, InvalidInput
from privtrain.platform.audit_chain import entry_hash
from privtrain.platform.db._convert import check_aware
from privtrain.platform.db.models import AuditEntry, AuditHead, AuditSignature, utcnow
from privtrain.platform.db.records import AuditRecord, SignedHead
from privtrain.platform.db.transaction import Transactions

HEAD_ID = 1
#: Longest ``target`` / ``detail`` stored (characters); longer text is cut.
MAX_TEXT = 1000


@dataclass(frozen=True)
class NewAuditEntry:
    """What happened, by whom: the fields of an entry before it is chained."""

    subject: str
    serial: str
    role: str
    action: str
    target: str
    outcome: str
    detail: str = ""


def _record(row: AuditEntry) -> AuditRecord:
    return AuditRecord(seq=row.seq, at=row.at, subject=row.subject, serial=row.serial,
                       role=row.role, action=row.action, target=row.target, outcome=row.outcome,
                       detail=row.detail, prev_hash=row.prev_hash, hash=row.hash)


def _signed(row: AuditSignature) -> SignedHead:
    return SignedHead(id=row.id, seq=row.seq, hash=row.hash, signed_at=row.signed_at,
                      signature=row.signature, signer_certificate_pem=row.signer_certificate_pem)


class AuditLog:
    """Append entries, read them back in order, store and read signed heads."""

    def __init__(self, tx: Transactions) -> None:
        self._tx = tx

    @staticmethod
    def _locked_head(session: Session) -> AuditHead:
        head = session.scalar(select(AuditHead).where(AuditHead.id == HEAD_ID).with_for_update())
        if head is None:
            raise FailedPrecondition("the audit log has no head row: run `privtrain db upgrade`")
        return head

    def append(self, new: NewAuditEntry) -> AuditRecord:
        """Chain one entry to the head and move the head, atomically; returns the entry.

        Joins the caller's transaction when there is one (the entry then commits or
        rolls back with what it records).

        Raises
        ------
        FailedPrecondition
            The database has no head row (not migrated).
        """
        with self._tx.transaction() as session:
            head = self._locked_head(session)
            at = utcnow()
            fields = {"subject": new.subject[:255], "serial": new.serial[:40],
                      "role": new.role[:16], "action": new.action[:64],
                      "target": new.target[:MAX_TEXT], "outcome": new.outcome[:32],
                      "detail": " ".join(new.detail.split())[:MAX_TEXT]}
            seq = head.seq + 1
            digest = entry_hash(seq=seq, at=at, prev_hash=head.hash, **fields)
            row = AuditEntry(seq=seq, at=at, prev_hash=head.hash, hash=digest, **fields)
            session.add(row)
            head.seq, head.hash = seq, digest
            session.flush()
            return _record(row)

    def head(self) -> tuple[int, str]:
        """The head row: (seq of the last entry, its hash); (0, 64 zeros) when empty."""
        with self._tx.read() as session:
            head = session.get(AuditHead, HEAD_ID)
            if head is None:
                raise FailedPrecondition("the audit log has no head row: run `privtrain db upgrade`")
            return head.seq, head.hash

    def entries(self, *, after_seq: int = 0, since: datetime | None = None, limit: int = 1000,
                through_seq: int | None = None) -> list[AuditRecord]:
        """Up to ``limit`` entries with seq > ``after_seq`` (time >= ``since``, seq <=
        ``through_seq``), by seq.

        Read the head first and pass its seq as ``through_seq`` to get a consistent view
        while others append.

        Raises
        ------
        InvalidInput
            ``limit`` is not positive or ``since`` has no time zone.
        """
        if limit <= 0:
            raise InvalidInput(f"limit must be positive, got {limit}")
        query = select(AuditEntry).where(AuditEntry.seq > after_seq)
        if through_seq is not None:
            query = query.where(AuditEntry.seq <= through_seq)
        if since is not None:
            query = query.where(AuditEntry.at >= check_aware(since, "since"))
        with self._tx.read() as session:
            rows = session.scalars(query.order_by(AuditEntry.seq).limit(limit))
            return [_record(row) for row in rows]

    def all_entries(self, through_seq: int | None = None, page: int = 1000) -> Iterator[AuditRecord]:
        """Every entry (up to ``through_seq``), by seq, read ``page`` at a time."""
        after = 0
        while batch := self.entries(after_seq=after, limit=page, through_seq=through_seq):
            yield from batch
            after = batch[-1].seq

    def signatures(self) -> list[SignedHead]:
        """Every signed head, oldest first."""
        with self._tx.read() as session:
            rows = session.scalars(select(AuditSignature).order_by(AuditSignature.id))
            return [_signed(row) for row in rows]

    def last_signature(self) -> SignedHead | None:
        """The newest signed head, or None."""
        with self._tx.read() as session:
            row = session.scalar(select(AuditSignature).order_by(AuditSignature.id.desc()).limit(1))
            return None if row is None else _signed(row)

    def add_signature(self, *, seq: int, head_hash: str, signed_at: datetime, signature: str,
                      signer_certificate_pem: str) -> SignedHead:
        """Store a signed head (made by :func:`privtrain.platform.audit_chain.sign_head`)."""
        with self._tx.transaction() as session:
            row = AuditSignature(seq=seq, hash=head_hash, signed_at=check_aware(signed_at, "signed_at"),
                                 signature=signature, signer_certificate_pem=signer_certificate_pem)
            session.add(row)
            session.flush()
            return _signed(row)
