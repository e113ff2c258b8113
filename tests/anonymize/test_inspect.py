"""``anonymize inspect``: column classification and a policy that is safe to run unchanged."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import pytest

from privtrain.anonymize.cli import add_anonymize_commands
from privtrain.anonymize.detect import measure
from privtrain.anonymize.inspect_table import inspect_table
from privtrain.anonymize.keys import generate_key
from privtrain.anonymize.policy import load_policy
from privtrain.datasets import fetch_compas


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_anonymize_commands(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_compas_proposal_run_unchanged_removes_identifiers_and_reaches_k5(
    tmp_path: Path, signer: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    raw = fetch_compas()
    policy = tmp_path / "compas.policy.toml"
    assert _cli(["anonymize", "inspect", str(raw), "--out", str(policy)]) == 0
    assert "direct_identifier" in capsys.readouterr().out
    proposal = load_policy(policy)
    roles = {n: c.role for n, c in proposal.columns.items()}
    for name in ("id", "name", "first", "last", "dob", "c_case_number", "r_case_number"):
        assert roles[name] == "direct_identifier", name
        assert proposal.columns[name].operator in {"drop", "hmac", "pseudonym"}
    assert {"sex", "race", "age"} <= set(proposal.quasi_identifiers)

    key = tmp_path / "owner.hmac.key"
    generate_key(key)
    out = tmp_path / "compas.anon.parquet"
    run = ["anonymize", "run", str(raw), "--policy", str(policy), "--key", str(key)]
    run += ["--out", str(out), "--signing-key", str(signer[0]), "--signing-cert", str(signer[1])]
    assert _cli(run) == 0
    manifest = str(out) + ".manifest.json"
    assert _cli(["anonymize", "verify", str(out), "--manifest", manifest, "--raw", str(raw)]) == 0
    table = pd.read_parquet(out)
    assert table.groupby(proposal.quasi_identifiers, dropna=False).size().min() >= 5
    assert "dob" not in table.columns
    # A 0/1 outcome is proposed as a two-value category, so a trainer can predict it.
    recid = proposal.columns["two_year_recid"]
    assert (recid.type, recid.operator) == ("categorical", "keep")
    assert json.loads(Path(manifest).read_text())["manifest"]["columns"]["two_year_recid"] == {
        "type": "categorical", "values": ["0", "1"]}


def test_value_patterns_decide_the_kind(tmp_path: Path) -> None:
    """Values alone classify e-mails, phones, IPs, URLs and dates; a ZIP keeps its zero."""
    path = tmp_path / "t.csv"
    path.write_text(
        "contact,tel,host,site,when,zip\n"
        "a.b@example.org,+1 617 555 0100,10.0.0.1,https://example.org/a,2021-03-04,02134\n"
        "c.d@example.test,+44 20 7946 0958,192.168.1.20,http://example.test,2020-12-31,10001\n",
        encoding="utf-8",
    )
    kinds = {p.name: (p.kind, p.role) for p in inspect_table(path)}
    assert kinds["contact"] == ("email", "direct_identifier")
    assert kinds["tel"] == ("phone", "direct_identifier")
    assert kinds["host"] == ("ipv4", "direct_identifier")
    assert kinds["site"] == ("url", "direct_identifier")
    assert kinds["when"][0] == "date"
    assert kinds["zip"] == ("zip", "quasi_identifier")
    assert measure(pd.Series(["02134", "02134", None])).distinct == 1
