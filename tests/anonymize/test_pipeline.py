"""anonymize_file / verify_output / the CLI on real files, real keys, real Faker."""

from __future__ import annotations

import argparse
import hashlib
import json
import stat
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from privtrain.anonymize.cli import add_anonymize_commands
from privtrain.anonymize.errors import AnonymizationError, KeyFileExists
from privtrain.anonymize.manifest import verify_manifest
from privtrain.anonymize.pipeline import anonymize_file, verify_output
from privtrain.anonymize.risk import k_anonymity

POLICY = """
    k = 2
    max_suppression = 0.5
    [columns.name]
    operator = "pseudonym"
    role = "direct_identifier"
    type = "text"
    faker = "name"
    [columns.email]
    operator = "hmac"
    role = "direct_identifier"
    type = "text"
    [columns.contact]
    operator = "pseudonym"
    role = "direct_identifier"
    type = "text"
    faker = "email"
    [columns.zip]
    operator = "generalize"
    role = "quasi_identifier"
    type = "categorical"
    hierarchy = { "02134" = ["0213*", "*"], "02139" = ["0213*", "*"], "10001" = ["1000*", "*"] }
    [columns.plan]
    operator = "keep"
    role = "sensitive"
    type = "categorical"
    domain = ["basic", "pro"]
    [risk.accept]
    plan = "a handful of synthetic rows: a plan is unique beside its ZIP class"
"""

CSV_1 = """\
name,email,contact,zip,plan
Alice Smith,alice@example.org,alice@example.org,02134,basic
Bob Jones,bob@example.org,bob@example.org,02139,pro
Carol White,carol@example.org,carol@example.org,02134,pro
Dan Brown,dan@example.org,dan@example.org,10001,basic
"""

CSV_2 = """\
name,email,contact,zip,plan
Erin Gray,erin@example.org,erin@example.org,02139,pro
Alice Smith,ALICE@example.org,alice@example.org,02134,basic
Frank Hill,frank@example.org,frank@example.org,02134,pro
"""


def _run(src: Path, policy: Path, key: Path, signer: tuple[Path, Path], out: Path) -> pd.DataFrame:
    anonymize_file(src, policy, key, out, signing_key_path=signer[0], signing_cert_path=signer[1])
    return pd.read_parquet(out)


def test_same_value_same_token_across_files_and_runs(
    tmp_path: Path,
    write: Callable[[str, str], Path],
    key_path: Path,
    other_key: tuple[Path, object],
    signer: tuple[Path, Path],
) -> None:
    """C-A01: alice@example.org in two files, separate runs, same key -> identical outputs."""
    policy = write("policy.toml", POLICY)
    one = _run(write("a.csv", CSV_1), policy, key_path, signer, tmp_path / "a.parquet")
    two = _run(write("b.csv", CSV_2), policy, key_path, signer, tmp_path / "b.parquet")

    # Alice is the only "basic" customer in 02134 in both files.
    def alice(t: pd.DataFrame) -> pd.Series:
        rows = t[t["plan"].eq("basic") & t["zip"].isin(["02134", "0213*"])]
        assert len(rows) == 1
        return rows.iloc[0]

    alice_1, alice_2 = alice(one), alice(two)
    for col in ("name", "email", "contact"):
        assert alice_1[col] == alice_2[col], col
    assert alice_1["name"] != "Alice Smith" and alice_1["contact"].isascii()
    three = _run(write("c.csv", CSV_2), policy, other_key[0], signer, tmp_path / "c.parquet")
    alice_3 = alice(three)
    for col in ("name", "email", "contact"):
        assert alice_3[col] != alice_2[col], col


def test_blank_cells_stay_blank_and_count_in_k(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path]
) -> None:
    """C-A04: blanks in name, email and QI columns stay blank; a lone blank zip is its own class."""
    src = write(
        "n.csv",
        "name,email,contact,zip,plan\n"
        ",,,02134,basic\n"
        ",,,02134,pro\n"
        "NA,null,,02139,pro\n"
        "Gil Lee,gil@example.org,gil@example.org,,basic\n"
        "Hal Poe,hal@example.org,hal@example.org,,pro\n"
        "Ivy Roe,ivy@example.org,ivy@example.org,10001,basic\n",
    )
    policy = write("policy.toml", POLICY.replace("max_suppression = 0.5", "max_suppression = 0.2"))
    out = _run(src, policy, key_path, signer, tmp_path / "n.parquet")
    # zip: 0213* x3 and blank x2 reach k = 2 at level 1; the lone 1000* is suppressed.
    assert len(out) == 5
    assert out["zip"].isna().sum() == 2
    assert out["name"].isna().sum() == 2 and out["email"].isna().sum() == 2
    assert out["contact"].isna().sum() == 3
    # "NA" and "null" are values (a person may be called NA), so they are transformed.
    assert out["name"].notna().sum() == 3 and out["email"].notna().sum() == 3
    assert "NA" not in set(out["name"].dropna()) and "null" not in set(out["email"].dropna())
    assert k_anonymity(out, ["zip"]) == 2


def test_nothing_written_when_k_is_unreachable(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path]
) -> None:
    policy = write("policy.toml", POLICY.replace("k = 2", "k = 50"))
    out = tmp_path / "x.parquet"
    with pytest.raises(AnonymizationError, match="no generalization reaches k = 50"):
        anonymize_file(
            write("a.csv", CSV_1),
            policy,
            key_path,
            out,
            signing_key_path=signer[0],
            signing_cert_path=signer[1],
        )
    assert sorted(p.name for p in tmp_path.iterdir() if "x.parquet" in p.name) == []


def test_verify_output_catches_tampering(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path]
) -> None:
    raw = write("a.csv", CSV_1)
    out = tmp_path / "a.parquet"
    _run(raw, write("policy.toml", POLICY), key_path, signer, out)
    manifest = tmp_path / "a.parquet.manifest.json"
    assert verify_output(out, manifest, raw) == []
    m = verify_manifest(manifest.read_bytes(), out.read_bytes()).manifest
    assert m["k_achieved"] >= 2 and m["input_rows"] == 4
    assert m["columns"]["name"] == {"type": "identifier"}
    # An output that carries a raw e-mail (re-signed by the owner by mistake is still a leak).
    table = pd.read_parquet(out)
    table.loc[0, "plan"] = "bob@example.org"
    table.to_parquet(out, index=False)
    problems = verify_output(out, manifest, raw)
    now = hashlib.sha256(out.read_bytes()).hexdigest()
    assert (
        f"{out}: output_sha256 mismatch: manifest says {m['output_sha256']}, data is {now}"
        in problems
    )
    assert any("equal a raw value of direct identifier 'email'" in p for p in problems)
    assert any("column 'plan'" in p and "outside the manifest's domain" in p for p in problems)


def _cli() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="privtrain")
    add_anonymize_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_keygen_run_verify(
    tmp_path: Path,
    write: Callable[[str, str], Path],
    signer: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = _cli()
    key = tmp_path / "cli.key"
    args = parser.parse_args(["anonymize", "keygen", "--out", str(key)])
    assert args.func(args) == 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    with pytest.raises(KeyFileExists):
        args.func(args)
    raw, out = write("a.csv", CSV_1), tmp_path / "o.parquet"
    args = parser.parse_args(
        ["anonymize", "run", str(raw), "--policy", str(write("p.toml", POLICY)), "--key", str(key),
         "--out", str(out), "--signing-key", str(signer[0]), "--signing-cert", str(signer[1])]
    )  # fmt: skip
    assert args.func(args) == 0
    manifest = tmp_path / "o.parquet.manifest.json"
    assert json.loads(manifest.read_text())["manifest"]["output_rows"] == len(pd.read_parquet(out))
    args = parser.parse_args(
        ["anonymize", "verify", str(out), "--manifest", str(manifest), "--raw", str(raw)]
    )
    assert args.func(args) == 0
    out.write_bytes(out.read_bytes()[:-1] + b"X")
    with pytest.raises(AnonymizationError, match="verification failed"):
        args.func(args)
