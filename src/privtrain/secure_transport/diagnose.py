"""Explain why a TLS connection to a privtrain server failed.

gRPC reports every handshake failure as ``UNAVAILABLE`` with little detail.
This module reconnects with Python's :mod:`ssl`, deliberately without
verification, only to fetch the certificate the server presents, then checks
it the way gRPC would and says in one sentence what is wrong.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from privtrain.secure_transport.errors import CertificateNameMismatch
from privtrain.secure_transport.server_names import check_server_names

if TYPE_CHECKING:
    from privtrain.secure_transport.channels import ClientTLS

__all__ = ["diagnose_connection", "fetch_server_certificate"]


def diagnose_connection(host: str, port: int, tls: ClientTLS, timeout_s: float = 3.0) -> str | None:
    """Say what is wrong with the server certificate at ``host:port``, if anything.

    Checks, in order: the certificate covers ``host`` (see
    :func:`~privtrain.secure_transport.server_names.check_server_names`), it
    was issued by the CA in ``tls.ca_pem`` (RFC 5280 signature check), and it
    is within its validity window now.

    Parameters
    ----------
    host : str
        Host the client dialed (name or IP literal).
    port : int
        TCP port.
    tls : ClientTLS
        The client's CA and, when present, its certificate and key, presented
        so that servers requiring client auth complete the handshake.
    timeout_s : float
        Connect and handshake timeout (seconds).

    Returns
    -------
    str | None
        One message per problem found, joined by "; ", or a description of
        the connection error; ``None`` when the certificate looks fine (the
        failure then lies elsewhere, e.g. the server refused our certificate).
        Never raises.
    """
    try:
        der = fetch_server_certificate(host, port, tls, timeout_s)
    except Exception as exc:  # noqa: BLE001 - a diagnosis must never itself fail
        return f"could not open a TLS connection to {host}:{port}: {exc}"
    try:
        return _problems(x509.load_der_x509_certificate(der), host, tls.ca_pem)
    except Exception as exc:  # noqa: BLE001 - e.g. an unparsable certificate
        return (
            f"the server at {host}:{port} presented a certificate that could not be checked: {exc}"
        )


def fetch_server_certificate(host: str, port: int, tls: ClientTLS, timeout_s: float = 3.0) -> bytes:
    """Complete a TLS handshake without verification and return the server's leaf (DER).

    ALPN offers ``h2`` as gRPC does, since some servers refuse a handshake without it.

    Raises
    ------
    OSError, ssl.SSLError
        On connection or handshake failure.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory(prefix="privtrain-diagnose-") as scratch:
        if tls.cert_pem is not None and tls.key_pem is not None:
            # ssl loads client credentials only from files; the folder is private (0700).
            cert_file, key_file = Path(scratch) / "cert.pem", Path(scratch) / "key.pem"
            cert_file.write_bytes(tls.cert_pem)
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(tls.key_pem)
            context.load_cert_chain(cert_file, key_file)
        bare = host.strip("[]")
        with (
            socket.create_connection((bare, port), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=bare) as tls_socket,
        ):
            der = tls_socket.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError("the server presented no certificate")
    return der


def _problems(cert: x509.Certificate, host: str, ca_pem: bytes) -> str | None:
    problems: list[str] = []
    try:
        check_server_names(cert, host)
    except CertificateNameMismatch as exc:
        problems.append(str(exc))
    ca = x509.load_pem_x509_certificate(ca_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:  # noqa: BLE001 - ValueError, TypeError or InvalidSignature: all mean "not ours"
        problems.append(
            f"server certificate is not issued by our CA: its issuer is "
            f"{cert.issuer.rfc4514_string()} (key id {_issuer_key_id(cert)}), our CA is "
            f"{ca.subject.rfc4514_string()} (key id {_subject_key_id(ca)}); the server uses "
            f"certificates from another PKI, or our ca.pem is stale"
        )
    now = dt.datetime.now(dt.UTC)
    if now > cert.not_valid_after_utc:
        problems.append(f"server certificate expired at {cert.not_valid_after_utc.isoformat()}")
    elif now < cert.not_valid_before_utc:
        problems.append(
            f"server certificate is not valid until {cert.not_valid_before_utc.isoformat()} "
            f"(check the clocks of server and client)"
        )
    return "; ".join(problems) if problems else None


def _issuer_key_id(cert: x509.Certificate) -> str:
    """Hex of the Authority Key Identifier: tells apart two CAs that share a name."""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return "unknown"
    return aki.key_identifier.hex() if aki.key_identifier else "unknown"


def _subject_key_id(cert: x509.Certificate) -> str:
    """Hex of the Subject Key Identifier."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    except x509.ExtensionNotFound:
        return "unknown"
