"""AdminService: people's certificates and the audit log, for admins."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privtrain.errors import InvalidInput
from privtrain.platform import people
from privtrain.platform.audit_trail import AuditTrail
from privtrain.platform.convert_admin import (
    audit_entry_to_proto,
    certificate_to_proto,
    signed_head_to_proto,
)
from privtrain.platform.db.repositories import Database
from privtrain.platform.proto_time import from_timestamp
from privtrain.platform.revocations import RevocationCache
from privtrain.platform.rpc import allow
from privtrain.proto.privtrain.v1 import privtrain_pb2 as pb
from privtrain.proto.privtrain.v1 import privtrain_pb2_grpc as pb_grpc
from privtrain.secure_transport.pki import PkiLayout
from privtrain.secure_transport.roles import PeerIdentity, Role

log = logging.getLogger(__name__)
MAX_PAGE = 1000
MAX_SEQ = 2**63 - 1


def _revoked(request: pb.RevokeCertificateRequest, reply: pb.RevokeCertificateResponse | None) -> str:
    named = f"certificate {request.serial[:64]}" if request.serial else f"person {request.name[:64]}"
    if reply is None:
        return named
    return f"{named}: revoked {', '.join(c.serial for c in reply.revoked)}"


def _signed(request: pb.SignAuditLogRequest, reply: pb.AuditSignature | None) -> str:
    return "audit log head" if reply is None else f"audit log head at entry {reply.seq}"


class AdminServicer(pb_grpc.AdminServiceServicer):
    """Lists and revokes certificates; lists, signs and serves the audit log for checking.

    Parameters
    ----------
    db : Database
    layout : PkiLayout
        The operator's folder: the CRL is written there (when the CA key is readable).
    revocations : RevocationCache
        Told of each revocation, so the next call of that certificate is refused at once.
    audit_trail : AuditTrail
    signing_key, signing_cert_pem : Ed25519PrivateKey, bytes
        The server's signer, for :meth:`SignAuditLog`.
    """

    def __init__(self, db: Database, layout: PkiLayout, *, revocations: RevocationCache,
                 audit_trail: AuditTrail, signing_key: Ed25519PrivateKey,
                 signing_cert_pem: bytes) -> None:
        self._db = db
        self._layout = layout
        self._revocations = revocations
        self.audit_trail = audit_trail
        self._signing_key = signing_key
        self._signing_cert_pem = signing_cert_pem

    @allow(Role.ADMIN)
    def ListCertificates(self, request: pb.ListCertificatesRequest, context: grpc.ServicerContext,
                         identity: PeerIdentity) -> pb.ListCertificatesResponse:
        certs = (self._db.certificates.of_person(request.name) if request.name
                 else self._db.certificates.list())
        now = datetime.now(UTC)
        return pb.ListCertificatesResponse(certificates=[certificate_to_proto(c, now) for c in certs])

    @allow(Role.ADMIN, audit="certificate.revoke", target=_revoked)
    def RevokeCertificate(self, request: pb.RevokeCertificateRequest, context: grpc.ServicerContext,
                          identity: PeerIdentity) -> pb.RevokeCertificateResponse:
        revoked = people.revoke(self._db, serial=request.serial, name=request.name,
                                by=identity.common_name, reason=request.reason)
        self._revocations.invalidate()
        published = people.publish_crl(self._db, self._layout)
        for cert in revoked:
            log.info("certificate %s of %s revoked by %s", cert.serial, cert.common_name,
                     identity.common_name)
        now = datetime.now(UTC)
        return pb.RevokeCertificateResponse(
            revoked=[certificate_to_proto(c, now) for c in revoked], crl_published=published)

    @allow(Role.ADMIN)
    def ListAuditLog(self, request: pb.ListAuditLogRequest, context: grpc.ServicerContext,
                     identity: PeerIdentity) -> pb.ListAuditLogResponse:
        if request.limit > MAX_PAGE:
            raise InvalidInput(f"limit must be at most {MAX_PAGE}, got {request.limit}")
        since = from_timestamp(request.since, "since") if request.HasField("since") else None
        # The head first, then entries up to it: a consistent view while calls append.
        head_seq, head_hash = self._db.audit_log.head()
        # No entry's seq passes a 64-bit signed integer (the column's type).
        after_seq = min(request.after_seq, MAX_SEQ)
        entries = self._db.audit_log.entries(after_seq=after_seq, since=since,
                                             limit=request.limit or MAX_PAGE, through_seq=head_seq)
        return pb.ListAuditLogResponse(entries=[audit_entry_to_proto(e) for e in entries],
                                       head_seq=head_seq, head_hash=head_hash)

    @allow(Role.ADMIN)
    def ListAuditSignatures(self, request: pb.ListAuditSignaturesRequest,
                            context: grpc.ServicerContext,
                            identity: PeerIdentity) -> pb.ListAuditSignaturesResponse:
        return pb.ListAuditSignaturesResponse(
            signatures=[signed_head_to_proto(s) for s in self._db.audit_log.signatures()])

    @allow(Role.ADMIN, audit="audit_log.sign", target=_signed)
    def SignAuditLog(self, request: pb.SignAuditLogRequest, context: grpc.ServicerContext,
                     identity: PeerIdentity) -> pb.AuditSignature:
        signed = self.audit_trail.sign(self._signing_key, self._signing_cert_pem)
        assert signed is not None  # only_if_moved is off: always signs
        return signed_head_to_proto(signed)
