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

import hmac
from typing import Any

import numpy as np
import pandas as pd

from privtrain.anonymize.dates import parse_dates
from privtrain.anonymize.operators.registry import OperatorContext, register_operator
from privtrain.anonymize.values import distinct_normalized

DOMAIN = b"privtrain/date_shift/v1\x00"


def subject_offsets(subjects: pd.Series, column: str, secret: bytes, window: int) -> np.ndarray:
    """Offset in days per row (int64, shape (n,)); ``np.iinfo(int64).min`` where no subject."""
    codes, uniques = distinct_normalized(subjects)
    prefix = DOMAIN + column.encode("utf-8") + b"\x00"
    per = np.array(
        [
            int.from_bytes(hmac.digest(secret, prefix + u.encode("utf-8"), "sha256")[:8], "big")
            % (2 * window + 1)
            - window
            for u in uniques
        ]
        + [np.iinfo(np.int64).min],
        dtype=np.int64,
    )
    return per[codes]


@register_operator("date_shift")
class DateShift:
    """Keyed per-subject date shifting (the HIPAA-style "shift, don't drop" of dates)."""

    name = "date_shift"

    def transform(self, values: pd.Series, ctx: OperatorContext) -> pd.Series:
        col = ctx.column
        assert ctx.frame is not None and col.subject is not None and col.shift_days is not None
        codes, days = parse_dates(values, ctx.source, col.name, col.date_format, col.day_first)
        offsets = subject_offsets(
            ctx.frame[col.subject], col.subject, ctx.key.secret, col.shift_days
        )
        ok = (codes >= 0) & (offsets != np.iinfo(np.int64).min)
        out = np.full(len(values), None, dtype=object)
        shifted = days[codes[ok]] + offsets[ok].astype("timedelta64[D]")
        out[ok] = np.datetime_as_string(shifted, unit="D")
        return pd.Series(out, index=values.index, dtype="string")

    def output_domain(self, ctx: OperatorContext) -> dict[str, Any]:
        return {"type": "date", "shifted_by_subject": ctx.column.subject}
