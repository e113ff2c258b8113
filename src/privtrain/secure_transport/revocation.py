"""Revocation that takes effect on the next call, and the CRL published for everyone else.

grpcio for Python has no CRL option, and a TLS session, once established, is never
checked again: a revoked certificate on an already-open channel would go on working.
So the server checks the serial of the verified peer certificate on **every call**
(:class:`RevocationInterceptor`, around every service, health and reflection
included) against the revocation list, which the caller supplies as a function.

The same list is published as an X.509 CRL (RFC 5280 section 5, :func:`build_crl`),
signed by the CA, for other consumers (a proxy in front of the server, an auditor).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from privtrain.atomic_files import atomic_write_bytes
from privtrain.secure_transport.method_handlers import behavior_of, with_behavior
from privtrain.secure_transport.roles import peer_certificate, serial_hex

CRL_VALIDITY = dt.timedelta(days=7)
"""nextUpdate of a published CRL: consumers must fetch a newer one by then (RFC 5280 5.1.2.5)."""

IsRevoked = Callable[[str], str | None]
"""``serial (hex) -> when and by whom`` (e.g. "at 2026-12-06 12:00:00 UTC by carol") when the
certificate is revoked, else None."""
OnRefused = Callable[[str, x509.Certificate, str], None]
"""``(full method name, peer certificate, reason)``, called for every refused call."""


def build_crl(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
              revoked: Iterable[tuple[str, dt.datetime]], *, number: int,
              now: dt.datetime | None = None) -> x509.CertificateRevocationList:
    """An X.509 v2 CRL of ``revoked``, signed by the CA (ECDSA with SHA-256).

    RFC 5280 section 5: issuer = the CA's subject, thisUpdate = ``now``, nextUpdate =
    ``now`` + :data:`CRL_VALIDITY`, one revokedCertificate (serial, revocationDate) per
    entry, and the CRL Number (5.2.3) and Authority Key Identifier (5.2.1) extensions.

    Parameters
    ----------
    ca_cert, ca_key : x509.Certificate, ec.EllipticCurvePrivateKey
        The issuing CA (its key must carry cRLSign, as :func:`create_ca` makes it).
    revoked : Iterable[tuple[str, datetime]]
        ``(serial as hex, revocation time, timezone-aware)``.
    number : int
        The CRL number, growing with every CRL issued (e.g. the count of revocations).
    now : datetime, optional
        thisUpdate; the current UTC time by default.

    Returns
    -------
    x509.CertificateRevocationList
    """
    now = now or dt.datetime.now(dt.UTC)
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + CRL_VALIDITY)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
    )
    for serial, at in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(int(serial, 16))
            .revocation_date(at).build()
        )
    return builder.sign(ca_key, hashes.SHA256())


def write_crl(path: Path, crl: x509.CertificateRevocationList) -> None:
    """Write ``crl`` as PEM, mode 0644 (it is public), atomically."""
    atomic_write_bytes(path, crl.public_bytes(serialization.Encoding.PEM), mode=0o644)


class RevocationInterceptor(grpc.ServerInterceptor):
    """Refuses every call whose verified client certificate is revoked: UNAUTHENTICATED.

    Runs before the handler, on every call (a new channel or one opened before the
    revocation alike); a call without a client certificate passes through, for the
    handler's own check to refuse.

    Parameters
    ----------
    is_revoked : Callable[[str], str | None]
        The revocation list: serial (hex) to when and by whom it was revoked, or None.
    on_refused : Callable[[str, x509.Certificate, str], None], optional
        Told of each refusal (method, certificate, reason), e.g. for the audit log.
    """

    def __init__(self, is_revoked: IsRevoked, on_refused: OnRefused | None = None) -> None:
        self._is_revoked = is_revoked
        self._on_refused = on_refused

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return with_behavior(handler, self._checked(behavior_of(handler), method))

    def _checked(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        def checked(request: Any, context: grpc.ServicerContext) -> Any:
            cert = peer_certificate(context)
            if cert is not None:
                reason = self._is_revoked(serial_hex(cert))
                if reason is not None:
                    if self._on_refused is not None:
                        self._on_refused(method, cert, reason)
                    context.abort(grpc.StatusCode.UNAUTHENTICATED, refusal(cert, reason))
            return behavior(request, context)

        return checked


def refusal(cert: x509.Certificate, reason: str) -> str:
    """The one-line message a revoked certificate's call gets."""
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    name = str(names[0].value) if names else cert.subject.rfc4514_string()
    return (f"certificate {serial_hex(cert)} of {name} was revoked {reason}; ask the operator "
            "for a new one (privtrain certs renew)")
