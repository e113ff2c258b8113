"""``anonymize inspect``: classify every column and write a commented policy to edit.

Each column gets one role (direct identifier, quasi-identifier, sensitive
attribute, other) and a proposed operator, from its name and its values
(:mod:`privtrain.anonymize.detect`):

* direct identifiers (names, e-mails, phones, record / case numbers, dates of
  birth, IPs, URLs, addresses) are pseudonymized, tokenized or dropped, never kept;
  a column named for people's names, or whose values read as given name + surname,
  is one however few distinct values it has, so no real name lands in a domain;
  phone numbers are tokenized after E.164 normalization when every value parses;
* quasi-identifiers (age, sex, race, ZIP, ... by name) are generalized, with bands
  for numbers and an automatic two-level hierarchy for categories (values under 5 %
  of rows pooled, then ``*``), so the lattice search can reach k;
* other dates (events in a person's life) are shifted by one keyed offset per person
  (``date_shift``, the subject being the table's best person identifier), so
  intervals survive and calendar dates do not; without an identifier, or when the
  values do not parse unambiguously, they are dropped;
* free text is scrubbed of e-mails, URLs, IPs, phones, ID numbers and the table's
  names (``scrub``), unless Presidio, when installed, finds personal data that
  scrubbing would leave (:mod:`privtrain.anonymize.free_text`): then it is dropped;
* a value longer than ``MAX_LABEL_CHARS`` (or a domain longer than
  ``MAX_DOMAIN_CHARS``) makes a column free text rather than a category;
* the rest is kept with a public domain; a sensitive measurement gets a commented
  ``noise`` alternative, never noise by default (it is not DP).

Bounds and domains are published in the manifest, so none is the data's own summary
(:mod:`privtrain.anonymize.public_bounds`): numbers get round limits strictly beyond
the observed range, categories a well-known vocabulary's values when they fit one,
else the observed values marked ``no public domain known``; each carries a
``TO CONFIRM`` comment for the owner to replace with the documented domain.

The proposal is safe to run unchanged; the comments say why each column gets its
operator and what to change for utility.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from privtrain.anonymize.dates import parse_dates
from privtrain.anonymize.detect import ColumnFacts, hinted, measure, names_a_person, tokens
from privtrain.anonymize.errors import PolicyError
from privtrain.anonymize.free_text import TextFindings, examine_free_text
from privtrain.anonymize.operators.phone import e164
from privtrain.anonymize.operators.scrub import known_names
from privtrain.anonymize.public_bounds import (
    CONFIRM,
    bounds_comment,
    declared_domain,
    domain_comment,
    public_range,
)
from privtrain.anonymize.tableio import read_table
from privtrain.atomic_files import atomic_write_bytes

RARE_SHARE = 0.05
MAX_DOMAIN = 64
LOCALE = "en_US"
REGION = LOCALE.rpartition("_")[2]  # as the policy reads numbers written without "+"
SHIFT_DAYS = 365
# A sensitive number with more distinct values than this is a measurement (income,
# a lab value) rather than a label or score: the proposal mentions noise for it.
MEASUREMENT_DISTINCT = 20
_NOT_SUBJECTS = frozenset({"birth_date", "url", "ipv4", "ipv6"})
# A column at least half of whose distinct values are written as dates holds dates: the
# rest (``unknown``, typos) must not let its dates through as text or as a category.
DATE_SHARE = 0.5
# A category is a label (``Felony``, ``Married-civ-spouse``), not a sentence: a value
# longer than this, or a domain longer than this in all, makes the column free text, so
# that no long value is copied into the policy and the signed manifest.
MAX_LABEL_CHARS = 200
MAX_DOMAIN_CHARS = 4_000


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
    detector : str | None
        Free text only: which personal-data detector looked at it.
    """

    name: str
    kind: str
    role: str
    facts: ColumnFacts
    lines: list[str]
    detector: str | None = None

    @property
    def operator(self) -> str | None:
        """The proposed operator (from ``lines``)."""
        for line in self.lines:
            if line.startswith("operator = "):
                return str(json.loads(line.partition("= ")[2]))
        return None


DateRange = tuple[np.datetime64, np.datetime64]


@dataclass(frozen=True)
class _Table:
    """What a column's proposal needs to know about the other columns."""

    source: str
    subject: str | None
    identifying_dates: dict[str, DateRange]
    name_sources: list[str]
    names: frozenset[str]
    presidio: bool
    k: int = 5


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _kind(name: str, f: ColumnFacts) -> str:
    if f.distinct == 0:
        return "empty"
    for kind in ("email", "url", "ipv4", "ipv6"):
        if f.is_(kind):
            return kind
    if f.is_("date", DATE_SHARE):
        return "birth_date" if hinted(name, "birth") else "date"
    if f.max_length > MAX_LABEL_CHARS or (
        f.distinct <= MAX_DOMAIN and f.total_length > MAX_DOMAIN_CHARS
    ):
        return "free_text"
    if f.is_("zip") and hinted(name, "zip"):
        return "zip"
    if f.is_("integer") or f.is_("number"):
        if hinted(name, "phone") and f.is_("phone"):
            return "phone"
        return "number"
    if f.is_("phone", 0.8) and not f.is_("person_name", 0.5):
        return "phone"
    if f.is_("person_name", 0.8) and (
        names_a_person(name)
        or (hinted(name, "person_name") and f.distinct > MAX_DOMAIN)
        or f.is_("first_and_last_name", 0.8)
    ):
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
    if kind == "date":
        return "quasi_identifier"  # until a keyed per-person shift unlinks it (_propose)
    if kind == "free_text":
        return "other"
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
    lower, upper = public_range(lo, hi)
    if "age" in tokens(name):
        # Census-style "90+", set by the public upper bound, not by who is in the data.
        widths, top = [5, 10, 20], (90 if lower < 90 <= upper else None)
    else:
        w = _nice(max((hi - lo) / 10, 1))
        widths, top = [w, 2 * w, 4 * w], None
    lines = [f"lower = {_num(lower)}", f"upper = {_num(upper)}", f"intervals = {widths}"]
    if top is not None:
        lines.append(f"top_code = {top}")
    return lines


def _counts(values: pd.Series) -> pd.Series:
    """Rows per distinct non-blank value (stripped), most frequent first."""
    return values.astype("string").str.strip().replace("", pd.NA).dropna().value_counts()


def _hierarchy(values: pd.Series, k: int) -> tuple[list[str], list[str]]:
    """(TO CONFIRM comment, keys) of a two-level hierarchy over a declared domain."""
    counts = _counts(values)
    domain, vocabulary = declared_domain(str(v) for v in counts.index)
    total = max(int(counts.sum()), 1)
    rows = []
    for value in sorted(domain, key=lambda v: -int(counts.get(v, 0))):
        group = value if int(counts.get(value, 0)) / total >= RARE_SHARE else "Other-or-rare"
        rows.append(f'{_q(value)} = [{_q(group)}, "*"]')
    rare = int((counts < k).sum())
    comment = domain_comment(vocabulary, len(domain), rare, k, "hierarchy")
    return comment, ["", f"[columns.{_key(values.name)}.hierarchy]", *rows]


def _domain(values: pd.Series, k: int) -> tuple[list[str], str]:
    """(TO CONFIRM comment, ``domain = [...]`` line) of a kept category."""
    counts = _counts(values)
    domain, vocabulary = declared_domain(str(v) for v in counts.index)
    comment = domain_comment(vocabulary, len(domain), int((counts < k).sum()), k)
    return comment, "domain = [" + ", ".join(_q(v) for v in domain) + "]"


def _key(name: object) -> str:
    text = str(name)
    return text if text.replace("_", "").replace("-", "").isalnum() and text.isascii() else _q(text)


def _parse(values: pd.Series, source: str, name: str) -> tuple[bool | None, DateRange] | None:
    """(day_first, (first, last) date) of a date column; None when no reading parses it all.

    ISO and month-name dates need no ``day_first``; slashed dates get the one reading
    under which every value is a real date, and none when both readings work (ambiguous).
    """
    readings: list[tuple[bool | None, DateRange]] = []
    for day_first in (None, True, False):
        try:
            _, days = parse_dates(values, source, name, None, day_first)
        except PolicyError:
            continue
        if not len(days):
            return None
        span = (days.min(), days.max())
        if day_first is None:
            return None, span
        readings.append((day_first, span))
    return readings[0] if len(readings) == 1 else None


def _date_lines(name: str, values: pd.Series, table: _Table) -> tuple[str, list[str], list[str]]:
    """(role, comment lines, keys) of an event date: date_shift when it can run, else drop."""
    drop = ['operator = "drop"']
    if table.subject is None:
        return "quasi_identifier", ["# No person identifier to shift dates by: dropped."], drop
    parsed = _parse(values, table.source, name)
    if parsed is None:
        return "quasi_identifier", [
            "# Dates that parse in no single reading (or slashed dates that read both ways):",
            '# dropped. Set day_first or date_format with operator = "date_shift" to keep them.',
        ], drop  # fmt: skip
    day_first, (first, last) = parsed
    window = np.timedelta64(SHIFT_DAYS, "D")
    for other, (lo, hi) in table.identifying_dates.items():
        if first - window <= hi and lo <= last + window:
            return "quasi_identifier", [
                f"# Its dates reach into the range of {other}: once shifted, one could equal",
                f"# a real {other} value (and `verify --raw` would refuse the file): dropped.",
            ], drop  # fmt: skip
    keys = ['operator = "date_shift"', f'subject = "{table.subject}"', f"shift_days = {SHIFT_DAYS}"]
    if day_first is not None:
        keys.append(f"day_first = {'true' if day_first else 'false'}")
    return "other", [
        f"# An event date: all dates of one {table.subject} value move by the same keyed",
        f"# offset (within +-{SHIFT_DAYS} days), so intervals survive and calendar dates do",
        "# not; written as YYYY-MM-DD, without any time of day.",
    ], keys  # fmt: skip


def _free_text_lines(
    values: pd.Series, table: _Table
) -> tuple[str, list[str], list[str], TextFindings]:
    """(operator, comment lines, keys, findings) of a free-text column."""
    found = examine_free_text(values, table.names, REGION, presidio=table.presidio)
    seen = ", ".join(f"{k} in {n}" for k, n in found.found.items()) or "nothing"
    head = [f"# Sampled {found.sampled} texts; {found.detector} found {seen}."]
    if found.missed:
        missed = ", ".join(f"{k} in {n}" for k, n in found.missed.items())
        head.append(f"# After scrubbing, {missed} of them still hold personal data: dropped.")
        return "drop", head, ['operator = "drop"'], found
    head.append("# Scrubbed: e-mails, URLs, IPs, phones, ID numbers and known names become")
    head.append("# [EMAIL], [URL], ... Names the table does not hold survive; drop it if unneeded.")
    keys = ['operator = "scrub"', 'type = "text"']
    if table.name_sources:
        keys.append("names_from = [" + ", ".join(_q(n) for n in table.name_sources) + "]")
    return "scrub", head, keys, found


def _odd_cells(values: pd.Series) -> str | None:
    """``"nested"`` for cells of several values (Parquet lists, structs, maps), ``"bytes"``
    for binary cells, None for one text or number per cell."""
    present = values.dropna()
    if len(present) == 0:
        return None
    first = present.iloc[0]
    if isinstance(first, (list, dict, tuple, np.ndarray)):
        return "nested"
    return "bytes" if isinstance(first, (bytes, bytearray)) else None


def _propose(name: str, values: pd.Series, f: ColumnFacts, kind: str, table: _Table) -> Proposal:
    role = "other" if kind in ("nested", "bytes") else _role(name, kind, f)
    why = (
        f"# {name}: {kind.replace('_', ' ')}; {f.distinct} distinct of {f.rows - f.missing} "
        f"values (uniqueness {f.uniqueness:.2f}), {f.missing} missing."
    )
    head = [why, f"[columns.{_key(name)}]"]
    body: list[str]
    detector: str | None = None
    if kind == "nested":
        body = ['operator = "drop"']
        head.insert(1, "# Several values per cell (a list or a record): dropped; flatten it to keep it.")
    elif kind == "bytes":
        body = ['operator = "drop"']
        head.insert(1, '# Bytes, not text: dropped (operator = "hmac" would key them as they are).')
    elif role == "direct_identifier":
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
        elif kind == "phone" and _all_phones(values):
            body = ['operator = "hmac"', 'type = "text"', 'normalize = "phone"']
            head.insert(
                1,
                "# A keyed token of the E.164 number: (305) 555-0134 and +1 305 555 0134 get\n"
                f"# one token (numbers without + read as {REGION}).",
            )
        elif kind == "phone":
            body = ['operator = "hmac"', 'type = "text"']
            head.insert(
                1,
                f"# A keyed token of the text as written: some values are not {REGION} phone\n"
                '# numbers, so normalize = "phone" would refuse the run; fix them to merge\n'
                "# spellings of one number.",
            )
        else:
            body = ['operator = "hmac"', 'type = "text"']
            head.insert(1, "# A keyed token: joinable across files for the key holder only.")
    elif kind == "date":
        role, comment, body = _date_lines(name, values, table)
        head[1:1] = comment
    elif kind == "free_text":
        op, comment, body, findings = _free_text_lines(values, table)
        if op == "scrub" and role == "quasi_identifier":
            role = "other"  # scrubbed, not generalized: outside the k-anonymity set
        head[1:1] = comment
        detector = findings.detector
    elif role == "quasi_identifier":
        numeric = _generalize_numeric(name, values) if kind == "number" else None
        if numeric is not None:
            body = ['operator = "generalize"', 'type = "numeric"', *numeric]
            head[1:1] = ["# Generalized to bands by the lattice search until k holds.",
                         *bounds_comment()]  # fmt: skip
        elif kind == "category" and f.distinct <= MAX_DOMAIN:
            comment, keys = _hierarchy(values, table.k)
            body = ['operator = "generalize"', 'type = "categorical"', *keys]
            head[1:1] = ['# Rare values pooled first, then "*"; edit the hierarchy to taste.',
                         *comment]  # fmt: skip
        elif kind == "zip":
            body = ['operator = "generalize"', 'type = "zip"', "digits = 5", "keep_digits = [3, 1]"]
            head.insert(1, "# Truncated by the lattice search until k holds: 02134 -> 021** -> 0****\n"
                           '# -> "*" (leading zeros kept). Set digits for codes other than US ZIPs.')
        else:
            body = ['operator = "drop"']
            head.insert(1, "# Too many distinct values to generalize automatically: dropped.")
    elif kind == "empty" or (kind in ("category", "number") and f.uniqueness > 0.5):
        body = ['operator = "drop"']
        head.insert(1, "# Empty or nearly unique: dropped (a value this rare links a record to\n"
                       "# other releases). To keep it, generalize it as a quasi-identifier.")
    elif kind == "number" and f.distinct <= 2:
        comment, domain = _domain(values, table.k)
        body = ['operator = "keep"', 'type = "categorical"', domain]
        head[1:1] = ["# Kept as a category: two values (a 0/1 flag or label a model may predict).",
                     *comment]  # fmt: skip
    elif kind == "number":
        num = _numeric(values)
        lo, hi = public_range(float(num.min()), float(num.max()), bool((num % 1 == 0).all()))
        body = ['operator = "keep"', 'type = "numeric"',
                f"lower = {_num(lo)}", f"upper = {_num(hi)}"]  # fmt: skip
        head[1:1] = ["# Kept.", *bounds_comment()]
        if role == "sensitive" and f.distinct > MEASUREMENT_DISTINCT:
            head.insert(
                len(head) - 1,
                "# A sensitive measurement: to blur single values (keyed noise, clipped to\n"
                '# [lower, upper]; NOT differential privacy) use operator = "noise" with\n'
                '# distribution = "laplace" and scale = a spread in its unit.',
            )
    elif f.distinct <= MAX_DOMAIN:
        comment, domain = _domain(values, table.k)
        body = ['operator = "keep"', 'type = "categorical"', domain]
        head[1:1] = ["# Kept.", *comment]
    else:
        body = ['operator = "keep"', 'type = "text"']
        head.insert(1, "# Kept as text; consider a hierarchy if it is a quasi-identifier.")
    return Proposal(name, kind, role, f, [*head, f'role = "{role}"', *body], detector)


def _all_phones(values: pd.Series) -> bool:
    text = values.dropna().astype("string").str.strip()
    return all(e164(v, REGION) is not None for v in text[text != ""].unique())


def _identifying_dates(
    df: pd.DataFrame, classified: list[tuple[str, str, str, ColumnFacts]], source: str
) -> dict[str, DateRange]:
    """Date span of every direct identifier holding dates (a birth date); an unparseable
    one spans all time, so no shifted date can be proposed beside it."""
    spans: dict[str, DateRange] = {}
    for name, kind, role, _ in classified:
        if role == "direct_identifier" and kind in {"birth_date", "date"}:
            parsed = _parse(df[name], source, name)
            spans[name] = (
                parsed[1]
                if parsed is not None
                else (np.datetime64("0001-01-01"), np.datetime64("9999-12-31"))
            )
    return spans


def _subject(classified: list[tuple[str, str, str, ColumnFacts]]) -> str | None:
    """The column most likely to name the person: an id, a full name or an e-mail first."""
    ranked: list[tuple[bool, int, int, str]] = []
    for order, (name, kind, role, f) in enumerate(classified):
        if role != "direct_identifier" or kind in _NOT_SUBJECTS or hinted(name, "address"):
            continue
        personal = hinted(name, "identifier") or kind in {"person_name", "email"}
        ranked.append((not personal, f.missing, order, name))
    return min(ranked)[3] if ranked else None


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def inspect_table(
    input_path: Path,
    out_path: Path | None = None,
    *,
    k: int = 5,
    encoding: str | None = None,
    presidio: bool = True,
    review: bool = True,
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
    presidio : bool
        Let Presidio judge free-text columns when it and an English spaCy model are
        installed (:mod:`privtrain.anonymize.free_text`); False for the built-in patterns.
    review : bool
        Run the proposal (nothing written) and make proxies of quasi-identifiers, and
        kept columns that leave over 5 % of rows unique with them, quasi-identifiers or
        drops (:mod:`privtrain.anonymize.inspect_risk`); False for the per-column proposal.

    Returns
    -------
    list of Proposal
        One per column, in table order.

    Raises
    ------
    NotFound, InvalidInput
        The table cannot be read (:func:`privtrain.anonymize.tableio.read_table`).
    """
    df = read_table(Path(input_path), encoding)
    classified: list[tuple[str, str, str, ColumnFacts]] = []
    for name in df.columns:
        odd = _odd_cells(df[name])
        if odd is not None:
            # Lists, records or bytes in a cell: dropped, and kept out of every detector.
            df[name] = df[name].map(repr, na_action="ignore").astype("string")
            f = measure(df[name])
            classified.append((str(name), odd, "other", f))
            continue
        f = measure(df[name])
        kind = _kind(str(name), f)
        classified.append((str(name), kind, _role(str(name), kind, f), f))
    direct = [c for c in classified if c[2] == "direct_identifier"]
    # scrub's known names come from the name columns (default: every direct identifier).
    name_sources = [n for n, kd, _, _ in direct if kd == "person_name" or hinted(n, "person_name")]
    # A "category" whose values quote the table's people ("Patient Ivan Petrov reported
    # pain") is text about them: scrubbed, never kept with its values in the domain.
    pairs = _name_pairs(df, name_sources)
    for i, (name, kind, _, f) in enumerate(classified):
        if kind == "category" and pairs and _mentions(df[name], pairs):
            classified[i] = (name, "free_text", _role(name, "free_text", f), f)
    source = str(input_path)
    table = _Table(
        source=source,
        subject=_subject(classified),
        identifying_dates=_identifying_dates(df, classified, source),
        name_sources=name_sources,
        names=known_names(df, name_sources or [n for n, _, _, _ in direct])
        if any(kind == "free_text" for _, kind, _, _ in classified)
        else frozenset(),
        presidio=presidio,
        k=k,
    )
    proposals = [_propose(name, df[name], f, kind, table) for name, kind, _, f in classified]
    if review:
        from privtrain.anonymize.inspect_risk import review_proposals

        proposals = review_proposals(Path(input_path), encoding, df, proposals, k, Path(input_path))
    if out_path is not None:
        atomic_write_bytes(Path(out_path), policy_text(proposals, Path(input_path), k).encode())
    return proposals


def _word_pairs(text: str) -> set[tuple[str, str]]:
    words = re.findall(r"[^\W\d_]+", unicodedata.normalize("NFC", text).casefold())
    return set(zip(words, words[1:], strict=False))


def _name_pairs(df: pd.DataFrame, name_columns: list[str]) -> set[tuple[str, str]]:
    """Consecutive word pairs ("ivan", "petrov") of the distinct values of the name columns."""
    pairs: set[tuple[str, str]] = set()
    for name in name_columns:
        for value in df[name].dropna().unique():
            pairs |= _word_pairs(str(value))
    return pairs


def _mentions(values: pd.Series, pairs: set[tuple[str, str]]) -> bool:
    """Whether any distinct value holds a name's two consecutive words (case-folded)."""
    return any(_word_pairs(str(v)) & pairs for v in values.dropna().unique())


def policy_text(proposals: list[Proposal], source: Path, k: int) -> str:
    """The commented policy TOML for ``proposals``."""
    # Only released columns can carry l and t: a dropped one would be refused.
    sens = [p.name for p in proposals if p.role == "sensitive" and p.operator != "drop"]
    lines = [
        f"# Policy proposed by `privtrain anonymize inspect` for {source.name}.",
        "# Review every column: roles come from names and value patterns. Every column",
        "# is declared; an undeclared one would be refused.",
        f"# Lines marked {CONFIRM} are bounds and domains the signed manifest publishes:",
        "# none is an observed smallest or largest value, but each is for you to confirm",
        "# against the data's documentation (or to replace with a DP estimate).",
        "",
        "# Every combination of the quasi-identifiers is shared by >= k rows (Sweeney 2002).",
        f"k = {k}",
        "# At most this share of rows may be suppressed to reach k.",
        "max_suppression = 0.05",
        f'locale = "{LOCALE}"',
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
    lines += ["", *_split_lines(proposals)]
    for p in proposals:
        lines += ["", *p.lines]
    return "\n".join(lines) + "\n"


def _split_lines(proposals: list[Proposal]) -> list[str]:
    """The owner's train/test split: a kept train/test column, else a commented hold-out."""
    for p in proposals:
        if p.operator == "keep" and 'domain = ["train", "test"]' in p.lines:
            return [
                "# The owner's train/test split, recorded in the manifest: this column's values.",
                "[split]",
                f"column = {_q(p.name)}",
                'train = "train"',
                'test = "test"',
            ]
    return [
        "# The owner's train/test split, recorded in the manifest. Uncomment for a seeded",
        '# random hold-out: a column `split` ("train" / "test") is added to the output.',
        "# [split]",
        "# test_share = 0.2",
        f"# seed = {secrets.randbelow(2**31)}",
    ]
