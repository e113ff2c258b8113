"""Risk over what is released, not only over the declared quasi-identifiers.

k is computed over the declared quasi-identifiers (QIs). An attacker knows more than
those: the facts of a criminal record are in public court files, a person's dates of
events, counts and codes are known to whoever dealt with them. This module measures the
release as it is written, in the second pass, chunk by chunk:

* ``kept_column_uniqueness``: for every released column an attacker could know (below),
  the share of output rows that are unique on (the QIs at their released levels + that
  column); the report adds the other released columns (keyed tokens, pseudonyms,
  scrubbed text), counted with pandas on the written file;
* in the report (from the written file, with pandas), the same figures over the
  *attacker-known set*: the QIs plus every released column an attacker could plausibly
  know (:func:`attacker_known`: kept values, shifted dates,
  masked and noised values; not keyed tokens or pseudonyms, which nobody can compute
  without the key, nor scrubbed free text);
* re-identification risk over the declared QIs and over the attacker-known set, with
  the release as its own population (El Emam & Dankar 2008; ARX's "records at risk",
  "highest risk", "success rate"): journalist risk (highest) = max over records of
  1 / class size, records at risk = records whose 1 / class size exceeds 0.2 (classes
  under 5), marketer risk = expected share re-identified = classes / records. A larger
  real population only lowers them;
* k, l and t over the QIs *and* the kept proxies of QIs (:mod:`privtrain.anonymize.proxies`).

Counting is by 64-bit hashes: within a chunk, rows are grouped by small integers (the
class's dense id times each value's code), and each distinct group gets the hash of its
combination (splitmix64 over the QIs' label ids, then each value's hash, a value hashed
once per file), the same in every chunk; a column with far more possible groups than
rows (a date) has each row hashed instead. The chunks' hashes and counts are merged, so
memory is at most 16 bytes per distinct combination (``O(rows)`` for a near-unique
column, a few KiB for a small category) and never a Python object per row. Two distinct
combinations share a hash with probability about rows^2 / 2^65 (3e-8 at 10^6 rows),
which could only merge two classes. The counting runs on a thread of its own beside the
writing (:class:`ReleaseCounter`), which also counts the pass's re-check of k, l and t.

Policy (``[risk]``)::

    [risk]
    uniqueness_threshold = 0.05      # default; 1 turns the refusal off (recorded)

    [risk.accept]                    # kept although QIs + it leave > threshold unique
    hours_per_week = "hours worked are not in any public record"

    [risk.acknowledge_proxy]         # a proxy of a QI kept on purpose
    relationship = "needed by the model; the manifest signs the k counting it"

``run`` refuses (nothing is written or signed) when an attacker-known column leaves more
than the threshold of rows unique together with the QIs and is not accepted, or when
kept proxies break k (or l, t) and one of them is not acknowledged. The manifest records
the threshold, every acceptance and acknowledgement with its reason, and the figures.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa

from privtrain.anonymize.aggregate import (
    Combinations,
    ValueIds,
    count_columns,
    group_rows,
    sensitive_from_ids,
)
from privtrain.anonymize.chunk_view import Released, as_list
from privtrain.anonymize.chunks import to_pandas
from privtrain.anonymize.errors import AnonymizationError
from privtrain.anonymize.memo import Memo
from privtrain.anonymize.privacy_models import ModelSpec, achieved
from privtrain.anonymize.proxies import PairMeasures, mix64

if TYPE_CHECKING:
    from privtrain.anonymize.policy import ColumnPolicy, Policy
    from privtrain.anonymize.policy_specs import Checker

DEFAULT_THRESHOLD = 0.05
# Operators whose released values an attacker could know: the value itself (keep), a
# date moved by a per-person offset (intervals survive, and the row is as unique as the
# date), a masked code's shown characters, a number with (non-DP) noise.
ATTACKER_OPERATORS = frozenset({"keep", "date_shift", "mask", "noise"})
# A record is at risk when 1 / class size > 0.2 (El Emam & Dankar 2008), i.e. class < 5.
RISK_THRESHOLD = 0.2
_AT_RISK_BELOW = 5
# Chunks that may wait for the counting thread (each holds its rows' ids: bounded memory).
_QUEUED = 2
# Past this many possible (class, value) pairs per row, a chunk's rows are hashed one by
# one rather than grouped first (grouping would find nearly as many pairs as rows).
_NEAR_UNIQUE = 64
_NA_HASH = np.uint64(0x6A09E667F3BCC909)
_SEED = np.uint64(0x243F6A8885A308D3)
UInt = npt.NDArray[np.uint64]
IntArray = npt.NDArray[np.int64]


# -- policy -------------------------------------------------------------------------------
@dataclass(frozen=True)
class RiskSettings:
    """The policy's ``[risk]`` table.

    Attributes
    ----------
    uniqueness_threshold : float
        Largest share of output rows that may be unique on the QIs + one attacker-known
        column, in (0, 1]; default 0.05.
    accept : dict[str, str]
        Columns kept although they exceed the threshold, with the owner's reason.
    acknowledge_proxy : dict[str, str]
        Proxies of QIs kept on purpose, with the owner's reason: the manifest then signs
        the k that holds counting them, and the declared-QI k beside it.
    """

    uniqueness_threshold: float = DEFAULT_THRESHOLD
    accept: dict[str, str] = field(default_factory=dict)
    acknowledge_proxy: dict[str, str] = field(default_factory=dict)


_RISK_KEYS = frozenset({"uniqueness_threshold", "accept", "acknowledge_proxy"})


def attacker_known(columns: Mapping[str, ColumnPolicy]) -> list[str]:
    """Released columns, besides the QIs, whose values an attacker could plausibly know:
    ``keep`` (counts, codes, free categories, amounts), ``date_shift`` (dates of events),
    ``mask`` and ``noise``. Not ``hmac`` / ``pseudonym`` (keyed: nobody computes them
    without the key), ``scrub`` (free text), ``generalize`` (the QIs) or ``drop``."""
    return [n for n, c in columns.items() if c.operator in ATTACKER_OPERATORS]


def parse_risk(chk: Checker, raw: Any, columns: Mapping[str, ColumnPolicy]) -> RiskSettings:
    """Validate the policy's ``[risk]`` table (absent: the defaults).

    Raises
    ------
    PolicyError
        Unknown key, a threshold outside (0, 1], a reason that is not a non-empty string,
        or a column that is not a released attacker-known column of the policy.
    """
    if raw is None:
        return RiskSettings()
    if not isinstance(raw, dict):
        raise chk.fail("risk", "must be a table [risk]")
    for key in raw:
        if key not in _RISK_KEYS:
            raise chk.fail(f"risk.{key}", f"unknown key (allowed: {', '.join(sorted(_RISK_KEYS))})")
    threshold = raw.get("uniqueness_threshold", DEFAULT_THRESHOLD)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
        0.0 < float(threshold) <= 1.0
    ):
        raise chk.fail(
            "risk.uniqueness_threshold", f"must be a number in (0, 1], got {threshold!r}"
        )
    known = set(attacker_known(columns))
    out: dict[str, dict[str, str]] = {}
    for kind in ("accept", "acknowledge_proxy"):
        table = raw.get(kind, {})
        if not isinstance(table, dict):
            raise chk.fail(f"risk.{kind}", 'must be a table: COLUMN = "reason"')
        for name, reason in table.items():
            where = f"risk.{kind}.{name}"
            if not isinstance(reason, str) or not reason.strip():
                raise chk.fail(where, "needs the reason, as a non-empty string")
            if name not in columns:
                raise chk.fail(where, f"{name!r} is not a declared column")
            if name not in known:
                raise chk.fail(
                    where,
                    f"{name!r} is not released as a value an attacker could know "
                    f"(operator {columns[name].operator!r}); only keep, date_shift, mask "
                    "and noise columns are measured",
                )
        out[kind] = {str(k): str(v).strip() for k, v in table.items()}
    return RiskSettings(float(threshold), out["accept"], out["acknowledge_proxy"])


# -- counting -----------------------------------------------------------------------------
def _combine(left: UInt, right: UInt) -> UInt:
    with np.errstate(over="ignore"):
        return mix64(left * np.uint64(0x100000001B3) ^ right)


def ids_key(ids: Sequence[IntArray], n: int) -> UInt:
    """One hash per row of its label ids (one array per QI), the same in every chunk."""
    key = np.full(n, _SEED, dtype=np.uint64)
    for col in ids:
        key = _combine(key, np.asarray(col).astype(np.uint64))
    return key


def _hash_values(values: pd.Series) -> UInt:
    values = values.reset_index(drop=True)
    if len(values) == 0:
        return np.zeros(0, dtype=np.uint64)
    out: UInt = pd.util.hash_pandas_object(values, index=False).to_numpy(dtype=np.uint64)
    missing = values.isna().to_numpy(dtype=bool)
    if missing.any():
        out = np.where(missing, _NA_HASH, out)
    return out


class ValueHashes:
    """The hash of each released value of one column, computed once per distinct value
    of the file: values that come as Arrow (tokens, shifted dates, pseudonyms) are looked
    up among those already hashed (:class:`~privtrain.anonymize.memo.Memo`, hashed in C);
    values that come as the same pandas object chunk after chunk (the per-file results of
    ``keep``) are hashed again only when the object changes."""

    def __init__(self) -> None:
        self._memo = Memo()
        self._last: tuple[object, UInt] | None = None

    def __call__(self, values: pd.Series | pa.Array) -> UInt:
        if not isinstance(values, pa.Array):
            if self._last is None or self._last[0] is not values:
                self._last = (values, _hash_values(values))
            return self._last[1]
        if len(values) == 0:
            return np.zeros(0, dtype=np.uint64)
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        present = values.drop_null() if values.null_count else values

        def compute(new: pa.Array) -> pa.Array:
            return pa.array(_hash_values(to_pandas(new)), pa.uint64())

        # One lookup per chunk (hashed in C); the memo tolerates repeated values.
        hashes = np.asarray(
            self._memo.results(present, compute).to_numpy(zero_copy_only=False), np.uint64
        )
        if not values.null_count:
            return hashes
        out = np.full(len(values), _NA_HASH, dtype=np.uint64)
        out[~np.asarray(values.is_null().to_numpy(zero_copy_only=False), dtype=bool)] = hashes
        return out


def value_codes(
    released: Released, kept: IntArray | None, hasher: ValueHashes | None = None
) -> tuple[IntArray, UInt]:
    """Each kept row's code (0 = missing) into its chunk's values, and the hash of each
    code's value (as written; the same value hashes the same in every chunk)."""
    if released.codes is None:
        codes, uniq = pd.factorize(released.series(kept).reset_index(drop=True))
        return np.asarray(codes, dtype=np.int64) + 1, np.append(
            _NA_HASH, _hash_values(pd.Series(uniq))
        )
    codes = released.codes if kept is None else released.codes[kept]
    hashes = (hasher or ValueHashes())(released.values)
    return codes + 1, np.append(_NA_HASH, hashes)


def _dense(key: IntArray, bound: int) -> tuple[IntArray, IntArray]:
    """Dense ids 0..m-1 of ``key`` (non-negative, below ``bound``) and one row per id."""
    n = len(key)
    if bound <= 4 * n + 65_536:
        present = np.zeros(bound, dtype=bool)
        present[key] = True
        lut = np.cumsum(present) - 1
        ids = lut[key]
        m = int(lut[-1]) + 1 if bound else 0
    else:
        # Hash-based (pandas' factorize): no sort, and the codes are the dense ids.
        ids = pd.factorize(key)[0]
        m = int(ids.max()) + 1 if n else 0
    rep = np.zeros(m, dtype=np.int64)
    rep[ids] = np.arange(n, dtype=np.int64)
    return ids.astype(np.int64), rep


def _distinct(key: IntArray, bound: int) -> tuple[IntArray, IntArray]:
    """Distinct values of ``key`` (non-negative, below ``bound``) and their counts."""
    if bound <= len(key) + 65_536:
        counts = np.bincount(key, minlength=bound)
        nz = np.flatnonzero(counts)
        return nz, counts[nz].astype(np.int64)
    codes, uniq = pd.factorize(key)
    counts = np.bincount(codes, minlength=len(uniq)).astype(np.int64)
    return np.asarray(uniq, dtype=np.int64), counts


_PART_BITS = 6  # spilled hashes go to 64 partitions by their top bits
# Distinct combinations a column keeps in memory; past it they go to a temporary file,
# so memory stays flat however many rows a near-unique column has.
_IN_MEMORY = 1 << 19


def _split_by_top_bits(
    keys: UInt, counts: IntArray | None, bits: int
) -> tuple[UInt, IntArray | None, IntArray]:
    """``keys`` (and ``counts``) grouped by the keys' top ``bits`` bits (an 8-bit radix
    sort, linear), with the ``2**bits + 1`` group bounds."""
    part = (keys >> np.uint64(64 - bits)).astype(np.uint8)
    order = np.argsort(part, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(part, minlength=1 << bits))]
    return keys[order], None if counts is None else counts[order], bounds


def _sum_by_key(keys: UInt, counts: IntArray | None) -> tuple[UInt, IntArray]:
    """Distinct ``keys`` (well-spread 64-bit hashes) and the sum of ``counts`` (None: 1
    each) per key, in no particular order.

    Large inputs are split by the hashes' top bits into slices of about 16,384 keys
    whose hash tables (pandas' factorize) fit in the CPU cache, rather than one large
    table whose lookups miss it.
    """
    bits = min(max((len(keys) >> 14).bit_length() - 1, 0), 8)
    if bits == 0:
        codes, uniq = pd.factorize(keys)
        summed = np.bincount(codes, weights=counts, minlength=len(uniq))
        return np.asarray(uniq, dtype=np.uint64), summed.astype(np.int64)
    keys, counts, bounds = _split_by_top_bits(keys, counts, bits)
    out_keys, out_counts = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        codes, uniq = pd.factorize(keys[lo:hi])
        weights = None if counts is None else counts[lo:hi]
        out_keys.append(np.asarray(uniq, dtype=np.uint64))
        out_counts.append(np.bincount(codes, weights=weights, minlength=len(uniq)))
    return np.concatenate(out_keys), np.concatenate(out_counts).astype(np.int64)


@dataclass(frozen=True)
class SizeSummary:
    """What the risk figures need of a set of class sizes (rows per distinct
    combination): added up part by part, as classes never span two parts.

    Attributes
    ----------
    records : int
        Rows.
    classes : int
        Distinct combinations.
    k : int
        Smallest class (0 when there are no rows).
    unique : int
        Classes of one row.
    at_risk : int
        Rows in classes under 5 (1 / size > 0.2).
    """

    records: int = 0
    classes: int = 0
    k: int = 0
    unique: int = 0
    at_risk: int = 0

    @classmethod
    def of(cls, sizes: IntArray) -> SizeSummary:
        """The summary of an array of class sizes (int64, shape (classes,))."""
        if not len(sizes):
            return cls()
        return cls(
            records=int(sizes.sum()),
            classes=len(sizes),
            k=int(sizes.min()),
            unique=int((sizes == 1).sum()),
            at_risk=int(sizes[sizes < _AT_RISK_BELOW].sum()),
        )

    def __add__(self, other: SizeSummary) -> SizeSummary:
        if not self.classes:
            return other
        if not other.classes:
            return self
        return SizeSummary(
            self.records + other.records,
            self.classes + other.classes,
            min(self.k, other.k),
            self.unique + other.unique,
            self.at_risk + other.at_risk,
        )


class HashCounts:
    """How many rows hold each combination (by its hash), added up over chunks.

    At most about :data:`_IN_MEMORY` distinct combinations are held in memory; past
    that, the merged counts are written to an unnamed temporary file in 64 partitions
    by the hashes' top bits (a combination always lands in the same one), and the
    summary adds up one partition at a time. Memory stays flat for any number of rows;
    the file holds 16 bytes per combination per spill.

    Raises
    ------
    AnonymizationError
        The temporary file cannot be written (e.g. the disk is full); names the folder.
    """

    def __init__(self, in_memory: int | None = None) -> None:
        # Read when the counts are made (not when this module is), so that it can be set.
        self.in_memory = _IN_MEMORY if in_memory is None else in_memory
        self._parts: list[tuple[UInt, IntArray | None]] = []
        self._pending = 0
        self._merged = 0
        self._spill: IO[bytes] | None = None
        # Per partition: (offset, entries) of each spilled run of keys then counts.
        self._runs: list[list[tuple[int, int]]] = [[] for _ in range(1 << _PART_BITS)]

    @property
    def entries(self) -> int:
        """Hashes held in memory, merged or not (the work a merge has left)."""
        return self._merged + self._pending

    def add(self, keys: UInt) -> None:
        """Add one chunk's per-row hashes (added up at the next merge)."""
        self._append(keys, None)

    def add_counted(self, keys: UInt, counts: IntArray) -> None:
        """Add hashes with the rows holding each."""
        self._append(keys, np.asarray(counts, dtype=np.int64))

    def _append(self, keys: UInt, counts: IntArray | None) -> None:
        if not len(keys):
            return
        self._parts.append((keys, counts))
        self._pending += len(keys)
        if self._pending > max(4 * self._merged, 1 << 20) or (
            self._merged + self._pending > 2 * self.in_memory
        ):
            self._merge()
            if self._merged > self.in_memory:
                self._spill_merged()

    def _merge(self) -> None:
        if len(self._parts) > 1 or (self._parts and self._parts[0][1] is None):
            keys = np.concatenate([k for k, _ in self._parts])
            counts = (
                None
                if all(c is None for _, c in self._parts)
                else np.concatenate(
                    [np.ones(len(k), np.int64) if c is None else c for k, c in self._parts]
                )
            )
            self._parts = [_sum_by_key(keys, counts)]
        self._merged = len(self._parts[0][0]) if self._parts else 0
        self._pending = 0

    def _spill_merged(self) -> None:
        """Append the merged counts to the temporary file, partition by partition."""
        keys, counts = self._parts[0]
        assert counts is not None
        keys, counts, bounds = _split_by_top_bits(keys, counts, _PART_BITS)
        assert counts is not None
        try:
            if self._spill is None:
                self._spill = tempfile.TemporaryFile(prefix="privtrain-counts-")
            fh = self._spill
            fh.seek(0, os.SEEK_END)
            for p, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
                if hi > lo:
                    self._runs[p].append((fh.tell(), int(hi - lo)))
                    fh.write(keys[lo:hi].tobytes())
                    fh.write(counts[lo:hi].tobytes())
            # A full disk is told here, not by a later seek that flushes the buffer.
            fh.flush()
        except OSError as exc:
            raise _spill_error(exc) from None
        self._parts, self._merged, self._pending = [], 0, 0

    def _partitions(self) -> Iterator[tuple[UInt, IntArray]]:
        """Each partition's distinct hashes and summed counts (all of them once)."""
        self._merge()
        if self._spill is None:
            if self._parts:
                keys, counts = self._parts[0]
                assert counts is not None
                yield keys, counts
            return
        if self._parts:
            self._spill_merged()
        fh = self._spill
        for runs in self._runs:
            keys, counts = [], []
            for offset, n in runs:
                try:
                    fh.seek(offset)
                    raw = fh.read(16 * n)
                except OSError as exc:
                    raise _spill_error(exc) from None
                if len(raw) != 16 * n:
                    raise _spill_error(OSError(0, "the file is shorter than was written"))
                keys.append(np.frombuffer(raw, dtype=np.uint64, count=n))
                counts.append(np.frombuffer(raw, dtype=np.int64, count=n, offset=8 * n))
            if keys:
                yield _sum_by_key(np.concatenate(keys), np.concatenate(counts))

    def summary(self) -> SizeSummary:
        """The class sizes' summary (reads a spilled partition at a time)."""
        total = SizeSummary()
        for _, counts in self._partitions():
            total = total + SizeSummary.of(counts)
        return total

    def counts(self) -> IntArray:
        """Rows per distinct combination, all in memory (for checks on small inputs)."""
        parts = [counts for _, counts in self._partitions()]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def close(self) -> None:
        """Drop the temporary file, if any (idempotent; never raises: the file is unnamed
        and discarded, so a buffer that cannot be flushed to a full disk is dropped)."""
        if self._spill is not None:
            spill, self._spill = self._spill, None
            try:
                spill.close()
            except OSError:
                pass  # the descriptor is closed all the same; nothing of it is kept


def _spill_error(exc: OSError) -> AnonymizationError:
    return AnonymizationError(
        f"cannot write the released-risk counts in {tempfile.gettempdir()} "
        f"({exc.strerror}); free some space there or point TMPDIR elsewhere"
    )


def figures(sizes: IntArray | SizeSummary) -> dict[str, Any]:
    """Uniqueness and re-identification risk from class sizes (the release as its own
    population): ``k``, ``classes``, ``unique_records``, ``share_unique``,
    ``journalist_max`` (max 1 / class size), ``records_at_risk`` / ``share_at_risk``
    (1 / class size > 0.2), ``marketer`` (classes / records)."""
    s = sizes if isinstance(sizes, SizeSummary) else SizeSummary.of(sizes)
    n = s.records
    if n == 0:
        return {"records": 0, "classes": 0, "k": 0, "unique_records": 0, "share_unique": 0.0,
                "journalist_max": 0.0, "records_at_risk": 0, "share_at_risk": 0.0,
                "marketer": 0.0, "risk_threshold": RISK_THRESHOLD}  # fmt: skip
    return {
        "records": n,
        "classes": s.classes,
        "k": s.k,
        "unique_records": s.unique,
        "share_unique": s.unique / n,
        "journalist_max": 1.0 / s.k,
        "records_at_risk": s.at_risk,
        "share_at_risk": s.at_risk / n,
        "marketer": s.classes / n,
        "risk_threshold": RISK_THRESHOLD,
    }


class ReleaseCounter:
    """Pass 2's counts of the written rows, for the figures and checks of this module.

    Parameters
    ----------
    qis : sequence of str
        Declared quasi-identifiers (generalized columns).
    released : sequence of str
        The columns measured beside the QIs (the stream passes the attacker-known ones;
        the report counts the others from the file).
    known : sequence of str
        The attacker-known columns among ``released``.
    proxies : sequence of str
        Proxies of QIs found in pass 1 (counted exactly, with the sensitive attributes,
        for k, l and t over QIs + proxies).
    sensitive : sequence of str
        Sensitive attributes of l and t.
    check : Combinations | None
        Where to count the written (QI + sensitive) combinations for the pass's own
        re-check of k, l and t: counted here, from the classes found for the release's
        counts anyway. Read it after :meth:`drain`.
    """

    def __init__(
        self,
        qis: Sequence[str],
        released: Sequence[str],
        known: Sequence[str],
        proxies: Sequence[str],
        sensitive: Sequence[str],
        check: Combinations | None = None,
    ) -> None:
        self.qis = list(qis)
        self.released = list(released)
        self.known = [c for c in released if c in set(known)]
        self.proxies = list(proxies)
        self.sensitive = list(sensitive)
        self.per_column = {c: HashCounts() for c in self.released}
        self.hashers = {c: ValueHashes() for c in self.released}
        self.proxy_ids = {p: ValueIds() for p in self.proxies}
        width = len(self.qis) + len(self.proxies) + len(self.sensitive)
        self.proxy_combos = Combinations(width) if self.proxies else None
        self.check = check
        # The counting runs on a thread of its own: its hash tables, sorts and array
        # arithmetic release the GIL, so it overlaps the next chunk's transform and write.
        self._pool: ThreadPoolExecutor | None = None
        self._second: ThreadPoolExecutor | None = None  # for the final merges
        self._pending: deque[Future[None]] = deque()
        self._summaries: dict[str, SizeSummary] = {}

    def add(
        self,
        outs: Mapping[str, Released],
        qi_ids: Sequence[IntArray],
        sens_ids: Sequence[IntArray],
        kept: IntArray | None,
        rows: int,
        qi_cards: Sequence[int] | None = None,
    ) -> None:
        """Queue one chunk as written: the released columns, the QIs' label ids and the
        sensitive attributes' ids of the kept rows, the kept positions, their number, and
        (when known) an upper bound of each QI's ids (saves a pass over the rows).

        The values are looked up here (pandas stays on the calling thread); the rows are
        counted on the counting thread. At most two chunks wait, so memory stays bounded.

        Raises
        ------
        Exception
            Whatever counting an earlier chunk raised.
        """
        if rows == 0:
            return
        values = {
            name: value_codes(outs[name], kept, self.hashers[name])
            for name in self.released
            if name in outs  # an operator that released nothing for this column
        }
        pids = (
            [outs[p].ids(self.proxy_ids[p], kept, as_list) for p in self.proxies]
            if self.proxy_combos is not None
            else []
        )
        self._submit(self._count, list(qi_ids), qi_cards, values, pids, list(sens_ids), rows)

    def merge(self) -> None:
        """Start adding up every column's counts (after the last :meth:`add` and
        :meth:`drain`), so that it overlaps the caller's own finishing work: the column
        with the most entries on the counting thread, the others on a second thread
        (columns are independent once every chunk is counted)."""
        self.drain()
        names = sorted(self.per_column, key=lambda c: -self.per_column[c].entries)
        if len(names) < 2:
            self._submit(self._merge_columns, names)
            return
        self._submit(self._merge_columns, names[:1])
        if self._second is None:
            self._second = ThreadPoolExecutor(1, thread_name_prefix="privtrain-release-merge")
        self._pending.append(self._second.submit(self._merge_columns, names[1:]))

    def drain(self) -> None:
        """Wait until every queued chunk is counted (``check`` may be read after it).

        Raises
        ------
        Exception
            Whatever the counting thread raised.
        """
        while self._pending:
            self._pending.popleft().result()

    def settle(self) -> None:
        """Wait until every queued chunk is counted; the counts may be read after it.

        Raises
        ------
        Exception
            Whatever the counting thread raised (the rest of the queue is dropped).
        """
        try:
            self.drain()
        finally:
            self.close()

    def close(self) -> None:
        """Drop what is still queued and stop the counting thread (idempotent)."""
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        for pool in (self._pool, self._second):
            if pool is not None:
                pool.shutdown(wait=True)
        self._pool = self._second = None
        for counts in self.per_column.values():
            counts.close()

    def column_summaries(self) -> dict[str, SizeSummary]:
        """Per measured column, the sizes of its (class, value) combinations, summarized."""
        self.settle()
        for c in self.released:
            if c not in self._summaries:
                self._summaries[c] = self.per_column[c].summary()
        return {c: self._summaries[c] for c in self.released}

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="privtrain-release-count")
        while len(self._pending) >= _QUEUED:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(fn, *args))

    def _count_check(
        self,
        cls: IntArray,
        rep: IntArray,
        qi_ids: list[IntArray],
        sens_ids: list[IntArray],
        rows: int,
    ) -> None:
        """The chunk's (QI + sensitive) combinations into ``check``, from its classes."""
        assert self.check is not None
        if not sens_ids:
            counts = np.bincount(cls, minlength=len(rep)).astype(np.int64)
            self.check.add_counted(np.column_stack([c[rep] for c in qi_ids]), counts)
            return
        combos, counts = count_columns([cls, *sens_ids], rows)
        first = rep[combos[:, 0]]
        self.check.add_counted(
            np.column_stack([*(c[first] for c in qi_ids), combos[:, 1:]]), counts
        )

    def _merge_columns(self, names: list[str]) -> None:
        for name in names:
            counts = self.per_column[name]
            self._summaries[name] = counts.summary()
            counts.close()

    def _count(
        self,
        qi_ids: list[IntArray],
        qi_cards: Sequence[int] | None,
        values: dict[str, tuple[IntArray, UInt]],
        pids: list[IntArray],
        sens_ids: list[IntArray],
        rows: int,
    ) -> None:
        """Count one chunk (on the counting thread).

        Rows are grouped by small integers within the chunk (the class's dense id times
        the value's code), and only the distinct groups are hashed, so the per-row work is
        a few integer operations per column."""
        # The chunk's classes: dense ids, and each class's hash from one of its rows.
        if qi_ids:
            cards = list(qi_cards) if qi_cards else [int(c.max()) + 1 for c in qi_ids]
            bound = math.prod(cards)
            if bound < 1 << 62:
                key = np.zeros(rows, dtype=np.int64)
                for col, card in zip(qi_ids, cards, strict=True):
                    key = key * card + col
                cls, rep = _dense(key, bound)
            else:
                inverse = pd.factorize(ids_key(qi_ids, rows))[0]
                cls, rep = _dense(inverse.astype(np.int64), rows)
            cls_hash = ids_key([c[rep] for c in qi_ids], len(rep))
            if self.check is not None:
                self._count_check(cls, rep, qi_ids, sens_ids, rows)
        else:
            cls, cls_hash = np.zeros(rows, dtype=np.int64), np.full(1, _SEED, dtype=np.uint64)
            if self.check is not None:
                self.check.add(sens_ids, rows)
        for name, (codes, hashes) in values.items():
            card = len(hashes)
            bound = len(cls_hash) * card
            if bound > _NEAR_UNIQUE * rows:
                # Far more possible pairs than rows (a date, an amount): nearly every row
                # is its own pair, so each row is hashed and the hashes sorted.
                self.per_column[name].add(_combine(cls_hash[cls], hashes[codes]))
                continue
            # (class, value) pairs as one integer; only the distinct pairs are hashed.
            key = cls * card
            key += codes
            pairs, counts = _distinct(key, bound)
            keys = _combine(cls_hash[pairs // card], hashes[pairs % card])
            self.per_column[name].add_counted(keys, counts)
        if self.proxy_combos is not None:
            self.proxy_combos.add([*qi_ids, *pids, *sens_ids], rows)

    def with_proxies(
        self, out_sens: Mapping[str, ValueIds], spec: ModelSpec, numeric: Mapping[str, bool]
    ) -> tuple[int, dict[str, Any]]:
        """k, and l / t (``achieved``), over the QIs + proxies of the written rows."""
        assert self.proxy_combos is not None
        self.settle()
        combos, counts = self.proxy_combos.result()
        if len(counts) == 0:
            return 0, {}
        width = len(self.qis) + len(self.proxies)
        classes, cls = group_rows(combos[:, :width])
        sizes = np.bincount(cls, weights=counts, minlength=len(classes)).astype(np.int64)
        if not self.sensitive:
            return int(sizes.min()), {}
        sens = [
            sensitive_from_ids(s, out_sens[s], combos[:, width + j], numeric[s])
            for j, s in enumerate(self.sensitive)
        ]
        return int(sizes.min()), achieved(cls, sizes, spec, sens, counts)


# -- the decision -------------------------------------------------------------------------
def _models_hold(models: Mapping[str, Any], policy: Policy) -> bool:
    if not models:
        return True
    lv = models["l_distinct"] if policy.l_diversity == "distinct" else models["l_entropy"]
    if policy.l is not None and lv < policy.l - 1e-9:
        return False
    return not (policy.t is not None and models["t"] > policy.t + 1e-9)


def evaluate(
    policy: Policy,
    counter: ReleaseCounter,
    proxies: Mapping[str, Mapping[str, PairMeasures]],
    k_declared: int,
    models_declared: Mapping[str, Any],
    out_sens: Mapping[str, ValueIds],
) -> dict[str, Any]:
    """Check the release against the policy and return the manifest's new fields.

    Returns
    -------
    dict
        ``released_risk`` (always) and, when kept proxies were found,
        ``proxy_quasi_identifiers``, ``k_declared``, ``k_achieved`` (counting them), and
        ``privacy_models`` / ``privacy_models_declared`` when l or t are set.

    Raises
    ------
    AnonymizationError
        A column over the uniqueness threshold that the policy does not accept, or
        proxies that break k (or l, t) and are not all acknowledged. The message names
        every such column with its figure and what to write in the policy.
    """
    settings: RiskSettings = policy.risk
    threshold = settings.uniqueness_threshold
    per_col = counter.column_summaries()
    uniqueness = {c: figures(s)["share_unique"] for c, s in per_col.items()}
    k_per_col = {c: s.k for c, s in per_col.items()}
    problems: list[str] = []
    over = [c for c in counter.known if uniqueness[c] > threshold + 1e-12]
    # k = 1, or no quasi-identifiers (no k is signed), claims no anonymity: every row may
    # be unique on the QIs alone, so a kept column cannot break a claim (its figures are
    # still measured and recorded, and the report asks the officer to review the release).
    claims_anonymity = policy.k > 1 and bool(policy.quasi_identifiers)
    for c in over if claims_anonymity else []:
        if c not in settings.accept:
            problems.append(
                f"column {c!r} leaves {uniqueness[c]:.1%} of the output rows unique together "
                f"with the quasi-identifiers (threshold {threshold:.0%}): generalize it as a "
                f'quasi-identifier, drop it, or accept it under [risk.accept] ({c} = "why")'
            )
    found = {p: proxies[p] for p in counter.proxies}
    fields: dict[str, Any] = {}
    if found:
        spec = ModelSpec(policy.l, policy.l_diversity, policy.t)
        numeric = {s: policy.columns[s].type == "numeric" for s in counter.sensitive}
        k_with, models_with = counter.with_proxies(out_sens, spec, numeric)
        breaks = k_with < policy.k or not _models_hold(models_with, policy)
        missing = [p for p in found if p not in settings.acknowledge_proxy]
        if breaks and missing:
            detail = "; ".join(
                f"{p} ({'; '.join(m.evidence(p, q) for q, m in found[p].items())}; "
                f"k with it: {k_per_col[p]})"
                for p in found
            )
            what = f"k = {k_with}" if k_with < policy.k else "l / t"
            problems.append(
                f"kept column(s) {', '.join(repr(p) for p in found)} are proxies of "
                f"quasi-identifiers: counting them the output has {what}, not the policy's "
                f"k = {policy.k}{' (and l, t)' if models_declared else ''} [{detail}]: make "
                "them quasi-identifiers, drop them, or acknowledge each under "
                '[risk.acknowledge_proxy] (COLUMN = "why") to sign the k that holds'
            )
        fields["proxy_quasi_identifiers"] = list(found)
        fields["k_declared"] = k_declared
        fields["k_achieved"] = k_with
        if models_declared:
            fields["privacy_models_declared"] = dict(models_declared)
            fields["privacy_models"] = models_with
    if problems:
        raise AnonymizationError(
            f"{policy.source}: refused, nothing was written or signed: " + " | ".join(problems)
        )
    fields["released_risk"] = {
        "attacker_known_columns": counter.known,
        "uniqueness_threshold": threshold,
        "kept_column_uniqueness": uniqueness,
        "kept_column_k": k_per_col,
        "accepted_columns": {c: settings.accept[c] for c in settings.accept},
        "proxies": {
            p: {
                "of": {q: m.as_dict() for q, m in found[p].items()},
                "acknowledged": settings.acknowledge_proxy.get(p),
                "k_with_column": k_per_col[p],
            }
            for p in found
        },
    }
    return fields


# -- independent re-check and the report ----------------------------------------------------
def declared_view(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest as the declared-QI checks read it: ``k_achieved`` and
    ``privacy_models`` over ``quasi_identifiers`` alone (the declared figures when proxies
    were counted)."""
    if not manifest.get("proxy_quasi_identifiers"):
        return dict(manifest)
    view = dict(manifest)
    view["k_achieved"] = manifest.get("k_declared", manifest["k_achieved"])
    if "privacy_models_declared" in manifest:
        view["privacy_models"] = manifest["privacy_models_declared"]
    return view


def _sizes(table: pd.DataFrame, columns: list[str]) -> IntArray:
    if not columns:
        return np.array([len(table)], dtype=np.int64) if len(table) else np.zeros(0, np.int64)
    sizes: IntArray = table.groupby(columns, dropna=False, sort=False).size().to_numpy(np.int64)
    return sizes


def verify_problems(table: pd.DataFrame, manifest: Mapping[str, Any]) -> list[str]:
    """Recompute this module's claims from the released table with pandas group-bys
    (no code shared with the counting above): uniqueness per column, the attacker-known
    set's figures, and k, l, t over the QIs + proxies."""
    from privtrain.anonymize.privacy_models import table_models

    block = manifest.get("released_risk")
    if not isinstance(block, dict):
        return []
    qis = [q for q in manifest["quasi_identifiers"] if q in table.columns]
    problems = []
    for col, claimed in block.get("kept_column_uniqueness", {}).items():
        if col not in table.columns:
            problems.append(f"column {col!r} of released_risk is missing from the output")
            continue
        share = figures(_sizes(table, [*qis, col]))["share_unique"]
        if not math.isclose(share, claimed, abs_tol=1e-12):
            problems.append(
                f"uniqueness of the QIs + {col!r} recomputed from the output is {share:.6f}, "
                f"manifest says {claimed:.6f}"
            )
    proxies = list(manifest.get("proxy_quasi_identifiers") or [])
    if proxies:
        cols = [*qis, *proxies]
        if any(p not in table.columns for p in proxies):
            return [*problems, "a proxy named in the manifest is missing from the output"]
        k = int(_sizes(table, cols).min()) if len(table) else 0
        if k != manifest["k_achieved"]:
            problems.append(
                f"k over the quasi-identifiers and proxies recomputed from the output is {k}, "
                f"manifest says {manifest['k_achieved']}"
            )
        acknowledged = {
            p for p, v in block.get("proxies", {}).items() if v.get("acknowledged")
        }
        if k < manifest["k_target"] and not set(proxies) <= acknowledged:
            problems.append(
                f"k over the quasi-identifiers and proxies is {k}, below the target "
                f"{manifest['k_target']}, and not every proxy is acknowledged"
            )
        claimed = manifest.get("privacy_models")
        if claimed and "privacy_models_declared" in manifest:
            got = table_models(table, claimed, cols, manifest["columns"])
            for key in ("l_distinct", "l_entropy", "t"):
                if not math.isclose(got.get(key, math.nan), claimed.get(key, math.nan),
                                    abs_tol=1e-9):  # fmt: skip
                    problems.append(
                        f"{key} over the quasi-identifiers and proxies recomputed from the "
                        f"output is {got.get(key)}, manifest says {claimed.get(key)}"
                    )
    return problems


def report_fields(
    manifest: Mapping[str, Any], table: pd.DataFrame | None = None
) -> dict[str, Any]:
    """The report's top-level keys from a run's manifest: ``kept_column_uniqueness``
    (column -> share of output rows unique on QIs + it: the manifest's figures for the
    attacker-known columns, and, given the written ``table``, a pandas count for every
    other released column that is not a QI), ``released_risk`` (the rest of the
    manifest's block: attacker-known columns, threshold, acceptances, proxies, risk
    declared / attacker-known) and, with proxies, ``k_declared`` / ``k_with_proxies``."""
    block = manifest.get("released_risk")
    if not isinstance(block, dict):
        return {}
    rest = {k: v for k, v in block.items() if k != "kept_column_uniqueness"}
    uniqueness = dict(block.get("kept_column_uniqueness", {}))
    if table is not None:
        qis = [q for q in manifest["quasi_identifiers"] if q in table.columns]
        for col in table.columns:
            if col not in qis and col not in uniqueness:
                uniqueness[col] = figures(_sizes(table, [*qis, col]))["share_unique"]
        known = [c for c in block.get("attacker_known_columns", []) if c in table.columns]
        rest["risk_declared"] = figures(_sizes(table, qis))
        rest["risk_attacker_known"] = figures(_sizes(table, [*qis, *known]))
    out: dict[str, Any] = {
        "kept_column_uniqueness": uniqueness,
        "released_risk": rest,
    }
    if manifest.get("proxy_quasi_identifiers"):
        out["released_risk"]["proxy_quasi_identifiers"] = manifest["proxy_quasi_identifiers"]
        out["released_risk"]["k_declared"] = manifest.get("k_declared")
        out["released_risk"]["k_with_proxies"] = manifest["k_achieved"]
        if "privacy_models_declared" in manifest:
            out["released_risk"]["privacy_models_declared"] = manifest["privacy_models_declared"]
            out["released_risk"]["privacy_models_with_proxies"] = manifest.get("privacy_models")
    return out
