"""``hmac``: replace each value by a keyed token (RFC 2104 HMAC with SHA-256).

token = hex(HMAC-SHA256(secret, b"privtrain/hmac/v1\\x00" + column + b"\\x00" + value))[:32]

The column name in the message keeps tokens of different columns unlinkable;
the version prefix separates this use of the key from pseudonym seeds. Values
are normalized first (NFC, strip, e-mails casefolded) so spelling variants of
one value share a token. Same key, same value, same column -> same token in
every file and run (case C-A01). 128 bits of output keep accidental collisions
negligible (~2^-64 at 2^32 distinct values).
"""

from __future__ import annotations

import hmac
from typing import Any

import pandas as pd

from privtrain.anonymize.operators.registry import OperatorContext, register_operator
from privtrain.anonymize.values import distinct_normalized, expand

DOMAIN = b"privtrain/hmac/v1\x00"
TOKEN_HEX_CHARS = 32


def hmac_tokens(values: pd.Series, column: str, secret: bytes) -> pd.Series:
    """Tokenize a column, one HMAC per distinct normalized value.

    Parameters
    ----------
    values : pd.Series
        Column of length n.
    column : str
        Column name, bound into each token.
    secret : bytes
        32-byte HMAC key.

    Returns
    -------
    pd.Series
        ``string`` dtype, 32 lowercase hex chars per cell; missing cells stay missing (C-A04).
    """
    codes, uniques = distinct_normalized(values)
    prefix = DOMAIN + column.encode("utf-8") + b"\x00"
    tokens = [
        hmac.digest(secret, prefix + u.encode("utf-8"), "sha256").hex()[:TOKEN_HEX_CHARS]
        for u in uniques
    ]
    return expand(codes, tokens, values.index)


@register_operator("hmac")
class HmacToken:
    """Keyed, deterministic, non-reversible token; joinable across files with the same key."""

    name = "hmac"

    def transform(self, values: pd.Series, ctx: OperatorContext) -> pd.Series:
        return hmac_tokens(values, ctx.column.name, ctx.key.secret)

    def output_domain(self, ctx: OperatorContext) -> dict[str, Any]:
        return {"type": "identifier"}
