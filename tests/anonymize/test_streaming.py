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
        [risk.accept]
        visits = "five synthetic rows, each visit count unique"
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


_SHIFT_POLICY = """
k = 1
[columns.person]
operator = "hmac"
role = "direct_identifier"
type = "text"
[columns.seen]
operator = "date_shift"
role = "other"
subject = "person"
shift_days = 30
"""


def test_date_shift_in_chunks_equals_the_operator_on_the_whole_column(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path]
) -> None:
    """Offsets and parsed dates remembered across chunks give each row what the operator
    gives on the whole table: same person (spelled with spaces or not), same offset; a
    missing person or date leaves the cell missing (C-A04)."""
    from privtrain.anonymize.keys import load_key
    from privtrain.anonymize.operators.registry import OperatorContext, get_operator
    from privtrain.anonymize.policy import load_policy

    policy = write("p.toml", _SHIFT_POLICY)
    lines = ["ann,2021-03-04", " ann ,2021-03-05", "bob,2020-12-31", ",2021-01-01", "bob,",
             "cy,2019-07-14", "ann,2021-03-04", "bob,2021-03-04"]  # fmt: skip
    raw = write("a.csv", "person,seen\n" + "\n".join(lines) + "\n")
    frame = pd.read_csv(raw, dtype="string", keep_default_na=False).replace("", pd.NA)
    pol = load_policy(policy)
    ctx = OperatorContext(pol.columns["seen"], load_key(key_path), pol.locale, str(raw),
                          frame=frame)  # fmt: skip
    expected = get_operator("date_shift").transform(frame["seen"], ctx).tolist()
    for chunk_rows in (1, 3, 100):
        out = tmp_path / f"o{chunk_rows}.parquet"
        anonymize_file(raw, policy, key_path, out, signing_key_path=signer[0],
                       signing_cert_path=signer[1], chunk_rows=chunk_rows)  # fmt: skip
        assert pd.read_parquet(out)["seen"].tolist() == expected
    shift = np.array(expected[:3], dtype="datetime64[D]") - np.array(
        ["2021-03-04", "2021-03-05", "2020-12-31"], dtype="datetime64[D]"
    )
    assert shift[0] == shift[1] and abs(int(shift[0].astype(int))) <= 30
    assert expected[3] is pd.NA and expected[4] is pd.NA
    assert expected[6] == expected[0]


def test_a_bad_date_in_a_later_chunk_names_the_row_of_the_file(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path]
) -> None:
    policy = write("p.toml", _SHIFT_POLICY)
    raw = write("a.csv", "person,seen\nann,2021-03-04\nbob,2021-03-05\nann,2021-03-04\n"
                         "cy,soon\nbob,2021-03-05\n")  # fmt: skip
    with pytest.raises(PolicyError, match=r"row 4, column 'seen': value 'soon'"):
        anonymize_file(raw, policy, key_path, tmp_path / "o.parquet", signing_key_path=signer[0],
                       signing_cert_path=signer[1], chunk_rows=2)  # fmt: skip
    assert [p.name for p in tmp_path.iterdir() if "o.parquet" in p.name] == []


def test_parquet_output_reads_back_as_plain_columns_not_categories(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path]
) -> None:
    """Columns are handed to the Parquet writer dictionary-encoded per chunk; the file
    still holds plain strings and integers with pandas' dtypes, and a value an operator
    turns into a missing one (an e-mail of spaces) is a missing cell."""
    import pyarrow.parquet as pq

    policy = write(
        "p.toml",
        """
        k = 1
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
        [columns.city]
        operator = "keep"
        role = "other"
        type = "text"
        """,
    )
    raw = write("a.csv", 'email,visits,city\na@example.org,1,Köln\n"   ",2,\n'
                         'b@example.org,,Köln\nA@example.org,3,上海\n"  ",4,Köln\n')  # fmt: skip
    out = tmp_path / "o.parquet"
    anonymize_file(raw, policy, key_path, out, signing_key_path=signer[0],
                   signing_cert_path=signer[1], chunk_rows=2)  # fmt: skip
    schema = pq.read_schema(out)
    assert [str(t) for t in schema.types] == ["string", "int64", "string"]
    table = pd.read_parquet(out)
    assert [str(t) for t in table.dtypes] == ["string", "Int64", "string"]
    assert table["email"].isna().tolist() == [False, True, False, False, True]
    assert table["email"][0] == table["email"][3] != table["email"][2]
    assert table["visits"].tolist() == [1, 2, pd.NA, 3, 4]
    assert table["city"].tolist() == ["Köln", pd.NA, "Köln", "上海", "Köln"]
    assert pq.ParquetFile(out).metadata.num_row_groups == 3


def test_date_shift_reads_typed_parquet_subjects_and_dates(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path]
) -> None:
    """Integer subject ids and date-typed cells (as Parquet stores them) shift like their
    text: one person's dates move together, a missing id leaves the date missing."""
    import datetime as dt

    policy = write("p.toml", _SHIFT_POLICY)
    days = [dt.date(2021, 3, 4), dt.date(2021, 3, 9), dt.date(2020, 1, 1), dt.date(2021, 3, 4)]
    raw = tmp_path / "a.parquet"
    pd.DataFrame({"person": pd.array([7, 7, 8, None], dtype="Int64"), "seen": days}).to_parquet(raw)
    outs = []
    for chunk_rows in (1, 100):
        out = tmp_path / f"o{chunk_rows}.parquet"
        anonymize_file(raw, policy, key_path, out, signing_key_path=signer[0],
                       signing_cert_path=signer[1], chunk_rows=chunk_rows)  # fmt: skip
        outs.append(pd.read_parquet(out)["seen"].tolist())
    assert outs[0] == outs[1]
    seen = outs[0]
    assert seen[3] is pd.NA and all(isinstance(d, str) for d in seen[:3])
    moved = [(dt.date.fromisoformat(s) - d).days for s, d in zip(seen[:3], days, strict=False)]
    assert moved[0] == moved[1] and all(abs(m) <= 30 for m in moved)


def test_a_released_column_goes_to_the_writer_with_each_value_once() -> None:
    """Labels that repeat (generalized values) are merged in the Arrow dictionary the
    writer gets; the rows read the same."""
    from privtrain.anonymize.chunk_view import Released

    labels = pd.Series(["<40", "40+", "<40", "40+", "*"], dtype="string")
    codes = np.array([0, 1, 2, 3, -1, 4, 2], dtype=np.int64)
    rows = Released(labels, codes).rows(None)
    assert rows.dictionary.to_pylist() == ["<40", "40+", "*"]
    assert rows.to_pylist() == ["<40", "40+", "<40", "40+", None, "*", "<40"]
    kept = Released(labels, codes).rows(np.array([1, 4, 6]))
    assert kept.to_pylist() == ["40+", None, "<40"]
