"""Roles read from certificates, and the caller's identity inside a real servicer."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from privtrain.errors import Unauthenticated
from privtrain.secure_transport.channels import ClientTLS, ServerTLS
from privtrain.secure_transport.issuing import ClientBundle
from privtrain.secure_transport.pki import PkiLayout, load_certificate
from privtrain.secure_transport.roles import Role, identity_of, role_of, serial_hex

EXPECTED_ROLES = {
    "server": Role.SERVER,
    "signing": Role.PARAMETER_SIGNER,
    "data-owner": Role.DATA_OWNER,
    "trainer": Role.TRAINER,
    "admin": Role.ADMIN,
}


@pytest.mark.parametrize(("name", "role"), sorted(EXPECTED_ROLES.items()))
def test_role_of_reads_the_uri_san_of_each_certificate(
    pki: PkiLayout, bundles: dict[str, ClientBundle], name: str, role: Role
) -> None:
    """role_of returns the role init_pki or issue_bundle wrote as urn:privtrain:role:<role>; the
    OU repeats it."""
    cert = load_certificate(bundles[name].cert if name in bundles else pki.cert(name))
    assert role_of(cert) is role
    ou = cert.subject.get_attributes_for_oid(x509.oid.NameOID.ORGANIZATIONAL_UNIT_NAME)
    assert ou[0].value == role.value


def test_role_of_rejects_certificates_without_a_role(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    raw_leaf: Callable[..., tuple[bytes, bytes]],
) -> None:
    """No SAN, a SAN without a role URI, or an unknown role: Unauthenticated."""
    cases = {
        "no subjectAltName": None,
        "no urn:privtrain:role:": [x509.DNSName("x.test")],
        "unknown role 'root'": [x509.UniformResourceIdentifier("urn:privtrain:role:root")],
    }
    for fragment, sans in cases.items():
        cert_pem, _ = raw_leaf(*ca, common_name="x", sans=sans)
        with pytest.raises(Unauthenticated, match=fragment):
            role_of(x509.load_pem_x509_certificate(cert_pem))


def test_identity_of_fingerprints_the_der(bundles: dict[str, ClientBundle]) -> None:
    """PeerIdentity carries the person's name (CN), role, serial, hex SHA-256 of the DER, and the
    PEM."""
    cert = load_certificate(bundles["trainer"].cert)
    identity = identity_of(cert)
    assert (identity.common_name, identity.role) == ("bob", Role.TRAINER)
    assert identity.serial == serial_hex(cert) == format(cert.serial_number, "x")
    assert (
        identity.fingerprint_sha256
        == hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    )
    assert x509.load_pem_x509_certificate(identity.certificate_pem) == cert


@pytest.mark.parametrize("role_name", ["trainer", "data-owner", "admin"])
def test_peer_identity_in_a_servicer_is_the_callers_certificate_role(
    pki: PkiLayout,
    bundles: dict[str, ClientBundle],
    serve: Callable[..., int],
    whoami: Callable[[str, ClientTLS], str],
    role_name: str,
) -> None:
    """peer_identity(context) inside a real servicer returns the role from the verified client
    certificate.
    """
    port = serve(ServerTLS.from_layout(pki))
    assert whoami(f"127.0.0.1:{port}", ClientTLS.from_bundle(bundles[role_name])) == role_name
