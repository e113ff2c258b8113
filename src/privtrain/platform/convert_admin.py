"""Conversions of the administration records (certificates, audit log) to and from protobuf.

The audit log's entries travel with their hashes and the signed heads with their
signer certificate, so an admin checks the chain on their own machine
(:func:`privtrain.platform.audit_chain.verify_chain`) instead of trusting the server's word.
"""

from __future__ import annotations

import datetime as dt
from datetime import datetime

from privtrain.platform.db.records import AuditRecord, CertificateRecord, SignedHead
from privtrain.platform.proto_time import timestamp
from privtrain.proto.privtrain.v1 import privtrain_pb2 as pb


def certificate_to_proto(cert: CertificateRecord, now: datetime) -> pb.CertificateInfo:
    """An issued certificate and its status at ``now``."""
    msg = pb.CertificateInfo(
        serial=cert.serial, name=cert.common_name, role=cert.role,
        fingerprint_sha256=cert.fingerprint_sha256, revoked_by=cert.revoked_by or "",
        revocation_reason=cert.revocation_reason or "", status=cert.status(now))
    for name in ("not_before", "not_after", "issued_at", "revoked_at"):
        ts = timestamp(getattr(cert, name))
        if ts is not None:
            getattr(msg, name).CopyFrom(ts)
    return msg


def audit_entry_to_proto(entry: AuditRecord) -> pb.AuditEntry:
    """A stored audit-log entry, with its hashes (admins check the chain with them)."""
    msg = pb.AuditEntry(seq=entry.seq, subject=entry.subject, serial=entry.serial, role=entry.role,
                        action=entry.action, target=entry.target, outcome=entry.outcome,
                        detail=entry.detail, prev_hash=entry.prev_hash, hash=entry.hash)
    msg.time.CopyFrom(timestamp(entry.at))
    return msg


def audit_entry_from_proto(msg: pb.AuditEntry) -> AuditRecord:
    """Inverse of :func:`audit_entry_to_proto` (times keep their microseconds)."""
    return AuditRecord(seq=msg.seq, at=msg.time.ToDatetime(tzinfo=dt.UTC), subject=msg.subject,
                       serial=msg.serial, role=msg.role, action=msg.action, target=msg.target,
                       outcome=msg.outcome, detail=msg.detail, prev_hash=msg.prev_hash,
                       hash=msg.hash)


def signed_head_to_proto(signed: SignedHead) -> pb.AuditSignature:
    """A signed head of the audit log."""
    msg = pb.AuditSignature(seq=signed.seq, hash=signed.hash, signature=signed.signature,
                            signer_certificate_pem=signed.signer_certificate_pem.encode())
    msg.signed_at.CopyFrom(timestamp(signed.signed_at))
    return msg


def signed_head_from_proto(msg: pb.AuditSignature) -> SignedHead:
    """Inverse of :func:`signed_head_to_proto` (``id`` is not carried: 0)."""
    return SignedHead(id=0, seq=msg.seq, hash=msg.hash, signed_at=msg.signed_at.ToDatetime(tzinfo=dt.UTC),
                      signature=msg.signature,
                      signer_certificate_pem=msg.signer_certificate_pem.decode())
