"""Risk and utility report: definitions on small tables, agreement with the manifest on Adult."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from privtrain.anonymize.errors import AnonymizationError
from privtrain.anonymize.keys import generate_key
from privtrain.anonymize.report import build_report, check_report_path, write_report
from privtrain.datasets import fetch_adult
from privtrain.platform.cli import main

POLICY = Path(__file__).resolve().parents[2] / "examples" / "adult" / "policy.toml"
_VOID = {"meta", "br", "hr", "img", "input", "link"}


class _WellFormed(HTMLParser):
    """Fails on an end tag that does not close the innermost open element."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.counts: dict[str, int] = {}
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.counts[tag] = self.counts.get(tag, 0) + 1
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.counts[tag] = self.counts.get(tag, 0) + 1

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def test_risk_definitions_on_a_small_table() -> None:
    """El Emam & Dankar 2008 on classes of sizes 1, 2, 3; C-A04: a missing QI is its own class."""
    raw = pd.DataFrame({"zip": ["02134", "02134", None, "02139", "02139", "02139"]})
    report = build_report(raw, raw, ["zip"], k_target=2)
    after = report["risk"]["after"]
    assert report["after"]["k"] == 1 and report["after"]["classes"] == 3
    assert after["prosecutor_max"] == 1.0
    assert after["prosecutor_avg"] == pytest.approx(3 / 6)
    assert after["marketer"] == pytest.approx(3 / 6)
    assert report["after"]["unique_records"] == 1
    assert report["information_loss"]["discernibility"] == 1 + 4 + 9
    assert report["information_loss"]["aecs"] == 2.0
    dist = {d["sizes"]: (d["classes"], d["records"]) for d in report["after"]["distribution"]}
    assert dist["1"] == (1, 1) and dist["2"] == (1, 2) and dist["3-4"] == (1, 3)


def test_report_path_clashes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(AnonymizationError, match="would overwrite"):
        check_report_path(tmp_path / "adult.html", [tmp_path / "adult.json"])
    with pytest.raises(AnonymizationError, match=r"ending in \.html"):
        check_report_path(tmp_path / "adult.txt", [])


def test_adult_report_agrees_with_the_manifest(
    tmp_path: Path, signer: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "hmac.key"
    generate_key(key)
    out, html = tmp_path / "adult.parquet", tmp_path / "report.html"
    code = main(
        [
            "anonymize", "run", str(fetch_adult()), "--policy", str(POLICY), "--key", str(key),
            "--out", str(out), "--signing-key", str(signer[0]), "--signing-cert", str(signer[1]),
            "--report", str(html),
        ]
    )  # fmt: skip
    assert code == 0
    assert f"wrote {html}" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "adult.parquet.manifest.json").read_text())["manifest"]
    report = json.loads(html.with_suffix(".json").read_text())

    assert report["after"]["k"] == manifest["k_achieved"] >= 10
    assert report["rows"]["suppressed"] == manifest["rows_suppressed"] <= 0.05 * 48_842
    assert report["rows"]["output"] == manifest["output_rows"]
    dist = report["after"]["distribution"]
    assert sum(d["records"] for d in dist) == manifest["output_rows"]
    assert all(d["classes"] == 0 for d in dist if d["sizes"] in {"1", "2", "3-4", "5-9"})
    loss = report["information_loss"]
    assert loss["discernibility"] == manifest["information_loss"]["discernibility"]
    assert loss["aecs"] == pytest.approx(manifest["information_loss"]["aecs"])
    assert loss["precision"] == pytest.approx(1 - manifest["information_loss"]["precision_loss"])
    assert 0 < loss["non_uniform_entropy_share"] < 1 and "note" not in loss
    # Raw Adult is full of unique records; the release has none and risk at most 1/k.
    assert report["before"]["share_unique"] > 0.01 and report["after"]["share_unique"] == 0
    risk = report["risk"]["after"]
    assert risk["prosecutor_max"] == pytest.approx(1 / manifest["k_achieved"])
    assert risk["journalist_max"] <= risk["prosecutor_max"] and risk["records_at_risk"] == 0

    parser = _WellFormed()
    parser.feed(html.read_text(encoding="utf-8"))
    parser.close()
    assert parser.problems == [] and parser.stack == []
    # Class sizes and risk; a third chart when kept-column uniqueness is reported.
    assert parser.counts.get("svg", 0) >= 2 and parser.counts.get("rect", 0) > 20
    assert "Records by equivalence class size" in html.read_text(encoding="utf-8")


def test_write_report_writes_html_and_json(tmp_path: Path) -> None:
    raw = pd.DataFrame({"sex": ["Male", "Female", "Male", "<b>&"]})
    html, js = write_report(build_report(raw, raw, ["sex"]), tmp_path / "r.html")
    assert js == tmp_path / "r.json" and json.loads(js.read_text())["rows"]["input"] == 4
    parser = _WellFormed()
    parser.feed(html.read_text(encoding="utf-8"))
    assert parser.problems == [] and "<b>&" not in html.read_text(encoding="utf-8")
