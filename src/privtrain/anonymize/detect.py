"""What a column holds, judged from its name and a sample of its distinct values.

Offline and model-free, in the manner of Presidio's pattern recognizers: each kind
is a regular expression (or a small rule) run once over up to ``SAMPLE`` distinct
non-missing values with pandas' vectorized ``str.fullmatch``; the share of values
that match decides. Column-name hints (``dob``, ``email``, ``zip``...) break ties
and catch what values alone cannot (a first name looks like any word); a full name
is also recognized by its first word being one of Faker's en_US given names.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass

import pandas as pd

SAMPLE = 2_000
MATCH_SHARE = 0.9

_MONTH = (
    r"(?i:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)

PATTERNS: dict[str, str] = {
    "email": r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    "url": r"(?:https?://|www\.)\S+",
    "ipv4": r"(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)",
    "ipv6": r"(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{0,4}",
    "phone": r"\+?\(?\d{1,4}\)?(?:[ .-]?\(?\d{2,4}\)?){2,4}",
    # Every common way of writing a calendar date, parseable or not: a column is judged
    # a date column by this, and the date parser then decides whether it reads one way.
    "date": (
        r"\d{4}[-./]\d{1,2}[-./]\d{1,2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?"
        r"|\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}"
        rf"|{_MONTH}\.? \d{{1,2}},? \d{{4}}"
        rf"|\d{{1,2}}[ -]{_MONTH}\.?[ -]\d{{2,4}}"
    ),
    "zip": r"\d{5}(?:-\d{4})?",
    "integer": r"[+-]?\d+",
    "number": r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?",
    "person_name": r"[^\W\d_][^\W\d_'.-]*(?:[ '.-]+[^\W\d_][^\W\d_'.-]*){0,3}",
    "code": r"(?=[A-Za-z0-9-]*\d)(?=[A-Za-z0-9-]*[A-Za-z])[A-Za-z0-9-]{6,}",
}
_COMPILED = {k: re.compile(v) for k, v in PATTERNS.items()}

NAME_HINTS: dict[str, tuple[str, ...]] = {
    "person_name": ("name", "first", "last", "surname", "given", "forename", "fullname"),
    "email": ("email", "e_mail", "mail"),
    "phone": ("phone", "tel", "mobile", "fax"),
    "birth": ("dob", "birth", "born"),
    "identifier": ("id", "ssn", "passport", "case_number", "account", "licence", "license",
                   "mrn", "record_id", "patient_id", "uuid"),
    "address": ("address", "street", "addr"),
    "zip": ("zip", "postal", "postcode", "plz"),
    "ip": ("ip", "ip_address"),
    "quasi": ("age", "sex", "gender", "race", "ethnic", "marital", "country", "nationality",
              "education", "religion", "language"),
    "sensitive": ("recid", "income", "salary", "diagnos", "disease", "score", "outcome",
                  "label", "target", "health", "medical", "charge", "offense", "crime"),
}  # fmt: skip

# Column names that say "a person's name" whatever the column's cardinality: a name
# word, unless another word says whose or what name it is not (a product, a file...).
PERSON_NAME_WORDS = frozenset({
    "name", "names", "fullname", "firstname", "lastname", "surname", "forename",
    "givenname", "familyname", "maidenname", "middlename",
})
NOT_PERSON_WORDS = frozenset({
    "product", "company", "business", "brand", "org", "organization", "organisation",
    "file", "filename", "path", "host", "hostname", "domain", "server", "app", "device",
    "model", "item", "drug", "medication", "test", "procedure", "city", "country", "state",
    "street", "place", "location", "site", "facility", "hospital", "clinic", "school",
    "store", "shop", "vendor", "merchant", "bank", "team", "department", "dept", "project",
    "event", "table", "column", "field", "dataset", "class", "type", "category", "species",
    "breed", "plan", "program", "course", "unit", "ward",
})  # fmt: skip
# Given names of many Latin-script locales, so "Marta Kowalska" or "Klara Novak" read as
# names as surely as "Ann Smith" (Faker's person providers; a locale missing from the
# installed Faker is skipped).
_NAME_LOCALES = ("en_US", "en_GB", "en_IN", "de_DE", "fr_FR", "es_ES", "it_IT", "pt_BR",
                 "nl_NL", "pl_PL", "cs_CZ", "sv_SE", "da_DK", "fi_FI", "ro_RO", "hu_HU",
                 "tr_TR", "id_ID", "vi_VN")


def _given_names() -> frozenset[str]:
    names: set[str] = set()
    for locale in _NAME_LOCALES:
        try:
            provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
        except ImportError:
            continue
        first = getattr(provider, "first_names", ())
        names.update(str(n).lower() for n in (first.keys() if isinstance(first, dict) else first))
    return frozenset(names)


_FIRST_NAMES = _given_names()


def tokens(column: str) -> list[str]:
    """Lower-case word parts of a column name (``"c_case_number"`` -> c, case, number)."""
    spaced = re.sub(r"([a-z])([A-Z])", r"\1_\2", column)
    return [t for t in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if t]


def hinted(column: str, kind: str) -> bool:
    """True when the column name carries one of ``NAME_HINTS[kind]``."""
    words = tokens(column)
    joined = "_".join(words)
    for hint in NAME_HINTS[kind]:
        if "_" in hint:
            if hint in joined:
                return True
        elif hint in words or (len(hint) >= 5 and any(w.startswith(hint) for w in words)):
            return True
    return False


def names_a_person(column: str) -> bool:
    """True when the column name says it holds people's names (``name``, ``full_name``,
    ``patient_name``, ``first``, ``LastName``), not a product's or a file's."""
    words = tokens(column)
    if words in (["first"], ["last"], ["given"]):
        return True
    pairs = {a + b for a, b in zip(words, words[1:], strict=False)}
    return bool((set(words) | pairs) & PERSON_NAME_WORDS) and not set(words) & NOT_PERSON_WORDS


@dataclass(frozen=True)
class ColumnFacts:
    """Measured facts about one column.

    Attributes
    ----------
    rows, missing, distinct : int
        Row count, missing cells, distinct non-missing values.
    uniqueness : float
        distinct / non-missing, in [0, 1] (1: every value occurs once).
    singletons : float
        Share of non-missing rows whose value occurs exactly once.
    shares : dict[str, float]
        Kind -> share of the sampled distinct values matching it.
    mean_length : float
        Mean length of the sampled distinct values, characters.
    max_length : int
        Largest length of the sampled distinct values, characters.
    total_length : int
        Summed length of the sampled distinct values, characters (what a domain
        listing them would hold).
    """

    rows: int
    missing: int
    distinct: int
    uniqueness: float
    singletons: float
    shares: dict[str, float]
    mean_length: float
    max_length: int
    total_length: int

    def is_(self, kind: str, share: float = MATCH_SHARE) -> bool:
        return self.shares.get(kind, 0.0) >= share


def measure(values: pd.Series) -> ColumnFacts:
    """Count and pattern-match a column (vectorized over its distinct values)."""
    text = values.astype("string").str.strip()
    text = text.mask(text == "")
    present = text.dropna()
    counts = present.value_counts(sort=False)
    n_present = len(present)
    sample = pd.Series(counts.index[:SAMPLE], dtype="string")
    shares = {}
    lengths = sample.str.len()
    if len(sample):
        for kind, pattern in PATTERNS.items():
            shares[kind] = float(sample.str.fullmatch(pattern).fillna(False).mean())
        shares["first_and_last_name"] = _first_and_last_share(sample)
    return ColumnFacts(
        rows=len(values),
        missing=int(len(values) - n_present),
        distinct=len(counts),
        uniqueness=len(counts) / n_present if n_present else 0.0,
        singletons=float(counts[counts == 1].sum()) / n_present if n_present else 0.0,
        shares=shares,
        mean_length=float(lengths.mean()) if len(sample) else 0.0,
        max_length=int(lengths.max()) if len(sample) else 0,
        total_length=int(lengths.sum()),
    )


def _first_and_last_share(sample: pd.Series) -> float:
    """Share of values written like ``Ann Smith``: two to four words of letters, the
    first one a common given name (Faker's lists of many locales)."""
    shaped = sample.str.fullmatch(r"[^\W\d_]+(?:[ '-][^\W\d_]+){1,3}").fillna(False)
    first = sample.str.split(n=1).str[0].str.lower().isin(_FIRST_NAMES)
    return float((shaped & first).mean())
