"""Privacy models on the sensitive attributes: l-diversity and t-closeness.

k-anonymity hides who a record is, not what it says: a class of 10 people who all
have the same diagnosis tells the attacker the diagnosis. Two models close that gap,
each checked per equivalence class over every declared sensitive attribute:

* distinct l-diversity: at least l distinct values in the class; entropy
  l-diversity: entropy of the class's value distribution >= log(l)
  (Machanavajjhala et al. 2007, "l-Diversity: Privacy Beyond k-Anonymity").
* t-closeness: the Earth Mover's Distance between the class's distribution and the
  whole table's is at most t (Li, Li & Venkatasubramanian 2007, "t-Closeness:
  Privacy Beyond k-Anonymity and l-Diversity"); equal ground distance for
  categorical values, 0.5 * sum |p_i - q_i|; ordered distance for numbers,
  1/(m-1) * sum_i |sum_{j<=i} (p_j - q_j)| over the m distinct values in order.

A missing sensitive value is a value of its own (ordered last for numbers), as a
missing quasi-identifier is in :mod:`privtrain.anonymize.risk`. Everything is
computed from integer codes with ``np.bincount`` per (class, value) pair, never per
cell in Python; the lattice search calls :func:`bad_classes` at every node. Every
function also takes ``weights``: then each entry stands for that many identical rows
(the streaming path counts distinct (QI, sensitive) combinations instead of keeping rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from privtrain.anonymize.risk import class_sizes, combine_codes

L_KINDS = frozenset({"distinct", "entropy"})


@dataclass(frozen=True)
class Sensitive:
    """One sensitive attribute as codes.

    Attributes
    ----------
    name : str
        Column name.
    codes : ndarray of int64, shape (n,)
        Value code per row, in ``[0, cardinality)``; for an ordered attribute the codes
        follow the values' order.
    cardinality : int
        Number of distinct values (missing included).
    ordered : bool
        True for a numeric attribute (ordered EMD), False for equal-distance EMD.
    """

    name: str
    codes: npt.NDArray[np.int64]
    cardinality: int
    ordered: bool


def sensitive_codes(name: str, values: pd.Series, ordered: bool) -> Sensitive:
    """Encode a sensitive column; numbers are ranked in increasing order, missing last."""
    if ordered:
        num = pd.to_numeric(values, errors="coerce")
        codes, uniq = pd.factorize(num, sort=True, use_na_sentinel=True)
    else:
        codes, uniq = pd.factorize(values.astype("string"), use_na_sentinel=True)
    codes = np.asarray(codes, dtype=np.int64)
    missing = codes < 0
    card = len(uniq) + int(bool(missing.any()))
    codes[missing] = len(uniq)
    return Sensitive(name, codes, max(card, 1), ordered)


@dataclass(frozen=True)
class ModelSpec:
    """What the policy asks beyond k.

    Attributes
    ----------
    l : int | None
        l-diversity target (None: not enforced).
    l_kind : str
        ``"distinct"`` or ``"entropy"``.
    t : float | None
        t-closeness target in [0, 1] (None: not enforced).
    """

    l: int | None = None
    l_kind: str = "distinct"
    t: float | None = None

    @property
    def active(self) -> bool:
        return self.l is not None or self.t is not None


Weights = npt.NDArray[np.int64] | None


def _pairs(
    cls: npt.NDArray[np.int64], n_cls: int, s: Sensitive, weights: Weights = None
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Occupied (class, value) pairs and their counts (rows, or summed ``weights``)."""
    pair = cls * s.cardinality + s.codes
    if n_cls * s.cardinality <= 4 * len(pair) + 65_536:
        counts = np.bincount(pair, weights=weights, minlength=n_cls * s.cardinality)
        nz = np.flatnonzero(counts)
        return nz // s.cardinality, nz % s.cardinality, counts[nz].astype(np.int64)
    if weights is None:
        uniq, counts = np.unique(pair, return_counts=True)
    else:
        uniq, inverse = np.unique(pair, return_inverse=True)
        counts = np.bincount(inverse.reshape(-1), weights=weights, minlength=len(uniq))
    return uniq // s.cardinality, uniq % s.cardinality, counts.astype(np.int64)


def diversity(
    cls: npt.NDArray[np.int64],
    n_cls: int,
    sizes: npt.NDArray[np.int64],
    s: Sensitive,
    kind: str,
    weights: Weights = None,
) -> npt.NDArray[np.float64]:
    """Per-class l of one attribute: distinct values, or exp(entropy) for ``kind="entropy"``.

    Returns
    -------
    ndarray of float64, shape (n_cls,)
    """
    pc, _, cnt = _pairs(cls, n_cls, s, weights)
    if kind == "distinct":
        return np.bincount(pc, minlength=n_cls).astype(np.float64)
    p = cnt / sizes[pc]
    ent = np.bincount(pc, weights=-p * np.log(p), minlength=n_cls)
    return np.exp(ent)


def closeness(
    cls: npt.NDArray[np.int64],
    n_cls: int,
    sizes: npt.NDArray[np.int64],
    s: Sensitive,
    rows: npt.NDArray[np.bool_] | None = None,
    weights: Weights = None,
) -> npt.NDArray[np.float64]:
    """Per-class EMD to the distribution of the rows in ``rows`` (all rows when None).

    Returns
    -------
    ndarray of float64, shape (n_cls,)
        In [0, 1]; classes with no row in ``rows`` get 0.
    """
    sel = s.codes if rows is None else s.codes[rows]
    if weights is None:
        q = np.bincount(sel, minlength=s.cardinality) / max(len(sel), 1)
    else:
        w = weights if rows is None else weights[rows]
        q = np.bincount(sel, weights=w, minlength=s.cardinality) / max(int(w.sum()), 1)
    pc, pv, cnt = _pairs(cls, n_cls, s, weights)
    p = cnt / sizes[pc]
    if not s.ordered:
        # Values absent from a class contribute q_i each: sum|p-q| = sum_present(|p-q| - q) + 1.
        part = np.bincount(pc, weights=np.abs(p - q[pv]) - q[pv], minlength=n_cls)
        return np.clip(0.5 * (part + 1.0), 0.0, 1.0)
    m = s.cardinality
    if m < 2:
        return np.zeros(n_cls)
    out = np.zeros(n_cls)
    # Dense (classes x values) blocks of at most ~4M cells keep memory flat.
    step = max(1, 4_000_000 // m)
    for lo in range(0, n_cls, step):
        hi = min(lo + step, n_cls)
        in_block = (pc >= lo) & (pc < hi)
        dense = np.zeros((hi - lo, m))
        dense[pc[in_block] - lo, pv[in_block]] = p[in_block]
        out[lo:hi] = np.abs(np.cumsum(dense - q, axis=1)).sum(axis=1) / (m - 1)
    return out


def bad_classes(
    cls: npt.NDArray[np.int64],
    sizes: npt.NDArray[np.int64],
    k: int,
    spec: ModelSpec,
    sensitive: list[Sensitive],
    weights: Weights = None,
) -> npt.NDArray[np.bool_]:
    """Classes to suppress: smaller than k, or failing l-diversity or t-closeness.

    t-closeness is measured against the distribution of the rows that stay. Suppressing
    a class moves that distribution, so the check repeats until no new class fails
    (at most 8 rounds; a class still failing then is suppressed as well).

    Parameters
    ----------
    cls : ndarray of int64, shape (n,)
        Class index per row, in ``[0, len(sizes))``.
    sizes : ndarray of int64, shape (classes,)
        Rows per class (summed weights when ``weights`` is given).
    weights : ndarray of int64, shape (n,) | None
        Rows each entry stands for; None: one each.

    Returns
    -------
    ndarray of bool, shape (classes,)
    """
    n_cls = len(sizes)
    bad = sizes < k
    if spec.l is not None:
        for s in sensitive:
            bad |= diversity(cls, n_cls, sizes, s, spec.l_kind, weights) < spec.l - 1e-9
    if spec.t is not None:
        for _ in range(8):
            rows = ~bad[cls]
            new = bad.copy()
            for s in sensitive:
                new |= (closeness(cls, n_cls, sizes, s, rows, weights) > spec.t + 1e-9) & ~bad
            if (new == bad).all():
                break
            bad = new
        else:
            bad = new
    return bad


def achieved(
    cls: npt.NDArray[np.int64],
    sizes: npt.NDArray[np.int64],
    spec: ModelSpec,
    sensitive: list[Sensitive],
    weights: Weights = None,
) -> dict[str, Any]:
    """Headline figures over the classes of a (released) table.

    Returns
    -------
    dict
        ``l_distinct`` (smallest number of distinct values in a class), ``l_entropy``
        (smallest exp(entropy)), ``t`` (largest EMD to the table's distribution), each
        the worst over all sensitive attributes; {} when there are none.
    """
    if not sensitive or len(sizes) == 0:
        return {}
    n_cls = len(sizes)
    return {
        "sensitive_attributes": [s.name for s in sensitive],
        "l_distinct": int(
            min(diversity(cls, n_cls, sizes, s, "distinct", weights).min() for s in sensitive)
        ),
        "l_entropy": float(
            min(diversity(cls, n_cls, sizes, s, "entropy", weights).min() for s in sensitive)
        ),
        "t": float(max(closeness(cls, n_cls, sizes, s, None, weights).max() for s in sensitive)),
        "l_target": spec.l,
        "l_kind": spec.l_kind,
        "t_target": spec.t,
    }


def table_classes(
    table: pd.DataFrame, qis: list[str]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Class index per row and class sizes of ``table`` over ``qis`` (missing = own value)."""
    cols = []
    for q in qis:
        codes, uniques = pd.factorize(table[q], use_na_sentinel=False)
        cols.append((np.asarray(codes, dtype=np.int64), max(len(uniques), 1)))
    key = combine_codes(cols, len(table))
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    _ = class_sizes  # same notion of class as risk.class_sizes
    return inverse.reshape(-1).astype(np.int64), counts.astype(np.int64)


def table_models(
    table: pd.DataFrame, manifest_models: dict[str, Any], qis: list[str], columns: dict[str, Any]
) -> dict[str, Any]:
    """Recompute :func:`achieved` on a released table for the manifest's sensitive attributes."""
    names = manifest_models.get("sensitive_attributes", [])
    sens = [
        sensitive_codes(n, table[n], (columns.get(n) or {}).get("type") == "numeric") for n in names
    ]
    cls, sizes = table_classes(table, qis)
    spec = ModelSpec(
        manifest_models.get("l_target"),
        manifest_models.get("l_kind", "distinct"),
        manifest_models.get("t_target"),
    )
    return achieved(cls, sizes, spec, sens)


def model_problems(table: pd.DataFrame, manifest: dict[str, Any]) -> list[str]:
    """Differences between the manifest's ``privacy_models`` and the released table."""
    claimed = manifest.get("privacy_models")
    if not claimed:
        return []
    missing = [n for n in claimed.get("sensitive_attributes", []) if n not in table.columns]
    if missing:
        return [f"sensitive attribute(s) {missing} named in the manifest are missing"]
    got = table_models(table, claimed, manifest["quasi_identifiers"], manifest["columns"])
    problems = []
    if got.get("l_distinct") != claimed.get("l_distinct"):
        problems.append(
            f"distinct l recomputed from the output is {got.get('l_distinct')}, "
            f"manifest says {claimed.get('l_distinct')}"
        )
    for key in ("l_entropy", "t"):
        if not math.isclose(got.get(key, math.nan), claimed.get(key, math.nan), abs_tol=1e-9):
            problems.append(
                f"{key} recomputed from the output is {got.get(key)}, manifest says {claimed.get(key)}"
            )
    l_t, t_t = claimed.get("l_target"), claimed.get("t_target")
    if l_t is not None:
        value = got["l_distinct"] if claimed.get("l_kind") == "distinct" else got["l_entropy"]
        if value < l_t - 1e-9:
            problems.append(f"l recomputed from the output is {value}, below the target {l_t}")
    if t_t is not None and got["t"] > t_t + 1e-9:
        problems.append(f"t recomputed from the output is {got['t']}, above the target {t_t}")
    return problems
