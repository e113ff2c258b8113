"""Wire format of sealed parameter blobs: the parts, their canonical encoding, and per-chunk values.

See :mod:`privtrain.secure_transport.envelope` for the construction these
values serve (X25519 + HKDF-SHA256 + AES-256-GCM + Ed25519).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privtrain.secure_transport.roles import PeerIdentity

ENVELOPE_VERSION = 1
SIGNATURE_DOMAIN = b"privtrain-sealed-v1"
HKDF_INFO = b"privtrain params v1"
KEY_BYTES = 32
SALT_BYTES = 32
NONCE_PREFIX_BYTES = 4
TAG_BYTES = 16
"""AES-GCM tag appended to every chunk's ciphertext (bytes)."""


@dataclass(frozen=True)
class SealedHeader:
    """First part of a sealed blob; everything the recipient needs before the first chunk.

    Attributes
    ----------
    version : int
        Envelope format version, currently 1.
    ephemeral_public_key : bytes
        Sender's one-time X25519 public key, 32 raw bytes (RFC 7748).
    salt : bytes
        HKDF salt, 32 random bytes.
    nonce_prefix : bytes
        First 4 bytes of every chunk's 12-byte GCM nonce.
    chunk_bytes : int
        Plaintext bytes per chunk; every chunk but the last is exactly this long.
    total_bytes : int
        Plaintext length (bytes).
    chunk_count : int
        Number of chunks, ``max(1, ceil(total_bytes / chunk_bytes))``.
    plaintext_sha256 : bytes
        SHA-256 of the whole plaintext (32 bytes).
    signer_certificate_pem : bytes
        The parameter-signer certificate whose Ed25519 key signs the trailer.
    content_type : str
        Media type of the plaintext, e.g. ``application/safetensors``.
    metadata : dict[str, str]
        Free-form, authenticated labels (job id, step, ...).
    """

    version: int
    ephemeral_public_key: bytes
    salt: bytes
    nonce_prefix: bytes
    chunk_bytes: int
    total_bytes: int
    chunk_count: int
    plaintext_sha256: bytes
    signer_certificate_pem: bytes
    content_type: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SealedChunk:
    """One encrypted chunk: ``ciphertext`` is the AES-GCM output including its 16-byte tag."""

    index: int
    ciphertext: bytes


@dataclass(frozen=True)
class SealedTrailer:
    """Last part of a sealed blob: the 64-byte Ed25519 signature over the transcript."""

    signature: bytes


SealedPart = SealedHeader | SealedChunk | SealedTrailer


@dataclass(frozen=True)
class OpenedBlob:
    """A sealed blob that passed every check.

    Attributes
    ----------
    plaintext : bytes
        The decrypted content, ``header.total_bytes`` long.
    header : SealedHeader
        The authenticated header (content type, metadata, ...).
    signer : PeerIdentity
        Identity from the verified parameter-signer certificate.
    """

    plaintext: bytes
    header: SealedHeader
    signer: PeerIdentity


def header_bytes(header: SealedHeader) -> bytes:
    """Canonical encoding of a header: what the signature and every chunk's AAD bind.

    UTF-8 JSON with sorted keys, no insignificant whitespace, ASCII escapes,
    and byte fields as standard base64 (RFC 4648 section 4); equal headers
    always encode to equal bytes.
    """
    document = {
        "version": header.version,
        "ephemeral_public_key": _b64(header.ephemeral_public_key),
        "salt": _b64(header.salt),
        "nonce_prefix": _b64(header.nonce_prefix),
        "chunk_bytes": header.chunk_bytes,
        "total_bytes": header.total_bytes,
        "chunk_count": header.chunk_count,
        "plaintext_sha256": _b64(header.plaintext_sha256),
        "signer_certificate_pem": _b64(header.signer_certificate_pem),
        "content_type": header.content_type,
        "metadata": dict(sorted(header.metadata.items())),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def derive_key(
    shared: bytes, salt: bytes, ephemeral_public: bytes, recipient_public: bytes
) -> bytes:
    """AES-256 key for one blob: HKDF-SHA256 (RFC 5869), info binds both public keys."""
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_BYTES,
        salt=salt,
        info=HKDF_INFO + ephemeral_public + recipient_public,
    )
    return hkdf.derive(shared)


def chunk_nonce(prefix: bytes, index: int) -> bytes:
    """96-bit GCM nonce: 4-byte prefix || 8-byte big-endian chunk index (NIST SP 800-38D 8.2.1)."""
    return prefix + index.to_bytes(8, "big")


def chunk_aad(header_digest: bytes, index: int, last: bool) -> bytes:
    """Associated data: SHA-256(header_bytes) || index (8 bytes BE) || is_last (1 byte)."""
    return header_digest + index.to_bytes(8, "big") + (b"\x01" if last else b"\x00")


def signed_message(encoded_header: bytes, ciphertext_digest: bytes) -> bytes:
    """Ed25519 transcript: domain || header_bytes || SHA-256 of all chunk ciphertexts."""
    return SIGNATURE_DOMAIN + encoded_header + ciphertext_digest


def chunk_count_for(total_bytes: int, chunk_bytes: int) -> int:
    """Chunks in a blob of ``total_bytes``; at least 1, so the end is always marked."""
    return max(1, -(-total_bytes // chunk_bytes))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
