"""Streaming anonymization: chunked runs equal one-chunk runs; memory does not grow with rows."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from privtrain.anonymize.errors import PolicyError
from privtrain.anonymize.pipeline import anonymize_file, verify_output
from privtrain.datasets import fetch_adult, fetch_compas

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# Manifest entries that differ between any two runs (time, bytes of the Parquet layout).
_RUN_SPECIFIC = {"created_at", "output_sha256", "output_bytes"}


def _run(
    raw: Path, policy: Path, key: Path, signer: tuple[Path, Path], out: Path, chunk_rows: int
) -> tuple[pd.DataFrame, dict]:
    report = anonymize_file(
        raw, policy, key, out, signing_key_path=signer[0], signing_cert_path=signer[1],
        chunk_rows=chunk_rows,
    )  # fmt: skip
    manifest = json.loads(report.manifest_path.read_text())["manifest"]
    assert verify_output(out, report.manifest_path, raw) == []
    return pd.read_parquet(out), {k: v for k, v in manifest.items() if k not in _RUN_SPECIFIC}


@pytest.mark.parametrize(
    ("dataset", "chunk_rows"), [("adult", 5_000), ("compas", 1_000)], ids=["adult", "compas"]
)
def test_chunked_run_equals_one_chunk_run(
    dataset: str, chunk_rows: int, tmp_path: Path, key_path: Path, signer: tuple[Path, Path]
) -> None:
    """C-A07: the real Adult (48,842 rows, k = 10) and COMPAS (7,214 rows, k = 5 with
    l-diversity and t-closeness) give the same table and manifest figures in small
    chunks as in one chunk."""
    raw = fetch_adult() if dataset == "adult" else fetch_compas()
    policy = EXAMPLES / dataset / "policy.toml"
    whole, m_whole = _run(raw, policy, key_path, signer, tmp_path / "one.parquet", 1 << 20)
    parts, m_parts = _run(raw, policy, key_path, signer, tmp_path / "many.parquet", chunk_rows)
    assert_frame_equal(parts, whole)
    assert m_parts == m_whole
    assert m_parts["input_rows"] == (48_842 if dataset == "adult" else 7_214)


def test_error_names_the_row_of_the_file_not_of_the_chunk(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path]
) -> None:
    policy = write(
        "p.toml",
        """
        k = 1
        [columns.age]
        operator = "generalize"
        role = "quasi_identifier"
        type = "numeric"
        lower = 0
        upper = 120
        intervals = [10]
        """,
    )
    raw = write("a.csv", "age\n" + "\n".join(["30"] * 6 + ["thirty"] + ["40"] * 3) + "\n")
    with pytest.raises(PolicyError, match=r"row 7, column 'age'"):
        anonymize_file(raw, policy, key_path, tmp_path / "o.parquet", signing_key_path=signer[0],
                       signing_cert_path=signer[1], chunk_rows=3)  # fmt: skip
    assert [p.name for p in tmp_path.iterdir() if "o.parquet" in p.name] == []


def test_jsonl_in_csv_out_in_chunks_equals_one_chunk(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path]
) -> None:
    """A key first seen in a late row is still a column; CSV output appended chunk by chunk."""
    policy = write(
        "p.toml",
        """
        k = 2
        max_suppression = 0.5
        [columns.zip]
        operator = "generalize"
        role = "quasi_identifier"
        type = "categorical"
        hierarchy = { "02134" = ["0213*"], "02139" = ["0213*"], "10001" = ["1000*"] }
        [columns.email]
        operator = "hmac"
        role = "direct_identifier"
        type = "text"
        [columns.visits]
        operator = "keep"
        role = "other"
        type = "numeric"
        lower = 0
        upper = 100
        """,
    )
    rows = [
        {"zip": "02134", "visits": 1},
        {"zip": "02134", "visits": 2, "email": "a@example.org"},
        {"zip": "10001"},
        {"zip": "02134", "visits": 3.5, "email": "A@example.org"},
        {"zip": "10001", "visits": 4, "email": "b@example.org"},
    ]
    raw = write("a.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    outs = []
    for chunk_rows in (1, 2, 100):
        out = tmp_path / f"o{chunk_rows}.csv"
        anonymize_file(raw, policy, key_path, out, signing_key_path=signer[0],
                       signing_cert_path=signer[1], chunk_rows=chunk_rows)  # fmt: skip
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2]
    table = pd.read_csv(tmp_path / "o1.csv", dtype="string")
    assert table["visits"].tolist() == ["1.0", "2.0", pd.NA, "3.5", "4.0"]
    assert table["email"].isna().tolist() == [True, False, True, False, False]
    assert table["email"][1] == table["email"][3]


_PEAK = """
import json, resource, sys
from pathlib import Path
from privtrain.anonymize.pipeline import anonymize_file
raw, policy, key, out, skey, scert = map(Path, sys.argv[1:7])
anonymize_file(raw, policy, key, out, signing_key_path=skey, signing_cert_path=scert,
               chunk_rows=50_000)
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
"""


def test_peak_memory_does_not_grow_with_rows(
    tmp_path: Path, key_path: Path, signer: tuple[Path, Path]
) -> None:
    """C-A07 in small: real Adult rows resampled to 100k and 300k rows; the peak resident
    memory of the run (its own process) stays within a small margin."""
    adult = pd.read_csv(fetch_adult(), dtype=str, keep_default_na=False)
    rng = np.random.default_rng(7)
    peaks = []
    for rows in (100_000, 300_000):
        raw = tmp_path / f"adult_{rows}.csv"
        adult.iloc[rng.integers(0, len(adult), rows)].to_csv(raw, index=False)
        args = [raw, EXAMPLES / "adult" / "policy.toml", key_path, tmp_path / f"o{rows}.parquet",
                *signer]  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-c", _PEAK, *map(str, args)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        peaks.append(float(done.stdout.strip().splitlines()[-1]))
    assert peaks[1] <= peaks[0] * 1.10 + 25, peaks
