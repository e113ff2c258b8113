"""Proxies of quasi-identifiers, found by their values whatever their names.

k-anonymity is computed over the declared quasi-identifiers (QIs). A released column
that repeats a QI (Adult's ``education_num`` is a one-to-one code of ``education``), or
that pins it for many rows (Adult's ``relationship``: ``Husband`` is male and married in
19,715 of 19,716 rows), undoes the QI's generalization: an attacker reads the QI's raw
value off the proxy, and the classes the release really has are those of the QIs *and*
the proxy. The anonymizer therefore measures, for every released column an attacker could
know (:func:`privtrain.anonymize.released_risk.attacker_known`) and every declared QI,
how much one tells about the other, on the raw values of both (what the column releases
is at most as fine as its raw values, so this errs towards flagging):

* ``determines`` (C -> Q): the share of rows whose value of C fixes the QI: rows in a
  group of C (one value, at least :data:`MIN_GROUP` rows) where one QI value holds at
  least :data:`PURITY` of the rows. A QI whose commonest value already holds
  :data:`PURITY` of all rows is nearly constant and counts 0 (nothing to reveal).
* ``determined_by`` (Q -> C): the same the other way round: the share of rows whose QI
  value fixes C, i.e. C is (almost) a function of the QI, so whoever knows the QI knows
  C (``age_cat`` given ``age``).
* ``uncertainty_coefficient`` (Theil's U, C -> Q): 1 - H(Q | C) / H(Q), the share of
  the QI's entropy that knowing C removes, in [0, 1]. Groups of C under
  :data:`MIN_GROUP` rows are pooled into one (a near-unique column says nothing by this
  measure: the uniqueness check of :mod:`privtrain.anonymize.released_risk` covers it),
  and each group's entropy gets the Miller-Madow correction (K - 1) / (2 n ln 2) bits
  so that small groups do not look purer than they are.

A column is a proxy of a QI when ``determines`` >= :data:`PROXY_SHARE`, or
``uncertainty_coefficient`` >= :data:`PROXY_U`, or ``determined_by`` >=
:data:`FUNCTION_SHARE`. On real Adult: ``education_num`` -> education 1.00 / 1.00 /
1.00; ``relationship`` -> sex 0.45 (U 0.43), -> marital status 0.45 (U 0.57); every
other column stays under 0.05 and U 0.2.

Streaming (:class:`ProxySample`): the measures are computed on a uniform sample of at
most :data:`SAMPLE_ROWS` rows (every row of a smaller file), chosen by a hash of the
row number, so memory does not grow with the file. A column with more than
:data:`MAX_VALUES` distinct values in the sample is not measured (its groups are too
small to pin anything; the uniqueness check covers it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from privtrain.anonymize.memo import appended_positions, first_positions

IntArray = npt.NDArray[np.int64]

MIN_GROUP = 10
PURITY = 0.95
PROXY_SHARE = 0.2
PROXY_U = 0.5
FUNCTION_SHARE = 0.9
SAMPLE_ROWS = 1 << 16
MAX_VALUES = 1 << 16
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's finalizer, vectorized: a well-spread 64-bit hash of each entry."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


@dataclass(frozen=True)
class PairMeasures:
    """How much a released column C and a quasi-identifier Q tell about each other.

    Attributes
    ----------
    determines : float
        Share of rows whose value of C fixes Q (C -> Q), in [0, 1].
    determined_by : float
        Share of rows whose value of Q fixes C (Q -> C), in [0, 1].
    uncertainty_coefficient : float
        Theil's U of Q given C: 1 - H(Q|C) / H(Q), in [0, 1].
    rows : int
        Rows measured (the sample).
    """

    determines: float
    determined_by: float
    uncertainty_coefficient: float
    rows: int

    @property
    def is_proxy(self) -> bool:
        return (
            self.determines >= PROXY_SHARE
            or self.uncertainty_coefficient >= PROXY_U
            or self.determined_by >= FUNCTION_SHARE
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "determines": round(self.determines, 4),
            "determined_by": round(self.determined_by, 4),
            "uncertainty_coefficient": round(self.uncertainty_coefficient, 4),
            "rows_measured": self.rows,
        }

    def evidence(self, column: str, qi: str) -> str:
        """One line saying why ``column`` is a proxy of ``qi``."""
        parts = []
        if self.determines >= PROXY_SHARE:
            parts.append(f"its value fixes {qi} in {self.determines:.0%} of rows")
        if self.determined_by >= FUNCTION_SHARE:
            parts.append(f"{qi} fixes it in {self.determined_by:.0%} of rows")
        parts.append(
            f"it removes {self.uncertainty_coefficient:.0%} of {qi}'s uncertainty "
            "(Theil's U)"
        )
        return f"proxy of {qi}: " + ", ".join(parts)


def _joint(
    a: IntArray, b: IntArray, weights: IntArray | None = None
) -> tuple[IntArray, IntArray, IntArray]:
    """Occupied (a, b) pairs and their counts (rows, or summed ``weights``)."""
    card_b = int(b.max()) + 1
    key = a * card_b + b
    size = (int(a.max()) + 1) * card_b
    if size <= 4 * len(key) + 65_536:
        counts = np.bincount(key, weights=weights, minlength=size)
        nz = np.flatnonzero(counts)
        return nz // card_b, nz % card_b, counts[nz].astype(np.int64)
    uniq, inverse = np.unique(key, return_inverse=True)
    counts = np.bincount(inverse.reshape(-1), weights=weights, minlength=len(uniq))
    return uniq // card_b, uniq % card_b, counts.astype(np.int64)


def _determined(group: IntArray, value: IntArray, count: IntArray, n: int) -> float:
    """Share of rows in groups (>= MIN_GROUP rows) where one value holds >= PURITY."""
    sizes = np.bincount(group, weights=count).astype(np.int64)
    values = np.bincount(value, weights=count)
    if n == 0 or values.max() >= PURITY * n:
        return 0.0
    top = np.zeros(len(sizes), dtype=np.int64)
    np.maximum.at(top, group, count)
    pinned = (sizes >= MIN_GROUP) & (top >= PURITY * sizes)
    return float(sizes[pinned].sum() / n)


def _entropy_bits(counts: npt.NDArray[Any]) -> float:
    total = float(counts.sum())
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


def _uncertainty(group: IntArray, value: IntArray, count: IntArray, n: int) -> float:
    """Theil's U of ``value`` given ``group``: small groups pooled, Miller-Madow corrected."""
    h_value = _entropy_bits(np.bincount(value, weights=count))
    if n == 0 or h_value <= 0:
        return 0.0
    sizes = np.bincount(group, weights=count)
    pooled = np.where(sizes[group] >= MIN_GROUP, group, len(sizes))
    g, _, c = _joint(pooled, value, count)
    # Per-group entropy (bits) and number of distinct values, by bincount over pairs.
    n_g = np.bincount(g, weights=c)
    p = c / n_g[g]
    h_g = np.bincount(g, weights=-p * np.log2(p), minlength=len(n_g))
    k_g = np.bincount(g, minlength=len(n_g))
    occupied = n_g > 0
    corrected = h_g[occupied] + (k_g[occupied] - 1) / (2.0 * n_g[occupied] * math.log(2))
    h_cond = float((n_g[occupied] * np.minimum(corrected, h_value)).sum() / n)
    return float(min(max(1.0 - h_cond / h_value, 0.0), 1.0))


def pair_measures(column: IntArray, qi: IntArray) -> PairMeasures:
    """The measures of one (column, QI) pair from their codes (>= 0, missing a code
    of its own), one entry per row."""
    n = len(column)
    if n == 0:
        return PairMeasures(0.0, 0.0, 0.0, 0)
    c, q, cnt = _joint(np.asarray(column, dtype=np.int64), np.asarray(qi, dtype=np.int64))
    return PairMeasures(
        determines=_determined(c, q, cnt, n),
        determined_by=_determined(q, c, cnt, n),
        uncertainty_coefficient=_uncertainty(c, q, cnt, n),
        rows=n,
    )


def find_proxies(
    columns: Mapping[str, IntArray], qis: Mapping[str, IntArray]
) -> dict[str, dict[str, PairMeasures]]:
    """Every (column, QI) pair that makes the column a proxy, by column.

    Parameters
    ----------
    columns, qis : mapping name -> codes
        Codes (>= 0) per row, all of one length.

    Returns
    -------
    dict column -> {qi: PairMeasures}
        Only columns that are a proxy of at least one QI, with the QIs they are one of.
    """
    found: dict[str, dict[str, PairMeasures]] = {}
    for name, codes in columns.items():
        if name in qis:
            continue
        hits = {}
        for q, q_codes in qis.items():
            m = pair_measures(codes, q_codes)
            if m.is_proxy:
                hits[q] = m
        if hits:
            found[name] = hits
    return found


class ProxySample:
    """A bounded, uniform sample of rows: the QIs' raw value ids and the measured
    columns' raw value ids, for :func:`find_proxies` at the end of the scan.

    Row r is in the sample when the low ``bits`` bits of ``mix64(r)`` are 0; ``bits``
    grows by one (halving the sample) whenever the sample passes ``budget`` rows, so a
    file of up to ``budget`` rows is measured whole.

    Parameters
    ----------
    columns : sequence of str
        Columns to measure (released, attacker-known, not QIs).
    qis : sequence of str
        Declared quasi-identifiers.
    budget : int
        Most rows kept.
    """

    def __init__(self, columns: Sequence[str], qis: Sequence[str], budget: int = SAMPLE_ROWS):
        self.columns = list(columns)
        self.qis = list(qis)
        self.budget = budget
        self.bits = 0
        self.ids: dict[str, pa.Array | None] = {c: None for c in self.columns}
        self.too_many: set[str] = set()
        self._parts: list[dict[str, Any]] = []
        self._rows = 0

    @property
    def active(self) -> bool:
        return bool(self.columns) and bool(self.qis)

    def add(
        self, offset: int, qi_ids: Sequence[IntArray], codes: Mapping[str, IntArray],
        dictionaries: Mapping[str, pa.Array],
    ) -> None:
        """Add one chunk: its QIs' row ids (``qi_ids``, in ``qis`` order) and, per measured
        column, each row's code into the chunk's distinct values (-1: missing)."""
        if not self.active or not len(qi_ids[0]):
            return
        n = len(qi_ids[0])
        h = mix64(np.arange(offset, offset + n, dtype=np.uint64))
        mask = np.uint64((1 << self.bits) - 1)
        idx = np.flatnonzero((h & mask) == 0)
        part: dict[str, Any] = {"_h": h[idx]}
        for q, ids in zip(self.qis, qi_ids, strict=True):
            part[q] = ids[idx]
        for c in self.columns:
            if c in self.too_many:
                continue
            row_codes = codes[c][idx]
            size = len(dictionaries[c])
            used = np.flatnonzero(np.bincount(row_codes + 1, minlength=size + 1)[1:])
            lookup = np.zeros(size + 1, dtype=np.int64)  # the last slot: missing, id 0
            if len(used):
                lookup[used] = self._ids(c, dictionaries[c].take(pa.array(used)))
            part[c] = lookup[row_codes]
            seen = self.ids[c]
            if seen is not None and len(seen) > MAX_VALUES:
                self.too_many.add(c)
                self.ids[c] = None
        self._parts.append(part)
        self._rows += len(idx)
        if self._rows <= self.budget:
            return
        # Halve the sample (more than once if need be) in one pass over what is kept.
        while self._rows > self.budget:
            self.bits += 1
            mask = np.uint64((1 << self.bits) - 1)
            self._rows = sum(int(((p["_h"] & mask) == 0).sum()) for p in self._parts)
        kept = []
        for p in self._parts:
            sel = np.flatnonzero((p["_h"] & mask) == 0)
            kept.append({k: v[sel] for k, v in p.items()})
        self._parts = kept

    def _ids(self, column: str, values: pa.Array) -> IntArray:
        """Stable ids (1, 2, ... in order of first appearance) of distinct values, looked
        up in C (``index_in``) among those seen before."""
        seen = self.ids[column]
        if seen is not None and values.type != seen.type:
            values = values.cast(seen.type)
        if seen is not None:
            pos = pc.index_in(values, value_set=seen)
            if pos.null_count:
                new = values.filter(pc.is_null(pos))
                pos = appended_positions(pos, len(seen))
                seen = pa.concat_arrays([seen, new])
        else:
            seen, pos = values, first_positions(len(values))
        self.ids[column] = seen
        return np.asarray(pos.to_numpy(zero_copy_only=False), dtype=np.int64) + 1

    def findings(self) -> dict[str, dict[str, PairMeasures]]:
        """:func:`find_proxies` on the sample (columns with too many values left out)."""
        if not self.active or not self._parts:
            return {}
        qis = {q: np.concatenate([p[q] for p in self._parts]) for q in self.qis}
        cols = {
            c: np.concatenate([p[c] for p in self._parts])
            for c in self.columns
            if c not in self.too_many
        }
        return find_proxies(cols, qis)
