"""``scrub``: replace identifiers inside free text by typed placeholders.

``"Call Miguel Hernandez at (305) 555-0134 or mh@example.org"`` becomes
``"Call [NAME] at [PHONE] or [EMAIL]"``. What is found, in this order (an earlier
kind wins where matches overlap):

* ``email``: ``local@domain.tld`` -> ``[EMAIL]``
* ``url``: ``http(s)://...`` or ``www....`` -> ``[URL]``
* ``ip``: IPv4 dotted quads and IPv6 addresses (checked by :mod:`ipaddress`) -> ``[IP]``
* ``phone``: numbers libphonenumber recognizes in the policy's ``phone_region``
  (``+``-prefixed ones in any region) -> ``[PHONE]``
* ``id``: US social security numbers (ddd-dd-dddd), card numbers passing the Luhn
  check, letter-and-digit tokens of 6+ characters holding 4+ digits, such as case
  numbers (``13011352CF10A``), and runs of 6+ digits that are not phone numbers -> ``[ID]``
* ``name``: every word of the known names -> ``[NAME]`` (runs of them collapse to one).
  Known names are the words (two letters or more) of the values of the
  ``names_from`` columns (default: the table's direct identifiers) that look like
  names: letters, spaces, hyphens, apostrophes and dots only, so e-mail addresses
  and case numbers add no words. Matching ignores case and Unicode composition.

Scrubbing is pattern matching, not understanding: a name the table does not hold
and that no pattern catches (a nickname, a misspelling) survives. Drop a free-text
column unless it is needed. Every pass runs on the distinct values of the column
(pandas string methods over the distinct texts), never per cell.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from privtrain.anonymize.operators.registry import OperatorContext, register_operator
from privtrain.anonymize.values import expand

_EMAIL = r"[\w.+'-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}"
_URL = r"(?i:\b(?:https?://|ftp://|www\.)[^\s<>\"']*[^\s<>\"'.,;:!?)\]])"
_IPV4 = r"\b(?:\d{1,3}\.){3}\d{1,3}\b"
_IPV6 = r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"
_SSN = r"\b\d{3}-\d{2}-\d{4}\b"
_CARD = r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])"
_CODE = r"\b(?=[A-Za-z0-9]*[A-Za-z])(?=(?:[A-Za-z]*\d){4})[A-Za-z0-9]{6,}\b"
_DIGIT_RUN = r"(?<![\w.,-])\d{6,}(?![\w-]|[.,]\d)"
_WORD = r"[^\W\d_](?:[^\W\d_]|['\u2019-](?=[^\W\d_]))*"
_NAMEISH = re.compile(r"[^\W\d_][^\W\d_ '\u2019.-]*(?:[ '\u2019.-]+[^\W\d_]+)*\.?")
_NAME_RUN = r"\[NAME\](?:[ \t]+\[NAME\])+"

PLACEHOLDERS = {
    "email": "[EMAIL]",
    "url": "[URL]",
    "ip": "[IP]",
    "phone": "[PHONE]",
    "id": "[ID]",
    "name": "[NAME]",
}


def known_names(frame: pd.DataFrame, columns: Iterable[str]) -> frozenset[str]:
    """Case-folded NFC words of the name-like values of ``columns`` (per distinct value).

    A pipeline that reads a table in chunks computes this once over the whole table
    and passes a frame holding those columns (or their distinct values).
    """
    words: set[str] = set()
    for name in columns:
        if name not in frame.columns:
            continue
        uniq = pd.Series(frame[name].dropna().unique(), dtype="string")
        uniq = uniq.str.normalize("NFC").str.strip()
        uniq = uniq[uniq.str.fullmatch(_NAMEISH.pattern).fillna(False).astype(bool)]
        for toks in uniq.str.casefold().str.findall(_WORD):
            words.update(t for t in toks if len(t) >= 2)
    return frozenset(words)


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _ip_or_keep(m: re.Match[str]) -> str:
    try:
        ipaddress.ip_address(m.group(0))
    except ValueError:
        return m.group(0)
    return PLACEHOLDERS["ip"]


def _card_or_keep(m: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", m.group(0))
    return PLACEHOLDERS["id"] if 13 <= len(digits) <= 19 and _luhn(digits) else m.group(0)


def _phones(texts: pd.Series, region: str) -> pd.Series:
    import phonenumbers

    def one(text: str) -> str:
        spans = [
            (m.start, m.end)
            for m in phonenumbers.PhoneNumberMatcher(text, region, phonenumbers.Leniency.POSSIBLE)
        ]
        for start, end in reversed(spans):
            text = text[:start] + PLACEHOLDERS["phone"] + text[end:]
        return text

    # Only texts with at least 7 digits can hold a phone number (vectorized filter).
    candidates = texts.str.count(r"\d").fillna(0).astype(int) >= 7
    if bool(candidates.any()):
        texts = texts.copy()
        texts[candidates] = texts[candidates].map(one)
    return texts


def scrub_texts(
    texts: pd.Series, kinds: Iterable[str], names: frozenset[str], region: str | None
) -> pd.Series:
    """Scrub a Series of distinct texts (``string`` dtype); returns the scrubbed Series."""
    kinds = set(kinds)
    out = texts.str.normalize("NFC")
    if "email" in kinds:
        out = out.str.replace(_EMAIL, PLACEHOLDERS["email"], regex=True)
    if "url" in kinds:
        out = out.str.replace(_URL, PLACEHOLDERS["url"], regex=True)
    if "ip" in kinds:
        out = out.str.replace(_IPV4, _ip_or_keep, regex=True)
        out = out.str.replace(_IPV6, _ip_or_keep, regex=True)
    if "id" in kinds:
        # Before phones: SSNs, card and case numbers also hold "possible" phone numbers.
        out = out.str.replace(_SSN, PLACEHOLDERS["id"], regex=True)
        out = out.str.replace(_CARD, _card_or_keep, regex=True)
        out = out.str.replace(_CODE, PLACEHOLDERS["id"], regex=True)
    if "phone" in kinds:
        out = _phones(out, region or "ZZ")
    if "id" in kinds:
        # After phones, so an unformatted phone number is a [PHONE], not an [ID].
        out = out.str.replace(_DIGIT_RUN, PLACEHOLDERS["id"], regex=True)
    if "name" in kinds and names:

        def name_or_keep(m: re.Match[str]) -> str:
            return PLACEHOLDERS["name"] if m.group(0).casefold() in names else m.group(0)

        out = out.str.replace(_WORD, name_or_keep, regex=True)
        out = out.str.replace(_NAME_RUN, PLACEHOLDERS["name"], regex=True)
    return out


def scrub_column(
    values: pd.Series, kinds: Iterable[str], names: frozenset[str], region: str | None
) -> pd.Series:
    """Scrub a free-text column, once per distinct value.

    Returns
    -------
    pd.Series
        ``string`` dtype on ``values.index``; missing cells stay missing (C-A04).
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    scrubbed = scrub_texts(pd.Series(uniques, dtype="string"), kinds, names, region)
    return expand(np.asarray(codes, dtype=np.int64), scrubbed.tolist(), values.index)


@register_operator("scrub")
class Scrub:
    """Typed placeholders for e-mails, URLs, IPs, phones, ID numbers and known names in text."""

    name = "scrub"

    def transform(self, values: pd.Series, ctx: OperatorContext) -> pd.Series:
        col = ctx.column
        names: frozenset[str] = frozenset()
        if "name" in col.scrub and ctx.known_names is not None:
            names = ctx.known_names
        elif "name" in col.scrub and ctx.frame is not None:
            names = known_names(ctx.frame, col.names_from)
        return scrub_column(values, col.scrub, names, col.phone_region)

    def output_domain(self, ctx: OperatorContext) -> dict[str, Any]:
        return {"type": "text", "scrubbed": list(ctx.column.scrub)}
