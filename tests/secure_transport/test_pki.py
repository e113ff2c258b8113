"""Certificates from init_pki / issue_certificate: profile, strict verification, files (C-X01,
C-X03).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store

from privtrain.errors import FailedPrecondition, InvalidInput
from privtrain.secure_transport.issuing import ClientBundle
from privtrain.secure_transport.pki import (
    LEAF_NAMES,
    PkiLayout,
    init_pki,
    issue_certificate,
    load_certificate,
    load_private_key,
)
from privtrain.secure_transport.roles import Role

CLIENT_ROLES = ("data-owner", "trainer", "admin")


E = TypeVar("E", bound=x509.ExtensionType)


def _ext(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


def test_server_cert_passes_strict_server_verifier_for_name_and_ip(pki: PkiLayout) -> None:
    """C-X03: the server leaf verifies under cryptography's webpki policy for localhost, 127.0.0.1
    and ::1.
    """
    ca, server = load_certificate(pki.ca_cert), load_certificate(pki.cert("server"))
    builder = PolicyBuilder().store(Store([ca]))
    for subject in (
        DNSName("localhost"),
        IPAddress(ipaddress.ip_address("127.0.0.1")),
        IPAddress(ipaddress.ip_address("::1")),
    ):
        chain = builder.build_server_verifier(subject).verify(server, [])
        assert chain[-1] == ca


@pytest.mark.parametrize("role", CLIENT_ROLES)
def test_client_certs_pass_strict_client_verifier(
    pki: PkiLayout, bundles: dict[str, ClientBundle], role: str
) -> None:
    """C-X03: every person's leaf verifies under cryptography's webpki client policy; its name is
    the subject the verifier reports."""
    ca = load_certificate(pki.ca_cert)
    cert = load_certificate(bundles[role].cert)
    verified = PolicyBuilder().store(Store([ca])).build_client_verifier().verify(cert, [])
    assert verified.chain[-1] == ca
    name = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert DNSName(str(name)) in (verified.subjects or [])


def test_signing_cert_is_ed25519_leaf_of_ca_with_digital_signature_only(pki: PkiLayout) -> None:
    """C-X03: the parameter signer chains to the CA under the webpki CA policy, is Ed25519, has no
    EKU.
    """
    ca, signing = load_certificate(pki.ca_cert), load_certificate(pki.cert("signing"))
    verifier = (
        PolicyBuilder()
        .store(Store([ca]))
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ExtensionPolicy.permit_all()
        )
        .build_client_verifier()
    )
    assert verifier.verify(signing, []).chain[-1] == ca
    assert isinstance(signing.public_key(), ed25519.Ed25519PublicKey)
    usage = _ext(signing, x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    with pytest.raises(x509.ExtensionNotFound):
        _ext(signing, x509.ExtendedKeyUsage)


def test_ca_profile(pki: PkiLayout) -> None:
    """C-X03: CA is self-signed P-256, critical BasicConstraints(ca, pathlen 0) and
    KeyUsage(certSign, cRLSign), SKI, 10 years.
    """
    ca = load_certificate(pki.ca_cert)
    ca.verify_directly_issued_by(ca)
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    constraints = _ext(ca, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = _ext(ca, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    _ext(ca, x509.SubjectKeyIdentifier)
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert dt.timedelta(days=3649) < lifetime < dt.timedelta(days=3651)


@pytest.mark.parametrize("name", LEAF_NAMES)
def test_leaf_profile(pki: PkiLayout, name: str) -> None:
    """C-X03: each leaf has critical BasicConstraints(ca=False) and KeyUsage, SAN, SKI, AKI = CA
    SKI, 397 days, 159-bit serial.
    """
    ca, leaf = load_certificate(pki.ca_cert), load_certificate(pki.cert(name))
    assert _ext(leaf, x509.BasicConstraints).critical
    assert not _ext(leaf, x509.BasicConstraints).value.ca
    usage = _ext(leaf, x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    _ext(leaf, x509.SubjectAlternativeName)
    ski = _ext(leaf, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())
    aki = _ext(leaf, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == _ext(ca, x509.SubjectKeyIdentifier).value.digest
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(days=397, minutes=5)
    assert 0 < leaf.serial_number < 2**159
    if name == "server":
        assert list(_ext(leaf, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_server_san_has_ips_as_ip_addresses_and_names_as_dns(pki: PkiLayout) -> None:
    """C-X01: 127.0.0.1 and ::1 are IPAddress SANs, localhost a DNSName, and no IP is written as a
    DNSName.
    """
    san = _ext(load_certificate(pki.cert("server")), x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    dns = san.get_values_for_type(x509.DNSName)
    assert dns == ["localhost"]
    for name in dns:
        with pytest.raises(ValueError):
            ipaddress.ip_address(name)


def test_custom_server_names_split_into_ip_and_dns(tmp_path: Path) -> None:
    """init_pki(server_names=...) turns IP literals (v4, v6, bracketed) into IP SANs and the rest
    into DNS SANs.
    """
    layout = init_pki(tmp_path, server_names=["train.example.org", "10.1.2.3", "[fd00::7]"])
    san = _ext(load_certificate(layout.cert("server")), x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["train.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("fd00::7"),
    ]


def test_private_keys_are_0600_and_certificates_0644(pki: PkiLayout) -> None:
    """C-X03: every private key file is mode 0600 (owner only), certificates 0644; the operator's
    folder and the CA key's own folder are 0700, and no person's key is kept there."""
    assert stat.S_IMODE(os.stat(pki.directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(pki.ca_dir).st_mode) == 0o700
    assert pki.ca_key.parent == pki.ca_dir != pki.directory
    assert sorted(p.name for p in pki.directory.glob("*.key")) == ["server.key", "signing.key"]
    for name in LEAF_NAMES:
        assert stat.S_IMODE(os.stat(pki.key(name)).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(pki.cert(name)).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(pki.ca_key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(pki.ca_cert).st_mode) == 0o644
    assert not [p for p in pki.directory.iterdir() if p.name.startswith(".")], (
        "temp files left behind"
    )


def test_key_files_stay_0600_under_a_permissive_umask(tmp_path: Path) -> None:
    """Modes are set explicitly, not inherited from the umask (0o000 here)."""
    old = os.umask(0)
    try:
        layout = init_pki(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(layout.key("server")).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(layout.ca_key).st_mode) == 0o600


def test_init_pki_refuses_to_replace_a_ca_unless_asked(tmp_path: Path) -> None:
    """A second init_pki in the same folder raises FailedPrecondition; overwrite=True issues a new
    CA.
    """
    first = load_certificate(init_pki(tmp_path).ca_cert)
    with pytest.raises(FailedPrecondition, match="overwrite=True"):
        init_pki(tmp_path)
    second = load_certificate(init_pki(tmp_path, overwrite=True).ca_cert)
    assert first.serial_number != second.serial_number


def test_issue_certificate_refuses_an_ip_as_dns_name(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    """The product never writes an IP as a DNSName: issue_certificate raises InvalidInput naming
    the fix.
    """
    with pytest.raises(InvalidInput, match="IP SAN"):
        issue_certificate(*ca, common_name="s", role=Role.SERVER, dns_names=["127.0.0.1"])


def test_loaders_name_the_unreadable_file(tmp_path: Path) -> None:
    """load_certificate / load_private_key raise InvalidInput naming a missing or malformed file."""
    missing, garbage = tmp_path / "nope.pem", tmp_path / "garbage.pem"
    garbage.write_bytes(b"not pem")
    for loader in (load_certificate, load_private_key):
        for path in (missing, garbage):
            with pytest.raises(InvalidInput, match=path.name):
                loader(path)


def test_layout_rejects_unknown_leaf_names(pki: PkiLayout) -> None:
    """PkiLayout.cert/key only know the leaves init_pki writes."""
    with pytest.raises(InvalidInput, match="expected one of"):
        pki.cert("root")
