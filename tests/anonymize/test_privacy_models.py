"""l-diversity and t-closeness per class, and their enforcement in the lattice search."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from privtrain.anonymize.errors import PolicyError
from privtrain.anonymize.policy import load_policy
from privtrain.anonymize.privacy_models import (
    ModelSpec,
    bad_classes,
    closeness,
    diversity,
    sensitive_codes,
)

CLS = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=np.int64)
SIZES = np.array([4, 4], dtype=np.int64)


def test_distinct_and_entropy_l_per_class() -> None:
    s = sensitive_codes("dx", pd.Series(["flu", "flu", "flu", "hiv", "a", "b", "c", "d"]), False)
    assert diversity(CLS, 2, SIZES, s, "distinct").tolist() == [2.0, 4.0]
    ent = diversity(CLS, 2, SIZES, s, "entropy")
    h0 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert ent[0] == pytest.approx(math.exp(h0)) and ent[1] == pytest.approx(4.0)


def test_equal_distance_emd_counts_values_absent_from_a_class() -> None:
    # Whole table: x 1/2, y 1/4, z 1/4. Class 0 all x: 0.5*(0.5+0.25+0.25) = 0.5.
    s = sensitive_codes("v", pd.Series(["x", "x", "x", "x", "y", "y", "z", "z"]), False)
    assert closeness(CLS, 2, SIZES, s).tolist() == pytest.approx([0.5, 0.5])


def test_ordered_emd_weighs_distance_between_numbers() -> None:
    # Values 1,2,3 with q = (3/8, 2/8, 3/8); class 0 = (1,1,1,2) -> p = (3/4, 1/4, 0).
    s = sensitive_codes("n", pd.Series(["1", "1", "1", "2", "2", "3", "3", "3"]), True)
    emd = closeness(CLS, 2, SIZES, s)
    r = np.array([3 / 4 - 3 / 8, 1 / 4 - 2 / 8, 0 - 3 / 8])
    assert emd[0] == pytest.approx(np.abs(np.cumsum(r)).sum() / 2)


def test_missing_sensitive_value_is_a_value_of_its_own() -> None:
    s = sensitive_codes("dx", pd.Series(["a", None, "a", "a", "a", "a", "a", "a"]), False)
    assert diversity(CLS, 2, SIZES, s, "distinct").tolist() == [2.0, 1.0]


def test_classes_failing_l_or_t_are_suppressed_like_small_ones() -> None:
    s = sensitive_codes("dx", pd.Series(["a", "a", "a", "a", "a", "b", "a", "b"]), False)
    assert bad_classes(CLS, SIZES, 2, ModelSpec(l=2), [s]).tolist() == [True, False]
    assert bad_classes(CLS, SIZES, 5, ModelSpec(), [s]).tolist() == [True, True]


def test_policy_rejects_l_without_sensitive_attribute(tmp_path: Path) -> None:
    p = tmp_path / "p.toml"
    p.write_text('k = 2\nl = 2\n[columns.a]\noperator = "drop"\nrole = "other"\n')
    with pytest.raises(PolicyError, match=r"p\.toml: l: l and t need sensitive_attributes"):
        load_policy(p)
    p.write_text('k = 2\nt = 1.5\n[columns.a]\noperator = "drop"\nrole = "other"\n')
    with pytest.raises(PolicyError, match=r"p\.toml: t: must be a number in \(0, 1\]"):
        load_policy(p)
