"""Who did what: recording actions in the audit log and signing its head.

Every call that changes state or releases something (see ``AUDITED_ACTIONS`` in
:mod:`privtrain.platform.rpc`), and every certificate the operator issues or revokes,
becomes one entry: time, identity (subject and serial), role, action, target and
outcome (``ok`` or the status code of the refusal). The chain and its signatures are
:mod:`privtrain.platform.audit_chain`; storage is :mod:`privtrain.platform.db.audit_log`.
"""

from __future__ import annotations

import getpass
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privtrain.errors import PrivtrainError
from privtrain.platform.audit_chain import sign_head
from privtrain.platform.db.audit_log import NewAuditEntry
from privtrain.platform.db.records import AuditRecord, SignedHead
from privtrain.platform.db.repositories import Database
from privtrain.secure_transport.roles import PeerIdentity

log = logging.getLogger(__name__)

OK = "ok"


@dataclass(frozen=True)
class Actor:
    """The identity an entry names.

    Attributes
    ----------
    subject : str
        The caller's certificate CN, ``local:<user>`` for an operator's command run on
        the server's home, or ``(unidentified)`` for a call without a verified certificate.
    serial : str
        The certificate's serial (hex); "" when there is none.
    role : str
        The certificate's role, or ``operator`` for a local command.
    """

    subject: str
    serial: str
    role: str

    @classmethod
    def of(cls, identity: PeerIdentity) -> Actor:
        """The person behind a verified client certificate."""
        return cls(identity.common_name, identity.serial, identity.role.value)

    @classmethod
    def local_operator(cls) -> Actor:
        """Whoever runs a ``privtrain`` command on the server's own home and PKI."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry (containers): the uid will do
            import os

            user = str(os.getuid())
        return cls(f"local:{user}", "", "operator")


UNIDENTIFIED = Actor("(unidentified)", "", "")


@dataclass
class Note:
    """What an :func:`audited` block found out: a better target, what it changed."""

    target: str
    detail: str = ""


class AuditTrail:
    """Appends entries for actors and signs the chain's head.

    Parameters
    ----------
    db : Database
        A migrated database (the log, its head row and signatures live there).
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def record(self, actor: Actor, action: str, target: str, outcome: str = OK,
               detail: str = "") -> AuditRecord:
        """Append one entry; returns it as stored (with its seq and hash)."""
        return self._db.audit_log.append(NewAuditEntry(
            subject=actor.subject, serial=actor.serial, role=actor.role, action=action,
            target=target, outcome=outcome, detail=detail))

    def sign(self, key: Ed25519PrivateKey, signer_certificate_pem: bytes, *,
             only_if_moved: bool = False) -> SignedHead | None:
        """Sign the current head with the server's Ed25519 key and store the signature.

        Parameters
        ----------
        key : Ed25519PrivateKey
            The parameter signer's key (``pki/signing.key``).
        signer_certificate_pem : bytes
            Its certificate, stored with the signature so any holder of the CA
            certificate can check it.
        only_if_moved : bool
            Do nothing (return None) when the newest signature already covers the head.

        Returns
        -------
        SignedHead or None
        """
        seq, head_hash = self._db.audit_log.head()
        last = self._db.audit_log.last_signature()
        if only_if_moved and last is not None and (last.seq, last.hash) == (seq, head_hash):
            return None
        signed_at = datetime.now(UTC)
        signed = self._db.audit_log.add_signature(
            seq=seq, head_hash=head_hash, signed_at=signed_at,
            signature=sign_head(key, seq, head_hash, signed_at),
            signer_certificate_pem=signer_certificate_pem.decode())
        log.info("audit log head signed at entry %d", seq)
        return signed


@contextmanager
def audited(trail: AuditTrail, actor: Actor, action: str, target: str) -> Iterator[Note]:
    """Record the block as one entry: ``ok`` when it returns, the error's status code (and
    message) when it raises a :class:`~privtrain.errors.PrivtrainError`, which goes on.

    For the operator's commands on the server's home (``certs issue``, ``certs revoke``);
    calls to the server are recorded by :func:`privtrain.platform.rpc.allow`.
    """
    note = Note(target)
    try:
        yield note
    except PrivtrainError as exc:
        try:
            trail.record(actor, action, note.target, exc.grpc_code, str(exc))
        except PrivtrainError:
            pass  # e.g. an unmigrated database: the first error is the one to report
        raise
    trail.record(actor, action, note.target, OK, note.detail)
