"""Roles carried inside X.509 certificates, and the verified identity of a gRPC peer.

A role lives in the certificate as a uniform resource identifier subject
alternative name (RFC 5280, section 4.2.1.6) of the form
``urn:privtrain:role:<role>``. The CA signs it, so a peer cannot claim a role
its certificate was not issued for; request metadata is never consulted.
"""

from __future__ import annotations

import enum
import functools
import hashlib
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from privtrain.errors import Unauthenticated

ROLE_URI_PREFIX = "urn:privtrain:role:"


class Role(str, enum.Enum):
    """What a certificate holder may do; the value is the string stored in the certificate."""

    DATA_OWNER = "data-owner"
    TRAINER = "trainer"
    ADMIN = "admin"
    SERVER = "server"
    PARAMETER_SIGNER = "parameter-signer"

    @property
    def uri(self) -> str:
        """The URI SAN that names this role, e.g. ``urn:privtrain:role:trainer``."""
        return ROLE_URI_PREFIX + self.value


@dataclass(frozen=True)
class PeerIdentity:
    """Who is on the other end of a verified TLS session.

    Attributes
    ----------
    common_name : str
        Subject CN of the peer certificate ("" when the subject has none).
    role : Role
        Role read from the certificate's ``urn:privtrain:role:`` URI SAN.
    fingerprint_sha256 : str
        Lower-case hex SHA-256 of the certificate's DER encoding (64 characters).
    certificate_pem : bytes
        The certificate, PEM encoded.
    serial : str
        The certificate's serial number, lower-case hex (see :func:`serial_hex`).

    A person is their common name (unique among the people the CA issued
    certificates to, and kept across renewals); one certificate of theirs is the
    serial.
    """

    common_name: str
    role: Role
    fingerprint_sha256: str
    certificate_pem: bytes
    serial: str = ""


def serial_hex(cert: x509.Certificate) -> str:
    """A certificate's serial number as lower-case hex without separators (RFC 5280 4.1.2.2).

    The form ``privtrain certs list`` prints and ``certs revoke --serial`` takes.
    """
    return format(cert.serial_number, "x")


def role_of(cert: x509.Certificate) -> Role:
    """Read the role a certificate was issued for.

    Parameters
    ----------
    cert : x509.Certificate
        A certificate issued by the privtrain CA.

    Returns
    -------
    Role
        The role named by the single ``urn:privtrain:role:`` URI SAN.

    Raises
    ------
    Unauthenticated
        When the certificate has no SAN extension, no role URI, an unknown role,
        or more than one role URI (ambiguous: refuse rather than pick one).
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise Unauthenticated(
            f"certificate {_subject(cert)} has no subjectAltName, so it names no "
            f"privtrain role; issue it with the privtrain PKI tools"
        ) from None
    uris = [
        u
        for u in san.get_values_for_type(x509.UniformResourceIdentifier)
        if u.startswith(ROLE_URI_PREFIX)
    ]
    if not uris:
        raise Unauthenticated(
            f"certificate {_subject(cert)} carries no {ROLE_URI_PREFIX}<role> URI SAN; "
            f"issue it with the privtrain PKI tools"
        )
    if len(uris) > 1:
        raise Unauthenticated(
            f"certificate {_subject(cert)} names several roles: {', '.join(uris)}"
        )
    value = uris[0][len(ROLE_URI_PREFIX) :]
    try:
        return Role(value)
    except ValueError:
        known = ", ".join(r.value for r in Role)
        raise Unauthenticated(
            f"certificate {_subject(cert)} names unknown role {value!r} (known: {known})"
        ) from None


def identity_of(cert: x509.Certificate) -> PeerIdentity:
    """Build a :class:`PeerIdentity` from an already verified certificate.

    Raises
    ------
    Unauthenticated
        When the certificate names no valid role (see :func:`role_of`).
    """
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(cns[0].value) if cns else ""
    der = cert.public_bytes(serialization.Encoding.DER)
    return PeerIdentity(
        common_name=common_name,
        role=role_of(cert),
        fingerprint_sha256=hashlib.sha256(der).hexdigest(),
        certificate_pem=cert.public_bytes(serialization.Encoding.PEM),
        serial=serial_hex(cert),
    )


def peer_identity(context: grpc.ServicerContext) -> PeerIdentity:
    """Identify the caller of a gRPC method from its verified client certificate.

    gRPC fills ``auth_context()["x509_pem_cert"]`` only after the TLS handshake
    verified the client chain against the server's trusted CA, so the identity
    returned here is authenticated; request metadata is never read.

    Parameters
    ----------
    context : grpc.ServicerContext
        The context of the call being served.

    Returns
    -------
    PeerIdentity
        Common name, role, SHA-256 fingerprint, serial and PEM of the peer certificate.

    Raises
    ------
    Unauthenticated
        When the connection carries no verified client certificate (plaintext
        port, or TLS without client authentication), the PEM cannot be parsed,
        or the certificate names no valid role.
    """
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        raise Unauthenticated(
            "the call carries no verified client certificate; connect over mTLS with a "
            "certificate issued by the privtrain CA"
        )
    try:
        cert = x509.load_pem_x509_certificate(pems[0])
    except ValueError as exc:
        raise Unauthenticated(f"the peer certificate could not be parsed: {exc}") from None
    return identity_of(cert)


@functools.lru_cache(maxsize=4096)
def _parsed(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def peer_certificate(context: grpc.ServicerContext) -> x509.Certificate | None:
    """The call's verified client certificate (parsed once per distinct PEM), or None.

    None when the connection carries no client certificate, or one that cannot be parsed
    (the handler's own check, :func:`peer_identity`, then refuses the call).
    """
    pems = context.auth_context().get("x509_pem_cert") or []
    if not pems:
        return None
    try:
        return _parsed(pems[0])
    except ValueError:
        return None


def peer_name(context: grpc.ServicerContext) -> str:
    """Who is calling, for limits and log lines: the verified certificate's CN (its subject
    when it has no CN), or ``""`` for a call without a client certificate."""
    cert = peer_certificate(context)
    if cert is None:
        return ""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"
