"""Sealed parameter blobs: encrypted to one recipient, signed by the server, streamed in chunks.

Construction (version 1)
------------------------
* Key agreement: a fresh X25519 key pair per blob (RFC 7748);
  ``shared = X25519(ephemeral_private, recipient_public)``.
* Key derivation: HKDF-SHA256 (RFC 5869) with a random 32-byte salt and
  ``info = b"privtrain params v1" || ephemeral_public || recipient_public``,
  32 bytes of output: an AES-256 key used for this blob only.
* Encryption: AES-256-GCM (NIST SP 800-38D) per chunk, 96-bit nonce
  ``nonce_prefix (4 bytes, random) || chunk index (8 bytes, big endian)``, so
  no nonce repeats under a key; associated data
  ``SHA-256(header_bytes) || index (8 bytes BE) || is_last (1 byte)`` binds
  every chunk to the header, its position, and whether the stream ends there,
  so chunks cannot be reordered, dropped, truncated or spliced across blobs.
* Signature: Ed25519 (RFC 8032) by the server's parameter-signing key over
  ``b"privtrain-sealed-v1" || header_bytes || SHA-256(ciphertext_0 || ... || ciphertext_n)``.
  Encryption alone does not authenticate the sender (anyone may encrypt to a
  public key); the signature, from a certificate issued by the privtrain CA
  with role ``parameter-signer``, does.

A blob always has at least one chunk (an empty plaintext seals to one empty
chunk) so that the end of the stream is always authenticated by ``is_last``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from privtrain.errors import InvalidInput, PrivtrainError
from privtrain.secure_transport.envelope_format import (
    ENVELOPE_VERSION,
    KEY_BYTES,
    NONCE_PREFIX_BYTES,
    SALT_BYTES,
    OpenedBlob,
    SealedChunk,
    SealedHeader,
    SealedPart,
    SealedTrailer,
    chunk_aad,
    chunk_count_for,
    chunk_nonce,
    derive_key,
    header_bytes,
    signed_message,
)
from privtrain.secure_transport.errors import TamperedEnvelope
from privtrain.secure_transport.roles import PeerIdentity, Role, identity_of

__all__ = [
    "ENVELOPE_VERSION",
    "OpenedBlob",
    "SealedChunk",
    "SealedHeader",
    "SealedPart",
    "SealedTrailer",
    "TamperedEnvelope",
    "generate_recipient_keypair",
    "header_bytes",
    "open_sealed",
    "seal",
]


def generate_recipient_keypair() -> tuple[x25519.X25519PrivateKey, bytes]:
    """Create the X25519 key pair a client downloads parameters with.

    Returns
    -------
    tuple[x25519.X25519PrivateKey, bytes]
        The private key (keep it on the client) and the raw 32-byte public key
        (send it with the download request).
    """
    private = x25519.X25519PrivateKey.generate()
    return private, private.public_key().public_bytes_raw()


def seal(
    plaintext: bytes | memoryview,
    recipient_public_key: bytes,
    signing_key: ed25519.Ed25519PrivateKey,
    signer_certificate_pem: bytes,
    *,
    chunk_bytes: int,
    content_type: str = "application/safetensors",
    metadata: Mapping[str, str] | None = None,
) -> Iterator[SealedPart]:
    """Encrypt ``plaintext`` for one recipient and sign it, yielding header, chunks, trailer.

    Parts are produced lazily: at most one chunk of ciphertext exists at a
    time, and ``plaintext`` is sliced through a memoryview, never copied whole.
    Validation happens before the first part is yielded.

    Parameters
    ----------
    plaintext : bytes | memoryview
        Content to seal, e.g. safetensors bytes (any size).
    recipient_public_key : bytes
        Recipient's raw X25519 public key, 32 bytes.
    signing_key : ed25519.Ed25519PrivateKey
        The server's parameter-signing key.
    signer_certificate_pem : bytes
        Certificate of ``signing_key`` (role parameter-signer), carried in the header.
    chunk_bytes : int
        Plaintext bytes per chunk (bytes); use ``TransportLimits.chunk_bytes``
        so each chunk fits one gRPC message.
    content_type : str
        Media type recorded in the header.
    metadata : Mapping[str, str] | None
        Labels recorded, authenticated, in the header.

    Yields
    ------
    SealedHeader, then SealedChunk for index 0..chunk_count-1, then SealedTrailer.

    Raises
    ------
    InvalidInput
        When the recipient key is not 32 bytes or is a low-order point,
        ``chunk_bytes`` is not positive, metadata is not str to str, or the
        signing key does not match the certificate.
    """
    data = memoryview(plaintext).cast("B")
    if chunk_bytes <= 0:
        raise InvalidInput(f"chunk_bytes must be positive, got {chunk_bytes}")
    if len(recipient_public_key) != KEY_BYTES:
        raise InvalidInput(
            f"recipient public key must be {KEY_BYTES} raw X25519 bytes, "
            f"got {len(recipient_public_key)}"
        )
    labels = dict(metadata or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise InvalidInput("metadata keys and values must all be str")
    _check_signer_matches(signing_key, signer_certificate_pem)
    ephemeral = x25519.X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes_raw()
    try:
        shared = ephemeral.exchange(x25519.X25519PublicKey.from_public_bytes(recipient_public_key))
    except ValueError as exc:
        # RFC 7748 section 6.1: an all-zero shared secret means a low-order public key.
        raise InvalidInput(f"recipient public key is not usable for X25519: {exc}") from None
    salt = os.urandom(SALT_BYTES)
    header = SealedHeader(
        version=ENVELOPE_VERSION,
        ephemeral_public_key=ephemeral_public,
        salt=salt,
        nonce_prefix=os.urandom(NONCE_PREFIX_BYTES),
        chunk_bytes=chunk_bytes,
        total_bytes=len(data),
        chunk_count=chunk_count_for(len(data), chunk_bytes),
        plaintext_sha256=hashlib.sha256(data).digest(),
        signer_certificate_pem=signer_certificate_pem,
        content_type=content_type,
        metadata=labels,
    )
    aead = AESGCM(derive_key(shared, salt, ephemeral_public, recipient_public_key))
    return _seal_parts(data, header, aead, signing_key)


def _seal_parts(
    data: memoryview,
    header: SealedHeader,
    aead: AESGCM,
    signing_key: ed25519.Ed25519PrivateKey,
) -> Iterator[SealedPart]:
    encoded = header_bytes(header)
    header_digest = hashlib.sha256(encoded).digest()
    transcript = hashlib.sha256()
    yield header
    for index in range(header.chunk_count):
        start = index * header.chunk_bytes
        piece = data[start : start + header.chunk_bytes]
        last = index == header.chunk_count - 1
        ciphertext = aead.encrypt(
            chunk_nonce(header.nonce_prefix, index), piece, chunk_aad(header_digest, index, last)
        )
        transcript.update(ciphertext)
        yield SealedChunk(index=index, ciphertext=ciphertext)
    yield SealedTrailer(signature=signing_key.sign(signed_message(encoded, transcript.digest())))


def open_sealed(
    parts: Iterable[SealedPart],
    recipient_private_key: x25519.X25519PrivateKey,
    ca_certificate: x509.Certificate,
    *,
    max_total_bytes: int | None = None,
) -> OpenedBlob:
    """Verify and decrypt a sealed blob; return the plaintext only if every check passed.

    Checks: the header is first and well formed; its signer certificate was
    issued by ``ca_certificate``, is valid now, names role parameter-signer
    and holds an Ed25519 key; every chunk decrypts (GCM tag) in order
    0..chunk_count-1 with the declared lengths; the trailer follows the last
    chunk and nothing follows it; the Ed25519 signature verifies; the
    plaintext SHA-256 matches the header.

    Parameters
    ----------
    parts : Iterable[SealedPart]
        Header, chunks and trailer as :func:`seal` produced them (e.g. as
        they arrive from a gRPC stream); consumed once.
    recipient_private_key : x25519.X25519PrivateKey
        The key whose public half the blob was sealed for.
    ca_certificate : x509.Certificate
        The privtrain CA the signer certificate must chain to.
    max_total_bytes : int | None
        Refuse headers announcing more plaintext than this (bytes), before
        buffering anything: the header is not authenticated until the trailer.

    Returns
    -------
    OpenedBlob
        Plaintext, header and signer identity.

    Raises
    ------
    TamperedEnvelope
        With a message naming the failed check (and the chunk index for a
        chunk failure): missing or repeated header, malformed header,
        untrusted signer, chunk out of order, missing chunk, chunk failing
        authentication (also what a wrong recipient key looks like), missing
        trailer, extra parts, bad signature, plaintext hash mismatch.
    InvalidInput
        When the header announces more than ``max_total_bytes``.
    """
    stream = iter(parts)
    header = next(stream, None)
    if not isinstance(header, SealedHeader):
        found = "nothing" if header is None else f"a {type(header).__name__}"
        raise TamperedEnvelope(f"missing header: the sealed stream starts with {found}")
    _check_header(header)
    if max_total_bytes is not None and header.total_bytes > max_total_bytes:
        raise InvalidInput(
            f"sealed blob announces {header.total_bytes} bytes, more than the "
            f"{max_total_bytes} bytes allowed"
        )
    signer_key, signer = verified_signer(header.signer_certificate_pem, ca_certificate)
    aead = _recipient_aead(header, recipient_private_key)
    encoded = header_bytes(header)
    header_digest = hashlib.sha256(encoded).digest()
    transcript = hashlib.sha256()
    plaintext_hash = hashlib.sha256()
    pieces: list[bytes] = []
    expected = 0
    trailer: SealedTrailer | None = None
    for part in stream:
        if isinstance(part, SealedTrailer):
            trailer = part
            break
        if isinstance(part, SealedHeader):
            raise TamperedEnvelope(f"a second header arrived after chunk {expected - 1}")
        if not isinstance(part, SealedChunk):
            raise TamperedEnvelope(f"unexpected part of type {type(part).__name__}")
        if part.index != expected:
            raise TamperedEnvelope(
                f"chunk out of order: expected chunk {expected}, got chunk {part.index}"
            )
        if expected >= header.chunk_count:
            raise TamperedEnvelope(
                f"chunk {part.index} is beyond the {header.chunk_count} chunks the header declares"
            )
        last = expected == header.chunk_count - 1
        try:
            piece = aead.decrypt(
                chunk_nonce(header.nonce_prefix, expected),
                part.ciphertext,
                chunk_aad(header_digest, expected, last),
            )
        except InvalidTag:
            raise TamperedEnvelope(
                f"chunk {expected} failed authentication (AES-256-GCM tag mismatch): its "
                f"ciphertext "
                f"or the header was modified, the chunk was moved, or the blob was sealed for "
                f"another recipient key"
            ) from None
        want = (
            header.chunk_bytes if not last else header.total_bytes - expected * header.chunk_bytes
        )
        if len(piece) != want:
            raise TamperedEnvelope(f"chunk {expected} holds {len(piece)} bytes, expected {want}")
        transcript.update(part.ciphertext)
        plaintext_hash.update(piece)
        pieces.append(piece)
        expected += 1
    if trailer is None:
        raise TamperedEnvelope(
            f"missing trailer: the stream ended after {expected} of {header.chunk_count} chunks"
        )
    if expected != header.chunk_count:
        raise TamperedEnvelope(
            f"missing chunk {expected}: the trailer arrived after {expected} of "
            f"{header.chunk_count} chunks"
        )
    extra = next(stream, None)
    if extra is not None:
        raise TamperedEnvelope(f"a {type(extra).__name__} arrived after the trailer")
    try:
        signer_key.verify(trailer.signature, signed_message(encoded, transcript.digest()))
    except InvalidSignature:
        raise TamperedEnvelope(
            f"bad signature: the trailer is not a signature by {signer.common_name} over this blob"
        ) from None
    if plaintext_hash.digest() != header.plaintext_sha256:
        raise TamperedEnvelope("plaintext SHA-256 does not match the header")
    plaintext = b"".join(pieces)
    pieces.clear()
    return OpenedBlob(plaintext=plaintext, header=header, signer=signer)


def _check_header(header: SealedHeader) -> None:
    problems = []
    if header.version != ENVELOPE_VERSION:
        problems.append(f"version {header.version} (this build reads {ENVELOPE_VERSION})")
    for name, value, size in (
        ("ephemeral_public_key", header.ephemeral_public_key, KEY_BYTES),
        ("salt", header.salt, SALT_BYTES),
        ("nonce_prefix", header.nonce_prefix, NONCE_PREFIX_BYTES),
        ("plaintext_sha256", header.plaintext_sha256, 32),
    ):
        if len(value) != size:
            problems.append(f"{name} is {len(value)} bytes, not {size}")
    if header.chunk_bytes <= 0 or header.total_bytes < 0:
        problems.append(f"chunk_bytes={header.chunk_bytes}, total_bytes={header.total_bytes}")
    elif header.chunk_count != chunk_count_for(header.total_bytes, header.chunk_bytes):
        problems.append(
            f"chunk_count {header.chunk_count} does not fit total_bytes {header.total_bytes} "
            f"in chunks of {header.chunk_bytes}"
        )
    if problems:
        raise TamperedEnvelope("malformed header: " + "; ".join(problems))


def verified_signer(
    pem: bytes, ca: x509.Certificate, at: dt.datetime | None = None
) -> tuple[ed25519.Ed25519PublicKey, PeerIdentity]:
    """The Ed25519 key of a parameter-signer certificate the CA issued, valid at ``at``.

    Used for sealed parameters and for the signed heads of the audit log.

    Parameters
    ----------
    pem : bytes
        The signer's certificate (PEM).
    ca : x509.Certificate
        The privtrain CA it must be issued by (RFC 5280 6.1, one level).
    at : datetime, optional
        When the signature was made; now by default.

    Raises
    ------
    TamperedEnvelope
        "untrusted signer: ...": unparsable, another issuer, not valid at ``at``,
        another role, or not an Ed25519 key with KeyUsage digitalSignature.
    """
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise TamperedEnvelope(
            f"untrusted signer: the signer certificate does not parse: {exc}"
        ) from None
    subject = cert.subject.rfc4514_string()
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise TamperedEnvelope(
            f"untrusted signer: {subject} (issuer {cert.issuer.rfc4514_string()}) is not "
            f"certified by the CA {ca.subject.rfc4514_string()}"
        ) from None
    now = at or dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise TamperedEnvelope(
            f"untrusted signer: {subject} is valid from {cert.not_valid_before_utc.isoformat()} "
            f"to {cert.not_valid_after_utc.isoformat()}, not {'now' if at is None else at.isoformat()}"
        )
    try:
        identity = identity_of(cert)
    except PrivtrainError as exc:
        raise TamperedEnvelope(f"untrusted signer: {exc}") from None
    if identity.role is not Role.PARAMETER_SIGNER:
        raise TamperedEnvelope(
            f"untrusted signer: {subject} has role {identity.role.value}, not "
            f"{Role.PARAMETER_SIGNER.value}"
        )
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        may_sign = usage.digital_signature
    except x509.ExtensionNotFound:
        may_sign = False
    key = cert.public_key()
    if not isinstance(key, ed25519.Ed25519PublicKey) or not may_sign:
        raise TamperedEnvelope(
            f"untrusted signer: {subject} needs an Ed25519 key with KeyUsage digitalSignature"
        )
    return key, identity


def _recipient_aead(header: SealedHeader, recipient: x25519.X25519PrivateKey) -> AESGCM:
    recipient_public = recipient.public_key().public_bytes_raw()
    try:
        peer = x25519.X25519PublicKey.from_public_bytes(header.ephemeral_public_key)
        shared = recipient.exchange(peer)
    except ValueError as exc:
        raise TamperedEnvelope(f"malformed header: unusable ephemeral public key: {exc}") from None
    return AESGCM(derive_key(shared, header.salt, header.ephemeral_public_key, recipient_public))


def _check_signer_matches(key: ed25519.Ed25519PrivateKey, cert_pem: bytes) -> None:
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise InvalidInput(f"signing_key must be an Ed25519 private key, got {type(key).__name__}")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise InvalidInput(f"signer_certificate_pem is not a PEM certificate: {exc}") from None
    certified = cert.public_key()
    if not isinstance(certified, ed25519.Ed25519PublicKey) or (
        certified.public_bytes_raw() != key.public_key().public_bytes_raw()
    ):
        raise InvalidInput("signing_key does not belong to signer_certificate_pem")
