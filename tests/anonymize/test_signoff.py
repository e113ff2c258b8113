"""The report a privacy officer signs, the policy without quasi-identifiers, the owner's split.

The HTML is checked by parsing it (tables by id, cells as text), not by snapshots.
"""

from __future__ import annotations

import hashlib
import json
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from privtrain.anonymize.errors import PolicyError
from privtrain.anonymize.keys import generate_key
from privtrain.anonymize.pipeline import anonymize_file, verify_output
from privtrain.anonymize.policy import load_policy
from privtrain.anonymize.report import build_report, write_report
from privtrain.datasets import fetch_compas
from privtrain.platform.cli import main

from .conftest import make_signer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
VERDICTS = {"pass", "fail", "review", "not applicable", "information"}


class _Page(HTMLParser):
    """Tables by id (rows of cell texts, header row first), headings, and every tag seen."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.headings: list[str] = []
        self.tags: dict[str, int] = {}
        self.attrs: list[tuple[str, dict[str, str | None]]] = []
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._heading: list[str] | None = None
        self.verdict = ""
        self._in_verdict = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self.attrs.append((tag, a))
        if tag == "table":
            self._table = a.get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr":
            self._row = []
        elif tag in {"td", "th"}:
            self._cell = []
        elif tag in {"h1", "h2", "h3"}:
            self._heading = []
        elif tag == "p" and a.get("id") == "verdict":
            self._in_verdict = True

    def handle_endtag(self, tag: str) -> None:
        if tag in {"td", "th"} and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag in {"h1", "h2", "h3"} and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None
        elif tag == "p":
            self._in_verdict = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._heading is not None:
            self._heading.append(data)
        if self._in_verdict:
            self.verdict += data

    def rows(self, table: str) -> dict[str, list[str]]:
        """A table's body rows by their first cell."""
        return {r[0]: r[1:] for r in self.tables[table][1:]}


def _page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def compas_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """COMPAS with the example policy (k = 5, l = 2, t = 0.3), run with --report."""
    folder = tmp_path_factory.mktemp("signoff")
    signer = make_signer(folder, name="Alice Owner")
    key = folder / "owner.hmac.key"
    key_id = generate_key(key).key_id
    out, html = folder / "compas.parquet", folder / "compas-report.html"
    policy = EXAMPLES / "compas" / "policy.toml"
    argv = ["anonymize", "run", str(fetch_compas()), "--policy", str(policy), "--key", str(key),
            "--out", str(out), "--signing-key", str(signer[0]), "--signing-cert", str(signer[1]),
            "--report", str(html)]  # fmt: skip
    assert main(argv) == 0
    envelope = json.loads((folder / "compas.parquet.manifest.json").read_text())
    return {
        "folder": folder, "out": out, "html": html, "policy": policy, "key_id": key_id,
        "envelope": envelope, "report": json.loads(html.with_suffix(".json").read_text()),
    }  # fmt: skip


def test_report_json_carries_what_is_signed(compas_report: dict[str, object]) -> None:
    report, envelope = compas_report["report"], compas_report["envelope"]
    assert isinstance(report, dict) and isinstance(envelope, dict)
    manifest = envelope["manifest"]
    folder, out, policy = compas_report["folder"], compas_report["out"], compas_report["policy"]
    assert isinstance(folder, Path) and isinstance(out, Path) and isinstance(policy, Path)
    release = report["release"]
    assert release["input"]["sha256"] == _sha256(fetch_compas())
    assert release["output"]["sha256"] == _sha256(out) == manifest["output_sha256"]
    assert release["policy"]["sha256"] == _sha256(policy) == manifest["policy_sha256"]
    assert release["manifest"]["sha256"] == _sha256(folder / "compas.parquet.manifest.json")
    assert release["key_id"] == manifest["key_id"] == compas_report["key_id"]
    assert release["signer"]["common_name"] == "Alice Owner"
    assert release["signed_at"] == manifest["created_at"]
    assert release["report_created_at"] >= release["signed_at"]
    assert release["split"] == manifest["split"]

    # Per column: every input column and the added split column, in plain words.
    entries = {c["name"]: c for c in report["columns"]}
    assert set(entries) == set(load_policy(policy).columns) | {"split"}
    for entry in entries.values():
        for field in ("role", "role_text", "treatment", "treatment_text", "parameters",
                      "published", "attacker_learns"):  # fmt: skip
            assert field in entry, (entry["name"], field)
    assert entries["dob"]["attacker_learns"].startswith("Nothing")
    assert "key id " + manifest["key_id"] in entries["name"]["attacker_learns"]
    age = entries["age"]
    assert age["level"] == manifest["generalization_levels"]["age"]
    assert age["level_text"].startswith(f"level {age['level']} of {age['height']}: ")
    assert entries["two_year_recid"]["published"] == "one of: 0, 1"

    # k, l and t: required and achieved, as the manifest claims them.
    models, claimed = report["privacy_models"], manifest["privacy_models"]
    assert models["k"] == {"applicable": True, "required": 5,
                           "achieved": manifest["k_achieved"], "verdict": "pass"}  # fmt: skip
    assert models["l"]["required"] == 2 and models["l"]["achieved"] == claimed["l_distinct"]
    assert models["t"]["required"] == 0.3
    assert models["t"]["achieved"] == pytest.approx(claimed["t"])
    assert models["l"]["sensitive_attributes"] == ["two_year_recid"]

    # Every measure in plain words, with its threshold and a verdict.
    measures = {m["id"]: m for m in report["measures"]}
    assert {"k", "l", "t", "suppressed", "prosecutor_max", "files_match"} <= set(measures)
    for m in report["measures"]:
        assert m["name"] and m["meaning"] and m["threshold_text"] and m["verdict"] in VERDICTS
    assert measures["suppressed"]["value"] == manifest["rows_suppressed"] / manifest["input_rows"]
    assert measures["suppressed"]["threshold"] == 0.05
    assert measures["prosecutor_max"]["threshold"] == pytest.approx(1 / 5)
    assert report["verdict"] == "pass"


def test_report_html_names_them_in_plain_words(compas_report: dict[str, object]) -> None:
    report, html = compas_report["report"], compas_report["html"]
    assert isinstance(report, dict) and isinstance(html, Path)
    page = _page(html)
    release = report["release"]

    assert page.verdict.startswith("Verdict: pass")
    files = page.rows("release-files")
    assert files["Input (raw, stays with the owner)"][1] == release["input"]["sha256"]
    assert files["Output (released)"][1] == release["output"]["sha256"]
    assert files["Output (released)"][3] == "pass"  # matches the signed manifest
    assert files["Policy"][1] == release["policy"]["sha256"]
    assert files["Signed manifest"][1] == release["manifest"]["sha256"]
    facts = page.rows("release")
    assert facts["HMAC key id (the secret key stays with the owner)"] == [release["key_id"]]
    assert facts["Manifest signed by"][0].startswith("Alice Owner")
    assert facts["Manifest signed at (UTC)"] == [release["signed_at"]]
    assert "seeded random hold-out of 0.2" in facts["Train/test split"][0]
    assert set(page.rows("signoff")) == {"Privacy officer (name, role)", "Signature", "Date"}

    guarantees = page.rows("guarantees")
    k_row = guarantees["k-anonymity (smallest group of look-alikes)"]
    assert k_row == ["at least 5", str(report["privacy_models"]["k"]["achieved"]), "pass"]
    l_row = next(v for n, v in guarantees.items() if n.startswith("l-diversity"))
    assert l_row[0] == "at least 2" and l_row[2] == "pass"
    t_row = next(v for n, v in guarantees.items() if n.startswith("t-closeness"))
    assert t_row[0] == "at most 0.3" and float(t_row[1]) <= 0.3 and t_row[2] == "pass"

    header, *rows = page.tables["measures"]
    assert header == ["measure", "what it means", "value", "threshold", "verdict"]
    assert len(rows) == len(report["measures"])
    for row, measure in zip(rows, report["measures"], strict=True):
        assert row[0] == measure["name"] and row[3] == measure["threshold_text"]
        assert row[4] == measure["verdict"]
    names = [r[0] for r in rows]
    assert "Smallest group of look-alike records (k-anonymity)" in names
    assert "Records removed to reach the targets (suppressed)" in names
    # No jargon without words: AECS and entropy come with an explanation.
    assert any(n.startswith("average number of records per group") for n in names)
    assert any(n.startswith("information lost") for n in names)

    header, *rows = page.tables["columns"]
    assert header[:3] == ["column", "role", "treatment"] and "what an attacker can learn" in header
    by_name = {r[0]: dict(zip(header, r, strict=True)) for r in rows}
    assert by_name["dob"]["treatment"] == "not released"
    assert by_name["age"]["released at"].startswith("level ")
    assert by_name["name"]["role"].startswith("direct identifier")
    assert "How to read this report" in page.headings
    # Self-contained: figures inline, no script, nothing fetched.
    assert page.tags.get("svg", 0) >= 2 and "script" not in page.tags
    for _, attrs in page.attrs:
        for name in ("src", "href"):
            assert not (attrs.get(name) or "").startswith(("http:", "https:", "//"))


def test_other_checks_figures_show_in_plain_words(tmp_path: Path) -> None:
    """Keys another check adds to the report (kept-column uniqueness, proxies, wider risk)
    get a measure, a table and a chart, or at least a table in words."""
    raw = pd.DataFrame({"sex": ["F", "M"] * 6, "income": [str(i % 4) for i in range(12)]})
    report = build_report(raw, raw, ["sex"], k_target=2)
    report["kept_column_uniqueness"] = {"income": 0.0, "capital_gain": 0.125}
    report["proxy_findings"] = [{"column": "education_num", "stands_for": "education"}]
    report["risk"]["after"]["journalist_max_census"] = 0.01
    html, js = write_report(report, tmp_path / "r.html")
    written = json.loads(js.read_text())
    measure = next(m for m in written["measures"] if m["id"] == "kept_column_uniqueness")
    # Over the default 5 % per column and not accepted by the policy: run would have refused.
    assert measure["value"] == 0.125 and measure["threshold"] == 0.05
    assert measure["verdict"] == "fail" and written["verdict"] == "fail"
    page = _page(html)
    assert page.rows("kept-column-uniqueness") == {"income": ["0"], "capital_gain": ["0.125"]}
    assert page.tags["svg"] == 3
    assert "Kept columns that stand in for a quasi-identifier (proxies)" in page.headings
    assert page.tables["proxy-findings"][0] == ["column", "stands for"]
    assert page.rows("risk")["journalist max census"][1] == "0.01"

    # Accepted with a reason in the policy: the officer is asked to review it.
    report["released_risk"] = {"uniqueness_threshold": 0.05,
                                "accepted_columns": {"capital_gain": "in no public record"}}
    _, js = write_report(report, tmp_path / "accepted.html")
    written = json.loads(js.read_text())
    measure = next(m for m in written["measures"] if m["id"] == "kept_column_uniqueness")
    assert measure["verdict"] == "review" and "capital_gain" in measure["meaning"]


POLICY_NO_QI = """
k = 5
[columns.id]
operator = "hmac"
role = "direct_identifier"
type = "text"
[columns.age]
operator = "keep"
role = "other"
type = "numeric"
lower = 0
upper = 120
"""


def test_a_policy_without_quasi_identifiers_signs_no_k(
    tmp_path: Path, signer: tuple[Path, Path], key_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three rows and no QI: the manifest signed k = 3 (the row count), and k = 5 was
    refused as unreachable though nothing was to be generalized."""
    raw = tmp_path / "t.csv"
    raw.write_text("id,age\n1,28\n2,51\n3,33\n", encoding="utf-8")
    policy = tmp_path / "p.toml"
    policy.write_text(POLICY_NO_QI, encoding="utf-8")
    out, html = tmp_path / "o.parquet", tmp_path / "r.html"
    argv = ["anonymize", "run", str(raw), "--policy", str(policy), "--key", str(key_path),
            "--out", str(out), "--signing-key", str(signer[0]), "--signing-cert", str(signer[1]),
            "--report", str(html)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "k not applicable: the policy declares no quasi-identifiers" in printed
    manifest = json.loads(Path(str(out) + ".manifest.json").read_text())["manifest"]
    assert manifest["k_achieved"] == 0 and manifest["output_rows"] == 3
    assert "no quasi-identifiers" in manifest["k_not_applicable"]
    assert verify_output(out, Path(str(out) + ".manifest.json")) == []

    report = json.loads(html.with_suffix(".json").read_text())
    assert report["privacy_models"]["k"]["applicable"] is False
    assert report["privacy_models"]["k"]["achieved"] is None and report["after"]["k"] is None
    assert report["verdict"] == "review"  # nothing generalized: the officer must look
    page = _page(html)
    k_row = page.rows("guarantees")["k-anonymity (smallest group of look-alikes)"]
    assert k_row[0].startswith("not applicable") and k_row[1:] == ["not claimed", "not applicable"]
    assert page.rows("records")["smallest group (k)"] == ["not applicable", "not applicable"]


def test_seeded_hold_out_split_is_recorded_and_independent_of_chunks(
    tmp_path: Path, signer: tuple[Path, Path], key_path: Path
) -> None:
    """COMPAS has no split column: the policy's hold-out adds one, the same for any chunk
    size and decided row by row, and the platform reads the manifest's split as the
    owner's (one code path)."""
    from privtrain.platform.splits import declared_split, table_split

    policy = EXAMPLES / "compas" / "policy.toml"
    splits = []
    for chunk_rows in (None, 1000):
        out = tmp_path / f"c{chunk_rows}.parquet"
        run = anonymize_file(fetch_compas(), policy, key_path, out, signing_key_path=signer[0],
                             signing_cert_path=signer[1], chunk_rows=chunk_rows)  # fmt: skip
        manifest = json.loads(run.manifest_path.read_text())["manifest"]
        splits.append(pd.read_parquet(out)["split"])
        assert verify_output(out, run.manifest_path) == []
    assert splits[0].equals(splits[1])
    assert manifest["split"] == {"method": "random_holdout", "column": "split", "train": "train",
                                 "test": "test", "test_share": 0.2, "seed": 20160523}  # fmt: skip
    assert manifest["columns"]["split"] == {"type": "categorical", "values": ["train", "test"]}
    share = float((splits[0] == "test").mean())
    assert 0.17 < share < 0.23
    stored = declared_split(manifest, "", "", "")
    assert table_split(stored).column == "split" and stored["method"] == "random_holdout"
    # Each row's side is its own: without the first person, nobody else changes side (the
    # platform's noisy counts assume exactly that).
    raw = pd.read_csv(fetch_compas(), dtype="string", keep_default_na=False, na_values=[""])
    fewer = tmp_path / "fewer.csv"
    raw.iloc[1:].to_csv(fewer, index=False)
    out = tmp_path / "fewer.parquet"
    anonymize_file(fewer, policy, key_path, out, signing_key_path=signer[0],
                   signing_cert_path=signer[1])  # fmt: skip
    side = pd.read_parquet(tmp_path / "cNone.parquet").set_index("id")["split"]
    other = pd.read_parquet(out).set_index("id")["split"]
    common = side.index.intersection(other.index)
    assert len(common) > 6000 and (side[common] == other[common]).all()


@pytest.mark.parametrize(
    ("split", "problem"),
    [
        ('column = "nope"', "split.column: 'nope' is not a declared column"),
        ('column = "age"', 'split.column: \'age\' must be released as is'),
        ('test_share = 0.2\nseed = 1\ncolumn = "id"', "split.column: 'id' is an input column"),
        ("seed = 1", "split.seed: a seed needs test_share"),
        ("test_share = 1.5\nseed = 1", "split.test_share: must be a number in (0, 1)"),
        ("test_share = 0.2", "split.seed: a random hold-out needs seed"),
        ('column = "part"\ntest = "train"', "split.test: train and test must differ"),
        ('column = "part"\ntest = "holdout"', "split.column: ['holdout'] not in columns.part"),
    ],
)
def test_bad_split_declarations_name_the_key(tmp_path: Path, split: str, problem: str) -> None:
    text = POLICY_NO_QI.replace('operator = "keep"\nrole = "other"\ntype = "numeric"',
                                'operator = "generalize"\nrole = "quasi_identifier"\n'
                                'type = "numeric"\nintervals = [10]')  # fmt: skip
    text += '[columns.part]\noperator = "keep"\nrole = "other"\ntype = "categorical"\n'
    text += 'domain = ["train", "test"]\n'
    path = tmp_path / "p.toml"
    path.write_text(text.replace("k = 5\n", f"k = 5\n[split]\n{split}\n"), encoding="utf-8")
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert problem in str(err.value)
    path.write_text(text.replace("k = 5\n", 'k = 5\n[split]\ncolumn = "part"\n'), encoding="utf-8")
    loaded = load_policy(path).split
    assert loaded is not None and loaded.manifest_entry() == {
        "method": "column", "column": "part", "train": "train", "test": "test"}
