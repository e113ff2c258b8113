"""The report page: one self-contained HTML file, figures as inline SVG (no plotting library)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

_CSS = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}
td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}
figure{margin:1rem 0}
figcaption{font-size:.9rem;color:#555}
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


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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
    qi_text = ", ".join(
        f"{q} (level {levels[q]})" if q in levels else q for q in report["quasi_identifiers"]
    )
    risk_rows = [
        [name, risk["before"].get(key), risk["after"].get(key)]
        for name, key in (
            ("prosecutor, maximum", "prosecutor_max"),
            ("prosecutor, average", "prosecutor_avg"),
            ("journalist, maximum", "journalist_max"),
            ("journalist, average", "journalist_avg"),
            ("marketer", "marketer"),
            ("records at risk", "records_at_risk"),
        )
    ]
    loss_rows = [[k, v] for k, v in loss.items()]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>Anonymization risk and utility report</title>"
        f"<style>{_CSS}</style></head><body>"
        "<h1>Anonymization risk and utility report</h1>"
        f"<p>Quasi-identifiers: {escape(qi_text)}. k target: {escape(_fmt(report['k_target']))}.</p>"
        "<h2>Records</h2>"
        + _table(
            ["", "raw", "anonymized"],
            [
                ["records", rows["input"], rows["output"]],
                ["suppressed records", "", rows["suppressed"]],
                ["equivalence classes", before["classes"], after["classes"]],
                ["smallest class (k)", before["k"], after["k"]],
                ["unique records", before["unique_records"], after["unique_records"]],
                ["share unique", before["share_unique"], after["share_unique"]],
            ],
        )
        + f"<figure>{fig_classes}<figcaption>Figure 1. Records by the size of their "
        "equivalence class, before and after anonymization.</figcaption></figure>"
        "<h2>Re-identification risk</h2>"
        f"<p>El Emam &amp; Dankar 2008. Population for journalist and marketer risk: "
        f"{escape(risk['population'])}.</p>"
        + _table(["", "raw", "anonymized"], risk_rows)
        + f"<figure>{fig_risk}<figcaption>Figure 2. Prosecutor risk before and after."
        "</figcaption></figure><h2>Information loss</h2>"
        + _table(["measure", "value"], loss_rows)
        + "</body></html>\n"
    )
