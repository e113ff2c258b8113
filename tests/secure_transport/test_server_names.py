"""check_server_names and create_server's refusal of certificates that do not cover the host
(C-X01).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from privtrain.errors import InvalidInput
from privtrain.secure_transport.channels import ServerTLS, create_server
from privtrain.secure_transport.errors import CertificateNameMismatch
from privtrain.secure_transport.pki import PkiLayout, check_server_names, load_certificate

CA = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
RawLeaf = Callable[..., tuple[bytes, bytes]]


def test_init_pki_server_cert_covers_default_names(pki: PkiLayout) -> None:
    """C-X01: the default server certificate covers 127.0.0.1, ::1 (bare or bracketed) and
    localhost.
    """
    cert = load_certificate(pki.cert("server"))
    for host in ("127.0.0.1", "::1", "[::1]", "localhost", "LOCALHOST"):
        check_server_names(cert, host)


def test_mismatch_names_expected_host_and_presented_names(bad_server_tls: ServerTLS) -> None:
    """C-X01: a CN-only or wrong-DNS certificate for 127.0.0.1 raises a message naming 127.0.0.1 and
    what the cert presents.
    """
    cert = x509.load_pem_x509_certificate(bad_server_tls.cert_pem)
    with pytest.raises(CertificateNameMismatch) as excinfo:
        check_server_names(cert, "127.0.0.1")
    message = str(excinfo.value)
    assert message.startswith("server certificate does not cover 127.0.0.1: it presents CN=")
    assert "an IP must be an IP SAN" in message
    if "training-01.test" in message:
        assert "SAN DNS:training-01.test" in message
    else:
        assert "CN=127.0.0.1, no SAN" in message
    assert isinstance(excinfo.value, InvalidInput)


def test_ip_written_as_dns_name_does_not_cover_the_ip(ca: CA, raw_leaf: RawLeaf) -> None:
    """C-X01: DNS:127.0.0.1 does not cover the IP 127.0.0.1; only an IP SAN does."""
    cert_pem, _ = raw_leaf(*ca, common_name="x", sans=[x509.DNSName("127.0.0.1")])
    with pytest.raises(CertificateNameMismatch, match="SAN DNS:127.0.0.1"):
        check_server_names(x509.load_pem_x509_certificate(cert_pem), "127.0.0.1")


def test_wildcard_matches_exactly_one_label(ca: CA, raw_leaf: RawLeaf) -> None:
    """A *.example.org SAN covers a.example.org but neither example.org nor a.b.example.org."""
    cert_pem, _ = raw_leaf(*ca, common_name="x", sans=[x509.DNSName("*.example.org")])
    cert = x509.load_pem_x509_certificate(cert_pem)
    check_server_names(cert, "a.example.org")
    for host in ("example.org", "a.b.example.org"):
        with pytest.raises(CertificateNameMismatch, match="a host name must be a DNS SAN"):
            check_server_names(cert, host)


def test_create_server_refuses_cert_not_covering_host(bad_server_tls: ServerTLS) -> None:
    """C-X01: create_server checks its certificate against the bind host before binding anything."""
    with pytest.raises(CertificateNameMismatch, match="127.0.0.1"):
        create_server(bad_server_tls, "127.0.0.1", 0)


def test_create_server_skips_name_check_for_wildcard_bind(bad_server_tls: ServerTLS) -> None:
    """Binding 0.0.0.0 names no host to check, so the certificate is accepted as is."""
    server, port = create_server(bad_server_tls, "0.0.0.0", 0)
    assert port > 0
    server.stop(grace=None)


def test_create_server_refuses_a_key_of_another_certificate(pki: PkiLayout) -> None:
    """A server key that does not match the certificate raises InvalidInput instead of a TLS failure
    later.
    """
    tls = ServerTLS.from_layout(pki)
    mixed = ServerTLS(tls.ca_pem, tls.cert_pem, pki.key("signing").read_bytes())
    with pytest.raises(InvalidInput, match="does not belong"):
        create_server(mixed)
