"""``mask``: show the first / last few characters of a value and mask the rest.

``"4111 1111 1111 1234"`` with ``keep_last = 4`` becomes ``"***************1234"``.
Whatever ``keep_first`` and ``keep_last`` say, at most half of a value's characters
are shown (rounded down), so a short value is never shown whole: ``"NA"`` with
``keep_last = 4`` becomes ``"*A"``, ``"7"`` becomes ``"*"``. The length of the
value survives; nothing else does. Work is per distinct value; missing stays
missing (C-A04). Masking is not keyed: two people whose values share the shown
characters and the length look the same, which is the point.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from privtrain.anonymize.operators.registry import OperatorContext, register_operator
from privtrain.anonymize.values import distinct_normalized, expand


def mask_value(text: str, keep_first: int, keep_last: int, mask_char: str) -> str:
    """Mask one value (see the module docstring for the rule)."""
    n = len(text)
    shown = n // 2
    first = min(keep_first, shown)
    last = min(keep_last, shown - first)
    return text[:first] + mask_char * (n - first - last) + (text[n - last :] if last else "")


def mask_column(values: pd.Series, keep_first: int, keep_last: int, mask_char: str) -> pd.Series:
    """Mask a column, one call per distinct value (NFC, stripped).

    Returns
    -------
    pd.Series
        ``string`` dtype on ``values.index``; missing cells stay missing.
    """
    codes, uniques = distinct_normalized(values)
    masked = [mask_value(u, keep_first, keep_last, mask_char) for u in uniques]
    return expand(codes, masked, values.index)


@register_operator("mask")
class Mask:
    """Partial display of a value (e.g. a card's or phone's last four digits)."""

    name = "mask"

    def transform(self, values: pd.Series, ctx: OperatorContext) -> pd.Series:
        col = ctx.column
        assert col.keep_first is not None and col.keep_last is not None and col.mask_char
        return mask_column(values, col.keep_first, col.keep_last, col.mask_char)

    def output_domain(self, ctx: OperatorContext) -> dict[str, Any]:
        col = ctx.column
        return {
            "type": "masked",
            "keep_first": col.keep_first,
            "keep_last": col.keep_last,
            "mask_char": col.mask_char,
        }
