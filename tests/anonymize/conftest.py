"""Fixtures for the anonymizer tests: real keys, real certificates, real files in tmp_path."""

from __future__ import annotations

import datetime
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from privtrain.anonymize.keys import SecretKey, generate_key


def make_signer(folder: Path, kind: str = "ecdsa", name: str = "owner") -> tuple[Path, Path]:
    """Write a private key (PKCS#8 PEM) and a self-signed certificate; return their paths."""
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    key = (
        ec.generate_private_key(ec.SECP256R1())
        if kind == "ecdsa"
        else ed25519.Ed25519PrivateKey.generate()
    )
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256() if kind == "ecdsa" else None)
    )
    key_path, cert_path = folder / f"{name}.key", folder / f"{name}.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest.fixture
def signer(tmp_path: Path) -> tuple[Path, Path]:
    return make_signer(tmp_path)


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    path = tmp_path / "owner.hmac.key"
    generate_key(path)
    return path


@pytest.fixture
def other_key(tmp_path: Path) -> tuple[Path, SecretKey]:
    path = tmp_path / "other.hmac.key"
    return path, generate_key(path)


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write dedented text to tmp_path/NAME and return the path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
        return path

    return _write
