"""The random hold-out of a policy's ``[split]``: which rows are test rows.

A row is a test row when a keyed hash of its raw released values, read as a fraction
of 2^64, is below ``test_share``: SipHash-2-4 (Aumasson & Bernstein 2012, pandas'
``hash_array``) under a 96-bit key derived by HMAC-SHA256 from the owner's key,
the domain ``privtrain/split/v1`` and the policy's ``seed``. Each row's side is decided by that row
alone: adding or removing one row moves no other row between the splits (the platform
publishes the two counts with noise calibrated to exactly that), chunked and
whole-file runs split alike, and nobody without the key can tell which side a
known row fell on. Identical rows fall on the same side. A new ``seed`` draws a new
split under the same key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from privtrain.anonymize.chunk_view import decoded, keyed_text

DOMAIN = b"privtrain/split/v1\x00"
_SEP, _MISSING = "\x1f", "\x00"


def _text(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    values = decoded(column)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    values = keyed_text(values)
    return values if pa.types.is_string(values.type) else pc.cast(values, pa.string())


def holdout_rows(
    secret: bytes, seed: int, test_share: float, columns: Sequence[pa.Array | pa.ChunkedArray]
) -> npt.NDArray[np.bool_]:
    """Whether each row (given as its raw released columns, in a fixed order) is a test row."""
    if not columns:
        raise ValueError("a hold-out needs at least one column to decide each row by")
    rows = pc.binary_join_element_wise(
        *(_text(c) for c in columns), _SEP, null_handling="replace", null_replacement=_MISSING
    )
    derived = hmac.new(secret, DOMAIN + int(seed).to_bytes(8, "big"), hashlib.sha256).digest()
    # pandas takes a 16-character key (its UTF-8 bytes): 12 derived bytes in base64.
    hash_key = base64.b64encode(derived[:12]).decode("ascii")
    text = np.asarray(rows.to_numpy(zero_copy_only=False), dtype=object)
    draws = pd.util.hash_array(text, hash_key=hash_key, categorize=False)
    return (draws >> np.uint64(11)).astype(np.float64) * 2.0**-53 < test_share
