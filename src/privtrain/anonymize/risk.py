"""Re-identification risk of a table: equivalence classes and k-anonymity.

A table is k-anonymous over its quasi-identifiers when every combination of QI
values that occurs, occurs at least k times (Sweeney 2002, "k-anonymity: a model
for protecting privacy"). A missing QI value is a value of its own (case C-A04):
an attacker who knows a record is blank in that field can single it out, so a
blank never merges into, nor hides inside, another class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd

# Mixed-radix keys stay exact while the product of cardinalities fits in int64.
_MAX_RADIX = 2**62


def combine_codes(
    columns: Sequence[tuple[npt.NDArray[np.int64], int]], n: int
) -> npt.NDArray[np.int64]:
    """Combine per-column integer codes into one int64 key per row (same key <=> same class).

    Parameters
    ----------
    columns : sequence of (codes, cardinality)
        ``codes`` of shape (n,) with values in ``[0, cardinality)``.
    n : int
        Number of rows (used when ``columns`` is empty: one class).

    Returns
    -------
    ndarray of int64, shape (n,)
    """
    key = np.zeros(n, dtype=np.int64)
    radix = 1
    for codes, card in columns:
        if radix * card >= _MAX_RADIX:
            # Renumber densely so the key never overflows, whatever the column count.
            _, inverse = np.unique(key, return_inverse=True)
            key = inverse.astype(np.int64).reshape(-1)
            radix = int(key.max()) + 1 if n else 1
        key = key * card + codes
        radix *= card
    return key


def class_sizes(key: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Class size of every class and of every row's class.

    Returns
    -------
    counts : ndarray of int64, shape (classes,)
        Rows per equivalence class.
    row_size : ndarray of int64, shape (n,)
        Size of the class of each row.
    """
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    counts = counts.astype(np.int64)
    return counts, counts[inverse.reshape(-1)]


def _frame_codes(df: pd.DataFrame, qis: Sequence[str]) -> npt.NDArray[np.int64]:
    cols = []
    for q in qis:
        codes, uniques = pd.factorize(df[q], use_na_sentinel=False)
        cols.append((np.asarray(codes, dtype=np.int64), max(len(uniques), 1)))
    return combine_codes(cols, len(df))


def equivalence_classes(df: pd.DataFrame, qis: Sequence[str]) -> npt.NDArray[np.int64]:
    """Sizes of the equivalence classes of ``df`` over ``qis``.

    Parameters
    ----------
    df : pd.DataFrame
        The table, n rows.
    qis : sequence of str
        Quasi-identifier column names; missing cells are a value of their own.

    Returns
    -------
    ndarray of int64, shape (classes,)
        Rows per class (sums to n); empty for an empty table.
    """
    if len(df) == 0:
        return np.zeros(0, dtype=np.int64)
    counts, _ = class_sizes(_frame_codes(df, qis))
    return counts


def k_anonymity(df: pd.DataFrame, qis: Sequence[str]) -> int:
    """The k for which ``df`` is k-anonymous over ``qis`` (Sweeney 2002).

    Returns
    -------
    int
        Size of the smallest equivalence class; 0 for an empty table (no class,
        so no k >= 1 is claimed).
    """
    counts = equivalence_classes(df, qis)
    return int(counts.min()) if counts.size else 0
