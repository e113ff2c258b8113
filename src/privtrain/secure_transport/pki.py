"""The privtrain certificate authority: a CA, TLS leaf certificates and the parameter signer.

Every certificate follows the RFC 5280 profile that strict verifiers (the
CA/Browser Forum baseline, ``cryptography.x509.verification``, gRPC's
BoringSSL) expect:

* CA: self-signed ECDSA P-256, BasicConstraints(ca=True, path_length=0) and
  KeyUsage(keyCertSign, cRLSign), both critical, SubjectKeyIdentifier, 10 years.
* TLS leaves: ECDSA P-256, BasicConstraints(ca=False) and
  KeyUsage(digitalSignature), both critical, ExtendedKeyUsage serverAuth (the
  server) or clientAuth (the people), SubjectAltName, SubjectKeyIdentifier,
  AuthorityKeyIdentifier from the CA's SKI; 397 days for the server, less for
  people (:mod:`privtrain.secure_transport.issuing`).
* The parameter signer: an Ed25519 (RFC 8032) leaf with
  KeyUsage(digitalSignature) critical and no EKU; it signs sealed parameter
  blobs, never a TLS handshake.

Validity windows are timezone-aware UTC and start five minutes in the past,
so a peer whose clock runs a little behind accepts a freshly issued
certificate. Serial numbers are random 159-bit positive integers (RFC 5280
section 4.1.2.2 allows at most 20 octets).

The operator's folder (:class:`PkiLayout`, mode 0700) holds the CA key in its own
0700 subfolder ``ca/``, the server's TLS pair and the parameter signer; people's
keys are never written there (each person gets a bundle of their own, see
:func:`privtrain.secure_transport.issuing.issue_bundle`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from privtrain.errors import FailedPrecondition, InvalidInput
from privtrain.secure_transport.errors import CertificateNameMismatch
from privtrain.secure_transport.pem_files import (
    PrivateKey,
    load_certificate,
    load_private_key,
    write_certificate,
    write_private_key,
)
from privtrain.secure_transport.roles import Role
from privtrain.secure_transport.server_names import check_server_names

__all__ = [
    "CLIENT_ROLES",
    "LEAF_NAMES",
    "CertificateNameMismatch",
    "PkiLayout",
    "PrivateKey",
    "check_server_names",
    "create_ca",
    "init_pki",
    "issue_certificate",
    "load_certificate",
    "load_private_key",
]

BACKDATE = dt.timedelta(minutes=5)
CA_VALIDITY = dt.timedelta(days=3650)
# 397 days is the CA/Browser Forum ceiling for TLS leaves; strict clients reject longer.
LEAF_VALIDITY = dt.timedelta(days=397)
ORGANIZATION = "privtrain"

CLIENT_ROLES: tuple[Role, ...] = (Role.DATA_OWNER, Role.TRAINER, Role.ADMIN)
"""Roles that hold a TLS client certificate."""

LEAF_NAMES: tuple[str, ...] = ("server", "signing")
"""File stems of the leaf certificates :func:`init_pki` writes."""

PRIVATE_FOLDER_MODE = 0o700

IpLike = str | ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class PkiLayout:
    """Where :func:`init_pki` put each file.

    Attributes
    ----------
    directory : Path
        The operator's folder (0700): ``ca.pem``, ``ca/ca.key`` (the CA key, in a
        0700 folder of its own), ``crl.pem`` (the published revocation list) and
        ``<name>.pem`` / ``<name>.key`` for each name in :data:`LEAF_NAMES`.
    """

    directory: Path

    @property
    def ca_cert(self) -> Path:
        """Path of the CA certificate (PEM)."""
        return self.directory / "ca.pem"

    @property
    def ca_dir(self) -> Path:
        """The operator-only folder (0700) holding the CA key."""
        return self.directory / "ca"

    @property
    def ca_key(self) -> Path:
        """Path of the CA private key (PKCS #8 PEM, mode 0600)."""
        return self.ca_dir / "ca.key"

    @property
    def crl(self) -> Path:
        """Path of the certificate revocation list (PEM, RFC 5280 section 5)."""
        return self.directory / "crl.pem"

    def cert(self, name: str) -> Path:
        """Path of leaf certificate ``name`` (one of :data:`LEAF_NAMES`).

        Raises
        ------
        InvalidInput
            When ``name`` is not a leaf :func:`init_pki` writes.
        """
        return self.directory / f"{_leaf_name(name)}.pem"

    def key(self, name: str) -> Path:
        """Path of leaf private key ``name`` (one of :data:`LEAF_NAMES`).

        Raises
        ------
        InvalidInput
            When ``name`` is not a leaf :func:`init_pki` writes.
        """
        return self.directory / f"{_leaf_name(name)}.key"


def create_ca(
    common_name: str = "privtrain CA",
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Create a self-signed ECDSA P-256 root CA valid for 10 years.

    path_length=0 because the CA only ever signs leaves: an attacker holding a
    leaf key cannot mint certificates under it.

    Returns
    -------
    tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
        The CA certificate and its private key.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(digital_signature=False, cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue_certificate(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    common_name: str,
    role: Role,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[IpLike] = (),
    key_kind: Literal["ec", "ed25519"] = "ec",
    validity: dt.timedelta = LEAF_VALIDITY,
) -> tuple[x509.Certificate, PrivateKey]:
    """Issue a leaf certificate for ``role`` signed by the CA (ECDSA with SHA-256).

    The SAN always carries the role URI ``urn:privtrain:role:<role>``. Server
    certificates get ``dns_names`` as dNSName and ``ip_addresses`` as
    iPAddress entries and EKU serverAuth; client certificates get EKU
    clientAuth and, when no DNS name is given, ``common_name`` as dNSName;
    the parameter signer gets no EKU.

    Parameters
    ----------
    ca_cert, ca_key : x509.Certificate, ec.EllipticCurvePrivateKey
        The issuing CA (see :func:`create_ca`).
    common_name : str
        Subject CN; the subject OU is the role value, for humans reading it.
    role : Role
        Role written into the URI SAN.
    dns_names : Sequence[str]
        Host names; an IP literal here is refused (it must be an IP SAN).
    ip_addresses : Sequence[str | IPv4Address | IPv6Address]
        IP addresses for iPAddress SAN entries.
    key_kind : {"ec", "ed25519"}
        ECDSA P-256 for TLS; Ed25519 only for :attr:`Role.PARAMETER_SIGNER`,
        since gRPC's TLS stack does not negotiate Ed25519 client certificates.
    validity : datetime.timedelta
        Lifetime from now (at most :data:`LEAF_VALIDITY`, never past the CA's end).

    Returns
    -------
    tuple[x509.Certificate, PrivateKey]
        The leaf certificate and its new private key.

    Raises
    ------
    InvalidInput
        On an empty common name, an IP literal among ``dns_names``, an
        unparsable IP address, a server certificate with no name at all, an
        unknown ``key_kind``, or a validity outside (0, 397 days].
    """
    if not common_name:
        raise InvalidInput("common_name must not be empty")
    if not dt.timedelta(0) < validity <= LEAF_VALIDITY:
        raise InvalidInput(f"a certificate lives between 1 second and {LEAF_VALIDITY.days} days, "
                           f"not {validity}")
    dns = _checked_dns_names(dns_names)
    ips = _checked_ip_addresses(ip_addresses)
    if role is Role.SERVER and not (dns or ips):
        raise InvalidInput("a server certificate needs at least one DNS name or IP address")
    if role not in (Role.SERVER, Role.PARAMETER_SIGNER) and not dns and not ips:
        dns = _checked_dns_names([common_name])
    key: PrivateKey
    if key_kind == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    elif key_kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise InvalidInput(f"key_kind must be 'ec' or 'ed25519', not {key_kind!r}")

    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    sans += [x509.IPAddress(ip) for ip in ips]
    sans.append(x509.UniformResourceIdentifier(role.uri))
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + validity, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, cert_sign=False), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    if role is Role.SERVER:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    elif role is not Role.PARAMETER_SIGNER:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def init_pki(
    directory: Path,
    *,
    server_names: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
    overwrite: bool = False,
) -> PkiLayout:
    """Create a CA and the server's certificates, as files in the operator's ``directory``.

    Writes ``ca.pem``, ``ca/ca.key`` (the CA key, in a folder of its own),
    ``server.pem``/``.key`` (TLS server) and ``signing.pem``/``.key`` (Ed25519
    parameter and audit-log signer). ``directory`` and ``ca/`` are mode 0700, keys
    0600, certificates 0644. No person's certificate is made here: each one gets a
    bundle from :func:`privtrain.secure_transport.issuing.issue_bundle`.

    Parameters
    ----------
    directory : Path
        Created if missing.
    server_names : Sequence[str]
        Names clients dial the server by: entries that parse as IP addresses
        become iPAddress SANs, the others dNSName SANs.
    overwrite : bool
        Replace an existing CA. Off by default because a new CA invalidates
        every certificate already handed out.

    Returns
    -------
    PkiLayout
        Paths of the written files.

    Raises
    ------
    FailedPrecondition
        When ``directory`` already holds a CA and ``overwrite`` is False.
    InvalidInput
        When ``server_names`` is empty or ``directory`` is not writable.
    """
    layout = PkiLayout(Path(directory))
    if not overwrite and (layout.ca_cert.exists() or layout.ca_key.exists()):
        raise FailedPrecondition(
            f"{layout.directory} already holds a CA ({layout.ca_cert.name}); replacing it "
            f"invalidates every certificate issued so far: pass --overwrite (overwrite=True) to do it anyway"
        )
    dns: list[str] = []
    ips: list[IpLike] = []
    for name in server_names:
        try:
            ips.append(ipaddress.ip_address(name.strip("[]")))
        except ValueError:
            dns.append(name)
    try:
        for folder in (layout.directory, layout.ca_dir):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(PRIVATE_FOLDER_MODE)
    except OSError as exc:
        raise InvalidInput(f"cannot create {layout.ca_dir}: {exc.strerror}") from None
    ca_cert, ca_key = create_ca()
    server_cn = dns[0] if dns else str(ips[0]) if ips else "privtrain-server"
    leaves: dict[str, tuple[x509.Certificate, PrivateKey]] = {
        "server": issue_certificate(
            ca_cert,
            ca_key,
            common_name=server_cn,
            role=Role.SERVER,
            dns_names=dns,
            ip_addresses=ips,
        ),
        "signing": issue_certificate(
            ca_cert,
            ca_key,
            common_name="privtrain-parameter-signer",
            role=Role.PARAMETER_SIGNER,
            key_kind="ed25519",
        ),
    }
    # Leaves first, CA last: a crash midway leaves no CA, so a rerun needs no overwrite.
    for name, (cert, key) in leaves.items():
        write_private_key(layout.key(name), key)
        write_certificate(layout.cert(name), cert)
    write_private_key(layout.ca_key, ca_key)
    write_certificate(layout.ca_cert, ca_cert)
    return layout


def _leaf_name(name: str) -> str:
    if name not in LEAF_NAMES:
        raise InvalidInput(f"unknown certificate {name!r}; expected one of {', '.join(LEAF_NAMES)}")
    return name


def _key_usage(*, digital_signature: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _checked_dns_names(names: Sequence[str]) -> list[str]:
    checked: list[str] = []
    for name in names:
        try:
            ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            pass
        else:
            raise InvalidInput(
                f"{name!r} is an IP address: pass it in ip_addresses so it becomes an IP SAN "
                f"(clients ignore IPs written as DNS names)"
            )
        if not name or not name.isascii() or any(c.isspace() for c in name):
            raise InvalidInput(
                f"{name!r} is not a valid DNS name (ASCII, no spaces; use IDNA A-labels)"
            )
        checked.append(name.lower())
    return checked


def _checked_ip_addresses(
    addresses: Sequence[IpLike],
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    checked: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for address in addresses:
        try:
            checked.append(
                address
                if not isinstance(address, str)
                else ipaddress.ip_address(address.strip("[]"))
            )
        except ValueError:
            raise InvalidInput(f"{address!r} is not an IP address") from None
    return checked
