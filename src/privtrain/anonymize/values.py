"""Per-distinct-value helpers shared by the operators.

Operators never loop over cells: they factorize a column into integer codes
(``-1`` = missing) and its distinct values, work on the distinct values, and map
the results back with one ``numpy.take``. Missing stays missing (case C-A04).
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import numpy.typing as npt
import pandas as pd

from privtrain.anonymize.errors import PolicyError
from privtrain.errors import shown

# Casefolding an address merges "Alice@Example.org" and "alice@example.org" (one
# mailbox in practice); other text keeps its case because "Rose" and "rose" can differ.
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def distinct_normalized(values: pd.Series) -> tuple[npt.NDArray[np.int64], list[str]]:
    """Factorize a column into codes over its normalized distinct values.

    Normalization: ``str``, Unicode NFC (so precomposed and decomposed "José" agree),
    each run of whitespace (any Unicode space, tab or line break) made one space and
    none kept at the ends, casefold values that look like e-mail addresses. Letter case
    otherwise stays ("Rose" and "rose" can be different people). A cell that is
    missing, or empty after this, is missing.

    Parameters
    ----------
    values : pd.Series
        Column of length n, any dtype.

    Returns
    -------
    codes : ndarray of int64, shape (n,)
        Index into ``uniques``; -1 for a missing cell.
    uniques : list of str
        Distinct normalized values (non-empty), in order of first appearance.
    """
    raw_codes, raw_uniques = pd.factorize(values, use_na_sentinel=True)
    # One plain loop over the distinct values: pandas' string methods pay their own
    # overhead per call and per value, more than the normalizing itself.
    index: dict[str, int] = {}
    # The extra last slot maps a raw code of -1 (missing) to -1.
    lookup = np.full(len(raw_uniques) + 1, -1, dtype=np.int64)
    nfc, email = unicodedata.normalize, _EMAIL.fullmatch
    for i, raw in enumerate(np.asarray(raw_uniques, dtype=object).tolist()):
        text = str(raw)
        # ASCII text is already in NFC. Runs of whitespace (tabs, no-break spaces, doubled
        # spaces) are typing, not identity: one space, none at the ends.
        text = " ".join((text if text.isascii() else nfc("NFC", text)).split())
        if not text:
            continue
        if "@" in text and email(text):
            text = text.casefold()
        lookup[i] = index.setdefault(text, len(index))
    return lookup[np.asarray(raw_codes, dtype=np.int64)], list(index)


def expand(codes: npt.NDArray[np.int64], results: list[str], index: pd.Index) -> pd.Series:
    """Map per-distinct-value ``results`` back to rows; code -1 gives a missing cell.

    Returns
    -------
    pd.Series
        ``string`` dtype, length ``len(codes)``, on ``index``.
    """
    table = np.array([*results, None], dtype=object)
    return pd.Series(table[codes], index=index, dtype="string")


def first_row(mask: npt.NDArray[np.bool_]) -> int:
    """1-based data row of the first True in ``mask`` (for error messages)."""
    return int(np.flatnonzero(mask)[0]) + 1


def to_numeric(values: pd.Series, source: str, column: str) -> pd.Series:
    """Parse a column as numbers; missing cells stay missing.

    Returns
    -------
    pd.Series
        ``Int64`` when every value is integral, else ``Float64``.

    Raises
    ------
    PolicyError
        A value is not a finite number; names file, row, column and value.
    """
    if pd.api.types.is_bool_dtype(values.dtype):
        raise PolicyError(f"{source}: column {column!r}: boolean values in a numeric column")
    stripped = values.astype("string").str.strip()
    text = stripped.mask(stripped == "")
    num: pd.Series = pd.Series(pd.to_numeric(text, errors="coerce"), dtype="Float64")
    bad = (num.isna() & text.notna()).to_numpy(dtype=bool) | np.isinf(
        num.fillna(0).to_numpy(dtype=float)
    )
    if bad.any():
        row = first_row(bad)
        raise PolicyError(
            f"{source}: row {row}, column {column!r}: "
            f"value {shown(values.iloc[row - 1])} is not a finite number"
        )
    filled = num.dropna()
    if bool(((filled % 1) == 0).all()):
        return pd.Series(num, dtype="Int64")
    return num


def check_bounds(num: pd.Series, lower: float, upper: float, source: str, column: str) -> None:
    """Refuse a value outside the column's public domain [lower, upper].

    The manifest promises trainers this range; a value outside it would break the promise.

    Raises
    ------
    PolicyError
        Names file, row, column, value and the bounds.
    """
    arr = num.astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    bad = (arr < lower) | (arr > upper)
    if bad.any():
        row = first_row(bad)
        raise PolicyError(
            f"{source}: row {row}, column {column!r}: value {num.iloc[row - 1]} is outside the "
            f"policy's domain [{lower}, {upper}]"
        )
