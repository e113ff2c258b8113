"""Generalization levels of date and ZIP quasi-identifiers, per distinct value.

Dates (``type = "date"``): level 0 is the ISO day (``1947-04-18``), then the levels
of ``date_levels``: ``"month"`` (``1947-04``) and ``"year"`` (``1947``), then ``"*"``.
Values are parsed by the policy's ``date_format`` / ``day_first``
(:mod:`privtrain.anonymize.dates`, case C-A06) and must lie in the public range
[``lower``, ``upper``]. The manifest lists every month or year of that range, so
it says nothing about which ones occur.

ZIP codes (``type = "zip"``): level 0 is the code as written (``02134``, or a
ZIP+4 ``02134-1234``), level j keeps the first ``keep_digits[j-1]`` digits and
stars the rest (``021**``, ``0****``), then ``"*"``. Codes are text, so leading
zeros stay (case C-A05); an integer column (a Parquet file that lost them) is
zero-padded to ``digits`` first. Both are trees (a month has one year, a 3-digit
prefix one 1-digit prefix), as full-domain generalization needs.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from privtrain.anonymize.dates import parse_dates
from privtrain.anonymize.errors import PolicyError
from privtrain.anonymize.values import first_row

if TYPE_CHECKING:
    from privtrain.anonymize.policy import ColumnPolicy

TOP = "*"
# Prefix levels up to this many digits are listed value by value in the manifest.
_MAX_LISTED_DIGITS = 3


def date_levels(
    values: pd.Series, col: ColumnPolicy, source: str
) -> tuple[npt.NDArray[np.int64], list[list[str]], pd.Series]:
    """Codes, labels per level (0..height) of the distinct dates, and the level-0 column.

    Raises
    ------
    PolicyError
        An unparseable date, or one outside [lower, upper]; names file, row and column.
    """
    assert col.date_range is not None and col.date_levels is not None
    codes, days = parse_dates(values, source, col.name, col.date_format, col.day_first)
    lo, hi = (np.datetime64(d, "D") for d in col.date_range)
    bad = (days < lo) | (days > hi)
    if bad.any():
        row = first_row(codes == int(np.flatnonzero(bad)[0]))
        raise PolicyError(
            f"{source}: row {row}, column {col.name!r}: date is outside the policy's range "
            f"[{col.date_range[0]}, {col.date_range[1]}] (columns.{col.name}.lower/upper)"
        )
    iso = [str(d) for d in np.datetime_as_string(days, unit="D")]
    per_level = [iso]
    for level in col.date_levels:
        per_level.append([d[:7] if level == "month" else d[:4] for d in iso])
    per_level.append([TOP] * len(iso))
    raw = pd.Series(np.array([*iso, None], dtype=object)[codes], index=values.index, dtype="string")
    return codes, per_level, raw


def date_domain(col: ColumnPolicy, level: int) -> dict[str, Any]:
    """Manifest domain of a date QI at ``level``, from the policy's range."""
    assert col.date_range is not None and col.date_levels is not None
    lo, hi = (dt.date.fromisoformat(d) for d in col.date_range)
    if level == 0:
        return {"type": "date", "lower": col.date_range[0], "upper": col.date_range[1]}
    if level > len(col.date_levels):
        return {"type": "categorical", "values": [TOP]}
    if col.date_levels[level - 1] == "year":
        return {"type": "categorical", "values": [str(y) for y in range(lo.year, hi.year + 1)]}
    months = [
        f"{y:04d}-{m:02d}"
        for y in range(lo.year, hi.year + 1)
        for m in range(1, 13)
        if (lo.year, lo.month) <= (y, m) <= (hi.year, hi.month)
    ]
    return {"type": "categorical", "values": months}


def zip_levels(
    values: pd.Series, col: ColumnPolicy, source: str
) -> tuple[npt.NDArray[np.int64], list[list[str]], pd.Series]:
    """Codes, labels per level (0..height) of the distinct ZIP codes, and the level-0 column.

    Raises
    ------
    PolicyError
        A code that is not ``digits`` digits (optionally followed by ``-`` and digits);
        names file, row and column.
    """
    assert col.digits is not None and col.keep_digits is not None
    if pd.api.types.is_integer_dtype(values.dtype):
        text = values.astype("string").str.zfill(col.digits)
    else:
        stripped = values.astype("string").str.strip()
        text = stripped.mask(stripped == "")
    codes, uniq = pd.factorize(text, use_na_sentinel=True)
    names = [str(u) for u in uniq]
    ok = pd.Series(names, dtype="string").str.fullmatch(rf"\d{{{col.digits}}}(?:-\d+)?")
    bad = np.flatnonzero(~ok.fillna(False).to_numpy(dtype=bool))
    if bad.size:
        row = first_row(np.asarray(codes) == int(bad[0]))
        raise PolicyError(
            f"{source}: row {row}, column {col.name!r}: not a {col.digits}-digit code "
            f"(columns.{col.name}.digits)"
        )
    per_level = [names]
    for keep in col.keep_digits:
        per_level.append([n[:keep] + "*" * (col.digits - keep) for n in names])
    per_level.append([TOP] * len(names))
    return np.asarray(codes, dtype=np.int64), per_level, text


def zip_domain(col: ColumnPolicy, level: int) -> dict[str, Any]:
    """Manifest domain of a ZIP QI at ``level``: every prefix when short, else a pattern."""
    assert col.digits is not None and col.keep_digits is not None
    if level == 0:
        return {"type": "text", "pattern": rf"^\d{{{col.digits}}}(-\d+)?$"}
    if level > len(col.keep_digits):
        return {"type": "categorical", "values": [TOP]}
    keep = col.keep_digits[level - 1]
    stars = "*" * (col.digits - keep)
    if keep <= _MAX_LISTED_DIGITS:
        return {"type": "categorical", "values": [f"{i:0{keep}d}{stars}" for i in range(10**keep)]}
    return {"type": "text", "pattern": rf"^\d{{{keep}}}\*{{{col.digits - keep}}}$"}
