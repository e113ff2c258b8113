"""The AES-256-CTR keystream behind the DP randomness is one standard stream (NIST SP 800-38A),
whichever way it is drawn: OpenSSL on several threads, on one, or ``cryptography``."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privtrain.trainer import keystream as ks


def _reference(key: bytes, initial: bytes, size: int) -> bytes:
    return Cipher(algorithms.AES(key), modes.CTR(initial)).encryptor().update(bytes(size))


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("initial", [bytes(16), b"\x00" * 12 + b"\xff\xff\xff\xf0", b"\xff" * 16])
def test_parallel_draws_are_the_one_stream(monkeypatch: pytest.MonkeyPatch, threads: int,
                                           initial: bytes) -> None:
    """Split over threads at block boundaries, through a 32-bit and a 128-bit counter wrap."""
    if ks._LIBCRYPTO is None:
        pytest.skip("the system libcrypto cannot be loaded here")
    monkeypatch.setattr(ks, "_THREADS", threads)
    monkeypatch.setattr(ks, "_POOL", None)
    key = os.urandom(32)
    for size in (1, 15, 16, 17, ks.PARALLEL_MIN_BYTES + 13, 3 * ks.PARALLEL_MIN_BYTES + 1):
        assert ks.keystream(key, initial, size).tobytes() == _reference(key, initial, size), size


def test_without_libcrypto_cryptography_draws_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    key, initial = os.urandom(32), os.urandom(16)
    expected = ks.keystream(key, initial, 100_003).tobytes()
    monkeypatch.setattr(ks, "_LIBCRYPTO", None)
    assert ks.keystream(key, initial, 100_003).tobytes() == expected == _reference(key, initial, 100_003)
