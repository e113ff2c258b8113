"""``anonymize inspect``: classify every column and write a commented policy to edit.

Each column gets one role (direct identifier, quasi-identifier, sensitive
attribute, other) and a proposed operator, from its name and its values
(:mod:`privtrain.anonymize.detect`):

* direct identifiers (names, e-mails, phones, record / case numbers, dates of
  birth, IPs, URLs, addresses) are pseudonymized, tokenized or dropped, never kept;
* quasi-identifiers (age, sex, race, ZIP, ... by name) are generalized, with bands
  for numbers and an automatic two-level hierarchy for categories (values under 5 %
  of rows pooled, then ``*``), so the lattice search can reach k;
* other dates and free text, which single people out, are dropped;
* the rest is kept with a public domain (the observed range or values), which
  the owner should check against the data's documentation.

The proposal is safe to run unchanged; the comments say what to change for utility.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from privtrain.anonymize.detect import ColumnFacts, hinted, measure, tokens
from privtrain.anonymize.tableio import read_table
from privtrain.atomic_files import atomic_write_bytes

RARE_SHARE = 0.05
MAX_DOMAIN = 64


@dataclass(frozen=True)
class Proposal:
    """What inspect proposes for one column.

    Attributes
    ----------
    name : str
        Column name.
    kind : str
        What the values are (``person_name``, ``email``, ``date``, ``number``, ``category``...).
    role : str
        ``direct_identifier``, ``quasi_identifier``, ``sensitive`` or ``other``.
    facts : ColumnFacts
        Counts and pattern shares.
    lines : list of str
        The column's TOML (comment lines and keys), ready to write.
    """

    name: str
    kind: str
    role: str
    facts: ColumnFacts
    lines: list[str]


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _kind(name: str, f: ColumnFacts) -> str:
    if f.distinct == 0:
        return "empty"
    for kind in ("email", "url", "ipv4", "ipv6"):
        if f.is_(kind):
            return kind
    if f.is_("date"):
        return "birth_date" if hinted(name, "birth") else "date"
    if f.is_("zip") and hinted(name, "zip"):
        return "zip"
    if f.is_("integer") or f.is_("number"):
        if hinted(name, "phone") and f.is_("phone"):
            return "phone"
        return "number"
    if f.is_("phone", 0.8) and not f.is_("person_name", 0.5):
        return "phone"
    if hinted(name, "person_name") and f.is_("person_name", 0.8) and f.distinct > MAX_DOMAIN:
        return "person_name"
    if f.is_("code", 0.8) and f.uniqueness > 0.5:
        return "id_code"
    if f.mean_length > 40 and f.uniqueness > 0.5:
        return "free_text"
    return "category"


def _role(name: str, kind: str, f: ColumnFacts) -> str:
    if kind in {"email", "phone", "person_name", "birth_date", "id_code", "ipv4", "ipv6", "url"}:
        return "direct_identifier"
    if hinted(name, "identifier") and f.uniqueness > 0.9 and f.distinct > 1:
        return "direct_identifier"
    if hinted(name, "address") or hinted(name, "email") or hinted(name, "phone"):
        return "direct_identifier"
    if kind == "zip" or hinted(name, "quasi"):
        return "quasi_identifier"
    if kind in {"date", "free_text"}:
        return "quasi_identifier"
    if hinted(name, "sensitive"):
        return "sensitive"
    return "other"


def _faker_provider(name: str) -> str:
    words = tokens(name)
    if any(w in {"first", "given", "forename"} for w in words):
        return "first_name"
    if any(w in {"last", "surname", "family"} for w in words):
        return "last_name"
    return "name"


def _numeric(values: pd.Series) -> pd.Series:
    text = values.astype("string").str.strip()
    return pd.to_numeric(text.mask(text == ""), errors="coerce").dropna()


def _nice(width: float) -> int:
    for w in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 5000, 10000):
        if w >= width:
            return w
    return 10 ** math.ceil(math.log10(width))


def _generalize_numeric(name: str, values: pd.Series) -> list[str] | None:
    num = _numeric(values)
    if num.empty or not bool((num % 1 == 0).all()):
        return None
    lo, hi = int(num.min()), int(num.max())
    if "age" in tokens(name):
        widths, top = [5, 10, 20], (90 if lo < 90 <= hi else None)
    else:
        w = _nice(max((hi - lo) / 10, 1))
        widths, top = [w, 2 * w, 4 * w], None
    lines = [f"lower = {lo}", f"upper = {hi}", f"intervals = {widths}"]
    if top is not None:
        lines.append(f"top_code = {top}")
    return lines


def _hierarchy(values: pd.Series) -> list[str]:
    counts = values.astype("string").str.strip().replace("", pd.NA).dropna().value_counts()
    total = max(int(counts.sum()), 1)
    rows = []
    for value, count in counts.items():
        group = str(value) if count / total >= RARE_SHARE else "Other-or-rare"
        rows.append(f'{_q(str(value))} = [{_q(group)}, "*"]')
    return ["", f"[columns.{_key(values.name)}.hierarchy]", *rows]


def _key(name: object) -> str:
    text = str(name)
    return text if text.replace("_", "").replace("-", "").isalnum() and text.isascii() else _q(text)


def _propose(name: str, values: pd.Series) -> Proposal:
    f = measure(values)
    kind = _kind(name, f)
    role = _role(name, kind, f)
    why = (
        f"# {name}: {kind.replace('_', ' ')}; {f.distinct} distinct of {f.rows - f.missing} "
        f"values (uniqueness {f.uniqueness:.2f}), {f.missing} missing."
    )
    head = [why, f"[columns.{_key(name)}]"]
    body: list[str]
    if role == "direct_identifier":
        if kind == "person_name" and _faker_provider(name) == "name":
            body = ['operator = "pseudonym"', 'faker = "name"', 'type = "text"']
            head.insert(
                1, "# Realistic fake names, one per real name, keyed: same name, same pseudonym."
            )
        elif kind == "person_name":
            body = ['operator = "hmac"', 'type = "text"']
            head.insert(
                1,
                "# A keyed token: Faker's first/last-name lists (a few hundred names) are too\n"
                "# small to give every distinct name its own pseudonym.",
            )
        elif kind == "email":
            body = ['operator = "pseudonym"', 'faker = "email"', 'type = "text"']
            head.insert(1, "# Fake ASCII-valid addresses, one per real address, keyed.")
        elif kind in {"birth_date", "url", "ipv4", "ipv6"} or hinted(name, "address"):
            body = ['operator = "drop"']
            head.insert(1, "# Identifies on its own and carries nothing a model needs: dropped.")
        else:
            body = ['operator = "hmac"', 'type = "text"']
            head.insert(1, "# A keyed token: joinable across files for the key holder only.")
    elif role == "quasi_identifier":
        numeric = _generalize_numeric(name, values) if kind == "number" else None
        if numeric is not None:
            body = ['operator = "generalize"', 'type = "numeric"', *numeric]
            head.insert(1, "# Generalized to bands by the lattice search until k holds.")
        elif kind == "category" and f.distinct <= MAX_DOMAIN:
            body = ['operator = "generalize"', 'type = "categorical"', *_hierarchy(values)]
            head.insert(1, '# Rare values pooled first, then "*"; edit the hierarchy to taste.')
        else:
            body = ['operator = "drop"']
            head.insert(1, "# A date or free text in a public record singles people out: dropped.")
    elif kind in {"empty", "free_text", "date"} or (kind == "category" and f.uniqueness > 0.5):
        body = ['operator = "drop"']
        head.insert(1, "# Empty, nearly unique or free text: dropped (could identify).")
    elif kind == "number" and f.distinct <= 2:
        dom = values.astype("string").str.strip().replace("", pd.NA).dropna().unique()
        body = ['operator = "keep"', 'type = "categorical"',
                "domain = [" + ", ".join(_q(str(v)) for v in sorted(dom)) + "]"]  # fmt: skip
        head.insert(1, "# Kept as a category: two values (a 0/1 flag or label a model may predict).")
    elif kind == "number":
        num = _numeric(values)
        body = ['operator = "keep"', 'type = "numeric"', f"lower = {_num(num.min())}",
                f"upper = {_num(num.max())}"]  # fmt: skip
        head.insert(1, "# Kept; lower/upper are the observed range: check them against the docs.")
    elif f.distinct <= MAX_DOMAIN:
        dom = values.astype("string").str.strip().replace("", pd.NA).dropna().unique()
        body = ['operator = "keep"', 'type = "categorical"',
                "domain = [" + ", ".join(_q(str(v)) for v in sorted(dom)) + "]"]  # fmt: skip
        head.insert(1, "# Kept; the domain lists the observed values.")
    else:
        body = ['operator = "keep"', 'type = "text"']
        head.insert(1, "# Kept as text; consider a hierarchy if it is a quasi-identifier.")
    return Proposal(name, kind, role, f, [*head, f'role = "{role}"', *body])


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def inspect_table(
    input_path: Path, out_path: Path | None = None, *, k: int = 5, encoding: str | None = None
) -> list[Proposal]:
    """Classify every column of a table and (optionally) write the proposed policy.

    Parameters
    ----------
    input_path : Path
        Raw CSV, Parquet or JSON Lines table.
    out_path : Path | None
        Where to write the policy TOML (atomically); None to only classify.
    k : int
        k-anonymity target written into the policy.
    encoding : str | None
        CSV text encoding; None for UTF-8 with detection as a fallback.

    Returns
    -------
    list of Proposal
        One per column, in table order.
    """
    df = read_table(Path(input_path), encoding)
    proposals = [_propose(str(name), df[name]) for name in df.columns]
    if out_path is not None:
        atomic_write_bytes(Path(out_path), policy_text(proposals, Path(input_path), k).encode())
    return proposals


def policy_text(proposals: list[Proposal], source: Path, k: int) -> str:
    """The commented policy TOML for ``proposals``."""
    sens = [p.name for p in proposals if p.role == "sensitive"]
    lines = [
        f"# Policy proposed by `privtrain anonymize inspect` for {source.name}.",
        "# Review every column: roles come from names and value patterns, domains from",
        "# the data. Every column is declared; an undeclared one would be refused.",
        "",
        "# Every combination of the quasi-identifiers is shared by >= k rows (Sweeney 2002).",
        f"k = {k}",
        "# At most this share of rows may be suppressed to reach k.",
        "max_suppression = 0.05",
        'locale = "en_US"',
    ]
    if sens:
        lines += [
            "# To also protect what a row says, uncomment (Machanavajjhala et al. 2007;",
            "# Li et al. 2007): every class then needs >= l distinct values of these",
            "# attributes and a distribution within t of the whole table's.",
            f"# sensitive_attributes = [{', '.join(_q(s) for s in sens)}]",
            "# l = 2",
            "# t = 0.3",
        ]
    for p in proposals:
        lines += ["", *p.lines]
    return "\n".join(lines) + "\n"
