"""``date_shift``: move every date of one subject by the same keyed number of days.

offset(subject) = (int(HMAC-SHA256(secret, b"privtrain/date_shift/v1\\x00" + subject_column
+ b"\\x00" + normalized subject value)[:8]) mod (2w + 1)) - w days, w = ``shift_days``
(RFC 2104 HMAC). Intervals between one person's dates survive (length of stay, days
to re-offence); calendar dates do not. Every date column naming the same
``subject`` column shifts by the same offset, in every file and run with the same
key. A date whose subject is missing cannot be shifted consistently and is left
missing; a missing date stays missing (C-A04). Dates are parsed by
:mod:`privtrain.anonymize.dates` (C-A06) and written as ISO ``YYYY-MM-DD``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa

from privtrain.anonymize.dates import parse_dates
from privtrain.anonymize.errors import PolicyError
from privtrain.anonymize.keyed import keyed_digests
from privtrain.anonymize.operators.registry import OperatorContext, register_operator
from privtrain.anonymize.values import distinct_normalized, expand, first_row

DOMAIN = b"privtrain/date_shift/v1\x00"


NO_DAY = np.iinfo(np.int64).min
# Day numbers of 0001-01-01 and 9999-12-31 (Arrow writes them as numpy does).
_YEAR_1, _YEAR_9999 = -719_162, 2_932_896
IntArray = npt.NDArray[np.int64]


def day_numbers(
    values: pd.Series,
    source: str,
    column: str,
    date_format: str | None = None,
    day_first: bool | None = None,
) -> IntArray:
    """Per cell: days since 1970-01-01 (int64, shape (n,)); :data:`NO_DAY` where missing.

    Raises
    ------
    PolicyError
        As :func:`~privtrain.anonymize.dates.parse_dates` (names file, row, column, value).
    """
    codes, days = parse_dates(values, source, column, date_format, day_first)
    return np.append(days.astype(np.int64), NO_DAY)[codes]


def subject_offsets(subjects: pd.Series, column: str, secret: bytes, window: int) -> IntArray:
    """Offset in days per row (int64, shape (n,)); :data:`NO_DAY` where no subject."""
    codes, uniques = distinct_normalized(subjects)
    prefix = DOMAIN + column.encode("utf-8") + b"\x00"
    per = np.array(
        [
            int.from_bytes(d[:8], "big") % (2 * window + 1) - window
            for d in keyed_digests(secret, prefix, (u.encode("utf-8") for u in uniques))
        ]
        + [NO_DAY],
        dtype=np.int64,
    )
    return per[codes]


def shifted(
    days: IntArray, offsets: IntArray, source: str, column: str
) -> tuple[IntArray, pa.Array]:
    """Shift per row: codes (-1 = missing: no date or no subject) into ISO ``YYYY-MM-DD``.

    ``days`` and ``offsets`` are int64 of shape (n,) from :func:`day_numbers` and
    :func:`subject_offsets`. Returns the codes (int64, shape (n,)) and the distinct
    shifted dates as an Arrow ``string`` array.

    Raises
    ------
    PolicyError
        A shifted date falls outside the years 1 to 9999 (ISO dates, and this tool's
        own reader, stop there); names file, row and column.
    """
    ok = (days != NO_DAY) & (offsets != NO_DAY)
    moved = days + np.where(ok, offsets, 0)
    outside = ok & ((moved < _YEAR_1) | (moved > _YEAR_9999))
    if outside.any():
        raise PolicyError(
            f"{source}: row {first_row(outside)}, column {column!r}: the date shifted by its "
            "subject's offset falls outside the years 1 to 9999"
        )
    codes = np.full(len(days), -1, dtype=np.int64)
    part, uniq = pd.factorize(moved[ok])
    codes[ok] = part
    uniq = np.asarray(uniq, dtype=np.int64)
    return codes, pa.array(uniq.astype(np.int32), pa.date32()).cast(pa.string())


@register_operator("date_shift")
class DateShift:
    """Keyed per-subject date shifting (the HIPAA-style "shift, don't drop" of dates)."""

    name = "date_shift"

    def transform(self, values: pd.Series, ctx: OperatorContext) -> pd.Series:
        col = ctx.column
        assert ctx.frame is not None and col.subject is not None and col.shift_days is not None
        days = day_numbers(values, ctx.source, col.name, col.date_format, col.day_first)
        offsets = subject_offsets(
            ctx.frame[col.subject], col.subject, ctx.key.secret, col.shift_days
        )
        codes, iso = shifted(days, offsets, ctx.source, col.name)
        return expand(codes, iso.to_pylist(), values.index)

    def output_domain(self, ctx: OperatorContext) -> dict[str, Any]:
        return {"type": "date", "shifted_by_subject": ctx.column.subject}
