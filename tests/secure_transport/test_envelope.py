"""Sealed parameter blobs: round trips at chunk boundaries and every tampering we can think of."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519

from privtrain.errors import InvalidInput
from privtrain.secure_transport.envelope import (
    SealedChunk,
    SealedHeader,
    SealedPart,
    SealedTrailer,
    generate_recipient_keypair,
    header_bytes,
    open_sealed,
    seal,
)
from privtrain.secure_transport.envelope_format import signed_message
from privtrain.secure_transport.errors import TamperedEnvelope
from privtrain.secure_transport.pki import (
    PkiLayout,
    issue_certificate,
    load_certificate,
    load_private_key,
)
from privtrain.secure_transport.roles import Role

MIB = 1024 * 1024
CHUNK = MIB
CA = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


@pytest.fixture(scope="module")
def signer(pki: PkiLayout) -> tuple[ed25519.Ed25519PrivateKey, bytes]:
    """The server's parameter-signing key and certificate from init_pki."""
    key = load_private_key(pki.key("signing"))
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key, pki.cert("signing").read_bytes()


@pytest.fixture(scope="module")
def recipient() -> tuple[x25519.X25519PrivateKey, bytes]:
    """A client's X25519 download key pair."""
    return generate_recipient_keypair()


@pytest.fixture(scope="module")
def sealed_3_5_mib(
    signer: tuple[ed25519.Ed25519PrivateKey, bytes],
    recipient: tuple[x25519.X25519PrivateKey, bytes],
) -> tuple[bytes, list[SealedPart]]:
    """3.5 MiB of random bytes sealed in 1 MiB chunks: header, 4 chunks, trailer."""
    plaintext = os.urandom(3 * MIB + MIB // 2)
    return plaintext, list(seal(plaintext, recipient[1], *signer, chunk_bytes=CHUNK))


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * MIB, 5 * MIB])
def test_round_trip_at_chunk_boundaries(
    pki: PkiLayout,
    signer: tuple[ed25519.Ed25519PrivateKey, bytes],
    recipient: tuple[x25519.X25519PrivateKey, bytes],
    size: int,
) -> None:
    """seal then open_sealed returns the same bytes, header and signer for every size around chunk
    edges.
    """
    plaintext = os.urandom(size)
    parts = list(seal(plaintext, recipient[1], *signer, chunk_bytes=CHUNK, metadata={"job": "j-1"}))
    header = parts[0]
    assert isinstance(header, SealedHeader) and isinstance(parts[-1], SealedTrailer)
    assert header.chunk_count == max(1, -(-size // CHUNK)) == len(parts) - 2
    assert all(len(p.ciphertext) <= CHUNK + 16 for p in parts if isinstance(p, SealedChunk))
    opened = open_sealed(parts, recipient[0], load_certificate(pki.ca_cert))
    assert opened.plaintext == plaintext
    assert opened.header.metadata == {"job": "j-1"}
    assert opened.header.content_type == "application/safetensors"
    assert opened.signer.role is Role.PARAMETER_SIGNER


def test_seal_accepts_memoryview_and_is_lazy(
    signer: tuple[ed25519.Ed25519PrivateKey, bytes],
    recipient: tuple[x25519.X25519PrivateKey, bytes],
) -> None:
    """seal takes a memoryview and yields the header before encrypting any chunk."""
    parts = seal(memoryview(bytearray(3 * CHUNK)), recipient[1], *signer, chunk_bytes=CHUNK)
    assert isinstance(next(parts), SealedHeader)
    assert isinstance(next(parts), SealedChunk)


def test_header_bytes_is_canonical(sealed_3_5_mib: tuple[bytes, list[SealedPart]]) -> None:
    """Equal headers encode identically, whatever the metadata insertion order."""
    header = sealed_3_5_mib[1][0]
    assert isinstance(header, SealedHeader)
    a = dataclasses.replace(header, metadata={"a": "1", "b": "2"})
    b = dataclasses.replace(header, metadata={"b": "2", "a": "1"})
    assert header_bytes(a) == header_bytes(b)
    assert header_bytes(a) != header_bytes(header)


def _open(
    parts: list[SealedPart], pki: PkiLayout, recipient: tuple[x25519.X25519PrivateKey, bytes]
) -> None:
    open_sealed(parts, recipient[0], load_certificate(pki.ca_cert))


def test_tampered_ciphertext_names_the_chunk(
    pki: PkiLayout,
    recipient: tuple[x25519.X25519PrivateKey, bytes],
    sealed_3_5_mib: tuple[bytes, list[SealedPart]],
) -> None:
    """One flipped ciphertext byte in chunk 1 fails its GCM tag; TamperedEnvelope names chunk 1."""
    parts = list(sealed_3_5_mib[1])
    chunk = parts[2]
    assert isinstance(chunk, SealedChunk) and chunk.index == 1
    flipped = bytearray(chunk.ciphertext)
    flipped[1000] ^= 0x01
    parts[2] = SealedChunk(1, bytes(flipped))
    with pytest.raises(TamperedEnvelope, match="chunk 1 failed authentication"):
        _open(parts, pki, recipient)


def _swap_chunks(parts: list[SealedPart]) -> list[SealedPart]:
    return [parts[0], parts[2], parts[1], *parts[3:]]


def _change_total(delta: int) -> object:
    def change(parts: list[SealedPart]) -> list[SealedPart]:
        header = parts[0]
        assert isinstance(header, SealedHeader)
        return [dataclasses.replace(header, total_bytes=header.total_bytes + delta), *parts[1:]]

    return change


def _relabel_chunk(parts: list[SealedPart]) -> list[SealedPart]:
    # Moves chunk 2's ciphertext into slot 1 with a matching index: only the AAD catches it.
    first, second = parts[2], parts[3]
    assert isinstance(first, SealedChunk) and isinstance(second, SealedChunk)
    return [
        parts[0],
        parts[1],
        SealedChunk(1, second.ciphertext),
        SealedChunk(2, first.ciphertext),
        *parts[4:],
    ]


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (_swap_chunks, "chunk out of order: expected chunk 0, got chunk 1"),
        (_relabel_chunk, "chunk 1 failed authentication"),
        (lambda p: p[:-2] + p[-1:], "missing chunk 3"),
        (lambda p: p[:-1], "missing trailer"),
        (lambda p: p[1:], "missing header"),
        (lambda p: p + p[-1:], "arrived after the trailer"),
        (lambda p: p[:2] + p[:1] + p[2:], "second header"),
        (_change_total(-1), "chunk 0 failed authentication"),
        (_change_total(+MIB), "malformed header: chunk_count 4 does not fit"),
    ],
    ids=[
        "swapped",
        "relabelled",
        "dropped-last-chunk",
        "dropped-trailer",
        "dropped-header",
        "extra-part",
        "second-header",
        "total-bytes-shrunk",
        "total-bytes-grown",
    ],
)
def test_structural_tampering_is_rejected(
    pki: PkiLayout,
    recipient: tuple[x25519.X25519PrivateKey, bytes],
    sealed_3_5_mib: tuple[bytes, list[SealedPart]],
    mutate: object,
    fragment: str,
) -> None:
    """Reordered, relabelled, dropped, duplicated parts and an edited header each raise a precise
    TamperedEnvelope.
    """
    parts = mutate(list(sealed_3_5_mib[1]))  # type: ignore[operator]
    with pytest.raises(TamperedEnvelope, match=fragment):
        _open(parts, pki, recipient)


def test_signature_by_an_uncertified_key_is_rejected(
    pki: PkiLayout,
    recipient: tuple[x25519.X25519PrivateKey, bytes],
    sealed_3_5_mib: tuple[bytes, list[SealedPart]],
) -> None:
    """A trailer signed over the right transcript by a key the CA never certified: bad signature."""
    parts = list(sealed_3_5_mib[1])
    header = parts[0]
    assert isinstance(header, SealedHeader)
    digest = hashlib.sha256(
        b"".join(p.ciphertext for p in parts if isinstance(p, SealedChunk))
    ).digest()
    forged = ed25519.Ed25519PrivateKey.generate().sign(signed_message(header_bytes(header), digest))
    parts[-1] = SealedTrailer(forged)
    with pytest.raises(TamperedEnvelope, match="bad signature"):
        _open(parts, pki, recipient)


def test_signer_from_another_ca_is_untrusted(
    pki: PkiLayout, other_pki: PkiLayout, recipient: tuple[x25519.X25519PrivateKey, bytes]
) -> None:
    """A correctly formed blob signed by another deployment's parameter signer is refused."""
    key = load_private_key(other_pki.key("signing"))
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    parts = list(
        seal(
            b"weights", recipient[1], key, other_pki.cert("signing").read_bytes(), chunk_bytes=CHUNK
        )
    )
    with pytest.raises(TamperedEnvelope, match="untrusted signer: .* is not certified by the CA"):
        _open(parts, pki, recipient)


def test_signer_with_wrong_role_is_untrusted(
    pki: PkiLayout, ca: CA, recipient: tuple[x25519.X25519PrivateKey, bytes]
) -> None:
    """An Ed25519 certificate from our CA but with role trainer may not sign parameters."""
    cert, key = issue_certificate(*ca, common_name="mallory", role=Role.TRAINER, key_kind="ed25519")
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    parts = list(seal(b"weights", recipient[1], key, pem, chunk_bytes=CHUNK))
    with pytest.raises(TamperedEnvelope, match="has role trainer, not parameter-signer"):
        _open(parts, pki, recipient)


def test_wrong_recipient_key_cannot_open(
    pki: PkiLayout, sealed_3_5_mib: tuple[bytes, list[SealedPart]]
) -> None:
    """A blob sealed for one X25519 key fails chunk 0 for any other key."""
    other = generate_recipient_keypair()
    with pytest.raises(
        TamperedEnvelope, match="chunk 0 failed authentication.*another recipient key"
    ):
        _open(list(sealed_3_5_mib[1]), pki, other)


def test_seal_rejects_bad_inputs(
    signer: tuple[ed25519.Ed25519PrivateKey, bytes],
    recipient: tuple[x25519.X25519PrivateKey, bytes],
) -> None:
    """Wrong-length or low-order recipient keys, a key/cert mismatch, and chunk_bytes 0 raise
    InvalidInput.
    """
    key, pem = signer
    with pytest.raises(InvalidInput, match="32 raw X25519 bytes, got 31"):
        seal(b"x", recipient[1][:31], key, pem, chunk_bytes=CHUNK)
    with pytest.raises(InvalidInput, match="not usable for X25519"):
        seal(b"x", bytes(32), key, pem, chunk_bytes=CHUNK)
    with pytest.raises(InvalidInput, match="does not belong"):
        seal(b"x", recipient[1], ed25519.Ed25519PrivateKey.generate(), pem, chunk_bytes=CHUNK)
    with pytest.raises(InvalidInput, match="chunk_bytes must be positive"):
        seal(b"x", recipient[1], key, pem, chunk_bytes=0)


def test_max_total_bytes_refuses_oversized_announcements(
    pki: PkiLayout,
    recipient: tuple[x25519.X25519PrivateKey, bytes],
    sealed_3_5_mib: tuple[bytes, list[SealedPart]],
) -> None:
    """open_sealed(max_total_bytes=...) refuses a header announcing more, before buffering any
    chunk.
    """
    with pytest.raises(InvalidInput, match="more than the 1048576 bytes allowed"):
        open_sealed(
            sealed_3_5_mib[1], recipient[0], load_certificate(pki.ca_cert), max_total_bytes=MIB
        )


@pytest.mark.slow
def test_600_mib_of_float32_streams_through(
    pki: PkiLayout,
    signer: tuple[ed25519.Ed25519PrivateKey, bytes],
    recipient: tuple[x25519.X25519PrivateKey, bytes],
) -> None:
    """A 600 MiB parameter blob seals and opens in 1 MiB chunks; the SHA-256 matches."""
    np = pytest.importorskip("numpy")
    plaintext = np.random.default_rng(0).standard_normal(150 * 2**20, dtype=np.float32).tobytes()
    assert len(plaintext) == 600 * MIB
    expected = hashlib.sha256(plaintext).digest()
    # A generator, not a list: the stream is consumed as produced, as over gRPC.
    opened = open_sealed(
        seal(plaintext, recipient[1], *signer, chunk_bytes=CHUNK),
        recipient[0],
        load_certificate(pki.ca_cert),
    )
    del plaintext
    assert hashlib.sha256(opened.plaintext).digest() == expected
    assert opened.header.chunk_count == 600
