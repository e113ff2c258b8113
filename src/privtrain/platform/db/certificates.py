"""People's certificates as the CA issued them, and the revocation list.

A name belongs to one person with one role: ``certs issue`` refuses a name already
issued (``certs renew`` gives the same person a new certificate), so jobs, datasets
and grants, which are keyed by name, follow the person across renewals. A revoked
serial stays in the table with its time, for the CRL and the audit.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from privtrain.errors import FailedPrecondition, NotFound, shown
from privtrain.platform.db._convert import check_aware
from privtrain.platform.db.errors import AlreadyExists
from privtrain.platform.db.models import Certificate, utcnow
from privtrain.platform.db.records import CertificateRecord
from privtrain.platform.db.transaction import Transactions


def _record(row: Certificate) -> CertificateRecord:
    return CertificateRecord(
        serial=row.serial, common_name=row.common_name, role=row.role,
        fingerprint_sha256=row.fingerprint_sha256, not_before=row.not_before,
        not_after=row.not_after, issued_at=row.issued_at, revoked_at=row.revoked_at,
        revoked_by=row.revoked_by, revocation_reason=row.revocation_reason,
    )


class CertificateRegistry:
    """Record issued certificates, look people up, revoke."""

    def __init__(self, tx: Transactions) -> None:
        self._tx = tx

    def record(self, *, serial: str, common_name: str, role: str, fingerprint_sha256: str,
               not_before: datetime, not_after: datetime, renewal: bool = False) -> CertificateRecord:
        """Store a newly issued certificate.

        Parameters
        ----------
        serial : str
            Lower-case hex serial number.
        common_name, role : str
            The person and their role.
        fingerprint_sha256 : str
            Hex SHA-256 of the DER certificate.
        not_before, not_after : datetime
            Validity (timezone-aware).
        renewal : bool
            The person must already exist (``certs renew``); else they must not.

        Raises
        ------
        AlreadyExists
            A first certificate for a name already issued.
        NotFound
            A renewal for a name never issued.
        FailedPrecondition
            A renewal with another role than the person's.
        """
        with self._tx.transaction() as session:
            self._check_name(session, common_name, role, renewal)
            row = Certificate(
                serial=serial, common_name=common_name, role=role,
                fingerprint_sha256=fingerprint_sha256,
                not_before=check_aware(not_before, "not_before"),
                not_after=check_aware(not_after, "not_after"), issued_at=utcnow(),
            )
            session.add(row)
            session.flush()
            return _record(row)

    def check_name(self, common_name: str, *, renewal: bool) -> str | None:
        """Check, before a certificate is made, that :meth:`record` would take it; returns
        the person's role (None for a new person).

        Raises
        ------
        AlreadyExists, NotFound
            As :meth:`record`.
        """
        with self._tx.read() as session:
            return self._check_name(session, common_name, None, renewal)

    @staticmethod
    def _check_name(session: Session, common_name: str, role: str | None,
                    renewal: bool) -> str | None:
        existing = session.scalar(select(Certificate.role)
                                  .where(Certificate.common_name == common_name).limit(1))
        if existing is not None and not renewal:
            raise AlreadyExists(
                f"{common_name!r} already has a certificate (role {existing}): give them a new "
                "one with `privtrain certs renew`, or choose another name for someone else"
            )
        if existing is None and renewal:
            raise NotFound(f"no certificate was ever issued to {shown(common_name)}; use "
                           "`privtrain certs issue`")
        if existing is not None and role is not None and existing != role:
            raise FailedPrecondition(f"{common_name!r} has role {existing}, not {role}")
        return existing

    def get(self, serial: str) -> CertificateRecord:
        """The certificate with ``serial``.

        Raises
        ------
        NotFound
            No certificate with that serial was issued.
        """
        with self._tx.read() as session:
            row = session.get(Certificate, serial)
            if row is None:
                raise NotFound(f"no certificate with serial {shown(serial)} was issued "
                               "(privtrain certs list)")
            return _record(row)

    def of_person(self, common_name: str) -> list[CertificateRecord]:
        """Every certificate issued to ``common_name``, oldest first."""
        with self._tx.read() as session:
            rows = session.scalars(select(Certificate).where(Certificate.common_name == common_name)
                                   .order_by(Certificate.issued_at, Certificate.serial))
            return [_record(row) for row in rows]

    def role_of(self, common_name: str) -> str | None:
        """The role of the person called ``common_name``, or None if none was issued."""
        with self._tx.read() as session:
            return session.scalar(select(Certificate.role)
                                  .where(Certificate.common_name == common_name).limit(1))

    def revoke(self, serial: str, *, by: str, reason: str = "") -> tuple[CertificateRecord, bool]:
        """Revoke one certificate; returns it and whether this call revoked it (False: it
        already was, nothing changed).

        Raises
        ------
        NotFound
            No certificate with that serial was issued.
        """
        now = utcnow()
        with self._tx.transaction() as session:
            changed = session.execute(
                update(Certificate).where(Certificate.serial == serial,
                                          Certificate.revoked_at.is_(None))
                .values(revoked_at=now, revoked_by=by[:255], revocation_reason=reason[:255] or None)
                .execution_options(synchronize_session=False)
            ).rowcount == 1  # type: ignore[attr-defined]
            row = session.get(Certificate, serial)
            if row is None:
                raise NotFound(f"no certificate with serial {shown(serial)} was issued "
                               "(privtrain certs list)")
            session.refresh(row)
            return _record(row), changed

    def revoked(self) -> list[CertificateRecord]:
        """Every revoked certificate, in the order they were revoked."""
        with self._tx.read() as session:
            rows = session.scalars(select(Certificate).where(Certificate.revoked_at.is_not(None))
                                   .order_by(Certificate.revoked_at, Certificate.serial))
            return [_record(row) for row in rows]

    def list(self) -> list[CertificateRecord]:
        """Every issued certificate, by name then issue time."""
        with self._tx.read() as session:
            rows = session.scalars(select(Certificate).order_by(
                Certificate.common_name, Certificate.issued_at, Certificate.serial))
            return [_record(row) for row in rows]
