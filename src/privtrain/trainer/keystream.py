"""AES-256-CTR keystream for the DP randomness, drawn in parallel without the GIL.

Gradient noise needs 16 bytes of keystream per parameter and step (four 32-bit
uniforms), which is megabytes per step for a model of a few hundred thousand
parameters. ``cryptography`` computes AES-CTR with OpenSSL but holds the GIL, so the
training thread waits on it. OpenSSL's own EVP interface, called through ``ctypes``
(which releases the GIL), lets the keystream be drawn on several threads at once
(half the cores, at most four), each over its own range of counter blocks: the bytes are exactly those of one AES-256-CTR
stream (NIST SP 800-38A), whichever way they are drawn. Where the system's
``libcrypto`` cannot be loaded, ``cryptography`` draws them on one thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 16
# Below this many bytes one thread draws the whole range (a thread hand-off costs more).
PARALLEL_MIN_BYTES = 1 << 20
# Half the cores at most: the training step's own threads use the rest (on 2 cores, drawing on
# a second thread only competed with them in bench/dp_overhead.py).
_THREADS = max(1, min(4, (os.cpu_count() or 1) // 2))
_POOL: ThreadPoolExecutor | None = None


def _load_libcrypto() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        lib.EVP_CIPHER_CTX_new.restype = ctypes.c_void_p
        lib.EVP_CIPHER_CTX_free.argtypes = [ctypes.c_void_p]
        lib.EVP_aes_256_ctr.restype = ctypes.c_void_p
        lib.EVP_EncryptInit_ex.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                           ctypes.c_char_p, ctypes.c_char_p]
        lib.EVP_EncryptUpdate.argtypes = [ctypes.c_void_p, ctypes.c_void_p,
                                          ctypes.POINTER(ctypes.c_int), ctypes.c_void_p, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return lib


_LIBCRYPTO = _load_libcrypto()
_ZEROS = np.zeros(0, dtype=np.uint8)


def _zeros(size: int) -> np.ndarray:
    """At least ``size`` zero bytes from one shared, read-only buffer."""
    global _ZEROS
    if len(_ZEROS) < size:
        _ZEROS = np.zeros(max(size, 2 * len(_ZEROS)), dtype=np.uint8)
    return _ZEROS


def _counter_block(initial: bytes, blocks: int) -> bytes:
    """The 128-bit counter block ``blocks`` blocks after ``initial`` (big-endian, as CTR counts)."""
    value = (int.from_bytes(initial, "big") + blocks) % (1 << 128)
    return value.to_bytes(BLOCK, "big")


def _fill_openssl(key: bytes, initial: bytes, out: np.ndarray) -> None:
    assert _LIBCRYPTO is not None
    ctx = _LIBCRYPTO.EVP_CIPHER_CTX_new()
    if not ctx:
        raise MemoryError("EVP_CIPHER_CTX_new failed")
    try:
        if _LIBCRYPTO.EVP_EncryptInit_ex(ctx, _LIBCRYPTO.EVP_aes_256_ctr(), None, key, initial) != 1:
            raise RuntimeError("EVP_EncryptInit_ex failed")
        written = ctypes.c_int()
        zeros = _zeros(len(out))
        done = 0
        while done < len(out):  # EVP takes an int length
            size = min(len(out) - done, 1 << 30)
            if _LIBCRYPTO.EVP_EncryptUpdate(ctx, out.ctypes.data + done, ctypes.byref(written),
                                            zeros.ctypes.data, size) != 1:
                raise RuntimeError("EVP_EncryptUpdate failed")
            done += size
    finally:
        _LIBCRYPTO.EVP_CIPHER_CTX_free(ctx)


def _fill_cryptography(key: bytes, initial: bytes, out: np.ndarray) -> None:
    encryptor = Cipher(algorithms.AES(key), modes.CTR(initial)).encryptor()
    buffer = np.empty(len(out) + BLOCK - 1, dtype=np.uint8)  # update_into wants the slack
    encryptor.update_into(memoryview(_zeros(len(out)))[: len(out)], memoryview(buffer))
    out[:] = buffer[: len(out)]


def keystream(key: bytes, initial: bytes, size: int) -> np.ndarray:
    """``size`` bytes (``uint8``) of AES-256-CTR keystream under ``key`` from counter block ``initial``.

    Parameters
    ----------
    key : bytes
        32 bytes.
    initial : bytes
        The 16-byte initial counter block.
    size : int
        Bytes wanted.
    """
    global _POOL
    out = np.empty(size, dtype=np.uint8)
    if _LIBCRYPTO is None:
        _fill_cryptography(key, initial, out)
        return out
    if size < PARALLEL_MIN_BYTES or _THREADS == 1:
        _fill_openssl(key, initial, out)
        return out
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="dp-keystream")
    blocks = -(-size // BLOCK)
    per_thread = -(-blocks // _THREADS)
    futures = []
    for start in range(0, blocks, per_thread):
        lo, hi = start * BLOCK, min(size, (start + per_thread) * BLOCK)
        futures.append(_POOL.submit(_fill_openssl, key, _counter_block(initial, start), out[lo:hi]))
    for future in futures:
        future.result()
    return out
