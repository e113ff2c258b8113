"""``drop``: remove the column from the output."""

from __future__ import annotations

from typing import Any

import pandas as pd

from privtrain.anonymize.operators.registry import OperatorContext, register_operator


@register_operator("drop")
class Drop:
    """Remove the column; the safest choice for anything a trainer does not need."""

    name = "drop"

    def transform(self, values: pd.Series, ctx: OperatorContext) -> None:
        return None

    def output_domain(self, ctx: OperatorContext) -> dict[str, Any] | None:
        return None
