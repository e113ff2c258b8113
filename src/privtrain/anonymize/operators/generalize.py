"""``generalize``: full-domain generalization of a quasi-identifier to one level.

Level 0 is the raw value; level h (the top) says nothing. Numeric columns use
nested interval widths (``intervals = [5, 10, 20]`` gives levels raw, 5-wide,
10-wide, 20-wide bins, then ``"*"``), with optional census-style bottom/top
coding; categorical columns use an ARX-style hierarchy table (each raw value ->
its labels at levels 1..h); dates go to month and year, ZIP codes to prefixes
(:mod:`~privtrain.anonymize.operators.generalize_forms`). Missing stays missing at every level and is a
class of its own when k is computed (case C-A04). The level is picked by the
lattice search (:mod:`privtrain.anonymize.lattice`; Samarati 2001, Sweeney 2002).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from privtrain.anonymize.errors import PolicyError
from privtrain.anonymize.operators.generalize_forms import (
    date_domain,
    date_levels,
    zip_domain,
    zip_levels,
)
from privtrain.anonymize.operators.registry import OperatorContext, register_operator
from privtrain.anonymize.values import check_bounds, expand, first_row, to_numeric
from privtrain.errors import shown

if TYPE_CHECKING:
    from privtrain.anonymize.policy import ColumnPolicy

TOP = "*"


@dataclass(frozen=True)
class _Bin:
    lo: int
    label: str


def numeric_bins(col: ColumnPolicy, width: int) -> list[_Bin]:
    """The bins of one interval level, covering [lower, upper] in order.

    Bins are aligned to multiples of ``width`` (so level j+1 bins are unions of level j
    bins), clipped to the domain and to the bottom/top codes. Labels: ``"20-24"``,
    ``"<20"`` below ``bottom_code``, ``"90+"`` from ``top_code`` on.
    """
    assert col.lower is not None and col.upper is not None
    lower, upper = int(col.lower), int(col.upper)
    bins: list[_Bin] = []
    start, end = lower, upper
    if col.bottom_code is not None and lower < col.bottom_code:
        bins.append(_Bin(lower, f"<{col.bottom_code}"))
        start = col.bottom_code
    if col.top_code is not None:
        end = col.top_code - 1
    v = start
    while v <= end:
        hi = min((v // width) * width + width - 1, end)
        bins.append(_Bin(v, f"{v}-{hi}" if hi != v else str(v)))
        v = hi + 1
    if col.top_code is not None:
        bins.append(_Bin(col.top_code, f"{col.top_code}+"))
    return bins


class Generalization:
    """All generalization levels of one quasi-identifier column, computed per distinct value.

    Parameters
    ----------
    values : pd.Series
        The raw column, length n.
    col : ColumnPolicy
        Its policy (``operator = "generalize"``).
    source : str
        Input file name for error messages.

    Raises
    ------
    PolicyError
        A value missing from the hierarchy, a non-integer or out-of-domain number;
        names file, row, column and value.
    """

    def __init__(self, values: pd.Series, col: ColumnPolicy, source: str) -> None:
        self.column = col
        self._index = values.index
        self._raw: pd.Series
        if col.type == "numeric":
            assert col.intervals is not None and col.lower is not None and col.upper is not None
            num = to_numeric(values, source, col.name)
            if str(num.dtype) != "Int64":
                frac = (num.fillna(0) % 1 != 0).to_numpy(dtype=bool)
                row = first_row(frac)
                raise PolicyError(
                    f"{source}: row {row}, column {col.name!r}: "
                    f"value {num.iloc[row - 1]} is not an "
                    f"integer; interval generalization needs integers (or use a hierarchy)"
                )
            check_bounds(num, col.lower, col.upper, source, col.name)
            self._raw = num
            codes, uniq = pd.factorize(num, use_na_sentinel=True)
            u = np.asarray(uniq, dtype=np.int64)
            self.height = len(col.intervals) + 1
            per_level: list[list[str]] = [[str(x) for x in u]]
            for w in col.intervals:
                bins = numeric_bins(col, w)
                at = np.searchsorted(np.array([b.lo for b in bins]), u, side="right") - 1
                per_level.append([bins[i].label for i in at])
            per_level.append([TOP] * len(u))
        elif col.type in {"date", "zip"}:
            build = date_levels if col.type == "date" else zip_levels
            codes, per_level, self._raw = build(values, col, source)
            self.height = len(per_level) - 1
        else:
            assert col.hierarchy is not None
            stripped = values.astype("string").str.strip()
            text = stripped.mask(stripped == "")
            self._raw = text
            codes, uniq = pd.factorize(text, use_na_sentinel=True)
            names = [str(x) for x in uniq]
            unknown = [i for i, name in enumerate(names) if name not in col.hierarchy]
            if unknown:
                row = first_row(np.asarray(codes) == unknown[0])
                raise PolicyError(
                    f"{source}: row {row}, column {col.name!r}: "
                    f"value {shown(names[unknown[0]])} is missing "
                    f"from the policy's hierarchy (columns.{col.name}.hierarchy); "
                    f"{len(unknown)} distinct value(s) missing in all"
                )
            self.height = len(next(iter(col.hierarchy.values())))
            per_level = [names] + [
                [col.hierarchy[name][j] for name in names] for j in range(self.height)
            ]
        self._codes = np.asarray(codes, dtype=np.int64)
        self._labels = per_level

    def codes(self, level: int) -> tuple[npt.NDArray[np.int64], int]:
        """Integer class codes of the rows at ``level``.

        Returns
        -------
        codes : ndarray of int64, shape (n,)
            In ``[0, cardinality)``; missing cells share the last code (a value of its own).
        cardinality : int
            Number of distinct labels at this level + 1 (the missing slot).
        """
        level_codes, level_uniques = pd.factorize(pd.Series(self._labels[level], dtype=object))
        missing = len(level_uniques)
        lookup = np.append(np.asarray(level_codes, dtype=np.int64), np.int64(missing))
        return lookup[self._codes], missing + 1

    def labels(self, level: int) -> pd.Series:
        """The output column at ``level``: raw values at 0, string labels above."""
        if level == 0:
            return self._raw
        return expand(self._codes, self._labels[level], self._index)

    def domain(self, level: int) -> dict[str, Any]:
        """Manifest domain at ``level``, derived from the policy (not from the data)."""
        return level_domain(self.column, level)


def level_domain(col: ColumnPolicy, level: int) -> dict[str, Any]:
    """Public domain of a generalized column at ``level`` (manifest ``columns`` entry)."""
    if col.type == "date":
        return date_domain(col, level)
    if col.type == "zip":
        return zip_domain(col, level)
    if col.type == "numeric":
        assert col.intervals is not None
        if level == 0:
            return {"type": "numeric", "lower": col.lower, "upper": col.upper}
        if level > len(col.intervals):
            return {"type": "categorical", "values": [TOP]}
        return {
            "type": "categorical",
            "values": [b.label for b in numeric_bins(col, col.intervals[level - 1])],
        }
    assert col.hierarchy is not None
    if level == 0:
        return {"type": "categorical", "values": list(col.hierarchy)}
    return {
        "type": "categorical",
        "values": list(dict.fromkeys(r[level - 1] for r in col.hierarchy.values())),
    }


@register_operator("generalize")
class Generalize:
    """Replace a quasi-identifier by its label at the level chosen by the lattice search."""

    name = "generalize"

    def transform(self, values: pd.Series, ctx: OperatorContext) -> pd.Series:
        if ctx.level is None:
            raise ValueError(
                f"generalize on {ctx.column.name!r} needs a level from the lattice search"
            )
        return Generalization(values, ctx.column, ctx.source).labels(ctx.level)

    def output_domain(self, ctx: OperatorContext) -> dict[str, Any]:
        if ctx.level is None:
            raise ValueError(
                f"generalize on {ctx.column.name!r} needs a level from the lattice search"
            )
        return level_domain(ctx.column, ctx.level)
