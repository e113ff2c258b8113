"""The anonymization policy: one TOML file that says what happens to every column.

Example::

    k = 10                      # k-anonymity target (Sweeney 2002)
    max_suppression = 0.05      # at most 5 % of rows may be suppressed
    locale = "en_US"            # Faker locale of pseudonyms

    [columns.email]
    operator = "pseudonym"
    role = "direct_identifier"
    type = "text"
    faker = "email"

    [columns.age]
    operator = "generalize"
    role = "quasi_identifier"
    type = "numeric"
    lower = 17
    upper = 90
    intervals = [5, 10, 20]     # bin width per level; the level above the last is "*"
    top_code = 90               # ages >= 90 become "90+"

    [columns.education]
    operator = "generalize"
    role = "quasi_identifier"
    type = "categorical"
    hierarchy = { "Bachelors" = ["Undergraduate", "*"], "Masters" = ["Graduate", "*"] }

Validation is strict: unknown keys, unknown operators and incomplete
generalization specs are refused with the file and the key named, because a
typo in a privacy policy must never silently weaken it.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from privtrain.anonymize.errors import PolicyError
from privtrain.anonymize.operators.registry import registered_operators

ROLES = frozenset({"direct_identifier", "quasi_identifier", "sensitive", "other"})
TYPES = frozenset({"categorical", "numeric", "text"})

_TOP_KEYS = frozenset({"k", "max_suppression", "locale", "columns", "description"})
_COLUMN_KEYS = frozenset(
    {
        "operator",
        "role",
        "type",
        "description",
        "domain",
        "lower",
        "upper",
        "faker",
        "intervals",
        "bottom_code",
        "top_code",
        "hierarchy",
    }
)


@dataclass(frozen=True)
class ColumnPolicy:
    """What the policy says about one column.

    Attributes
    ----------
    name : str
        Column name in the input table.
    operator : str
        One of ``keep``, ``drop``, ``hmac``, ``pseudonym``, ``generalize``.
    role : str
        ``direct_identifier``, ``quasi_identifier``, ``sensitive`` or ``other``.
    type : str
        ``categorical``, ``numeric`` or ``text``.
    domain : tuple[str, ...] | None
        Public list of values of a kept categorical column.
    lower, upper : float | None
        Public bounds of a numeric column (inclusive, in the column's unit).
    faker : str | None
        Faker provider of a ``pseudonym`` column (``"name"``, ``"email"``...).
    intervals : tuple[int, ...] | None
        Bin widths per generalization level of a numeric QI, each a multiple of the previous.
    bottom_code, top_code : int | None
        Values below ``bottom_code`` become ``"<b"``, values at or above ``top_code`` become
        ``"t+"`` at every generalized level (census-style bottom/top coding).
    hierarchy : dict[str, tuple[str, ...]] | None
        Raw value -> its ancestor labels for levels 1..height (ARX-style hierarchy rows).
    """

    name: str
    operator: str
    role: str
    type: str
    domain: tuple[str, ...] | None = None
    lower: float | None = None
    upper: float | None = None
    faker: str | None = None
    intervals: tuple[int, ...] | None = None
    bottom_code: int | None = None
    top_code: int | None = None
    hierarchy: dict[str, tuple[str, ...]] | None = None


@dataclass(frozen=True)
class Policy:
    """A validated policy file.

    Attributes
    ----------
    k : int
        k-anonymity target over the quasi-identifiers (Sweeney 2002).
    max_suppression : float
        Largest fraction of rows that may be suppressed, in [0, 1).
    locale : str
        Faker locale of pseudonyms.
    columns : dict[str, ColumnPolicy]
        Every column of the input, in policy order.
    source : Path
        The file it was read from (named in errors).
    sha256 : str
        Hex SHA-256 of the policy file bytes, recorded in the manifest.
    """

    k: int
    max_suppression: float
    locale: str
    columns: dict[str, ColumnPolicy]
    source: Path
    sha256: str

    @property
    def quasi_identifiers(self) -> list[str]:
        """Names of the generalized quasi-identifier columns, in policy order."""
        return [c.name for c in self.columns.values() if c.operator == "generalize"]

    @property
    def direct_identifiers(self) -> list[str]:
        """Names of the direct-identifier columns, in policy order."""
        return [c.name for c in self.columns.values() if c.role == "direct_identifier"]


def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> TypeGuard[float]:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


class _Checker:
    """Collects the file name so every error reads ``FILE: KEY: problem``."""

    def __init__(self, source: Path) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> PolicyError:
        return PolicyError(f"{self.source}: {key}: {problem}")


def load_policy(path: Path) -> Policy:
    """Read and validate a policy TOML file.

    Parameters
    ----------
    path : Path
        The policy file (UTF-8 TOML).

    Returns
    -------
    Policy

    Raises
    ------
    PolicyError
        Unreadable file, TOML syntax error, unknown key, unknown operator/role/type,
        a quasi-identifier without a generalization spec, an inconsistent hierarchy,
        or an unknown Faker provider; the message names the file and the key.
    """
    path = Path(path)
    chk = _Checker(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read policy ({exc.strerror})") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(f"{path}: not valid UTF-8 TOML ({exc})") from None

    for key in doc:
        if key not in _TOP_KEYS:
            raise chk.fail(key, f"unknown key (allowed: {', '.join(sorted(_TOP_KEYS))})")
    k = doc.get("k")
    if not _is_int(k) or k < 1:
        raise chk.fail("k", f"must be an integer >= 1, got {k!r}")
    max_supp = doc.get("max_suppression", 0.05)
    if not _is_num(max_supp) or not 0.0 <= float(max_supp) < 1.0:
        raise chk.fail("max_suppression", f"must be a number in [0, 1), got {max_supp!r}")
    locale = doc.get("locale", "en_US")
    if not isinstance(locale, str) or not locale:
        raise chk.fail("locale", f"must be a non-empty string, got {locale!r}")
    cols = doc.get("columns")
    if not isinstance(cols, dict) or not cols:
        raise chk.fail("columns", "missing or empty: declare every input column as [columns.NAME]")

    columns = {name: _column(chk, name, spec) for name, spec in cols.items()}
    pseudo = [c for c in columns.values() if c.operator == "pseudonym"]
    if pseudo:
        _check_faker(chk, locale, pseudo)
    return Policy(
        k=int(k),
        max_suppression=float(max_supp),
        locale=locale,
        columns=columns,
        source=path,
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def _column(chk: _Checker, name: str, spec: Any) -> ColumnPolicy:
    base = f"columns.{name}"
    if not isinstance(spec, dict):
        raise chk.fail(base, "must be a table [columns.NAME]")
    for key in spec:
        if key not in _COLUMN_KEYS:
            raise chk.fail(
                f"{base}.{key}", f"unknown key (allowed: {', '.join(sorted(_COLUMN_KEYS))})"
            )
    op = spec.get("operator")
    operators = registered_operators()
    if op not in operators:
        raise chk.fail(
            f"{base}.operator", f"unknown operator {op!r} (one of {', '.join(sorted(operators))})"
        )
    role = spec.get("role")
    if role not in ROLES:
        raise chk.fail(f"{base}.role", f"unknown role {role!r} (one of {', '.join(sorted(ROLES))})")
    typ = spec.get("type", "text" if op == "drop" else None)
    if typ not in TYPES:
        raise chk.fail(f"{base}.type", f"unknown type {typ!r} (one of {', '.join(sorted(TYPES))})")

    if role == "direct_identifier" and op not in {"drop", "hmac", "pseudonym"}:
        raise chk.fail(
            f"{base}.operator", f"a direct_identifier must be drop, hmac or pseudonym, not {op!r}"
        )
    if role == "quasi_identifier" and op not in {"generalize", "drop"}:
        raise chk.fail(
            f"{base}.operator",
            'a quasi_identifier needs operator = "generalize" (with intervals or hierarchy) '
            f'or "drop", not {op!r}',
        )
    if op == "generalize" and role != "quasi_identifier":
        raise chk.fail(f"{base}.operator", 'generalize is for role = "quasi_identifier" only')

    allowed: set[str] = {"operator", "role", "type", "description"}
    out: dict[str, Any] = {}
    if op == "pseudonym":
        allowed.add("faker")
        faker = spec.get("faker")
        if not isinstance(faker, str) or not faker.isidentifier() or faker.startswith("_"):
            raise chk.fail(
                f"{base}.faker", f"a pseudonym column needs a Faker provider name, got {faker!r}"
            )
        out["faker"] = faker
    elif op == "keep" and typ == "categorical":
        allowed.add("domain")
        out["domain"] = _domain(chk, f"{base}.domain", spec.get("domain"))
    elif op in {"keep", "generalize"} and typ == "numeric":
        allowed |= {"lower", "upper"}
        out["lower"], out["upper"] = _bounds(chk, base, spec)
    if op == "generalize":
        if typ == "numeric":
            allowed |= {"intervals", "bottom_code", "top_code"}
            out.update(_intervals(chk, base, spec, out["lower"], out["upper"]))
        elif typ == "categorical":
            allowed.add("hierarchy")
            out["hierarchy"] = _hierarchy(chk, f"{base}.hierarchy", spec.get("hierarchy"))
        else:
            raise chk.fail(f"{base}.type", "a generalized column must be numeric or categorical")
    for key in spec:
        if key not in allowed:
            raise chk.fail(f"{base}.{key}", f"not used with operator = {op!r} and type = {typ!r}")
    return ColumnPolicy(name=name, operator=op, role=role, type=typ, **out)


def _domain(chk: _Checker, key: str, dom: Any) -> tuple[str, ...]:
    if not isinstance(dom, list) or not dom or not all(isinstance(v, str) for v in dom):
        raise chk.fail(
            key, 'a kept categorical column needs domain = ["value", ...] (non-empty strings)'
        )
    if len(set(dom)) != len(dom):
        raise chk.fail(key, "lists a value twice")
    return tuple(dom)


def _bounds(chk: _Checker, base: str, spec: dict[str, Any]) -> tuple[float, float]:
    lo, hi = spec.get("lower"), spec.get("upper")
    if not _is_num(lo):
        raise chk.fail(f"{base}.lower", f"a numeric column needs a finite number, got {lo!r}")
    if not _is_num(hi):
        raise chk.fail(f"{base}.upper", f"a numeric column needs a finite number, got {hi!r}")
    if lo > hi:
        raise chk.fail(f"{base}.lower", f"lower ({lo}) is above upper ({hi})")
    return lo, hi


def _intervals(
    chk: _Checker, base: str, spec: dict[str, Any], lo: float, hi: float
) -> dict[str, Any]:
    widths = spec.get("intervals")
    if not isinstance(widths, list) or not widths or not all(_is_int(w) and w > 0 for w in widths):
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
    if not (_is_int(lo) and _is_int(hi)):
        raise chk.fail(f"{base}.lower", "interval generalization needs integer lower/upper bounds")
    codes: dict[str, Any] = {"intervals": tuple(widths), "bottom_code": None, "top_code": None}
    for key in ("bottom_code", "top_code"):
        v = spec.get(key)
        if v is None:
            continue
        if not _is_int(v) or not lo <= v <= hi:
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


def _hierarchy(chk: _Checker, key: str, h: Any) -> dict[str, tuple[str, ...]]:
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


def _check_faker(chk: _Checker, locale: str, cols: list[ColumnPolicy]) -> None:
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
