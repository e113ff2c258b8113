"""The demo: UCI Adult anonymized with examples/adult/policy.toml."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from privtrain.anonymize.keys import generate_key
from privtrain.anonymize.manifest import verify_manifest
from privtrain.anonymize.pipeline import anonymize_file, verify_output
from privtrain.anonymize.risk import k_anonymity
from privtrain.datasets import fetch_adult

POLICY = Path(__file__).resolve().parents[2] / "examples" / "adult" / "policy.toml"


def test_adult_reaches_k10_within_5_percent_suppression(
    tmp_path: Path, signer: tuple[Path, Path]
) -> None:
    """C-A04 (blank workclass/country are values of their own), C-A01 (keyed record_id tokens)."""
    raw_path = fetch_adult()
    key = tmp_path / "owner.hmac.key"
    generate_key(key)
    out = tmp_path / "adult.anon.parquet"
    report = anonymize_file(
        raw_path, POLICY, key, out, signing_key_path=signer[0], signing_cert_path=signer[1]
    )
    raw = pd.read_csv(raw_path, dtype="string", keep_default_na=False, na_values=[""])
    table = pd.read_parquet(out)

    assert report.rows_raw == 48_842
    assert report.k_achieved >= 10
    assert report.rows_suppressed <= 0.05 * 48_842
    assert report.rows_out == len(table) == 48_842 - report.rows_suppressed
    assert "fnlwgt" not in table.columns
    assert not table["record_id"].isin(raw["record_id"]).any()
    assert table["record_id"].is_unique

    manifest = verify_manifest(report.manifest_path.read_bytes(), out.read_bytes()).manifest
    qis = manifest["quasi_identifiers"]
    assert qis == [
        "age", "sex", "race", "native_country", "marital_status", "education", "relationship"
    ]
    assert k_anonymity(table, qis) == manifest["k_achieved"] == report.k_achieved
    assert manifest["columns"]["record_id"] == {"type": "identifier"}
    assert manifest["columns"]["income"] == {"type": "categorical", "values": ["<=50K", ">50K"]}
    assert verify_output(out, report.manifest_path, raw_path) == []
    # Min/max statistics for numbers only: none for text (tokens, labels, categories).
    meta = pq.ParquetFile(out).metadata.row_group(0)
    stats = {meta.column(i).path_in_schema: meta.column(i).is_stats_set
             for i in range(meta.num_columns)}  # fmt: skip
    assert stats["capital_gain"] and stats["hours_per_week"]
    assert not stats["record_id"] and not stats["occupation"]


def test_the_same_run_writes_the_same_bytes_in_another_process(
    tmp_path: Path, signer: tuple[Path, Path]
) -> None:
    """Generalized labels repeat in a column's dictionary; Parquet's writer then left
    unwritten (stray memory) bytes in the dictionary page, so two runs of the same input,
    key and policy gave files with other hashes."""
    import subprocess
    import sys

    key = tmp_path / "owner.hmac.key"
    generate_key(key)
    script = (
        "import sys; from pathlib import Path; "
        "from privtrain.anonymize.pipeline import anonymize_file; "
        "r = anonymize_file(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), "
        "Path(sys.argv[4]), signing_key_path=Path(sys.argv[5]), "
        "signing_cert_path=Path(sys.argv[6])); print(r.output_sha256)"
    )
    digests = set()
    for run in range(2):
        out = tmp_path / f"run{run}.parquet"
        args = [fetch_adult(), POLICY, key, out, signer[0], signer[1]]
        done = subprocess.run([sys.executable, "-c", script, *map(str, args)],
                              capture_output=True, text=True, check=True)
        digests.add(done.stdout.strip())
    assert len(digests) == 1
