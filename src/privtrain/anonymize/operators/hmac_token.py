"""``hmac``: replace each value by a keyed token (RFC 2104 HMAC with SHA-256).

token = hex(HMAC-SHA256(secret, b"privtrain/hmac/v1\\x00" + column + b"\\x00" + value))[:32]

The column name in the message keeps tokens of different columns unlinkable;
the version prefix separates this use of the key from pseudonym seeds. Values
are normalized first (NFC, whitespace runs to one space, ends stripped, e-mails
casefolded; phone numbers to E.164 with ``normalize = "phone"``) so spelling
variants of one value share a token. Same key, same value, same column -> same
token in every file and run (case C-A01). 128 bits of output keep accidental collisions
negligible (~2^-64 at 2^32 distinct values).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from privtrain.anonymize.keyed import keyed_digests
from privtrain.anonymize.operators.registry import OperatorContext, register_operator
from privtrain.anonymize.values import distinct_normalized, expand

DOMAIN = b"privtrain/hmac/v1\x00"
TOKEN_HEX_CHARS = 32


def hmac_tokens(
    values: pd.Series,
    column: str,
    secret: bytes,
    normalized: tuple[npt.NDArray[np.int64], list[str]] | None = None,
) -> pd.Series:
    """Tokenize a column, one HMAC per distinct normalized value.

    Parameters
    ----------
    values : pd.Series
        Column of length n.
    column : str
        Column name, bound into each token.
    secret : bytes
        32-byte HMAC key.
    normalized : (codes, uniques) | None
        The column already factorized over normalized values (e.g. E.164 phone numbers);
        None: :func:`~privtrain.anonymize.values.distinct_normalized`.

    Returns
    -------
    pd.Series
        ``string`` dtype, 32 lowercase hex chars per cell; missing cells stay missing (C-A04).
    """
    codes, uniques = normalized if normalized is not None else distinct_normalized(values)
    prefix = DOMAIN + column.encode("utf-8") + b"\x00"
    digests = keyed_digests(secret, prefix, (u.encode("utf-8") for u in uniques))
    tokens = [d[: TOKEN_HEX_CHARS // 2].hex() for d in digests]
    return expand(codes, tokens, values.index)


def normalized_input(
    values: pd.Series, ctx: OperatorContext
) -> tuple[npt.NDArray[np.int64], list[str]] | None:
    """The column's policy normalization (``normalize = "phone"``: E.164), or None for the default."""
    col = ctx.column
    if col.normalize == "phone":
        from privtrain.anonymize.operators.phone import phone_normalized

        assert col.phone_region is not None
        return phone_normalized(values, col.phone_region, ctx.source, col.name)
    return None


@register_operator("hmac")
class HmacToken:
    """Keyed, deterministic, non-reversible token; joinable across files with the same key."""

    name = "hmac"

    def transform(self, values: pd.Series, ctx: OperatorContext) -> pd.Series:
        return hmac_tokens(values, ctx.column.name, ctx.key.secret, normalized_input(values, ctx))

    def output_domain(self, ctx: OperatorContext) -> dict[str, Any]:
        return {"type": "identifier"}
