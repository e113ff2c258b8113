"""People's certificates end to end: issue or renew a bundle and record it, revoke, publish the CRL.

Used by the operator's ``privtrain certs ...`` commands on the server's home and PKI
folder, and by the server's admin calls (revocation). The CA key is read from the
operator's folder (``ca/ca.key``) only to sign certificates and CRLs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes

from privtrain.errors import FailedPrecondition, InvalidInput, NotFound, PrivtrainError, shown
from privtrain.platform.db.records import CertificateRecord
from privtrain.platform.db.repositories import Database
from privtrain.secure_transport.issuing import (
    DEFAULT_DAYS,
    ClientBundle,
    check_person_name,
    issue_bundle,
    load_ca,
)
from privtrain.secure_transport.pki import PkiLayout
from privtrain.secure_transport.revocation import build_crl, write_crl
from privtrain.secure_transport.roles import Role, serial_hex

MAX_SERIAL_HEX = 40
"""Longest certificate serial, in hex digits: 20 octets (RFC 5280 4.1.2.2)."""


def issue_person(db: Database, layout: PkiLayout, *, name: str, out: Path, role: Role | None = None,
                 days: int = DEFAULT_DAYS, overwrite: bool = False) -> CertificateRecord:
    """Issue a bundle to a new person (``role`` given) or renew an existing one's (``role`` None).

    The certificate is recorded in the database (the name then belongs to that person and
    role); if recording fails, the bundle just written is removed again.

    Raises
    ------
    AlreadyExists
        A new person whose name is taken.
    NotFound
        A renewal for someone never issued a certificate.
    InvalidInput, FailedPrecondition
        See :func:`privtrain.secure_transport.issuing.issue_bundle`.
    """
    check_person_name(name)
    existing = db.certificates.check_name(name, renewal=role is None)
    role = role or Role(existing)
    cert = issue_bundle(layout, role=role, name=name, out=out, days=days, overwrite=overwrite)
    try:
        return db.certificates.record(
            serial=serial_hex(cert), common_name=name, role=role.value,
            fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
            not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
            renewal=existing is not None)
    except BaseException:
        for path in ClientBundle(out).files:
            path.unlink(missing_ok=True)
        raise


def revoke(db: Database, *, serial: str = "", name: str = "", by: str,
           reason: str = "") -> list[CertificateRecord]:
    """Revoke one certificate (``serial``) or every valid one of a person (``name``).

    Returns the certificates this call revoked.

    Raises
    ------
    InvalidInput
        Neither or both of ``serial`` and ``name``, or a serial that is not hex.
    NotFound
        No such serial was issued, or no certificate to that name.
    FailedPrecondition
        The certificate is already revoked, or the person has none left to revoke.
    """
    if bool(serial) == bool(name):
        raise InvalidInput("name exactly one of --serial and --name")
    if serial:
        wanted = serial.lower().replace(":", "").removeprefix("0x").lstrip("0") or "0"
        try:
            int(wanted, 16)
        except ValueError:
            raise InvalidInput(f"serial {shown(serial)} is not hexadecimal (privtrain certs "
                               "list)") from None
        if len(wanted) > MAX_SERIAL_HEX:
            raise InvalidInput(f"serial {shown(serial)} is longer than a certificate serial "
                               f"({MAX_SERIAL_HEX} hex digits, RFC 5280 4.1.2.2)")
        targets = [db.certificates.get(wanted)]
        if targets[0].revoked_at is not None:
            raise FailedPrecondition(f"certificate {wanted} is already revoked")
    else:
        issued = db.certificates.of_person(name)
        if not issued:
            raise NotFound(f"no certificate was ever issued to {shown(name)} (privtrain certs "
                           "list)")
        targets = [c for c in issued if c.revoked_at is None]
        if not targets:
            raise FailedPrecondition(f"every certificate of {name} is already revoked")
    revoked = []
    for cert in targets:
        record, changed = db.certificates.revoke(cert.serial, by=by, reason=reason)
        if changed:
            revoked.append(record)
    return revoked


def publish_crl(db: Database, layout: PkiLayout) -> bool:
    """Write ``layout.crl`` (every revoked certificate, signed by the CA); False when the CA
    key is not readable here (the revocation still holds: the server checks the database).

    The CRL number (RFC 5280 5.2.3, monotonically increasing) is the issue time in
    microseconds since the epoch, so a CRL issued later always has a greater one.
    """
    try:
        ca_cert, ca_key = load_ca(layout)
    except PrivtrainError:
        return False
    now = datetime.now(UTC)
    revoked = [(c.serial, c.revoked_at) for c in db.certificates.revoked() if c.revoked_at is not None]
    write_crl(layout.crl, build_crl(ca_cert, ca_key, revoked, now=now,
                                    number=int(now.timestamp() * 1_000_000)))
    return True
