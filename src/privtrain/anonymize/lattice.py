"""Optimal full-domain generalization with suppression: search of the generalization lattice.

Each quasi-identifier has levels 0 (raw) .. h_i (top). A node of the lattice is a
vector of levels, one per QI (Samarati 2001, "Protecting respondents' identities
in microdata release"; El Emam et al. 2009, "A globally optimal k-anonymity
method for the de-identification of health data", OLA; the ARX tool). A node is
*feasible* when deleting the records of classes smaller than k removes at most
``max_suppression`` of the rows. Among feasible nodes we take the one with the
least generalization precision loss, mean_i(level_i / h_i) (Sweeney 2002,
"Achieving k-anonymity privacy protection using generalization and suppression",
Prec = 1 - loss), breaking ties by the discernibility metric
DM = sum over kept classes |E|^2 + |suppressed| * n (Bayardo & Agrawal 2005,
"Data privacy through optimal k-anonymization"), then by the level vector.

Nodes are visited in increasing precision loss, so the search stops at the
first loss value that has a feasible node. Each node costs one int64 key per row
(mixed radix over precomputed per-level codes) and one ``np.bincount`` or
``np.unique``: about a millisecond for 50,000 rows.

With ``weights`` an entry stands for that many identical rows: the streaming path
(:mod:`privtrain.anonymize.stream`) searches the distinct level-0 QI combinations
with their counts, so the search costs the same for 50 thousand or 50 million rows
and gives the same node, suppression and figures as the search over the rows.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from privtrain.anonymize.errors import AnonymizationError
from privtrain.anonymize.privacy_models import ModelSpec, Sensitive, bad_classes
from privtrain.anonymize.risk import class_sizes, combine_codes


class Leveled(Protocol):
    """A quasi-identifier with integer codes per generalization level."""

    height: int

    def codes(self, level: int) -> tuple[npt.NDArray[np.int64], int]: ...


@dataclass(frozen=True)
class LatticeResult:
    """The chosen node and what it costs.

    Attributes
    ----------
    levels : dict[str, int]
        Generalization level per QI (0 = raw).
    heights : dict[str, int]
        Top level per QI.
    rows_suppressed : int
        Records in classes smaller than k at that node.
    k_achieved : int
        Smallest kept class size (>= k).
    precision_loss : float
        mean_i(level_i / h_i), in [0, 1] (Sweeney 2002).
    discernibility : int
        Bayardo & Agrawal 2005 DM, suppressed rows charged n each.
    aecs : float
        Average equivalence class size of the kept rows, rows / classes.
    keep : ndarray of bool, shape (n,)
        True for rows (entries, with weights) kept, False for those to suppress.
    nodes_total : int
        Size of the lattice.
    nodes_evaluated : int
        Nodes whose classes were computed.
    """

    levels: dict[str, int]
    heights: dict[str, int]
    rows_suppressed: int
    k_achieved: int
    precision_loss: float
    discernibility: int
    aecs: float
    keep: npt.NDArray[np.bool_]
    nodes_total: int
    nodes_evaluated: int


Weights = npt.NDArray[np.int64] | None


def _counts(
    key: npt.NDArray[np.int64], radix_bound: int, n: int, weights: Weights = None
) -> npt.NDArray[np.int64]:
    # bincount is O(n + radix) and much faster than a sort when the key space is small.
    if radix_bound <= 8 * n + 4096:
        c = np.bincount(key, weights=weights)
        return c[c > 0].astype(np.int64)
    if weights is None:
        _, c = np.unique(key, return_counts=True)
    else:
        _, inverse = np.unique(key, return_inverse=True)
        c = np.bincount(inverse.reshape(-1), weights=weights)
    return c.astype(np.int64)


def _node_with_models(
    key: npt.NDArray[np.int64],
    k: int,
    spec: ModelSpec,
    sensitive: list[Sensitive],
    weights: Weights = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Kept class sizes and the per-row keep mask when l-diversity / t-closeness also apply."""
    _, inverse, sizes = np.unique(key, return_inverse=True, return_counts=True)
    cls = inverse.reshape(-1).astype(np.int64)
    if weights is not None:
        sizes = np.bincount(cls, weights=weights, minlength=len(sizes))
    sizes = sizes.astype(np.int64)
    bad = bad_classes(cls, sizes, k, spec, sensitive, weights)
    return sizes[~bad], ~bad[cls]


def search(
    qis: dict[str, Leveled],
    n: int,
    k: int,
    max_suppression: float,
    spec: ModelSpec | None = None,
    sensitive: list[Sensitive] | None = None,
    weights: Weights = None,
) -> LatticeResult:
    """Find the feasible lattice node with the least information loss.

    Parameters
    ----------
    qis : dict[str, Leveled]
        Quasi-identifiers in a fixed order, each with ``height`` and ``codes(level)``.
    n : int
        Number of rows (entries, when ``weights`` is given).
    k : int
        k-anonymity target.
    max_suppression : float
        Largest fraction of rows that may be suppressed, in [0, 1).
    spec : ModelSpec | None
        l-diversity / t-closeness targets; a class failing one is suppressed like a
        class smaller than k (ARX's treatment).
    sensitive : list of Sensitive | None
        The sensitive attributes ``spec`` applies to, as codes of the output values.
    weights : ndarray of int64, shape (n,) | None
        Rows each entry stands for (identical QI and sensitive values); None: one each.

    Returns
    -------
    LatticeResult

    Raises
    ------
    AnonymizationError
        No node reaches k within the suppression limit (or the table is empty).
    """
    total = n if weights is None else int(weights.sum())
    if total == 0:
        raise AnonymizationError("the input has no rows: nothing to anonymize")
    names = list(qis)
    heights = [qis[q].height for q in names]
    codes = [[qis[q].codes(lv) for lv in range(h + 1)] for q, h in zip(names, heights, strict=True)]
    budget = math.floor(max_suppression * total)
    # An integer numerator over a common denominator makes equal losses compare equal.
    denom = math.lcm(*heights) if heights else 1
    per_level = [denom // h for h in heights]
    nodes = sorted(
        itertools.product(*(range(h + 1) for h in heights)),
        key=lambda node: (sum(lv * w for lv, w in zip(node, per_level, strict=True)), node),
    )

    models = spec is not None and spec.active and bool(sensitive)
    best: tuple[int, tuple[int, ...], int, npt.NDArray[np.int64]] | None = None
    best_keep: npt.NDArray[np.bool_] | None = None
    evaluated = 0
    for node in nodes:
        loss = sum(lv * w for lv, w in zip(node, per_level, strict=True))
        if best is not None and loss > best[0]:
            break
        evaluated += 1
        cols = [codes[i][lv] for i, lv in enumerate(node)]
        key = combine_codes(cols, n)
        node_keep = None
        if models:
            assert spec is not None and sensitive is not None
            kept, node_keep = _node_with_models(key, k, spec, sensitive, weights)
            suppressed = total - int(kept.sum())
        else:
            counts = _counts(key, math.prod(c for _, c in cols), n, weights)
            small = counts < k
            suppressed = int(counts[small].sum())
            kept = counts[~small]
        if suppressed > budget or kept.size == 0:
            continue
        dm = int((kept * kept).sum()) + suppressed * total
        if best is None or dm < best[2]:
            best = (loss, node, dm, kept)
            best_keep = node_keep
    if best is None:
        raise AnonymizationError(
            f"no generalization reaches k = {k}{_model_text(spec) if models else ''} with at most {max_suppression:.1%} of the "
            f"{total} rows suppressed (even the fully generalized node fails); lower k, allow more "
            f"suppression, or add hierarchy levels"
        )
    loss, node, dm, kept = best
    if best_keep is not None:
        keep = best_keep
    else:
        key = combine_codes([codes[i][lv] for i, lv in enumerate(node)], n)
        if weights is None:
            _, row_size = class_sizes(key)
        else:
            _, inverse = np.unique(key, return_inverse=True)
            inverse = inverse.reshape(-1)
            row_size = np.bincount(inverse, weights=weights).astype(np.int64)[inverse]
        keep = row_size >= k
    kept_rows = int(keep.sum()) if weights is None else int(weights[keep].sum())
    return LatticeResult(
        levels=dict(zip(names, node, strict=True)),
        heights=dict(zip(names, heights, strict=True)),
        rows_suppressed=total - kept_rows,
        k_achieved=int(kept.min()),
        precision_loss=loss / (denom * len(heights)) if heights else 0.0,
        discernibility=dm,
        aecs=float(kept.sum()) / float(kept.size),
        keep=keep,
        nodes_total=len(nodes),
        nodes_evaluated=evaluated,
    )


def _model_text(spec: ModelSpec | None) -> str:
    if spec is None:
        return ""
    parts = []
    if spec.l is not None:
        parts.append(f"{spec.l_kind} l = {spec.l}")
    if spec.t is not None:
        parts.append(f"t = {spec.t}")
    return (", " + ", ".join(parts)) if parts else ""
