"""Does a server certificate cover the host a client dials? (RFC 6125, RFC 5280 4.2.1.6)."""

from __future__ import annotations

import ipaddress

from cryptography import x509
from cryptography.x509.oid import NameOID

from privtrain.secure_transport.errors import CertificateNameMismatch


def check_server_names(cert: x509.Certificate, host: str) -> None:
    """Check that ``cert``'s subject alternative names cover ``host`` as TLS clients do.

    An IP literal must appear as an iPAddress SAN and a host name as a
    dNSName SAN (a ``*.`` wildcard matches exactly one left-most label). The
    subject CN is never consulted: gRPC, browsers and RFC 6125 ignore it once
    a SAN exists, and never match an IP against it.

    Parameters
    ----------
    cert : x509.Certificate
        The server's leaf certificate.
    host : str
        The host clients dial: a name, an IPv4 literal, or an IPv6 literal
        with or without brackets.

    Raises
    ------
    CertificateNameMismatch
        When ``host`` is not covered; the message names ``host`` and every
        name the certificate presents, e.g. ``server certificate does not
        cover 127.0.0.1: it presents CN=127.0.0.1, SAN DNS:training-01.test
        (an IP must be an IP SAN)``.
    """
    bare = host.strip("[]")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        ip = None
    if ip is not None:
        if ip in san.get_values_for_type(x509.IPAddress):
            return
        hint = (
            f"an IP must be an IP SAN; reissue the certificate with {bare} among its server names"
        )
    else:
        if any(_dns_matches(pattern, bare) for pattern in san.get_values_for_type(x509.DNSName)):
            return
        hint = (
            f"a host name must be a DNS SAN, the CN is ignored; reissue the certificate "
            f"with {bare} among its server names"
        )
    raise CertificateNameMismatch(
        f"server certificate does not cover {bare}: it presents {presented_names(cert)} ({hint})"
    )


def presented_names(cert: x509.Certificate) -> str:
    """Describe the names a certificate presents, e.g. ``CN=x, SAN DNS:a, IP:127.0.0.1``."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    parts = [f"CN={cns[0].value!s}" if cns else "no CN"]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        parts.append("no SAN")
        return ", ".join(parts)
    names = [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
    names += [f"IP:{a}" for a in san.get_values_for_type(x509.IPAddress)]
    parts.append("SAN " + ", ".join(names) if names else "no DNS or IP SAN")
    return ", ".join(parts)


def _dns_matches(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, tail = host.partition(".")
        return bool(head) and tail == pattern[2:]
    return pattern == host
