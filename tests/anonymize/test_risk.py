"""k-anonymity and equivalence classes (Sweeney 2002)."""

from __future__ import annotations

import pandas as pd

from privtrain.anonymize.risk import equivalence_classes, k_anonymity


def test_missing_qi_value_is_its_own_class() -> None:
    """C-A04: zip = [02134, 02134, missing] has k = 1, not 2."""
    df = pd.DataFrame({"zip": pd.array(["02134", "02134", None], dtype="string")})
    assert k_anonymity(df, ["zip"]) == 1
    assert sorted(equivalence_classes(df, ["zip"]).tolist()) == [1, 2]


def test_two_missing_values_share_a_class() -> None:
    """C-A04: blanks are one value among themselves, never merged with a real value."""
    df = pd.DataFrame(
        {
            "zip": pd.array(["02134", "02134", None, None], dtype="string"),
            "age": pd.array([30, 30, None, None], dtype="Int64"),
        }
    )
    assert k_anonymity(df, ["zip", "age"]) == 2


def test_k_over_several_columns() -> None:
    df = pd.DataFrame({"a": ["x", "x", "x", "y", "y"], "b": [1, 1, 2, 3, 3]})
    assert sorted(equivalence_classes(df, ["a", "b"]).tolist()) == [1, 2, 2]
    assert k_anonymity(df, ["a", "b"]) == 1
    assert k_anonymity(df, ["a"]) == 2
    assert k_anonymity(df, []) == 5


def test_empty_table_claims_no_k() -> None:
    assert k_anonymity(pd.DataFrame({"a": []}), ["a"]) == 0
