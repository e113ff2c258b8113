"""The audit log's hash chain and signed heads: encoding, hashing, signing, verification.

Entry ``n`` stores ``hash_n = SHA-256("privtrain-audit/v1\\n" || canonical(entry_n,
hash_{n-1}))`` with ``hash_0`` = 64 zeros, where ``canonical`` is the JSON object of
every stored field (seq, time as ISO 8601 UTC with microseconds, subject, serial,
role, action, target, outcome, detail) plus the previous hash, with sorted keys and
no spaces (a hash chain in the manner of RFC 6962's Merkle log, kept linear). So a
changed entry no longer matches its hash, a removed or reordered one breaks the next
link or the sequence, and the head row (seq, hash) pins the end of the chain.

Someone who can write the database could rewrite the whole chain from an entry on;
the server therefore signs the head with its Ed25519 signing key (RFC 8032) now and
then and on demand: a rewrite of anything before a signed head no longer matches the
signature, which only the key's holder can make again.

:func:`verify_chain` needs nothing but the stored rows and the CA certificate, so an
admin can check a log fetched over the API as well as the server's own database.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privtrain.errors import PrivtrainError
from privtrain.secure_transport.envelope import verified_signer

if TYPE_CHECKING:  # the db package imports this module to chain its appends
    from privtrain.platform.db.records import AuditRecord, SignedHead

GENESIS = "0" * 64
"""The hash before the first entry."""
_ENTRY_DOMAIN = b"privtrain-audit/v1\n"
_HEAD_DOMAIN = b"privtrain-audit-head/v1\n"


def _time(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat(timespec="microseconds")


def entry_hash(*, seq: int, at: dt.datetime, subject: str, serial: str, role: str, action: str,
               target: str, outcome: str, detail: str, prev_hash: str) -> str:
    """SHA-256 (hex) of one entry's canonical encoding, chained to ``prev_hash``."""
    body = {"seq": seq, "at": _time(at), "subject": subject, "serial": serial, "role": role,
            "action": action, "target": target, "outcome": outcome, "detail": detail,
            "prev": prev_hash}
    encoded = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(_ENTRY_DOMAIN + encoded.encode()).hexdigest()


def recomputed_hash(entry: AuditRecord) -> str:
    """What ``entry.hash`` must be, from its stored fields and stored ``prev_hash``."""
    return entry_hash(seq=entry.seq, at=entry.at, subject=entry.subject, serial=entry.serial,
                      role=entry.role, action=entry.action, target=entry.target,
                      outcome=entry.outcome, detail=entry.detail, prev_hash=entry.prev_hash)


def head_message(seq: int, head_hash: str, signed_at: dt.datetime) -> bytes:
    """The bytes a head signature covers: domain, seq, hash and signing time."""
    body = {"seq": seq, "hash": head_hash, "signed_at": _time(signed_at)}
    return _HEAD_DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign_head(key: Ed25519PrivateKey, seq: int, head_hash: str, signed_at: dt.datetime) -> str:
    """Ed25519 signature (RFC 8032), hex, of :func:`head_message`."""
    return key.sign(head_message(seq, head_hash, signed_at)).hex()


@dataclass(frozen=True)
class ChainReport:
    """What :func:`verify_chain` found.

    Attributes
    ----------
    entries, signatures : int
        Entries and signed heads checked.
    last_seq : int
        The last entry's sequence number (0 for an empty log).
    last_signed_seq : int
        The highest seq a valid signature covers (0 when none).
    first_bad : int or None
        Sequence number of the first bad entry (None when the log verifies).
    problem : str or None
        One line saying what is wrong with it.
    """

    entries: int
    signatures: int
    last_seq: int
    last_signed_seq: int
    first_bad: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return self.problem is None


def verify_chain(entries: Iterable[AuditRecord], signatures: Iterable[SignedHead],
                 head: tuple[int, str] | None, ca_cert: x509.Certificate) -> ChainReport:
    """Check a whole audit log: links, hashes, sequence, head and signed heads.

    Parameters
    ----------
    entries : Iterable[AuditRecord]
        Every stored entry, in ascending ``seq`` order.
    signatures : Iterable[SignedHead]
        Every stored signed head.
    head : tuple[int, str] or None
        The head row (seq, hash); None when the reader has none.
    ca_cert : x509.Certificate
        The CA the signer certificate must be issued by (parameter-signer role).

    Returns
    -------
    ChainReport
        ``problem`` names the first bad entry: one whose content no longer matches its
        hash (changed), one missing from the sequence (removed), one whose link to the
        previous entry is broken (reordered or removed), entries past the end the head
        or a signature names (removed at the end), or entries before a signed head that
        no longer match it (rewritten).
    """
    count, expected, prev = 0, 1, GENESIS
    hashes: dict[int, str] = {0: GENESIS}

    def bad(seq: int, problem: str) -> ChainReport:
        return ChainReport(count, 0, expected - 1, 0, seq, problem)

    for entry in entries:
        if entry.seq > expected:
            return bad(expected, f"entry {expected} is missing: the log goes from entry "
                                 f"{expected - 1} to entry {entry.seq} (removed)")
        if entry.seq < expected:
            return bad(entry.seq, f"entry {entry.seq} appears out of order after entry "
                                  f"{expected - 1} (reordered)")
        if recomputed_hash(entry) != entry.hash:
            return bad(entry.seq, f"entry {entry.seq} does not match its hash: its content was "
                                  "changed")
        if entry.prev_hash != prev:
            return bad(entry.seq, f"entry {entry.seq} does not link to entry {entry.seq - 1}: "
                                  "entries were removed or reordered")
        prev = entry.hash
        hashes[entry.seq] = entry.hash
        count += 1
        expected += 1
    last = expected - 1
    if head is not None:
        head_seq, head_hash = head
        if head_seq > last:
            return bad(last + 1, f"entry {last + 1} is missing: the head names entry {head_seq} "
                                 f"but the log ends at entry {last} (removed)")
        if head_seq < last or head_hash != hashes[last]:
            return bad(last, f"entry {last} does not match the head (seq {head_seq}): the end "
                             "of the log was changed")
    checked, signed_seq = 0, 0
    for signed in sorted(signatures, key=lambda s: s.seq):
        try:
            key, _ = verified_signer(signed.signer_certificate_pem.encode(), ca_cert,
                                     at=signed.signed_at)
            key.verify(bytes.fromhex(signed.signature),
                       head_message(signed.seq, signed.hash, signed.signed_at))
        except (PrivtrainError, InvalidSignature, ValueError) as exc:
            reason = str(exc) or "the signature does not verify"
            return ChainReport(count, checked, last, signed_seq, signed.seq,
                               f"the head signed at {_time(signed.signed_at)} (entry "
                               f"{signed.seq}) is not validly signed: {reason}")
        if signed.seq > last:
            return ChainReport(count, checked, last, signed_seq, last + 1,
                               f"entry {last + 1} is missing: a head signed at "
                               f"{_time(signed.signed_at)} covers entries up to {signed.seq}, "
                               f"the log ends at {last} (removed)")
        if hashes[signed.seq] != signed.hash:
            return ChainReport(count, checked, last, signed_seq, signed.seq,
                               f"entries up to {signed.seq} no longer match the head signed at "
                               f"{_time(signed.signed_at)}: the log was rewritten")
        checked += 1
        signed_seq = max(signed_seq, signed.seq)
    return ChainReport(count, checked, last, signed_seq)
