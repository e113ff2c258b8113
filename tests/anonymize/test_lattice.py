"""Full-domain generalization lattice search (Samarati 2001; El Emam et al. 2009)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from privtrain.anonymize.errors import AnonymizationError
from privtrain.anonymize.lattice import search
from privtrain.anonymize.operators.generalize import Generalization
from privtrain.anonymize.policy import ColumnPolicy


def _age(values: list[int | None]) -> Generalization:
    col = ColumnPolicy(
        name="age", operator="generalize", role="quasi_identifier", type="numeric",
        lower=0, upper=99, intervals=(5, 10),
    )  # fmt: skip
    return Generalization(pd.Series(values, dtype="Int64"), col, "t.csv")


def _sex(values: list[str | None]) -> Generalization:
    col = ColumnPolicy(
        name="sex", operator="generalize", role="quasi_identifier", type="categorical",
        hierarchy={"F": ("*",), "M": ("*",)},
    )  # fmt: skip
    return Generalization(pd.Series(values, dtype="string"), col, "t.csv")


def test_picks_least_generalization_that_reaches_k() -> None:
    ages = [21, 22, 23, 24, 31, 32, 33, 36]
    sexes = ["F", "M", "F", "M", "F", "M", "F", "M"]
    res = search({"age": _age(ages), "sex": _sex(sexes)}, 8, 2, 0.0)
    # (age=1, sex=0), loss 1/6, leaves a lone "35-39"; (age=0, sex=1) costs 1/2;
    # (age=2, sex=0) costs (2/3 + 0) / 2 = 1/3 and gives classes 20s F/M, 30s F/M of 2 each.
    assert res.levels == {"age": 2, "sex": 0}
    assert res.k_achieved == 2 and res.rows_suppressed == 0
    assert res.precision_loss == pytest.approx(1 / 3)
    assert res.discernibility == 4 * 2 * 2
    assert res.aecs == 2.0


def test_suppression_budget_is_used_before_generalizing() -> None:
    ages = [20, 20, 20, 20, 20, 20, 20, 20, 20, 77]
    res = search({"age": _age(ages)}, 10, 3, 0.1)
    assert res.levels == {"age": 0}
    assert res.rows_suppressed == 1
    assert res.keep.tolist() == [True] * 9 + [False]
    assert res.discernibility == 81 + 1 * 10


def test_numeric_labels_and_top_level() -> None:
    g = _age([3, 14, None])
    assert g.labels(1).tolist()[:2] == ["0-4", "10-14"]
    assert g.labels(2).tolist()[:2] == ["0-9", "10-19"]
    assert g.labels(3).tolist()[:2] == ["*", "*"]
    assert pd.isna(g.labels(3).iloc[2])
    codes, card = g.codes(3)
    assert card == 2 and codes.tolist() == [0, 0, 1]


def test_no_feasible_node_raises() -> None:
    with pytest.raises(AnonymizationError, match="no generalization reaches k = 5"):
        search({"age": _age([1, 2, 3])}, 3, 5, 0.0)


def test_missing_qi_blocks_merging(tmp_path: Path) -> None:
    """C-A04: a lone blank cannot hide under "*"; it is suppressed or k fails."""
    res = search({"sex": _sex(["F", "M", "F", None])}, 4, 2, 0.25)
    assert res.rows_suppressed == 1
    assert not res.keep[3]
    assert np.count_nonzero(res.keep) == 3
