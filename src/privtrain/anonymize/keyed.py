"""HMAC-SHA256 of many messages under one key and one domain prefix."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

_BLOCK = 64  # SHA-256's block size in bytes


def keyed_digests(secret: bytes, prefix: bytes, messages: Iterable[bytes]) -> list[bytes]:
    """``HMAC-SHA256(secret, prefix + m)`` for each ``m`` (RFC 2104), 32 bytes each.

    HMAC is H((K ^ opad) || H((K ^ ipad) || message)). Both padded-key states (the inner
    one already fed ``prefix``) are computed once and copied per message: the same
    digests as :func:`hmac.new`, without its key set-up on every call or its Python-level
    ``copy``.
    """
    key = hashlib.sha256(secret).digest() if len(secret) > _BLOCK else secret
    key = key.ljust(_BLOCK, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    inner.update(prefix)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    out = []
    for message in messages:
        h = inner.copy()
        h.update(message)
        o = outer.copy()
        o.update(h.digest())
        out.append(o.digest())
    return out
