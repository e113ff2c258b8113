"""Validation of the per-column specs of a policy (domains, bounds, intervals, hierarchies).

Split from :mod:`privtrain.anonymize.policy` so that each file holds one idea: the
policy's shape there, the rules of each spec here. Every error names the file and
the key.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, TypeGuard

from privtrain.anonymize.errors import PolicyError


def is_int(v: object) -> TypeGuard[int]:
    """True for an int that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: object) -> TypeGuard[float]:
    """True for a finite int or float (not a bool)."""
    return (is_int(v) or isinstance(v, float)) and math.isfinite(v)


class Checker:
    """Collects the file name so every error reads ``FILE: KEY: problem``."""

    def __init__(self, source: Path) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> PolicyError:
        return PolicyError(f"{self.source}: {key}: {problem}")


def domain(chk: Checker, key: str, dom: Any) -> tuple[str, ...]:
    if not isinstance(dom, list) or not dom or not all(isinstance(v, str) for v in dom):
        raise chk.fail(
            key, 'a kept categorical column needs domain = ["value", ...] (non-empty strings)'
        )
    if len(set(dom)) != len(dom):
        raise chk.fail(key, "lists a value twice")
    return tuple(dom)


def bounds(chk: Checker, base: str, spec: dict[str, Any]) -> tuple[float, float]:
    lo, hi = spec.get("lower"), spec.get("upper")
    if not is_num(lo):
        raise chk.fail(f"{base}.lower", f"a numeric column needs a finite number, got {lo!r}")
    if not is_num(hi):
        raise chk.fail(f"{base}.upper", f"a numeric column needs a finite number, got {hi!r}")
    if lo > hi:
        raise chk.fail(f"{base}.lower", f"lower ({lo}) is above upper ({hi})")
    return lo, hi


def intervals(
    chk: Checker, base: str, spec: dict[str, Any], lo: float, hi: float
) -> dict[str, Any]:
    widths = spec.get("intervals")
    if not isinstance(widths, list) or not widths or not all(is_int(w) and w > 0 for w in widths):
        raise chk.fail(
            f"{base}.intervals",
            "a numeric quasi_identifier needs intervals = [w1, w2, ...] (positive integers)",
        )
    for a, b in itertools.pairwise(widths):
        # Nested bins keep the hierarchy a tree, which the lattice search's monotonicity needs.
        if b % a != 0:
            raise chk.fail(
                f"{base}.intervals",
                f"each width must be a multiple of the previous ({b} is not a multiple of {a})",
            )
    if not (is_int(lo) and is_int(hi)):
        raise chk.fail(f"{base}.lower", "interval generalization needs integer lower/upper bounds")
    codes: dict[str, Any] = {"intervals": tuple(widths), "bottom_code": None, "top_code": None}
    for key in ("bottom_code", "top_code"):
        v = spec.get(key)
        if v is None:
            continue
        if not is_int(v) or not lo <= v <= hi:
            raise chk.fail(
                f"{base}.{key}",
                f"must be an integer within [lower, upper] = [{lo}, {hi}], got {v!r}",
            )
        codes[key] = v
    if (
        codes["bottom_code"] is not None
        and codes["top_code"] is not None
        and codes["bottom_code"] >= codes["top_code"]
    ):
        raise chk.fail(f"{base}.bottom_code", "must be below top_code")
    return codes


def hierarchy(chk: Checker, key: str, h: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(h, dict) or not h:
        raise chk.fail(
            key,
            'a categorical quasi_identifier needs hierarchy = { "value" = ["level1", ..., "*"] }',
        )
    height = None
    rows: dict[str, tuple[str, ...]] = {}
    for value, row in h.items():
        if not isinstance(row, list) or not row or not all(isinstance(v, str) and v for v in row):
            raise chk.fail(f"{key}.{value}", "must be a non-empty list of non-empty strings")
        if height is None:
            height = len(row)
        elif len(row) != height:
            raise chk.fail(f"{key}.{value}", f"has {len(row)} levels, other rows have {height}")
        rows[value] = tuple(row)
    assert height is not None
    # Full-domain generalization assumes a tree: a label at level j has one parent at j+1.
    for j in range(height - 1):
        parent: dict[str, tuple[str, str]] = {}
        for value, row in rows.items():
            seen = parent.setdefault(row[j], (row[j + 1], value))
            if seen[0] != row[j + 1]:
                raise chk.fail(
                    f"{key}.{value}",
                    f"level {j + 1} label {row[j]!r} has parent {row[j + 1]!r} here "
                    f"but {seen[0]!r} under {seen[1]!r}; a hierarchy must be a tree",
                )
    return rows


def check_faker(chk: Checker, locale: str, cols: list[Any]) -> None:
    from faker import Faker

    try:
        fake = Faker(locale)
    except AttributeError:
        raise chk.fail("locale", f"Faker has no locale {locale!r}") from None
    for col in cols:
        assert col.faker is not None
        if not callable(getattr(fake, col.faker, None)):
            raise chk.fail(
                f"columns.{col.name}.faker", f"Faker ({locale}) has no provider {col.faker!r}"
            )
