"""Bad input and faults found by trying to break a run: one clear error line, nothing left.

Each case here came out of a tester's report: a traceback, a wrong row number, raw cells
echoed into an error, a temporary file left by SIGTERM, an output without its manifest.
"""

from __future__ import annotations

import builtins
import decimal
import errno
import io
import os
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from privtrain.anonymize import pipeline, released_risk
from privtrain.anonymize.chunks import ChunkWriter
from privtrain.anonymize.errors import AnonymizationError, PolicyError
from privtrain.anonymize.pipeline import anonymize_file
from privtrain.anonymize.released_risk import HashCounts
from privtrain.anonymize.report import check_report_path
from privtrain.anonymize.spool import Spool
from privtrain.anonymize.values import distinct_normalized
from privtrain.platform.cli import main

ID_POLICY = """
k = 1

[columns.id]
operator = "{op}"
role = "direct_identifier"
type = "text"
{extra}
"""


def _run(src: Path, policy: Path, out: Path, key: Path, signer: tuple[Path, Path]) -> Any:
    return anonymize_file(src, policy, key, out, signing_key_path=signer[0],
                          signing_cert_path=signer[1])


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_parquet_list_column_is_refused_by_name(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path]
) -> None:
    """Was an ArrowNotImplementedError traceback from dictionary_encode in pass 2."""
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "note": pa.array([[1, 2], [3]])}), src)
    policy = write("p.toml", ID_POLICY.format(op="hmac", extra="""
        [columns.note]
        operator = "keep"
        role = "other"
        type = "text"
        """))
    with pytest.raises(AnonymizationError, match=r"column .note.: type list<.*holds several values per cell"):
        _run(src, policy, tmp_path / "out.parquet", key_path, signer)
    assert not (tmp_path / "out.parquet").exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("op", ["hmac", "pseudonym"])
def test_parquet_numbers_are_keyed_as_the_csv_text_of_the_same_ids(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path],
    op: str,
) -> None:
    """Whole-number floats (pandas' integer ids with gaps) were keyed as "1.0", and a
    pseudonym column of them failed with a false "input changed between the passes"."""
    extra = 'faker = "name"' if op == "pseudonym" else ""
    policy = write("p.toml", ID_POLICY.format(op=op, extra=extra))
    outputs = {}
    ids = [1, 2, 13055550134, 2]
    for kind, column in {
        "csv": None,
        "jsonl": None,
        "int": pa.array(ids, pa.int64()),
        "float": pa.array([float(i) for i in ids] + [float("nan")]),
        "decimal": pa.array([decimal.Decimal(f"{i}.00") for i in ids], pa.decimal128(14, 2)),
    }.items():
        if kind == "csv":
            src = write("in.csv", "id\n" + "\n".join(map(str, ids)) + "\n")
        elif kind == "jsonl":
            src = write("in.jsonl", "".join(f'{{"id": {float(i)}}}\n' for i in ids))
        else:
            src = tmp_path / f"in_{kind}.parquet"
            pq.write_table(pa.table({"id": column}), src)
        out = tmp_path / f"out_{kind}.parquet"
        _run(src, policy, out, key_path, signer)
        outputs[kind] = pd.read_parquet(out)["id"].tolist()
    assert outputs["csv"] == outputs["jsonl"] == outputs["int"] == outputs["float"][:4]
    assert outputs["csv"] == outputs["decimal"]
    assert outputs["csv"][1] == outputs["csv"][3] != outputs["csv"][0]
    assert pd.isna(outputs["float"][4])  # NaN is missing, not the text "nan"


def test_sigterm_mid_run_leaves_no_temporary_file(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGTERM used to kill the process with the output's temporary file in place."""
    src = write("in.csv", "id\n" + "".join(f"p{i}\n" for i in range(50)))
    policy = write("p.toml", ID_POLICY.format(op="hmac", extra=""))
    real = ChunkWriter.write_arrow

    def terminated_while_writing(self: ChunkWriter, *args: Any) -> None:
        real(self, *args)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(ChunkWriter, "write_arrow", terminated_while_writing)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out.parquet"
    with pytest.raises(SystemExit) as stop:
        main(["anonymize", "run", str(src), "--policy", str(policy), "--key", str(key_path),
              "--out", str(out), "--signing-key", str(signer[0]),
              "--signing-cert", str(signer[1])])
    assert stop.value.code == 128 + signal.SIGTERM
    assert not out.exists() and _leftovers(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is before  # the CLI puts the handler back


def test_no_output_without_its_manifest_when_the_manifest_cannot_be_written(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The output was renamed into place before the manifest was written: a full disk
    left an output with no manifest (or beside an older one)."""
    src = write("in.csv", "id\na\nb\n")
    policy = write("p.toml", ID_POLICY.format(op="hmac", extra=""))
    out = tmp_path / "out.parquet"
    _run(src, policy, out, key_path, signer)
    before = out.read_bytes(), pipeline.manifest_path_for(out).read_bytes()
    write("in.csv", "id\nc\nd\ne\n")

    def disk_full(path: Path, data: bytes, **_: Any) -> Any:
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(pipeline, "staged_bytes", disk_full)
    with pytest.raises(OSError, match="No space left"):
        _run(src, policy, out, key_path, signer)
    assert (out.read_bytes(), pipeline.manifest_path_for(out).read_bytes()) == before
    assert _leftovers(tmp_path) == []


def test_a_report_folder_that_cannot_be_written_is_refused_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only report folder used to fail only after output and manifest were written."""

    def read_only(*_: Any, **__: Any) -> Any:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("tempfile.TemporaryFile", read_only)
    with pytest.raises(AnonymizationError, match="not writable .Read-only file system"):
        check_report_path(tmp_path / "r.html", [])


def test_a_date_shifted_past_year_9999_names_row_and_column(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path]
) -> None:
    """Was written as "10000-01-02", a date the tool itself refuses to read."""
    src = tmp_path / "in.csv"
    policy = write("p.toml", ID_POLICY.format(op="hmac", extra="""
        [columns.visit]
        operator = "date_shift"
        role = "other"
        subject = "id"
        shift_days = 1
        """))
    # With a window of one day, some subject moves forward; find one that does.
    for subject in (f"P{i}" for i in range(2, 200)):
        src.write_text(f"id,visit\nP0,2000-01-01\nP1,2001-02-03\n{subject},9999-12-31\n")
        try:
            _run(src, policy, tmp_path / "out.parquet", key_path, signer)
        except PolicyError as exc:
            assert "row 3, column 'visit'" in str(exc) and "years 1 to 9999" in str(exc)
            assert "9999-12-31" not in str(exc)
            break
    else:
        pytest.fail("no subject was shifted forward")
    assert _leftovers(tmp_path) == []


def test_a_ragged_row_names_its_data_row_and_quotes_no_cell(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path]
) -> None:
    """Arrow counts the header as row 1 and quotes the row's raw text (personal data)."""
    rows = "".join(f"p{i},x\n" for i in range(1, 10))
    src = write("in.csv", "id,city\n" + rows + "secret-person,x,EXTRA\n")
    policy = write("p.toml", ID_POLICY.format(op="hmac", extra="""
        [columns.city]
        operator = "keep"
        role = "other"
        type = "text"
        """))
    with pytest.raises(AnonymizationError) as err:
        _run(src, policy, tmp_path / "out.parquet", key_path, signer)
    assert "row 10: expected 2 fields as in the header, found 3" in str(err.value)
    assert "secret-person" not in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf", b"\n"])
def test_an_empty_file_is_called_empty(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path],
    content: bytes,
) -> None:
    """Was "columns.id: declared but absent from in.csv"."""
    src = tmp_path / "in.csv"
    src.write_bytes(content)
    policy = write("p.toml", ID_POLICY.format(op="hmac", extra=""))
    with pytest.raises(AnonymizationError, match="the file is empty"):
        _run(src, policy, tmp_path / "out.parquet", key_path, signer)


def test_invalid_utf8_late_in_a_file_names_its_line(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path]
) -> None:
    src = tmp_path / "in.csv"
    src.write_bytes(b"id\n" + b"".join(b"p%d\n" % i for i in range(1, 5000)) + b"caf\xe9\n")
    policy = write("p.toml", ID_POLICY.format(op="hmac", extra=""))
    with pytest.raises(AnonymizationError, match=r"line 5001 \(the header is line 1\), byte"):
        anonymize_file(src, policy, key_path, tmp_path / "out.parquet", encoding="utf-8",
                       signing_key_path=signer[0], signing_cert_path=signer[1])


def test_whitespace_runs_do_not_make_another_person() -> None:
    """Doubled spaces, tabs and no-break spaces are typing; letter case is kept apart."""
    codes, uniques = distinct_normalized(pd.Series([
        "José Müller", "José  Müller", "José\tMüller", "José\u00a0Müller", "  José Müller ",
        "Jose\u0301 Mu\u0308ller", "JOSÉ MÜLLER", " \t ",
    ]))
    assert list(codes[:6]) == [0] * 6 and codes[6] == 1 and codes[7] == -1
    assert uniques == ["José Müller", "JOSÉ MÜLLER"]


def test_ctrl_c_while_the_command_loads_exits_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Was a KeyboardInterrupt traceback from the imports before main() ran."""
    from privtrain import console

    real_import = builtins.__import__

    def interrupted(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "privtrain.platform.cli":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    assert console.main() == 130


def test_verify_says_l_and_t_were_checked_when_claimed(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """It said "domains and k verified" even where it had also checked l and t."""
    rows = "".join(f"p{i},{30 + i % 2},{'flu' if i % 3 else 'cold'}\n" for i in range(40))
    src = write("in.csv", "id,age,diagnosis\n" + rows)
    policy = write("p.toml", ID_POLICY.format(op="hmac", extra="""
        [columns.age]
        operator = "generalize"
        role = "quasi_identifier"
        type = "numeric"
        lower = 0
        upper = 120
        intervals = [10]

        [columns.diagnosis]
        operator = "keep"
        role = "sensitive"
        type = "categorical"
        domain = ["flu", "cold"]
        """).replace("k = 1\n", "k = 2\nl = 2\n"))
    out = tmp_path / "out.parquet"
    _run(src, policy, out, key_path, signer)
    assert main(["anonymize", "verify", str(out), "--manifest", f"{out}.manifest.json"]) == 0
    assert "domains, k, l and t verified" in capsys.readouterr().out


def test_ctrl_c_while_the_parser_is_built_exits_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first fix covered only the import; building the parser imports more."""
    from privtrain import console
    from privtrain.platform import cli

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert console.main() == 130


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "a", "id": "b"}', "line 3: key 'id' appears twice"),
        ('{"id": Infinity}', "line 3: Infinity is not a finite number"),
        ('{"id": 1e400}', "line 3: 1e400 is too large for a number"),
        ('{"": "a"}', "line 3: a key has no name"),
    ],
)
def test_jsonl_duplicate_keys_and_infinities_are_refused_by_line(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path],
    line: str, message: str,
) -> None:
    """json.loads kept the last of two keys silently and read Infinity as a number."""
    src = write("in.jsonl", '{"id": "x"}\n\n' + line + "\n")  # a blank line counts
    policy = write("p.toml", ID_POLICY.format(op="hmac", extra=""))
    with pytest.raises(AnonymizationError, match=message):
        _run(src, policy, tmp_path / "out.parquet", key_path, signer)


def test_jsonl_nan_is_missing_and_bad_utf8_names_the_file_line(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path]
) -> None:
    policy = write("p.toml", ID_POLICY.format(op="hmac", extra=""))
    src = write("in.jsonl", '{"id": "x"}\n{"id": NaN}\n')
    _run(src, policy, tmp_path / "out.parquet", key_path, signer)
    assert pd.read_parquet(tmp_path / "out.parquet")["id"].isna().tolist() == [False, True]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"id": "a"}\n' * 5000 + b'{"id": "b\xff"}\n')
    with pytest.raises(AnonymizationError, match=r"bad\.jsonl: line 5001, byte 60009: not valid"):
        _run(bad, policy, tmp_path / "out2.parquet", key_path, signer)


def test_a_policy_that_drops_every_column_is_refused(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path]
) -> None:
    """Was "internal check failed: output has k = 100 over 0 rows"."""
    src = write("in.csv", "x\n" + "".join(f"{i}\n" for i in range(20)))
    policy = write("p.toml", 'k = 1\n[columns.x]\noperator = "drop"\nrole = "other"\n')
    with pytest.raises(AnonymizationError, match="every column is dropped"):
        _run(src, policy, tmp_path / "out.parquet", key_path, signer)


def test_a_dropped_list_column_is_never_read_and_inspect_drops_it(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path]
) -> None:
    from privtrain.anonymize.inspect_table import inspect_table

    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "tags": pa.array([[1, 2], [3]])}), src)
    proposal = {p.name: p for p in inspect_table(src)}["tags"]
    assert 'operator = "drop"' in proposal.lines and proposal.kind == "nested"
    policy = write("p.toml", ID_POLICY.format(op="hmac", extra="""
        [columns.tags]
        operator = "drop"
        role = "other"
        """))
    _run(src, policy, tmp_path / "out.parquet", key_path, signer)
    assert list(pd.read_parquet(tmp_path / "out.parquet").columns) == ["id"]


@pytest.mark.parametrize(
    ("header", "message"),
    [("a,,b\n1,2,3\n", "column 2: the column has no name"), ("\n1,2\n", "row 1 .header. is empty")],
)
def test_a_header_with_a_blank_name_is_refused_by_inspect_and_run(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path],
    header: str, message: str,
) -> None:
    """inspect named it "Unnamed: 1" (pandas) and wrote a policy run could not match."""
    from privtrain.anonymize.inspect_table import inspect_table

    src = tmp_path / "in.csv"
    src.write_text(header)
    with pytest.raises(AnonymizationError, match=message):
        inspect_table(src)
    policy = write("p.toml", ID_POLICY.format(op="hmac", extra=""))
    with pytest.raises(AnonymizationError, match=message):
        _run(src, policy, tmp_path / "out.parquet", key_path, signer)


def test_a_report_that_cannot_be_written_leaves_no_half_and_says_what_was_written(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from privtrain.anonymize import report

    src = write("in.csv", "id\na\nb\n")
    policy = write("p.toml", ID_POLICY.format(op="hmac", extra=""))
    real = report.staged_bytes
    calls = []

    def full_on_the_second(path: Path, data: bytes, **kwargs: Any) -> Any:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(path))
        return real(path, data, **kwargs)

    monkeypatch.setattr(report, "staged_bytes", full_on_the_second)
    out, html = tmp_path / "out.parquet", tmp_path / "r.html"
    assert main(["anonymize", "run", str(src), "--policy", str(policy), "--key", str(key_path),
                 "--out", str(out), "--signing-key", str(signer[0]),
                 "--signing-cert", str(signer[1]), "--report", str(html)]) == 2
    assert "were written, the report was not: No space left" in capsys.readouterr().err
    assert out.exists() and not html.exists() and not html.with_suffix(".json").exists()
    assert _leftovers(tmp_path) == []


def test_a_megabyte_cell_is_shortened_in_the_error(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path]
) -> None:
    """The error line used to repeat the whole 5 MiB value."""
    src = write("in.csv", "id,city\na,Utrecht\nb," + "x" * 1_000_000 + "\n")
    policy = write("p.toml", ID_POLICY.format(op="hmac", extra="""
        [columns.city]
        operator = "keep"
        role = "other"
        type = "categorical"
        domain = ["Utrecht"]
        """))
    with pytest.raises(PolicyError) as err:
        _run(src, policy, tmp_path / "out.parquet", key_path, signer)
    assert "row 2, column 'city'" in str(err.value) and "(1,000,000 chars)" in str(err.value)
    assert len(str(err.value)) < 300


def test_a_tampered_previous_manifest_is_named(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path]
) -> None:
    src = write("in.csv", "id\na\nb\n")
    policy = write("p.toml", ID_POLICY.format(op="hmac", extra=""))
    first = tmp_path / "first.parquet"
    _run(src, policy, first, key_path, signer)
    earlier = pipeline.manifest_path_for(first)
    earlier.write_bytes(earlier.read_bytes().replace(b'"k_target": 1', b'"k_target": 2'))
    with pytest.raises(Exception, match=r"first\.parquet\.manifest\.json: "):
        anonymize_file(src, policy, key_path, tmp_path / "second.parquet",
                       signing_key_path=signer[0], signing_cert_path=signer[1],
                       previous_manifest=earlier)


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_text_outputs_keep_integers_with_missing_cells_integral(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path],
    suffix: str,
) -> None:
    """JSON Lines wrote 28.0 (numpy floats) when the column had a missing cell."""
    src = write("in.csv", "id,age\na,28\nb,\nc,40\n")
    policy = write("p.toml", ID_POLICY.format(op="hmac", extra="""
        [columns.age]
        operator = "keep"
        role = "other"
        type = "numeric"
        lower = 0
        upper = 120
        """))
    out = tmp_path / f"out.{suffix}"
    _run(src, policy, out, key_path, signer)
    text = out.read_text()
    assert "28" in text and "28.0" not in text and "40.0" not in text


def test_inspect_does_not_publish_the_observed_extremes(tmp_path: Path) -> None:
    """A kept number's lower/upper go into the manifest: the observed min and max were
    proposed as they are."""
    from privtrain.anonymize.inspect_table import inspect_table

    src = tmp_path / "in.csv"
    src.write_text("income\n" + "".join(f"{1037 + 170 * (i % 20)}\n" for i in range(200)))
    lines = {p.name: p for p in inspect_table(src)}["income"].lines
    assert "lower = 1000" in lines and "upper = 5000" in lines


@pytest.mark.parametrize(
    ("text", "closed"),
    [
        ('a,b\n1,2\n3,"x\n5,6\n7,8\n', False),
        ('a,b\n1,2\n3,"x\n5,6\n7,8', False),
        ('a,b\n1,2\n3,"x\ny"\n', True),
        ('a,b\n1,"x\ny"\n3,4\n', True),
    ],
)
def test_a_quote_never_closed_is_refused_not_merged(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path],
    text: str, closed: bool,
) -> None:
    """Arrow read everything after an unclosed quote as one value: rows silently merged."""
    src = tmp_path / "in.csv"
    src.write_text(text)
    policy = write("p.toml", """
        k = 1
        [columns.a]
        operator = "keep"
        role = "other"
        type = "text"
        [columns.b]
        operator = "keep"
        role = "other"
        type = "text"
        """)
    out = tmp_path / "out.parquet"
    if closed:
        _run(src, policy, out, key_path, signer)
        assert pd.read_parquet(out)["b"].str.contains("\n").sum() == 1
    else:
        with pytest.raises(AnonymizationError, match="row 2: a quoted value is never closed"):
            _run(src, policy, out, key_path, signer)
        assert not out.exists()


def test_parquet_bytes_and_repeated_names_are_refused_by_name(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path]
) -> None:
    """Both were tracebacks (UnicodeDecodeError; Arrow's "Field exists 2 times")."""
    from privtrain.anonymize.inspect_table import inspect_table

    raw = tmp_path / "bin.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "blob": pa.array([b"\x00\xff", b"ab"])}), raw)
    assert {p.name: p for p in inspect_table(raw)}["blob"].kind == "bytes"
    keep = ID_POLICY.format(op="hmac", extra="""
        [columns.blob]
        operator = "keep"
        role = "other"
        type = "text"
        """)
    with pytest.raises(AnonymizationError, match="column 'blob': type binary holds bytes"):
        _run(raw, write("p.toml", keep), tmp_path / "out.parquet", key_path, signer)
    _run(raw, write("p2.toml", keep.replace('operator = "keep"', 'operator = "hmac"')),
         tmp_path / "out.parquet", key_path, signer)

    twice = tmp_path / "twice.parquet"
    pq.write_table(pa.table([pa.array(["a"]), pa.array(["b"])], names=["id", "id"]), twice)
    with pytest.raises(AnonymizationError, match="column 2: column name 'id' appears twice"):
        inspect_table(twice)
    with pytest.raises(AnonymizationError, match="column 2: column name 'id' appears twice"):
        _run(twice, write("p3.toml", ID_POLICY.format(op="hmac", extra="")),
             tmp_path / "out2.parquet", key_path, signer)


def test_an_interrupted_report_leaves_no_stale_report_and_says_so(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """An earlier run's report stayed beside the new output when the new one failed."""
    from privtrain.anonymize import report

    src = write("in.csv", "id\na\nb\n")
    policy = write("p.toml", ID_POLICY.format(op="hmac", extra=""))
    out, html = tmp_path / "out.parquet", tmp_path / "r.html"
    argv = ["anonymize", "run", str(src), "--policy", str(policy), "--key", str(key_path),
            "--out", str(out), "--signing-key", str(signer[0]),
            "--signing-cert", str(signer[1]), "--report", str(html)]
    assert main(argv) == 0 and html.exists()

    def interrupted(*_: Any, **__: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "build_report", interrupted)
    assert main(argv) == 130
    assert "were written, the report was not (interrupted)" in capsys.readouterr().err
    assert out.exists() and not html.exists() and not html.with_suffix(".json").exists()


@pytest.mark.parametrize("name", ["out.txt", "out"])
def test_an_output_suffix_that_names_no_format_is_refused(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path],
    name: str,
) -> None:
    """Was written as CSV without a word."""
    src = write("in.csv", "id\na\n")
    policy = write("p.toml", ID_POLICY.format(op="hmac", extra=""))
    with pytest.raises(AnonymizationError, match="its suffix chooses the format"):
        _run(src, policy, tmp_path / name, key_path, signer)
    assert not (tmp_path / name).exists()


def test_a_header_only_file_names_itself(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path]
) -> None:
    src = write("in.csv", "id\n")
    policy = write("p.toml", ID_POLICY.format(op="hmac", extra=""))
    with pytest.raises(AnonymizationError, match=r"in\.csv: the input has no rows"):
        _run(src, policy, tmp_path / "out.parquet", key_path, signer)


def test_a_tiny_cp1252_file_is_read_as_cp1252(tmp_path: Path) -> None:
    """charset-normalizer took three lines with one "é" for cp1006 (Urdu): "cafﻠ"."""
    from privtrain.anonymize.tableio import read_table

    src = tmp_path / "in.csv"
    src.write_bytes(b"a,b\n1,2\n3,caf\xe9\n")
    assert read_table(src)["b"].tolist() == ["2", "café"]


class _FullDisk(io.RawIOBase):
    """A temporary file on a disk that fills up after ``room`` bytes."""

    def __init__(self, room: int) -> None:
        self._data, self._room = io.BytesIO(), room

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._data.seek(pos, whence)

    def tell(self) -> int:
        return self._data.tell()

    def readinto(self, buf: Any) -> int:
        got = self._data.read(len(buf))
        buf[: len(got)] = got
        return len(got)

    def write(self, b: Any) -> int:
        if self._data.tell() + len(b) > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._data.write(b)


def _full_disk(room: int, prefix: str) -> Callable[..., Any]:
    """``tempfile.TemporaryFile`` where the files named ``prefix...`` hit a full disk."""
    real = tempfile.TemporaryFile

    def make(*args: Any, **kwargs: Any) -> Any:
        if str(kwargs.get("prefix", "")).startswith(prefix):
            return io.BufferedRandom(_FullDisk(room))
        return real(*args, **kwargs)

    return make


@pytest.mark.parametrize("room", [0, 3_000, 9_000, 40_000, 200_000, 900_000])
def test_a_full_disk_under_the_released_risk_counts_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, room: int
) -> None:
    """Spilled counts that fill the disk: told as the counts' AnonymizationError wherever
    it shows (a write, or the flush of the last buffered bytes when they are read back),
    and closing the counts afterwards raises nothing (it used to raise the raw OSError of
    the unflushable buffer, over the clear error)."""
    monkeypatch.setattr(tempfile, "TemporaryFile", _full_disk(room, "privtrain-counts-"))
    rng = np.random.default_rng(3)
    counts = HashCounts(in_memory=2_000)
    try:
        with pytest.raises(AnonymizationError, match="released-risk counts .*No space left"):
            for _ in range(12):
                counts.add(rng.integers(0, 2**64 - 1, 5_000, dtype=np.uint64))
            counts.summary()
    finally:
        counts.close()
    counts.close()


@pytest.mark.parametrize("room", [0, 2_000, 60_000])
def test_a_full_disk_under_the_spool_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, room: int
) -> None:
    monkeypatch.setattr(tempfile, "TemporaryFile", _full_disk(room, "privtrain-spool-"))
    table = pa.table({"a": pa.array(range(2_000)), "b": pa.array([f"v{i}" for i in range(2_000)])})
    with Spool() as spool:
        with pytest.raises(AnonymizationError, match="temporary copy .*No space left"):
            for _ in range(4):
                spool.add(table)
            list(spool.chunks())


def test_a_run_whose_spilled_counts_fill_the_disk_fails_clearly_and_leaves_nothing(
    tmp_path: Path, key_path: Path, signer: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The released-risk counts spill (a tiny in-memory budget) onto a full disk: the run
    ends with the counts' own error, writes nothing, and leaves no thread running."""
    monkeypatch.setattr(released_risk, "_IN_MEMORY", 20)
    monkeypatch.setattr(tempfile, "TemporaryFile", _full_disk(3_000, "privtrain-counts-"))
    rng = np.random.default_rng(0)
    src = tmp_path / "in.csv"
    pd.DataFrame(
        {"id": [f"p{i}" for i in range(6_000)], "age": rng.integers(18, 90, 6_000),
         "amount": rng.integers(0, 10**6, 6_000)}  # fmt: skip
    ).to_csv(src, index=False)
    policy = tmp_path / "policy.toml"
    policy.write_text(
        'k = 1\n[risk.accept]\namount = "a test"\nage = "a test"\n'
        '[columns.id]\noperator = "hmac"\nrole = "direct_identifier"\ntype = "text"\n'
        '[columns.age]\noperator = "keep"\nrole = "other"\ntype = "numeric"\n'
        'lower = 0\nupper = 120\n'
        '[columns.amount]\noperator = "keep"\nrole = "other"\ntype = "numeric"\n'
        'lower = 0\nupper = 1000000\n',
        encoding="utf-8",
    )
    before = threading.active_count()
    out = tmp_path / "out.parquet"
    with pytest.raises(AnonymizationError, match="released-risk counts .*No space left"):
        _run(src, policy, out, key_path, signer)
    assert not out.exists() and not Path(f"{out}.manifest.json").exists()
    assert _leftovers(tmp_path) == []
    assert threading.active_count() == before


def test_a_failed_run_stops_hashing_its_input(tmp_path: Path) -> None:
    """The input's SHA-256 runs on a thread once pass 1 has read the file; when the run
    then fails (a refusal, Ctrl-C) it stops at the next block instead of reading the
    rest of a large input behind the error."""
    from privtrain.anonymize.pipeline import _InputDigest

    big = tmp_path / "big.csv"
    with open(big, "wb") as fh:
        fh.truncate(1 << 30)  # sparse: 1 GiB to hash, nothing on disk
    digest = _InputDigest(big)
    with pytest.raises(RuntimeError), digest.cancelled_on_error():
        digest.start()
        raise RuntimeError("the run failed after pass 1")
    assert digest._future is not None
    with pytest.raises(InterruptedError):
        digest._future.result(timeout=60)
