"""HMAC-SHA256 of many messages under one key and one domain prefix."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable


def keyed_digests(secret: bytes, prefix: bytes, messages: Iterable[bytes]) -> list[bytes]:
    """``HMAC-SHA256(secret, prefix + m)`` for each ``m`` (RFC 2104), 32 bytes each.

    The keyed inner state after ``prefix`` is computed once and copied per message,
    which saves the key set-up a one-shot ``hmac.digest`` pays on every call; the
    digests are the same.
    """
    base = hmac.new(secret, prefix, hashlib.sha256)
    out = []
    for message in messages:
        h = base.copy()
        h.update(message)
        out.append(h.digest())
    return out
