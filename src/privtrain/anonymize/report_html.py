"""The report page: one self-contained HTML file, figures as inline SVG (no plotting library).

Laid out for the person who signs the release off: the verdict, the files and their
SHA-256, key id, signer and date, a form to sign; k, l and t required and achieved;
every measure in plain words with its threshold and verdict; per column its role,
treatment, parameters, what the manifest publishes and what an attacker can learn;
then the figures behind them and a glossary. Tables are driven by the report's
entries (:mod:`privtrain.anonymize.report_text`), and report keys this page does not
know are shown too, in words (``kept_column_uniqueness`` gets a table and a chart), so
checks added later appear without changing the page. No script, no external resource.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from privtrain.anonymize.report_text import PLAIN_WORDS, plain, share_of

_CSS = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}
td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}
figure{margin:1rem 0}
figcaption{font-size:.9rem;color:#555}
td.text,th.text{text-align:left;max-width:28rem}
.pass{color:#116329;font-weight:600}.fail{color:#b42318;font-weight:700}
.review{color:#9a6700;font-weight:600}
#verdict{font-size:1.2rem;padding:.6rem;border:2px solid #ccc}
#verdict.pass{border-color:#116329}#verdict.fail{border-color:#b42318}
#verdict.review{border-color:#9a6700}
.signoff td{height:2.2rem;min-width:18rem}
code{font-size:.85rem;word-break:break-all}
dt{font-weight:600;margin-top:.5rem}
"""
_COLORS = ("#9aa5b1", "#1f6feb")
RISK_TEXT = "0.2 (classes smaller than 5)"


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e6 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


class Cell:
    """A table cell with a CSS class (``text`` for left-aligned prose, a verdict...)."""

    def __init__(self, value: Any, css: str = "text", code: bool = False) -> None:
        self.value, self.css, self.code = value, css, code

    def html(self) -> str:
        text = escape(_fmt(self.value))
        inner = f"<code>{text}</code>" if self.code else text
        return f'<td class="{escape(self.css)}">{inner}</td>'


def _cell(c: Any) -> str:
    return c.html() if isinstance(c, Cell) else f"<td>{escape(_fmt(c))}</td>"


def _table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], table_id: str | None = None,
    css: str | None = None,
) -> str:  # fmt: skip
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    attrs = (f' id="{escape(table_id)}"' if table_id else "") + (
        f' class="{escape(css)}"' if css else ""
    )
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def bar_chart(
    title: str,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    y_label: str,
    width: int = 640,
    height: int = 300,
) -> str:
    """Grouped bar chart as an ``<svg>`` element (one group per label, one bar per series)."""
    left, right, top, bottom = 60, 10, 30, 50
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((v for vals in series.values() for v in vals), default=0.0) or 1.0
    group = plot_w / max(len(labels), 1)
    bar = group * 0.8 / max(len(series), 1)
    parts = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
        ),
        f"<title>{escape(title)}</title>",
        (
            f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
            'stroke="#333"/>'
        ),
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>',
    ]
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        parts.append(
            f'<text x="{left - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">'
            f"{escape(_fmt(peak * frac))}</text>"
        )
    for s, (name, values) in enumerate(series.items()):
        color = _COLORS[s % len(_COLORS)]
        for i, v in enumerate(values):
            h = plot_h * (v / peak)
            x = left + i * group + group * 0.1 + s * bar
            parts.append(
                f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}" fill="{color}"><title>{escape(name)} '
                f"{escape(labels[i])}: {escape(_fmt(v))}</title></rect>"
            )
        parts.append(
            f'<rect x="{left + 10 + s * 140}" y="8" width="12" height="12" fill="{color}"/>'
            f'<text x="{left + 26 + s * 140}" y="18" font-size="11">{escape(name)}</text>'
        )
    for i, label in enumerate(labels):
        x = left + (i + 0.5) * group
        parts.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 14}" font-size="10" '
            f'text-anchor="middle">{escape(label)}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 8}" font-size="11" '
        f'text-anchor="middle">{escape(y_label)}</text></svg>'
    )
    return "".join(parts)


# Report keys this page lays out itself; any other key is shown by _other().
_KNOWN = frozenset({
    "format", "version", "quasi_identifiers", "levels", "k_target", "rows", "before", "after",
    "risk", "information_loss", "max_suppression", "privacy_models", "columns", "measures",
    "verdict", "release", "kept_column_uniqueness",
})  # fmt: skip
_VERDICT_TEXT = {
    "pass": "every privacy claim of the policy holds",
    "review": "the policy's claims hold; some figures need the reviewer's judgement",
    "fail": "a privacy claim of the policy does not hold: do not release",
}
_MODEL_NAMES = {
    "k": "k-anonymity (smallest group of look-alikes)",
    "l": "l-diversity (different sensitive values per group)",
    "t": "t-closeness (distance of each group from the whole table)",
}
_GLOSSARY = (
    ("Quasi-identifier", "A column an attacker may know from elsewhere (age, sex, "
     "country...). Alone it names no one; together such columns single people out."),
    ("Group of look-alikes (equivalence class)", "The released records that share every "
     "quasi-identifier value. An attacker who knows a person's quasi-identifiers cannot tell "
     "the records of a group apart."),
    ("k", "The size of the smallest group: each person hides among at least k records "
     "(Sweeney 2002)."),
    ("l", "Each group holds at least l different values of the sensitive attributes, so its "
     "members' value is not given away (Machanavajjhala et al. 2007)."),
    ("t", "Each group's distribution of a sensitive attribute is within t (earth mover's "
     "distance) of the whole table's (Li et al. 2007)."),
    ("Level", "How far a quasi-identifier is generalized: level 0 is the raw value, each "
     "level up is coarser (bands, groups, month, year, fewer ZIP digits), and the top level "
     "replaces every value by '*'. The search picks the levels that keep the most detail "
     "while k (and l, t) hold."),
    ("Suppressed", "Records left out because their group could not reach the targets."),
    ("Prosecutor, journalist, marketer risk", "The chance of re-identifying a record for an "
     "attacker who knows the person is in the release; who does not know it; who tries to "
     "re-identify as many records as possible (El Emam & Dankar 2008)."),
    ("Verdicts", "pass: the claim holds; fail: it does not, do not release; review: no "
     "promise is broken but the figure needs judgement; not applicable; information: a "
     "utility figure, no privacy threshold."),
)


def _verdict(v: str) -> Cell:
    return Cell(v, v.replace(" ", "-"))


def _release(report: Mapping[str, Any]) -> str:
    rel = report.get("release")
    if not rel:
        return ("<h2>Release and sign-off</h2><p>No file information: this report was built "
                "from tables in memory, not from a run's files.</p>")
    labels = {"input": "Input (raw, stays with the owner)", "output": "Output (released)",
              "policy": "Policy", "manifest": "Signed manifest"}  # fmt: skip
    files = []
    for role, label in labels.items():
        f = rel.get(role) or {}
        size = f"{_fmt(f.get('bytes'))} bytes" + (
            f", {_fmt(f['rows'])} rows" if f.get("rows") is not None else ""
        )
        match = f.get("matches_manifest")
        files.append([Cell(label), Cell(f.get("file")), Cell(f.get("sha256"), code=True),
                      Cell(size), _verdict("pass") if match else _verdict("fail")
                      if match is False else Cell("")])  # fmt: skip
    signer = rel.get("signer") or {}
    split = rel.get("split")
    split_text = "none declared (named at upload)"
    if split:
        split_text = (
            f"column {split.get('column')}: {split.get('train')} / {split.get('test')}"
            + (f", seeded random hold-out of {split.get('test_share')} (seed {split.get('seed')})"
               if split.get("method") == "random_holdout" else ", an existing column")
        )  # fmt: skip
    facts = [
        [Cell("HMAC key id (the secret key stays with the owner)"),
         Cell(rel.get("key_id"), code=True)],
        [Cell("Manifest signed by"),
         Cell(f"{signer.get('common_name')} ({signer.get('subject')})")],
        [Cell("Signer certificate SHA-256"), Cell(signer.get("certificate_sha256"), code=True)],
        [Cell("Signature algorithm"), Cell(signer.get("algorithm"))],
        [Cell("Manifest signed at (UTC)"), Cell(rel.get("signed_at"))],
        [Cell("Report created at (UTC)"), Cell(rel.get("report_created_at"))],
        [Cell("Tool version"), Cell(rel.get("tool_version"))],
        [Cell("Train/test split"), Cell(split_text)],
    ]
    return (
        "<h2>Release and sign-off</h2>"
        + _table(["file", "name", "SHA-256", "size", "matches the signed manifest"], files,
                 "release-files")
        + _table(["", "value"], facts, "release")
        + "<p>Approved for release (a signature here approves the files with the SHA-256 "
        "digests above, and no other):</p>"
        + _table(["", ""], [[Cell("Privacy officer (name, role)"), Cell("")],
                            [Cell("Signature"), Cell("")], [Cell("Date"), Cell("")]],
                 "signoff", "signoff")
    )  # fmt: skip


def _guarantees(report: Mapping[str, Any]) -> str:
    models = report.get("privacy_models") or {}
    rows = []
    for key in ("k", "l", "t"):
        m = models.get(key)
        if m is None:
            rows.append([Cell(_MODEL_NAMES[key]), Cell("not required by the policy"), Cell(""),
                         _verdict("not applicable")])  # fmt: skip
            continue
        achieved = m.get("achieved")
        required = m.get("required")
        if key == "k" and not m.get("applicable", True):
            rows.append([Cell(_MODEL_NAMES[key]), Cell(f"not applicable: {m.get('reason')}"),
                         Cell("not claimed"), _verdict(m["verdict"])])  # fmt: skip
            continue
        bound = "at most" if key == "t" else "at least"
        variant = f" ({m['variant']})" if m.get("variant") else ""
        over = m.get("sensitive_attributes")
        over_text = f" over {', '.join(over)}" if over else ""
        rows.append([Cell(_MODEL_NAMES[key] + variant + over_text),
                     Cell(f"{bound} {_fmt(required)}"), Cell(_fmt(achieved)),
                     _verdict(m["verdict"])])  # fmt: skip
    return "<h2>Privacy guarantees</h2>" + _table(
        ["model", "required", "achieved", "verdict"], rows, "guarantees"
    )


def _measures(report: Mapping[str, Any]) -> str:
    rows = [
        [Cell(m["name"]), Cell(m["meaning"]), Cell(m["value_text"]), Cell(m["threshold_text"]),
         _verdict(m["verdict"])]
        for m in report.get("measures") or []
    ]  # fmt: skip
    return "<h2>Measures</h2>" + _table(
        ["measure", "what it means", "value", "threshold", "verdict"], rows, "measures"
    )


def _params(params: Mapping[str, Any]) -> str:
    return "; ".join(f"{k} = {_fmt(v)}" for k, v in params.items())


def _columns(report: Mapping[str, Any]) -> str:
    cols = report.get("columns")
    if not cols:
        return ""
    rows = [
        [Cell(c["name"]), Cell(c["role_text"]), Cell(c["treatment_text"]),
         Cell(_params(c.get("parameters") or {})), Cell(c.get("level_text", "")),
         Cell(c.get("published", "")), Cell(c["attacker_learns"])]
        for c in cols
    ]  # fmt: skip
    return "<h2>Columns: what is released and how</h2>" + _table(
        ["column", "role", "treatment", "parameters", "released at", "published in the manifest",
         "what an attacker can learn"], rows, "columns",
    )  # fmt: skip


def _risk_rows(risk: Mapping[str, Any]) -> list[list[Any]]:
    before, after = risk.get("before") or {}, risk.get("after") or {}
    order = ["prosecutor_max", "prosecutor_avg", "journalist_max", "journalist_avg", "marketer",
             "records_at_risk"]  # fmt: skip
    skip = {"share_at_risk", "risk_threshold", "records"}
    keys = order + [k for k in [*before, *after] if k not in order and k not in skip]
    return [[Cell(plain(k)), before.get(k), after.get(k)]
            for k in dict.fromkeys(keys) if k in before or k in after]  # fmt: skip


def _generic(value: Any, table_id: str) -> str:
    """Any figure in words: a table for a mapping or a list of mappings, else a line."""
    if isinstance(value, Mapping) and value and all(
        not isinstance(v, (Mapping, list)) for v in value.values()
    ):
        return _table(["", "value"], [[Cell(plain(str(k))), v] for k, v in value.items()], table_id)
    if isinstance(value, Mapping) and value and all(isinstance(v, Mapping) for v in value.values()):
        keys = list(dict.fromkeys(k for v in value.values() for k in v))
        rows = [[Cell(str(name)), *(_flat(v.get(k)) for k in keys)] for name, v in value.items()]
        return _table(["", *(plain(k) for k in keys)], rows, table_id)
    if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        keys = list(dict.fromkeys(k for v in value for k in v))
        rows = [[_flat(v.get(k)) for k in keys] for v in value]
        return _table([plain(k) for k in keys], rows, table_id)
    return f'<p id="{escape(table_id)}">{escape(_fmt(_flat(value).value))}</p>'


def _flat(v: Any) -> Cell:
    if isinstance(v, Mapping):
        return Cell("; ".join(f"{plain(str(k))}: {_fmt(x)}" for k, x in v.items()))
    if isinstance(v, list):
        return Cell(", ".join(_fmt(x) for x in v))
    return Cell(v, "num") if isinstance(v, (int, float)) else Cell(v)


def _uniqueness(report: Mapping[str, Any]) -> str:
    wide = report.get("kept_column_uniqueness")
    if not isinstance(wide, Mapping) or not wide:
        return ""
    shares = {str(c): share_of(v) for c, v in wide.items()}
    chart = bar_chart(
        "Records unique on the quasi-identifiers plus one kept column",
        list(shares), {"share of records": list(shares.values())},
        "kept column (share of released records it makes unique with the quasi-identifiers)",
    )  # fmt: skip
    rows = [[Cell(c), v] for c, v in shares.items()]
    return (
        f"<h2>{escape(PLAIN_WORDS['kept_column_uniqueness'].capitalize())}</h2>"
        "<p>An attacker who knows a person's quasi-identifiers and one kept column: the share "
        "of released records that column makes unique, despite k.</p>"
        + _table(["kept column", "share of records unique"], rows, "kept-column-uniqueness")
        + f"<figure>{chart}<figcaption>Figure 3. Share of records unique on the "
        "quasi-identifiers plus each kept column.</figcaption></figure>"
    )


def _other(report: Mapping[str, Any]) -> str:
    parts = []
    for key, value in report.items():
        if key in _KNOWN or value is None:
            continue
        parts.append(f"<h2>{escape(plain(key).capitalize())}</h2>"
                     + _generic(value, key.replace("_", "-")))  # fmt: skip
    risk = report.get("risk") or {}
    for key, value in risk.items():
        if key not in {"population", "before", "after"}:
            parts.append(f"<h3>{escape(plain(key).capitalize())}</h3>"
                         + _generic(value, f"risk-{key.replace('_', '-')}"))  # fmt: skip
    return "".join(parts)


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one HTML5 page (UTF-8, no external resources)."""
    rows, before, after = report["rows"], report["before"], report["after"]
    risk, loss = report["risk"], report["information_loss"]
    labels = [d["sizes"] for d in after["distribution"]]
    fig_classes = bar_chart(
        "Records by equivalence class size",
        labels,
        {
            "raw": [d["records"] for d in before["distribution"]],
            "anonymized": [d["records"] for d in after["distribution"]],
        },
        "equivalence class size (records sharing the quasi-identifier values)",
    )
    fig_risk = bar_chart(
        "Re-identification risk (prosecutor)",
        ["maximum", "average", "share at risk"],
        {
            "raw": [
                risk["before"].get("prosecutor_max", 0.0),
                risk["before"].get("prosecutor_avg", 0.0),
                risk["before"].get("share_at_risk", 0.0),
            ],
            "anonymized": [
                risk["after"].get("prosecutor_max", 0.0),
                risk["after"].get("prosecutor_avg", 0.0),
                risk["after"].get("share_at_risk", 0.0),
            ],
        },
        f"probability; at risk = record risk above {RISK_TEXT}",
    )
    levels = report.get("levels") or {}
    qis = report["quasi_identifiers"]
    qi_text = ", ".join(f"{q} (level {levels[q]})" if q in levels else q for q in qis) or (
        "none declared"
    )
    verdict = str(report.get("verdict", ""))
    measures = report.get("measures") or []
    failing = [m["name"] for m in measures if m["verdict"] in {"fail", "review"}]
    rel = report.get("release") or {}
    title = f"Anonymization report: {rel['output']['file']}" if rel.get("output") else (
        "Anonymization risk and utility report"
    )
    loss_rows = [[Cell(plain(k)), v] for k, v in loss.items()]
    k_text = _fmt(after["k"]) if after.get("k") is not None else "not applicable"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        f'<p id="verdict" class="{escape(verdict)}">Verdict: <strong>{escape(verdict)}</strong>'
        f" — {escape(_VERDICT_TEXT.get(verdict, ''))}"
        + (f" (see: {escape('; '.join(failing))})" if failing else "")
        + "</p>"
        f"<p>Quasi-identifiers: {escape(qi_text)}. k target: "
        f"{escape(_fmt(report['k_target']) if qis else 'not applicable')}."
        " A level is how far a quasi-identifier was generalized: 0 is the raw value, the top "
        "level is '*' (see the glossary at the end).</p>"
        + _release(report)
        + _guarantees(report)
        + _measures(report)
        + _columns(report)
        + "<h2>Records and groups of look-alikes</h2>"
        + _table(
            ["", "raw", "anonymized"],
            [
                [Cell("records"), rows["input"], rows["output"]],
                [Cell("suppressed records"), "", rows["suppressed"]],
                [Cell("groups of look-alikes (equivalence classes)"), before["classes"],
                 after["classes"]],
                [Cell("smallest group (k)"), _fmt(before["k"]) if before.get("k") is not None
                 else "not applicable", k_text],
                [Cell("records unique on their quasi-identifiers"), before["unique_records"],
                 after["unique_records"]],
                [Cell("share unique"), before["share_unique"], after["share_unique"]],
            ],
            "records",
        )  # fmt: skip
        + f"<figure>{fig_classes}<figcaption>Figure 1. Records by the size of their "
        "equivalence class, before and after anonymization.</figcaption></figure>"
        "<h2>Re-identification risk</h2>"
        f"<p>El Emam &amp; Dankar 2008. Population for journalist and marketer risk: "
        f"{escape(risk['population'])}.</p>"
        + _table(["", "raw", "anonymized"], _risk_rows(risk), "risk")
        + f"<figure>{fig_risk}<figcaption>Figure 2. Prosecutor risk before and after."
        "</figcaption></figure>"
        + _uniqueness(report)
        + _other(report)
        + "<h2>Information loss</h2>"
        + _table(["measure", "value"], loss_rows, "loss")
        + "<h2>How to read this report</h2><dl>"
        + "".join(f"<dt>{escape(t)}</dt><dd>{escape(d)}</dd>" for t, d in _GLOSSARY)
        + "</dl></body></html>\n"
    )
