"""Parsing date columns by an explicit policy, never by guessing (case C-A06).

``2021-03-04`` is always ISO (4 March 2021) and is never reinterpreted. Slashed
dates (``04/03/2021``) are ambiguous, so a column holding them needs
``day_first = true`` or ``false`` in the policy, or an explicit ``date_format``
(``strftime`` codes). Month-name dates (``March 4, 2021``, ``4 March 2021``) are
read as written. A value that fits none of these is reported with its file, row
and column, never dropped or guessed. Work is per distinct value.
"""

from __future__ import annotations

import re
from datetime import datetime

import numpy as np
import numpy.typing as npt
import pandas as pd

from privtrain.anonymize.errors import PolicyError
from privtrain.anonymize.values import distinct_normalized, first_row
from privtrain.errors import shown

_ISO = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?")
_SLASH = re.compile(r"(\d{1,2})[/.](\d{1,2})[/.](\d{4})")
_NAMED = ("%B %d, %Y", "%b %d, %Y", "%d %B %Y", "%d %b %Y", "%B %d %Y")


def _one(text: str, date_format: str | None, day_first: bool | None) -> str | None:
    """ISO ``YYYY-MM-DD`` of one value, ``""`` when slashed and ambiguous, None if unparseable."""
    if date_format is not None:
        try:
            return datetime.strptime(text, date_format).date().isoformat()
        except ValueError:
            return None
    m = _ISO.fullmatch(text)
    if m:
        try:
            return datetime(int(m[1]), int(m[2]), int(m[3])).date().isoformat()
        except ValueError:
            return None
    m = _SLASH.fullmatch(text)
    if m:
        if day_first is None:
            return ""
        d, mo = (int(m[1]), int(m[2])) if day_first else (int(m[2]), int(m[1]))
        try:
            return datetime(int(m[3]), mo, d).date().isoformat()
        except ValueError:
            return None
    for fmt in _NAMED:
        try:
            return datetime.strptime(text, fmt).date().isoformat()
        except ValueError:
            continue
    return None


def parse_dates(
    values: pd.Series,
    source: str,
    column: str,
    date_format: str | None = None,
    day_first: bool | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.datetime64]]:
    """Parse a date column.

    Parameters
    ----------
    values : pd.Series
        Column of length n (text).
    source, column : str
        File and column named in errors.
    date_format : str | None
        ``strftime`` format every value must follow; None for ISO / slashed / month-name.
    day_first : bool | None
        How to read slashed dates; None refuses them as ambiguous.

    Returns
    -------
    codes : ndarray of int64, shape (n,)
        Index into ``days``; -1 for a missing cell.
    days : ndarray of datetime64[D], shape (distinct,)

    Raises
    ------
    PolicyError
        An unparseable or ambiguous value; names file, row, column and value.
    """
    codes, uniques = distinct_normalized(values)
    parsed = [_one(u, date_format, day_first) for u in uniques]
    for i, iso in enumerate(parsed):
        if iso is None or iso == "":
            row = first_row(codes == i)
            problem = (
                "is not a date in a known format (ISO 2021-03-04, 04/03/2021 with day_first, "
                "March 4, 2021) or the policy's date_format"
                if iso is None
                else "is a slashed date: set day_first = true or false (or date_format) in the "
                "policy; it is never guessed"
            )
            raise PolicyError(
                f"{source}: row {row}, column {column!r}: value {shown(uniques[i])} {problem}"
            )
    return codes, np.array(parsed, dtype="datetime64[D]")
