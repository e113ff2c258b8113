"""The new operators in one run on real COMPAS rows, checked by verify --raw."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from privtrain.anonymize.keys import generate_key
from privtrain.anonymize.manifest import verify_manifest
from privtrain.anonymize.pipeline import anonymize_file, verify_output
from privtrain.anonymize.risk import k_anonymity
from privtrain.datasets import fetch_compas

POLICY = """
    k = 5
    max_suppression = 0.1
    phone_region = "US"
    [columns.name]
    operator = "pseudonym"
    role = "direct_identifier"
    type = "text"
    faker = "name"
    [columns.first]
    operator = "drop"
    role = "direct_identifier"
    [columns.last]
    operator = "drop"
    role = "direct_identifier"
    [columns.c_case_number]
    operator = "mask"
    role = "direct_identifier"
    type = "text"
    keep_last = 4
    [columns.phone]
    operator = "hmac"
    role = "direct_identifier"
    type = "text"
    normalize = "phone"
    [columns.dob]
    operator = "generalize"
    role = "quasi_identifier"
    type = "date"
    lower = 1900-01-01
    upper = 2014-12-31
    [columns.zip]
    operator = "generalize"
    role = "quasi_identifier"
    type = "zip"
    keep_digits = [3, 1]
    [columns.sex]
    operator = "generalize"
    role = "quasi_identifier"
    type = "categorical"
    hierarchy = { "Male" = ["*"], "Female" = ["*"] }
    [columns.priors_count]
    operator = "noise"
    role = "sensitive"
    type = "numeric"
    lower = 0
    upper = 40
    scale = 1.0
    [columns.notes]
    operator = "scrub"
    role = "other"
    type = "text"
    [risk.accept]
    priors_count = "noised counts on a 600-row sample: the noise test needs them"
"""


def _compas_sample(rows: int = 600) -> pd.DataFrame:
    raw = pd.read_csv(fetch_compas(), dtype="string", keep_default_na=False, na_values=[""])
    df = raw.loc[
        : rows - 1, ["name", "first", "last", "c_case_number", "dob", "sex", "priors_count"]
    ]
    ids = raw["id"].iloc[:rows].astype(int)
    # Fictional 555-01xx numbers written three ways; Broward County ZIP codes (leading digit 3).
    fmt = ["(954) 555-01{:02d}", "954.555.01{:02d}", "+1 954 555 01{:02d}"]
    df["phone"] = [fmt[i % 3].format(i % 100) for i in ids]
    df["zip"] = [f"333{i % 12:02d}" if i % 5 else f"0{2100 + i % 40}" for i in ids]
    df["notes"] = [
        f"{n.title()} ({c}) phoned from {p}; mail {f}.{la}@example.org"
        if c is not pd.NA
        else f"{n} has no case"
        for n, c, p, f, la in zip(
            df["name"], df["c_case_number"], df["phone"], df["first"], df["last"], strict=True
        )
    ]
    return df


def test_compas_with_new_operators_passes_verify_raw(
    tmp_path: Path, signer: tuple[Path, Path], write: Callable[[str, str], Path]
) -> None:
    df = _compas_sample()
    raw_path = tmp_path / "compas_people.csv"
    df.to_csv(raw_path, index=False)
    key = tmp_path / "hmac.key"
    generate_key(key)
    out = tmp_path / "out.parquet"
    report = anonymize_file(
        raw_path,
        write("policy.toml", POLICY),
        key,
        out,
        signing_key_path=signer[0],
        signing_cert_path=signer[1],
    )
    table = pd.read_parquet(out)
    manifest = verify_manifest(report.manifest_path.read_bytes(), out.read_bytes()).manifest
    assert verify_output(out, report.manifest_path, raw_path) == []
    assert k_anonymity(table, ["dob", "zip", "sex"]) == manifest["k_achieved"] >= 5

    # Leading zeros survive in every generalized ZIP; dates are at least months.
    assert table["zip"].dropna().str.match(r"^(0|3|\*)").all()
    assert manifest["columns"]["c_case_number"]["type"] == "masked"
    assert manifest["columns"]["priors_count"]["noise"] == {"distribution": "laplace", "scale": 1.0}
    assert table["c_case_number"].dropna().str.fullmatch(r"\*{9}[A-Z]\d{2}[A-Z]").all()

    # 100 numbers written up to three ways each: one token per number.
    assert df["phone"].nunique() > 250 and table["phone"].nunique() <= 100

    # No raw name, name part, case number, phone or e-mail survives in the notes.
    notes = " ".join(table["notes"].dropna()).casefold()
    for col in ("first", "last"):
        words = set(df[col].dropna().str.casefold())
        assert not any(f" {w} " in f" {notes} " for w in words if len(w) > 2)
    assert "@" not in notes and "555" not in notes and "cf10a" not in notes
    assert table["notes"].iloc[0].startswith("[NAME] ([ID]) phoned from [PHONE]; mail [EMAIL]")


def test_chunked_run_equals_one_chunk_with_noise_and_scrub(
    tmp_path: Path, signer: tuple[Path, Path], write: Callable[[str, str], Path]
) -> None:
    """C-A07: in chunks of 37 rows, keyed row noise and scrubbing of names that only appear
    in other chunks give the very output of a one-chunk run."""
    df = _compas_sample()
    # Each note names the person 300 rows further on: always a different chunk.
    others = df["name"].tolist()[300:] + df["name"].tolist()[:300]
    df["notes"] = [f"saw {o.title()} at the hearing" for o in others]
    raw_path = tmp_path / "people.csv"
    df.to_csv(raw_path, index=False)
    key = tmp_path / "hmac.key"
    generate_key(key)
    policy = write("policy.toml", POLICY)
    outs = []
    for chunk_rows in (None, 37):
        out = tmp_path / f"out-{chunk_rows}.parquet"
        anonymize_file(raw_path, policy, key, out, signing_key_path=signer[0],
                       signing_cert_path=signer[1], chunk_rows=chunk_rows)
        outs.append(pd.read_parquet(out))
    pd.testing.assert_frame_equal(outs[0], outs[1])
    assert outs[1]["notes"].dropna().str.fullmatch(r"saw \[NAME\] at the hearing").all()
