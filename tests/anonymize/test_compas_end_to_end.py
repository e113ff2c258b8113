"""COMPAS two-year, real names and dates of birth, anonymized with examples/compas/policy.toml."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from privtrain.anonymize.keys import generate_key
from privtrain.anonymize.pipeline import anonymize_file, verify_output
from privtrain.datasets import fetch_compas

from .conftest import make_signer

POLICY = Path(__file__).resolve().parents[2] / "examples" / "compas" / "policy.toml"
IDENTIFIERS = ["name", "first", "last", "c_case_number", "r_case_number", "vr_case_number", "dob"]


@pytest.fixture(scope="module")
def compas_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    folder = tmp_path_factory.mktemp("compas")
    signer = make_signer(folder)
    key = folder / "owner.hmac.key"
    generate_key(key)
    out = folder / "compas.anon.parquet"
    report = anonymize_file(
        fetch_compas(), POLICY, key, out, signing_key_path=signer[0], signing_cert_path=signer[1]
    )
    assert verify_output(out, report.manifest_path, fetch_compas()) == []
    manifest = json.loads(report.manifest_path.read_text())["manifest"]
    raw = pd.read_csv(fetch_compas(), dtype="string", keep_default_na=False, na_values=[""])
    return pd.read_parquet(out), manifest, raw


def test_no_raw_name_case_number_or_birth_date_anywhere(
    compas_run: tuple[pd.DataFrame, dict, pd.DataFrame],
) -> None:
    table, _, raw = compas_run
    cells = pd.Series(
        pd.unique(np.concatenate([table[c].dropna().astype(str).to_numpy() for c in table])),
        dtype=object,
    ).str.casefold()
    for name in IDENTIFIERS:
        secrets = raw[name].dropna().str.casefold().unique()
        assert not cells.isin(secrets).any(), name
    # Case numbers and birth dates are distinctive strings: not even inside a cell.
    text = " ".join(cells[cells.str.len() > 6])
    for name in ("c_case_number", "dob"):
        hits = [v for v in raw[name].dropna().unique() if v in text]
        assert hits == [], name


def test_k_and_l_claims_confirmed_independently(
    compas_run: tuple[pd.DataFrame, dict, pd.DataFrame],
) -> None:
    table, manifest, raw = compas_run
    qis = manifest["quasi_identifiers"]
    assert {"sex", "race", "age"} < set(qis) and len(qis) >= 4
    assert manifest["k_achieved"] >= 5
    assert manifest["rows_suppressed"] <= 0.05 * len(raw)
    models = manifest["privacy_models"]
    assert models["sensitive_attributes"] == ["two_year_recid"]
    # A plain pandas group-by, no code shared with the anonymizer.
    groups = table.groupby(qis, dropna=False)["two_year_recid"]
    assert int(groups.size().min()) == manifest["k_achieved"]
    assert int(groups.nunique().min()) == models["l_distinct"] >= 2
    overall = table["two_year_recid"].value_counts(normalize=True)
    shares = (
        table.groupby(qis, dropna=False)["two_year_recid"]
        .value_counts(normalize=True)
        .unstack(fill_value=0)
    )
    emd = 0.5 * (shares[overall.index] - overall).abs().sum(axis=1)
    assert emd.max() == pytest.approx(models["t"]) and models["t"] <= 0.3


def test_k_l_t_claims_confirmed_by_pycanon(
    compas_run: tuple[pd.DataFrame, dict, pd.DataFrame],
) -> None:
    """pyCANON (Sáinz-Pardo Díaz & López García 2022) as the independent checker."""
    anonymity = pytest.importorskip("pycanon.anonymity")
    table, manifest, _ = compas_run
    qis = manifest["quasi_identifiers"]
    # pyCANON's group-by drops missing keys; a missing QI is a value of its own here.
    data = table.astype(object).where(table.notna(), "<missing>").reset_index(drop=True)
    data["two_year_recid"] = data["two_year_recid"].astype(str)
    models = manifest["privacy_models"]
    assert anonymity.k_anonymity(data, qis) == manifest["k_achieved"]
    assert anonymity.l_diversity(data, qis, ["two_year_recid"]) == models["l_distinct"]
    assert anonymity.t_closeness(data, qis, ["two_year_recid"]) == pytest.approx(models["t"])
