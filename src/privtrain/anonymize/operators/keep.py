"""``keep``: pass a column through unchanged, checked against its public domain."""

from __future__ import annotations

from typing import Any

import pandas as pd

from privtrain.anonymize.errors import PolicyError
from privtrain.anonymize.operators.registry import OperatorContext, register_operator
from privtrain.anonymize.values import check_bounds, first_row, to_numeric
from privtrain.errors import shown


@register_operator("keep")
class Keep:
    """Copy the column. Categorical values must be in ``domain``, numbers within
    [``lower``, ``upper``]: the manifest tells trainers the domain, so the data must obey it."""

    name = "keep"

    def transform(self, values: pd.Series, ctx: OperatorContext) -> pd.Series:
        col = ctx.column
        if col.type == "numeric":
            assert col.lower is not None and col.upper is not None
            num = to_numeric(values, ctx.source, col.name)
            check_bounds(num, col.lower, col.upper, ctx.source, col.name)
            return num
        text = values.astype("string")
        if col.type == "categorical":
            assert col.domain is not None
            bad = (text.notna() & ~text.isin(col.domain)).to_numpy(dtype=bool)
            if bad.any():
                row = first_row(bad)
                raise PolicyError(
                    f"{ctx.source}: row {row}, column {col.name!r}: value "
                    f"{shown(text.iloc[row - 1])} is not in the policy's domain "
                    f"(columns.{col.name}.domain)"
                )
        return text

    def output_domain(self, ctx: OperatorContext) -> dict[str, Any]:
        col = ctx.column
        if col.type == "numeric":
            return {"type": "numeric", "lower": col.lower, "upper": col.upper}
        if col.type == "categorical":
            return {"type": "categorical", "values": list(col.domain or ())}
        return {"type": "text"}
