"""Reading and atomically writing PEM certificates and private keys.

Private keys are written as unencrypted PKCS #8 PEM (RFC 5958) with mode
0600 from the moment the file exists: a key is never readable by others, not
even for the instant between creating and ``chmod``-ing a file.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from privtrain.atomic_files import atomic_write_bytes
from privtrain.errors import InvalidInput

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
"""The private key kinds privtrain issues: ECDSA P-256 for TLS, Ed25519 for signing."""

KEY_FILE_MODE = 0o600
CERT_FILE_MODE = 0o644


def write_certificate(path: Path, cert: x509.Certificate) -> None:
    """Write ``cert`` as PEM with mode 0644 (atomically)."""
    atomic_write_bytes(path, cert.public_bytes(serialization.Encoding.PEM), mode=CERT_FILE_MODE)


def write_private_key(path: Path, key: PrivateKey) -> None:
    """Write ``key`` as unencrypted PKCS #8 PEM with mode 0600 (atomically)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write_bytes(path, pem, mode=KEY_FILE_MODE)


def read_bytes(path: Path) -> bytes:
    """Read a whole file.

    Raises
    ------
    InvalidInput
        Naming the file, when it is missing or unreadable.
    """
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from None


def load_certificate(path: Path) -> x509.Certificate:
    """Load one PEM certificate (RFC 7468) from ``path``.

    Raises
    ------
    InvalidInput
        Naming the file, when it is unreadable or holds no PEM certificate.
    """
    data = read_bytes(path)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise InvalidInput(f"{path} does not hold a PEM certificate: {exc}") from None


def load_private_key(path: Path) -> PrivateKey:
    """Load an unencrypted PEM private key (ECDSA or Ed25519) from ``path``.

    Raises
    ------
    InvalidInput
        Naming the file, when it is unreadable, encrypted, not a key, or a key
        kind privtrain does not use (e.g. RSA).
    """
    data = read_bytes(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{path} does not hold an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        raise InvalidInput(
            f"{path} holds a {type(key).__name__}; privtrain uses ECDSA P-256 or Ed25519 keys"
        )
    return key
