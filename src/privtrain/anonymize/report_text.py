"""The report's plain words: per-column entries, the privacy models and the measures.

What a privacy officer signs must read without the papers behind it, so every figure
of :mod:`privtrain.anonymize.report` is described here once: what each column's role
and treatment mean, what its generalization level keeps, what an attacker who holds
the release can learn from it, and, for every measure, a sentence, its threshold and
a verdict. The HTML page (:mod:`privtrain.anonymize.report_html`) only lays these out.

Measures are built by :func:`measures` from whatever the report holds, so figures
added to the report by other modules (``kept_column_uniqueness``, wider risk figures)
become rows when present; :data:`PLAIN_WORDS` names report keys for the page, and
:func:`plain` turns any other key into words.

Verdicts: ``pass`` (the claim holds), ``fail`` (it does not: do not release),
``review`` (no promise is broken, but the officer should look), ``not applicable``
and ``information`` (a utility figure, no privacy threshold).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from privtrain.anonymize.policy import ColumnPolicy, Policy

PASS, FAIL, REVIEW, NOT_APPLICABLE, INFORMATION = (
    "pass", "fail", "review", "not applicable", "information",
)  # fmt: skip
TOP = "*"
# Share above which a record's re-identification risk counts as high (group below 5).
RISK_THRESHOLD = 0.2

ROLE_TEXT = {
    "direct_identifier": "direct identifier: names a person on its own",
    "quasi_identifier": "quasi-identifier: public facts that single people out in combination",
    "sensitive": "sensitive attribute: what must not be learned about a person",
    "other": "other attribute",
}

TREATMENT_TEXT = {
    "keep": "released as is",
    "drop": "not released",
    "hmac": "replaced by a keyed token (HMAC-SHA-256)",
    "pseudonym": "replaced by a keyed fake value (pseudonym)",
    "mask": "partly masked",
    "generalize": "generalized (coarsened) until k holds",
    "date_shift": "dates moved by one keyed offset per person",
    "noise": "keyed random noise added (not differential privacy)",
    "scrub": "free text with identifiers replaced by placeholders",
    "split": "added: the owner's train/test split",
}

# Report keys -> plain words, for the page's tables; any other key goes through plain().
PLAIN_WORDS = {
    "prosecutor_max": "prosecutor risk, highest (attacker knows the person is in the release)",
    "prosecutor_avg": "prosecutor risk, average over records",
    "journalist_max": "journalist risk, highest (attacker does not know who is in the release)",
    "journalist_avg": "journalist risk, average over records",
    "marketer": "marketer risk: expected share of records re-identified by matching them all",
    "records_at_risk": f"records whose re-identification risk exceeds {RISK_THRESHOLD}",
    "share_at_risk": f"share of records whose risk exceeds {RISK_THRESHOLD}",
    "risk_threshold": "risk counted as high above",
    "records": "records",
    "precision": "detail kept in the quasi-identifiers (1 = raw, 0 = all '*'; Sweeney 2002)",
    "discernibility": "discernibility: sum of squared group sizes, suppressed records charged "
    "the table's size (lower keeps records more distinguishable; Bayardo & Agrawal 2005)",
    "aecs": "average number of records per group of look-alikes (AECS; LeFevre et al. 2006)",
    "aecs_normalized": "average group size divided by k (1 = groups no larger than needed)",
    "non_uniform_entropy_bits": "information lost by generalization and suppression, in bits "
    "(non-uniform entropy; Gionis & Tassa 2009)",
    "non_uniform_entropy_share": "information lost, as a share of replacing every "
    "quasi-identifier by '*' (0 = none lost, 1 = all)",
    "note": "note",
    "kept_column_uniqueness": "records unique on the quasi-identifiers plus one kept column",
    "proxy_findings": "kept columns that stand in for a quasi-identifier (proxies)",
    "proxies": "kept columns that stand in for a quasi-identifier (proxies)",
}


def plain(key: str) -> str:
    """Words for a report key: :data:`PLAIN_WORDS`, else the key with spaces."""
    return PLAIN_WORDS.get(key, key.replace("_", " "))


def height(col: ColumnPolicy) -> int:
    """Number of generalization levels above the raw value (the top is all ``*``)."""
    if col.type == "numeric":
        return len(col.intervals or ()) + 1
    if col.type == "date":
        return len(col.date_levels or ()) + 1
    if col.type == "zip":
        return len(col.keep_digits or ()) + 1
    return len(next(iter((col.hierarchy or {"": ("*",)}).values())))


def _some(values: Sequence[str], n: int = 6) -> str:
    shown = ", ".join(values[:n])
    return shown + (f", ... ({len(values)} in all)" if len(values) > n else "")


def level_text(col: ColumnPolicy, level: int) -> str:
    """What a generalized column's values say at ``level``, in words."""
    top = height(col)
    if level >= top:
        return f'nothing: every value is "{TOP}"'
    if level == 0:
        return "exact values (not generalized)"
    if col.type == "numeric":
        width = (col.intervals or ())[level - 1]
        coded = []
        if col.bottom_code is not None:
            coded.append(f"below {col.bottom_code} pooled")
        if col.top_code is not None:
            coded.append(f"{col.top_code} and over pooled")
        return f"bands {width} wide" + (f" ({', '.join(coded)})" if coded else "")
    if col.type == "date":
        return f"the {(col.date_levels or ())[level - 1]} only"
    if col.type == "zip":
        return f"the first {(col.keep_digits or ())[level - 1]} digits only"
    labels = list(dict.fromkeys(row[level - 1] for row in (col.hierarchy or {}).values()))
    return f"the group of each value, one of {len(labels)}: {_some(labels)}"


def parameters(col: ColumnPolicy) -> dict[str, Any]:
    """The policy's settings of one column's treatment (JSON-ready, hierarchies summed up)."""
    skip = {"name", "operator", "role", "type"}
    out: dict[str, Any] = {"type": col.type}
    for key, value in vars(col).items():
        if key in skip or value is None or value == ():
            continue
        if key == "hierarchy":
            out["hierarchy"] = f"{len(value)} values, {height(col)} level" + (
                "s" if height(col) > 1 else ""
            )
        elif key == "domain":
            out["domain"] = f"{len(value)} values"
        elif isinstance(value, tuple):
            out[key] = list(value)
        else:
            out[key] = value
    return out


def published_text(domain: Mapping[str, Any] | None) -> str:
    """The manifest's public domain of a column, in words."""
    if domain is None:
        return "nothing (not in the release)"
    kind = domain.get("type")
    if kind == "categorical":
        return f"one of: {_some([str(v) for v in domain.get('values', [])], 12)}"
    if kind in {"numeric", "date"} and "lower" in domain:
        extra, noise = "", domain.get("noise")
        if noise:
            extra = f", with {noise['distribution']} noise of scale {noise['scale']}"
        return f"{kind} in [{domain['lower']}, {domain['upper']}]{extra}"
    if kind == "identifier":
        return "tokens or pseudonyms (no values)"
    if kind == "masked":
        return (
            f"masked text: first {domain.get('keep_first')} and last {domain.get('keep_last')} "
            "characters shown"
        )
    if kind == "date":
        return f"dates, shifted per {domain.get('shifted_by_subject')}"
    if kind == "text" and "pattern" in domain:
        return f"text matching {domain['pattern']}"
    if kind == "text" and "scrubbed" in domain:
        return f"text, scrubbed of {', '.join(domain['scrubbed'])}"
    return "free text (no domain)"


def attacker_text(
    col: ColumnPolicy, level: int | None, *, k: int | None, sensitive: bool, key_id: str | None
) -> str:
    """What someone holding the release learns from this column."""
    op = col.operator
    key = f" (key id {key_id})" if key_id else ""
    if op == "drop":
        return "Nothing: the column is not released."
    if op == "hmac":
        return (
            "Only which records share a value (same token); the value cannot be recomputed or "
            f"reversed without the secret key{key}. Records join across releases made with the "
            "same key."
        )
    if op == "pseudonym":
        return (
            f"Only which records share a value: each real value becomes one fake {col.faker}, "
            f"the same under the same key{key}, Faker version and locale."
        )
    if op == "mask":
        return (
            f"The first {col.keep_first} and last {col.keep_last} characters of each value; the "
            f"rest is masked with {col.mask_char!r}."
        )
    if op == "generalize":
        assert level is not None
        if level >= height(col):
            return f'Nothing: every value is "{TOP}".'
        shown = "The exact value" if level == 0 else f"Only {level_text(col, level)}"
        hides = (
            f"; combined with the other quasi-identifiers, a person still matches at least {k} "
            "released records" if k else ""
        )
        return f"{shown}{hides}."
    if op == "date_shift":
        return (
            f"Exact intervals between the dates of one {col.subject}; each calendar date only "
            f"to within +-{col.shift_days} days (one keyed offset per {col.subject})."
        )
    if op == "noise":
        return (
            f"Each value plus keyed {col.distribution} noise of scale {col.scale}, clipped to "
            f"[{col.lower}, {col.upper}]. Not differential privacy: a value is hidden only to "
            f"about +-{col.scale}."
        )
    if op == "scrub":
        return (
            f"The text with {', '.join(col.scrub)} replaced by placeholders; names the table does "
            "not hold, places and other identifying words may remain."
        )
    base = "The exact value of every released record."
    if sensitive:
        return base + (
            " Whoever links a record to a person learns it; l-diversity and t-closeness bound "
            "what a group of look-alikes reveals."
        )
    if col.role == "sensitive":
        return base + " Whoever links a record to a person learns it (no l or t required)."
    return base + (
        " Someone who already knows it can combine it with the quasi-identifiers to narrow a "
        "person down further."
    )


def column_entries(
    policy: Policy,
    levels: Mapping[str, int] | None,
    domains: Mapping[str, Any] | None,
    key_id: str | None = None,
    split: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One entry per input column (and the added split column): role, treatment,
    parameters, released level, what the manifest publishes, what an attacker learns."""
    out = []
    sens = set(policy.sensitive_attributes)
    for name, col in policy.columns.items():
        level = (levels or {}).get(name) if col.operator == "generalize" else None
        entry: dict[str, Any] = {
            "name": name,
            "role": col.role,
            "role_text": ROLE_TEXT.get(col.role, col.role),
            "treatment": col.operator,
            "treatment_text": TREATMENT_TEXT.get(col.operator, col.operator),
            "parameters": parameters(col),
        }
        if level is not None:
            entry["level"] = level
            entry["height"] = height(col)
            entry["level_text"] = f"level {level} of {height(col)}: {level_text(col, level)}"
        if domains is not None:
            entry["published"] = published_text(domains.get(name))
        entry["attacker_learns"] = attacker_text(
            col, level if level is not None else (0 if col.operator == "generalize" else None),
            k=policy.k if policy.quasi_identifiers else None, sensitive=name in sens,
            key_id=key_id,
        )  # fmt: skip
        out.append(entry)
    if split is not None and split.get("method") == "random_holdout":
        out.append({
            "name": split["column"],
            "role": "other",
            "role_text": ROLE_TEXT["other"],
            "treatment": "split",
            "treatment_text": TREATMENT_TEXT["split"],
            "parameters": {k: v for k, v in split.items() if k != "column"},
            "published": f"one of: {split['train']}, {split['test']}",
            "attacker_learns": "Whether a record is in the training or the test share: drawn "
            "from the seed and the row number, not from the record's values.",
        })  # fmt: skip
    return out


# -- measures --------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.3g} %"


def _num(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.4g}" if abs(x) < 1e6 else f"{x:,.0f}"
    return str(x)


def _measure(
    mid: str, name: str, meaning: str, value: Any, value_text: str, threshold: Any,
    threshold_text: str, verdict: str,
) -> dict[str, Any]:  # fmt: skip
    return {
        "id": mid, "name": name, "meaning": meaning, "value": value, "value_text": value_text,
        "threshold": threshold, "threshold_text": threshold_text, "verdict": verdict,
    }  # fmt: skip


def _ok(holds: bool, soft: bool = False) -> str:
    return PASS if holds else (REVIEW if soft else FAIL)


def privacy_models(
    k_required: int | None,
    k_achieved: int | None,
    qis: Sequence[str],
    required: Mapping[str, Any] | None,
    achieved: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """k, and l and t whenever the policy requires them: required, achieved, verdict.

    ``required``: ``l``, ``l_kind``, ``t``, ``sensitive_attributes`` (the policy's);
    ``achieved``: ``l_distinct``, ``l_entropy``, ``t`` as measured on the release.
    """
    out: dict[str, Any] = {}
    if not qis:
        out["k"] = {
            "applicable": False, "required": k_required, "achieved": None,
            "verdict": NOT_APPLICABLE,
            "reason": "the policy declares no quasi-identifiers: nothing is generalized, so no "
            "record is claimed to hide among look-alikes (k is not signed)",
        }  # fmt: skip
    else:
        held = k_achieved is not None and k_required is not None and k_achieved >= k_required
        out["k"] = {"applicable": True, "required": k_required, "achieved": k_achieved,
                    "verdict": _ok(held)}  # fmt: skip
    required = required or {}
    achieved = achieved or {}
    attrs = list(required.get("sensitive_attributes") or ())
    if required.get("l") is not None:
        kind = required.get("l_kind", "distinct")
        got = achieved.get("l_distinct" if kind == "distinct" else "l_entropy")
        out["l"] = {"required": required["l"], "achieved": got, "variant": kind,
                    "sensitive_attributes": attrs,
                    "verdict": _ok(got is not None and got >= required["l"] - 1e-9)}  # fmt: skip
    if required.get("t") is not None:
        got = achieved.get("t")
        out["t"] = {"required": required["t"], "achieved": got, "sensitive_attributes": attrs,
                    "verdict": _ok(got is not None and got <= required["t"] + 1e-9)}  # fmt: skip
    return out


def measures(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every measure of ``report`` in plain words, with its threshold and a verdict."""
    out: list[dict[str, Any]] = []
    models = report.get("privacy_models") or {}
    rows, after = report["rows"], report["after"]
    qis = report.get("quasi_identifiers") or []
    k_model = models.get("k") or {}
    k = k_model.get("required") if k_model.get("applicable", bool(qis)) else None
    if k_model and not k_model.get("applicable", True):
        out.append(_measure(
            "k", "Smallest group of look-alike records (k-anonymity)", k_model["reason"],
            None, "not applicable", None, "not applicable", NOT_APPLICABLE,
        ))  # fmt: skip
    elif k_model:
        out.append(_measure(
            "k", "Smallest group of look-alike records (k-anonymity)",
            "Every released record shares its quasi-identifier values with at least k - 1 "
            "others, so a person known by those values matches at least k records.",
            k_model["achieved"], _num(k_model["achieved"]), k, f"at least {k}",
            k_model["verdict"],
        ))  # fmt: skip
    for key, name in (("l", "Different sensitive values in every group (l-diversity)"),
                      ("t", "Distance of every group from the whole table (t-closeness)")):
        m = models.get(key)
        if m is None:
            continue
        attrs = ", ".join(m.get("sensitive_attributes") or []) or "the sensitive attributes"
        if key == "l":
            meaning = (
                f"Every group of look-alikes holds at least l different values of {attrs} "
                f"({m['variant']} l-diversity), so knowing a person's group does not reveal "
                "the value."
            )
            threshold_text = f"at least {m['required']}"
        else:
            meaning = (
                f"In every group, the distribution of {attrs} differs from the whole release's "
                "by at most t (earth mover's distance: 0 identical, 1 disjoint), so a group "
                "tells little more than the table does."
            )
            threshold_text = f"at most {m['required']}"
        out.append(_measure(key, name, meaning, m["achieved"], _num(m["achieved"]),
                            m["required"], threshold_text, m["verdict"]))  # fmt: skip
    max_supp = report.get("max_suppression")
    share = rows.get("share_suppressed", 0.0)
    out.append(_measure(
        "suppressed", "Records removed to reach the targets (suppressed)",
        "Records whose group could not reach the targets even after generalization are left "
        "out of the release.",
        share, f"{_pct(share)} ({_num(rows['suppressed'])} of {_num(rows['input'])} records)",
        max_supp,
        f"at most {_pct(max_supp)} (the policy's max_suppression)" if max_supp is not None
        else "none set", _ok(max_supp is None or share <= max_supp + 1e-12),
    ))  # fmt: skip
    risk = (report.get("risk") or {}).get("after") or {}
    population = (report.get("risk") or {}).get("population", "release")
    if not qis:
        out.append(_measure(
            "risk", "Re-identification risk", "Without quasi-identifiers the risk figures "
            "assume an attacker who knows nothing about anyone; they say nothing about what "
            "the kept columns reveal.", None, "not applicable", None, "not applicable",
            NOT_APPLICABLE,
        ))  # fmt: skip
    elif "prosecutor_max" in risk:  # (an empty release has no record and no risk)
        bound = 1.0 / k if k else None
        bound_text = f"at most {_num(bound)} (1/k)" if bound else "none"
        for key, meaning in (
            ("prosecutor_max", "The highest chance that an attacker who knows the person is in "
             "the release picks the right record: 1 / the smallest group."),
            ("prosecutor_avg", "The same chance averaged over all released records."),
            ("journalist_max", "The highest chance for an attacker who does not know whether "
             f"the person is in the release; population assumed: the {population}."),
            ("marketer", "The expected share of records re-identified by an attacker who "
             "matches every record against a population register."),
        ):  # fmt: skip
            if key not in risk:
                continue
            value = risk[key]
            out.append(_measure(key, plain(key), meaning, value, _num(value), bound, bound_text,
                                _ok(bound is None or value <= bound + 1e-12)))  # fmt: skip
        at_risk = risk.get("records_at_risk", 0)
        out.append(_measure(
            "records_at_risk", plain("records_at_risk"),
            f"Records in groups smaller than {round(1 / RISK_THRESHOLD)}, the limit El Emam & "
            "Dankar (2008) use for public releases.", at_risk, _num(at_risk), 0, "none",
            _ok(at_risk == 0, soft=True),
        ))  # fmt: skip
        unique = after.get("unique_records", 0)
        out.append(_measure(
            "unique_records", "Records unique on their quasi-identifiers",
            "Released records that no other record shares the quasi-identifier values with.",
            unique, f"{_num(unique)} ({_pct(after.get('share_unique', 0.0))})", 0, "none",
            _ok(unique == 0, soft=True),
        ))  # fmt: skip
    wide = report.get("kept_column_uniqueness")
    if isinstance(wide, Mapping) and wide:
        # Judged on the columns an attacker could know: keyed tokens and pseudonyms are
        # unique by design and tell nothing without the key.
        risk = report.get("released_risk") or {}
        names = risk.get("attacker_known_columns")
        known = {c: v for c, v in wide.items() if names is None or c in names}
        threshold = float(risk.get("uniqueness_threshold", 0.05))
        accepted = set(risk.get("accepted_columns") or ())
        shares = {c: share_of(v) for c, v in known.items()}
        if shares:
            worst = max(shares, key=lambda c: shares[c])
            over = {c for c, v in shares.items() if v > threshold}
            # Without a k (no quasi-identifiers, or k = 1) no claim is broken, but it is
            # the officer's call; run refuses the same cases (released_risk.evaluate).
            k_model = (report.get("privacy_models") or {}).get("k") or {}
            claims = k_model.get("applicable", True) and (k_model.get("required") or 2) > 1
            verdict = PASS if not over else REVIEW if over <= accepted or not claims else FAIL
            out.append(_measure(
                "kept_column_uniqueness", plain("kept_column_uniqueness"),
                "An attacker who also knows one kept column (not generalized) can single these "
                f"records out despite k; the worst column is {worst}"
                + (f"; accepted by the policy over the threshold: {', '.join(sorted(over))}"
                   if over and over <= accepted else "") + ".",
                shares[worst], f"{_pct(shares[worst])} ({worst})", threshold,
                f"at most {_pct(threshold)} per column", verdict,
            ))  # fmt: skip
    release = report.get("release") or {}
    matches = [release.get(f, {}).get("matches_manifest") for f in ("output", "policy")]
    if any(m is not None for m in matches):
        held = all(m is not False for m in matches)
        out.append(_measure(
            "files_match", "The output and policy files are the ones the manifest signs",
            "Their SHA-256 digests equal the signed manifest's output_sha256 and policy_sha256.",
            held, "yes" if held else "no", True, "equal", _ok(held),
        ))  # fmt: skip
    loss = report.get("information_loss") or {}
    for key in ("precision", "non_uniform_entropy_share", "aecs", "aecs_normalized",
                "discernibility", "non_uniform_entropy_bits"):  # fmt: skip
        if key in loss:
            out.append(_measure(key, plain(key), "A utility figure: how much the release keeps "
                                "of the data, not a privacy claim.", loss[key], _num(loss[key]),
                                None, "none (utility)", INFORMATION))  # fmt: skip
    return out


def share_of(value: Any) -> float:
    """A kept column's uniqueness figure as a share (a number, or a mapping with ``share``)."""
    if isinstance(value, Mapping):
        value = value.get("share", value.get("share_unique", 0.0))
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def overall(measure_list: Sequence[Mapping[str, Any]]) -> str:
    """``fail`` if any measure fails, else ``review`` if any asks for it (or no k is
    claimed: nothing was generalized), else ``pass``."""
    verdicts = {m["verdict"] for m in measure_list}
    no_k = any(m["id"] == "k" and m["verdict"] == NOT_APPLICABLE for m in measure_list)
    return FAIL if FAIL in verdicts else REVIEW if REVIEW in verdicts or no_k else PASS
