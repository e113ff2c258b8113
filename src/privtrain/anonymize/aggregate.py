"""Counting instead of keeping rows: distinct values and value combinations across chunks.

The streaming anonymizer never holds the table. What k-anonymity, l-diversity and
t-closeness need from it is how many rows share each combination of quasi-identifier
(and sensitive) values, so each chunk is reduced to its distinct combinations with
their counts, and the chunks' counts are added up. Values get dense integer ids in
order of first appearance in the file (id 0 is "missing", a value of its own, case
C-A04), which is the order ``pd.factorize`` gives on the whole column: the codes, and
so every figure computed from them, are those of a one-pass run.

Memory grows with the number of distinct combinations, never with the number of rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from privtrain.anonymize.errors import AnonymizationError
from privtrain.anonymize.privacy_models import Sensitive

MISSING = 0
_MAX_RADIX = 2**62
# Classes a suppression table may hold (one byte each).
_MAX_TABLE = 1 << 24
IntArray = npt.NDArray[np.int64]


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


class ValueIds:
    """Dense ids of the distinct values of one column, in order of first appearance.

    Attributes
    ----------
    values : list
        ``values[i]`` is the value of id ``i``; ``values[0]`` (None) stands for missing.
    missing_seen : bool
        Whether any row had the missing value.
    """

    def __init__(self) -> None:
        self._ids: dict[Any, int] = {}
        self.values: list[Any] = [None]
        self.missing_seen = False

    def __len__(self) -> int:
        return len(self.values)

    def lookup(self, distinct: Sequence[Any], *, add: bool = True) -> IntArray:
        """Ids of ``distinct`` (one chunk's distinct values), plus a last slot for missing.

        Index the result with a chunk's codes (-1 = missing) to get each row's id.

        Raises
        ------
        LookupError
            ``add=False`` and a value was never seen (the input changed between passes).
        """
        out = np.zeros(len(distinct) + 1, dtype=np.int64)
        for i, value in enumerate(distinct):
            if _is_missing(value):
                continue
            j = self._ids.get(value)
            if j is None:
                if not add:
                    raise LookupError(value)
                j = len(self.values)
                self._ids[value] = j
                self.values.append(value)
            out[i] = j
        return out

    def note(self, row_ids: IntArray) -> IntArray:
        """Record whether ``row_ids`` hold a missing value; return them unchanged."""
        if not self.missing_seen and bool((row_ids == MISSING).any()):
            self.missing_seen = True
        return row_ids


def sensitive_key(values: pd.Series, ordered: bool) -> list[Any]:
    """The values a sensitive attribute is compared by, as ``sensitive_codes`` reads them:
    numbers for an ordered (numeric) attribute, text otherwise; missing as None."""
    if ordered:
        num = pd.to_numeric(values, errors="coerce")
        return [None if _is_missing(v) else float(v) for v in num.tolist()]
    return [None if _is_missing(v) else str(v) for v in values.astype("string").tolist()]


def sensitive_from_ids(name: str, ids: ValueIds, row_ids: IntArray, ordered: bool) -> Sensitive:
    """A :class:`Sensitive` over entries holding ids of ``ids``.

    Codes follow :func:`privtrain.anonymize.privacy_models.sensitive_codes`: values in
    order of first appearance (numbers in increasing order when ``ordered``), missing last.
    """
    present = list(range(1, len(ids)))
    if ordered:
        present.sort(key=lambda i: ids.values[i])
    remap = np.zeros(len(ids), dtype=np.int64)
    remap[present] = np.arange(len(present), dtype=np.int64)
    remap[MISSING] = len(present)
    card = len(present) + int(ids.missing_seen)
    return Sensitive(name, remap[row_ids], max(card, 1), ordered)


def input_changed(source: str) -> AnonymizationError:
    """The error for a file that changed between the two passes."""
    return AnonymizationError(
        f"{source}: the input changed between the two passes; run again on a file nothing "
        "else writes to"
    )


def group_rows(mat: IntArray) -> tuple[IntArray, IntArray]:
    """Distinct rows of an (n, d) matrix of non-negative ids and each row's group.

    Rows come out in lexicographic order, whatever the input order, so merging the
    counts of chunks in any grouping gives the same result.

    Returns
    -------
    rows : ndarray of int64, shape (m, d)
    inverse : ndarray of int64, shape (n,)
        Index into ``rows`` of each input row.
    """
    return group_columns(list(mat.T), len(mat))


def _radix_key(columns: Sequence[IntArray], cards: list[int]) -> IntArray:
    """One int64 per row: the row's ids read as digits of radix ``cards`` (product < 2**62)."""
    key = np.array(columns[0], dtype=np.int64)
    for j in range(1, len(columns)):
        key *= cards[j]
        key += columns[j]
    return key


def _radix_rows(keys: IntArray, cards: list[int]) -> IntArray:
    """The id rows (m, d) that :func:`_radix_key` turned into ``keys`` (m,)."""
    rows = np.empty((len(keys), len(cards)), dtype=np.int64)
    rest = keys
    for j in range(len(cards) - 1, -1, -1):
        rest, rows[:, j] = np.divmod(rest, cards[j])
    return rows


def group_columns(columns: Sequence[IntArray], n: int) -> tuple[IntArray, IntArray]:
    """:func:`group_rows` of the (n, d) matrix whose columns are ``columns`` (d arrays of
    length n), without building the matrix."""
    d = len(columns)
    if n == 0 or d == 0:
        return np.zeros((min(n, 1), d), dtype=np.int64), np.zeros(n, dtype=np.int64)
    cards = [int(c.max()) + 1 for c in columns]
    if math.prod(cards) < _MAX_RADIX:
        # Hashing, then sorting only the distinct keys, beats np.unique's sort of all n.
        inverse, uniq = pd.factorize(_radix_key(columns, cards), sort=True)
        rows = _radix_rows(np.asarray(uniq, dtype=np.int64), cards)
    else:
        rows, inverse = np.unique(np.column_stack(columns), axis=0, return_inverse=True)
    return rows.astype(np.int64), inverse.reshape(-1).astype(np.int64)


def count_columns(columns: Sequence[IntArray], n: int) -> tuple[IntArray, IntArray]:
    """Distinct rows (m, d) of the matrix whose columns are ``columns`` (d arrays of
    length n), in lexicographic order, and how many times each occurs (m,)."""
    if n and columns:
        cards = [int(c.max()) + 1 for c in columns]
        size = math.prod(cards)
        # Few possible combinations (generalized classes, small domains): count them all
        # in one array instead of hashing every row.
        if size <= max(8 * n, 1 << 16):
            dense = np.bincount(_radix_key(columns, cards), minlength=size)
            keys = np.flatnonzero(dense)
            return _radix_rows(keys, cards), dense[keys].astype(np.int64)
    rows, inverse = group_columns(columns, n)
    return rows, np.bincount(inverse, minlength=len(rows)).astype(np.int64)


def unique_rows(mat: IntArray, weights: IntArray | None = None) -> tuple[IntArray, IntArray]:
    """Distinct rows of an (n, d) matrix of non-negative ids, with their (weighted) counts.

    Returns
    -------
    rows : ndarray of int64, shape (m, d)
        In lexicographic order.
    counts : ndarray of int64, shape (m,)
    """
    rows, inverse = group_rows(mat)
    counts = np.bincount(inverse, weights=weights, minlength=len(rows))
    return rows, counts.astype(np.int64)


def ids_of(ids: ValueIds, values: pd.Series, key: Callable[[pd.Series], list[Any]]) -> IntArray:
    """Row ids of a per-row column: its distinct values through ``key``, then ``ids``."""
    codes, uniq = pd.factorize(values, use_na_sentinel=True)
    lookup = ids.lookup(key(pd.Series(uniq, dtype=values.dtype)))
    return ids.note(lookup[np.asarray(codes, dtype=np.int64)])


class Combinations:
    """Counts of value combinations, added up over chunks with bounded memory."""

    def __init__(self, width: int) -> None:
        self.width = width
        self._parts: list[tuple[IntArray, IntArray]] = []
        self._pending = 0
        self._merged = 0

    def add(self, columns: list[IntArray], n: int) -> None:
        """Add one chunk: ``columns`` are its per-row ids (``width`` arrays of length n)."""
        rows, counts = count_columns(columns, n)
        self._parts.append((rows, counts))
        self._pending += len(rows)
        # Merge once the parts hold as many entries as the merged result: amortized O(1).
        if self._pending > max(4 * self._merged, 1 << 20):
            self._merge()

    def add_counted(self, rows: IntArray, counts: IntArray) -> None:
        """Add combinations already counted: ``rows`` (m, width) with ``counts`` (m,)."""
        rows, counts = unique_rows(rows, counts)
        self._parts.append((rows, counts))
        self._pending += len(rows)
        if self._pending > max(4 * self._merged, 1 << 20):
            self._merge()

    def _merge(self) -> None:
        if len(self._parts) > 1:
            mat = np.concatenate([r for r, _ in self._parts])
            w = np.concatenate([c for _, c in self._parts])
            self._parts = [unique_rows(mat, w)]
        self._merged = len(self._parts[0][0]) if self._parts else 0
        self._pending = 0

    def result(self) -> tuple[IntArray, IntArray]:
        """All distinct combinations (m, width) and how many rows hold each (m,)."""
        self._merge()
        if not self._parts:
            return np.zeros((0, self.width), dtype=np.int64), np.zeros(0, dtype=np.int64)
        return self._parts[0]


class LeveledIds:
    """A quasi-identifier seen through its distinct values: per level, the class code of
    each value id (a :class:`privtrain.anonymize.lattice.Leveled` over entries).

    Parameters
    ----------
    levels : list of (lookup, cardinality)
        For each level 0..height, ``lookup[id]`` = class code of the value with that id.
    entries : ndarray of int64
        Value id per entry (row or combination).
    """

    def __init__(self, levels: list[tuple[IntArray, int]], entries: IntArray) -> None:
        self.height = len(levels) - 1
        self._levels = levels
        self._entries = entries

    def codes(self, level: int) -> tuple[IntArray, int]:
        lookup, card = self._levels[level]
        return lookup[self._entries], card


class ClassFilter:
    """Which rows of a chunk to suppress, given the suppressed classes of the chosen node.

    Parameters
    ----------
    lookups : list of (lookup, cardinality)
        Per QI, the class code of each value id at the chosen level.
    suppressed : ndarray of int64, shape (m, q)
        Value ids (one column per QI) of entries whose class is suppressed.
    """

    def __init__(self, lookups: list[tuple[IntArray, int]], suppressed: IntArray) -> None:
        self._lookups = lookups
        self._radix = math.prod(card for _, card in lookups) < _MAX_RADIX
        drop = self._keys(list(suppressed.T))
        self._drop = np.unique(drop) if self._radix else drop
        self.none = len(suppressed) == 0
        # Few possible classes: one flag per class, read by each row's key.
        size = math.prod(card for _, card in lookups)
        self._dropped: npt.NDArray[np.bool_] | None = None
        if self._radix and size <= _MAX_TABLE:
            self._dropped = np.zeros(size, dtype=bool)
            self._dropped[self._drop] = True

    def _keys(self, ids: Sequence[IntArray]) -> Any:
        cols = [lookup[c] for c, (lookup, _) in zip(ids, self._lookups, strict=True)]
        if self._radix:
            key = np.zeros(len(cols[0]) if cols else 0, dtype=np.int64)
            for col, (_, card) in zip(cols, self._lookups, strict=True):
                key *= card
                key += col
            return key
        return pd.MultiIndex.from_arrays(cols) if cols else pd.MultiIndex.from_arrays([[]])

    def keep(self, ids: Sequence[IntArray], n: int) -> npt.NDArray[np.bool_]:
        """True for each of the ``n`` rows kept; ``ids`` holds one array of the rows'
        value ids per QI."""
        if self.none:
            return np.ones(n, dtype=bool)
        keys = self._keys(ids)
        if self._dropped is not None:
            return ~self._dropped[keys]
        if self._radix:
            return ~np.isin(keys, self._drop, assume_unique=False)
        return ~np.asarray(keys.isin(self._drop), dtype=bool)
