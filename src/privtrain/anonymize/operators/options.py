"""Policy options of the ``mask``, ``noise`` and ``scrub`` operators, of date and ZIP
generalization, and of phone normalization: validation, one rule per function.

Each function takes the policy's :class:`~privtrain.anonymize.policy_specs.Checker`
(so every error reads ``FILE: columns.NAME.KEY: problem``), the key prefix and the
column's raw TOML table, and returns the validated fields of
:class:`~privtrain.anonymize.policy.ColumnPolicy` it sets.
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from privtrain.anonymize.policy_specs import Checker, is_int, is_num

MASK_KEYS = frozenset({"keep_first", "keep_last", "mask_char"})
NOISE_KEYS = frozenset({"lower", "upper", "distribution", "scale"})
SCRUB_KEYS = frozenset({"scrub", "names_from", "phone_region"})
DATE_KEYS = frozenset({"lower", "upper", "date_levels", "date_format", "day_first"})
ZIP_KEYS = frozenset({"digits", "keep_digits"})
PHONE_KEYS = frozenset({"normalize", "phone_region"})

DISTRIBUTIONS = ("laplace", "gaussian")
DATE_LEVELS = ("month", "year")
SCRUB_KINDS = ("email", "url", "ip", "phone", "id", "name")
# A masked direct identifier may show at most this many characters (e.g. a phone's
# last four digits); more would turn the mask into a partial copy of the identifier.
MAX_SHOWN_OF_IDENTIFIER = 4


def mask(chk: Checker, base: str, spec: dict[str, Any], role: str) -> dict[str, Any]:
    """``keep_first`` / ``keep_last`` (characters shown, default 0 / 4) and ``mask_char``."""
    out: dict[str, Any] = {}
    for key, default in (("keep_first", 0), ("keep_last", 4)):
        v = spec.get(key, default)
        if not is_int(v) or not 0 <= v <= 64:
            raise chk.fail(f"{base}.{key}", f"must be an integer in [0, 64] characters, got {v!r}")
        out[key] = int(v)
    if (
        role == "direct_identifier"
        and out["keep_first"] + out["keep_last"] > MAX_SHOWN_OF_IDENTIFIER
    ):
        raise chk.fail(
            f"{base}.keep_last",
            f"a masked direct_identifier may show at most {MAX_SHOWN_OF_IDENTIFIER} characters "
            f"(keep_first + keep_last = {out['keep_first'] + out['keep_last']}); use hmac to keep "
            "values joinable",
        )
    char = spec.get("mask_char", "*")
    if not isinstance(char, str) or len(char) != 1 or char.isalnum() or char.isspace():
        raise chk.fail(
            f"{base}.mask_char",
            f"must be one character that is not a letter, digit or space, got {char!r}",
        )
    out["mask_char"] = char
    return out


def noise(chk: Checker, base: str, spec: dict[str, Any]) -> dict[str, Any]:
    """``distribution`` (``laplace`` or ``gaussian``) and ``scale`` (> 0, column units)."""
    kind = spec.get("distribution", "laplace")
    if kind not in DISTRIBUTIONS:
        raise chk.fail(f"{base}.distribution", f'must be "laplace" or "gaussian", got {kind!r}')
    scale = spec.get("scale")
    if not is_num(scale) or scale <= 0:
        raise chk.fail(
            f"{base}.scale",
            f"noise needs scale = a positive number in the column's unit (Laplace b or Gaussian "
            f"sigma), got {scale!r}",
        )
    return {"distribution": kind, "scale": float(scale)}


def scrub(
    chk: Checker,
    base: str,
    spec: dict[str, Any],
    direct_identifiers: list[str],
    default_region: str | None,
) -> dict[str, Any]:
    """``scrub`` (entity kinds, default all), ``names_from`` (default: every direct
    identifier) and ``phone_region`` (default: the policy's) for numbers without ``+``."""
    kinds = spec.get("scrub", list(SCRUB_KINDS))
    if (
        not isinstance(kinds, list)
        or not kinds
        or not all(isinstance(k, str) and k in SCRUB_KINDS for k in kinds)
    ):
        raise chk.fail(
            f"{base}.scrub",
            f"must be a non-empty list drawn from {list(SCRUB_KINDS)}, got {kinds!r}",
        )
    names = spec.get("names_from", direct_identifiers)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise chk.fail(f"{base}.names_from", "must be a list of column names")
    out: dict[str, Any] = {"scrub": tuple(dict.fromkeys(kinds)), "names_from": tuple(names)}
    if "phone" in out["scrub"]:
        region = spec.get("phone_region", default_region)
        out["phone_region"] = check_region(chk, f"{base}.phone_region", region)
    return out


def _iso_date(chk: Checker, key: str, v: Any) -> str:
    if isinstance(v, dt.date) and not isinstance(v, dt.datetime):
        return v.isoformat()
    if isinstance(v, str):
        try:
            return dt.date.fromisoformat(v).isoformat()
        except ValueError:
            pass
    raise chk.fail(key, f"must be a date such as 1900-01-01 (TOML date or ISO string), got {v!r}")


def date_generalization(chk: Checker, base: str, spec: dict[str, Any]) -> dict[str, Any]:
    """``lower`` / ``upper`` (dates), ``date_levels`` (subset of month, year, in that order)."""
    lo = _iso_date(chk, f"{base}.lower", spec.get("lower"))
    hi = _iso_date(chk, f"{base}.upper", spec.get("upper"))
    if lo > hi:
        raise chk.fail(f"{base}.lower", f"lower ({lo}) is after upper ({hi})")
    levels = spec.get("date_levels", list(DATE_LEVELS))
    if (
        not isinstance(levels, list)
        or not levels
        or not all(isinstance(v, str) for v in levels)
        or [v for v in DATE_LEVELS if v in levels] != levels
    ):
        raise chk.fail(
            f"{base}.date_levels",
            f'must list "month" and/or "year", finest first (e.g. ["month", "year"]), got {levels!r}',
        )
    return {"date_range": (lo, hi), "date_levels": tuple(levels)}


def zip_generalization(chk: Checker, base: str, spec: dict[str, Any]) -> dict[str, Any]:
    """``digits`` (code length, default 5) and ``keep_digits`` (prefix kept per level, decreasing)."""
    digits = spec.get("digits", 5)
    if not is_int(digits) or not 2 <= digits <= 12:
        raise chk.fail(f"{base}.digits", f"must be an integer in [2, 12], got {digits!r}")
    keep = spec.get("keep_digits")
    if (
        not isinstance(keep, list)
        or not keep
        or not all(is_int(v) and 1 <= v < digits for v in keep)
        or any(b >= a for a, b in itertools.pairwise(keep))
    ):
        raise chk.fail(
            f"{base}.keep_digits",
            f"a ZIP quasi_identifier needs keep_digits = [n1, n2, ...], strictly decreasing, each "
            f"in [1, {digits - 1}] (e.g. [3, 1]), got {keep!r}",
        )
    return {"digits": int(digits), "keep_digits": tuple(int(v) for v in keep)}


def phone(
    chk: Checker, base: str, spec: dict[str, Any], default_region: str | None
) -> dict[str, Any]:
    """``normalize = "phone"``: E.164 before tokenizing; region from the column or the policy."""
    how = spec.get("normalize")
    if how != "phone":
        raise chk.fail(f"{base}.normalize", f'the only normalization is "phone", got {how!r}')
    region = spec.get("phone_region", default_region)
    return {"normalize": "phone", "phone_region": check_region(chk, f"{base}.phone_region", region)}


def check_region(chk: Checker, key: str, region: Any) -> str:
    """A phonenumbers region code such as ``"US"`` or ``"DE"``."""
    import phonenumbers

    if not isinstance(region, str) or region not in phonenumbers.SUPPORTED_REGIONS:
        raise chk.fail(
            key,
            f'needs a two-letter region for numbers written without "+" (e.g. "US"), got {region!r}',
        )
    return region
