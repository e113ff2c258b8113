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
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privtrain.anonymize import policy_specs as specs
from privtrain.anonymize.errors import PolicyError
from privtrain.anonymize.operators import options
from privtrain.anonymize.operators.registry import registered_operators
from privtrain.anonymize.released_risk import RiskSettings, parse_risk

ROLES = frozenset({"direct_identifier", "quasi_identifier", "sensitive", "other"})
TYPES = frozenset({"categorical", "numeric", "text", "date", "zip"})

_TOP_KEYS = frozenset(
    {
        "k",
        "max_suppression",
        "locale",
        "columns",
        "description",
        "l",
        "l_diversity",
        "t",
        "sensitive_attributes",
        "missing_values",
        "phone_region",
        "split",
        "risk",
    }
)
_SPLIT_KEYS = frozenset({"column", "train", "test", "test_share", "seed"})
SPLIT_COLUMN = "split"
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
        "subject",
        "shift_days",
        "date_format",
        "day_first",
    }
    | options.MASK_KEYS
    | options.NOISE_KEYS
    | options.SCRUB_KEYS
    | options.DATE_KEYS
    | options.ZIP_KEYS
    | options.PHONE_KEYS
)


@dataclass(frozen=True)
class ColumnPolicy:
    """What the policy says about one column.

    Attributes
    ----------
    name : str
        Column name in the input table.
    operator : str
        A registered operator: ``keep``, ``drop``, ``hmac``, ``pseudonym``, ``mask``,
        ``generalize``, ``date_shift``, ``noise``, ``scrub``.
    role : str
        ``direct_identifier``, ``quasi_identifier``, ``sensitive`` or ``other``.
    type : str
        ``categorical``, ``numeric``, ``text``, or (generalized only) ``date`` or ``zip``.
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
    subject : str | None
        ``date_shift``: the column naming the person whose dates move together.
    shift_days : int | None
        ``date_shift``: offsets are drawn from [-shift_days, +shift_days] days.
    date_format : str | None
        ``strftime`` format of a date column (None: ISO, month-name, or slashed with day_first).
    day_first : bool | None
        How slashed dates read (04/03/2021 = 4 March when true); None refuses them.
    keep_first, keep_last : int | None
        ``mask``: characters shown at the start / end; the rest become ``mask_char``.
    mask_char : str | None
        ``mask``: the masking character (default ``"*"``).
    distribution : str | None
        ``noise``: ``"laplace"`` or ``"gaussian"``.
    scale : float | None
        ``noise``: Laplace b or Gaussian sigma, in the column's unit.
    scrub : tuple of str
        ``scrub``: entity kinds replaced (``email``, ``url``, ``ip``, ``phone``, ``id``, ``name``).
    names_from : tuple of str
        ``scrub``: columns whose values are the known names (default: the direct identifiers).
    date_range : tuple[str, str] | None
        ``generalize`` of a ``date`` column: public ISO bounds (inclusive).
    date_levels : tuple of str | None
        ``generalize`` of a ``date`` column: ``("month", "year")`` or a subset, finest first.
    digits : int | None
        ``generalize`` of a ``zip`` column: length of the code (5 for US ZIPs).
    keep_digits : tuple of int | None
        ``generalize`` of a ``zip`` column: prefix length kept per level, e.g. ``(3, 1)``.
    normalize : str | None
        ``"phone"``: ``hmac`` / ``pseudonym`` inputs are rewritten to E.164 first.
    phone_region : str | None
        Region of phone numbers written without ``+`` (``"US"``).
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
    subject: str | None = None
    shift_days: int | None = None
    date_format: str | None = None
    day_first: bool | None = None
    keep_first: int | None = None
    keep_last: int | None = None
    mask_char: str | None = None
    distribution: str | None = None
    scale: float | None = None
    scrub: tuple[str, ...] = ()
    names_from: tuple[str, ...] = ()
    date_range: tuple[str, str] | None = None
    date_levels: tuple[str, ...] | None = None
    digits: int | None = None
    keep_digits: tuple[int, ...] | None = None
    normalize: str | None = None
    phone_region: str | None = None


@dataclass(frozen=True)
class SplitPolicy:
    """The data owner's train/test split (``[split]``), recorded in the manifest.

    Either an existing column (``method = "column"``: a kept categorical column whose
    domain holds ``train`` and ``test``), or a seeded random hold-out
    (``method = "random_holdout"``: ``test_share`` of the input rows, drawn from
    ``seed`` and the row number, go to a column ``column`` added to the output).

    Attributes
    ----------
    method : str
        ``"column"`` or ``"random_holdout"``.
    column, train, test : str
        The split column and its values for training and test rows.
    test_share : float | None
        Random hold-out: the expected share of test rows, in (0, 1).
    seed : int | None
        Random hold-out: the seed (the same file and seed give the same split).
    """

    method: str
    column: str
    train: str
    test: str
    test_share: float | None = None
    seed: int | None = None

    def manifest_entry(self) -> dict[str, Any]:
        """The manifest's ``split``: what the platform trains and tests on."""
        entry: dict[str, Any] = {
            "method": self.method, "column": self.column, "train": self.train, "test": self.test,
        }  # fmt: skip
        if self.method == "random_holdout":
            entry |= {"test_share": self.test_share, "seed": self.seed}
        return entry


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
    l : int | None
        l-diversity target over ``sensitive_attributes`` (Machanavajjhala et al. 2007).
    l_diversity : str
        ``"distinct"`` or ``"entropy"``.
    t : float | None
        t-closeness target in [0, 1] (Li et al. 2007).
    sensitive_attributes : tuple of str
        Columns l and t apply to; by default every kept column with role ``sensitive``
        when l or t is set.
    missing_values : tuple of str
        Cell values read as missing besides the empty cell (e.g. ``["NA", "null"]``);
        by default none, so a person named "NA" keeps the name (case C-A05).
    split : SplitPolicy | None
        The owner's train/test split (``[split]``), None when the policy declares none.
    risk : RiskSettings
        The ``[risk]`` table: uniqueness threshold, accepted columns, acknowledged
        proxies (:mod:`privtrain.anonymize.released_risk`).
    """

    k: int
    max_suppression: float
    locale: str
    columns: dict[str, ColumnPolicy]
    source: Path
    sha256: str
    l: int | None = None
    l_diversity: str = "distinct"
    t: float | None = None
    sensitive_attributes: tuple[str, ...] = ()
    missing_values: tuple[str, ...] = ()
    split: SplitPolicy | None = None
    risk: RiskSettings = field(default_factory=RiskSettings)

    @property
    def quasi_identifiers(self) -> list[str]:
        """Names of the generalized quasi-identifier columns, in policy order."""
        return [c.name for c in self.columns.values() if c.operator == "generalize"]

    @property
    def direct_identifiers(self) -> list[str]:
        """Names of the direct-identifier columns, in policy order."""
        return [c.name for c in self.columns.values() if c.role == "direct_identifier"]


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
    chk = specs.Checker(path)
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
    if not specs.is_int(k) or k < 1:
        raise chk.fail("k", f"must be an integer >= 1, got {k!r}")
    max_supp = doc.get("max_suppression", 0.05)
    if not specs.is_num(max_supp) or not 0.0 <= float(max_supp) < 1.0:
        raise chk.fail("max_suppression", f"must be a number in [0, 1), got {max_supp!r}")
    locale = doc.get("locale", "en_US")
    if not isinstance(locale, str) or not locale:
        raise chk.fail("locale", f"must be a non-empty string, got {locale!r}")
    cols = doc.get("columns")
    if not isinstance(cols, dict) or not cols:
        raise chk.fail("columns", "missing or empty: declare every input column as [columns.NAME]")
    region = doc.get("phone_region")
    if region is not None:
        options.check_region(chk, "phone_region", region)
    else:
        # "en_US" -> "US": numbers written without "+" are read as the locale's country.
        region = locale.rpartition("_")[2] or None
    direct = [
        n for n, c in cols.items() if isinstance(c, dict) and c.get("role") == "direct_identifier"
    ]

    columns = {name: _column(chk, name, spec, region, direct) for name, spec in cols.items()}
    for c in columns.values():
        if c.subject is not None and c.subject not in columns:
            raise chk.fail(f"columns.{c.name}.subject", f"{c.subject!r} is not a declared column")
        for other in c.names_from:
            if other not in columns:
                raise chk.fail(
                    f"columns.{c.name}.names_from", f"{other!r} is not a declared column"
                )
    pseudo = [c for c in columns.values() if c.operator == "pseudonym"]
    if pseudo:
        specs.check_faker(chk, locale, pseudo)
    return Policy(
        k=int(k),
        max_suppression=float(max_supp),
        locale=locale,
        columns=columns,
        source=path,
        sha256=hashlib.sha256(raw).hexdigest(),
        split=_split(chk, doc.get("split"), columns),
        **_models(chk, doc, columns),
        risk=parse_risk(chk, doc.get("risk"), columns),
    )


def _split(chk: specs.Checker, spec: Any, columns: dict[str, ColumnPolicy]) -> SplitPolicy | None:
    """The ``[split]`` table: an existing kept column, or a seeded random hold-out."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise chk.fail("split", "must be a table [split]")
    for key in spec:
        if key not in _SPLIT_KEYS:
            allowed = ", ".join(sorted(_SPLIT_KEYS))
            raise chk.fail(f"split.{key}", f"unknown key (allowed: {allowed})")
    train, test = spec.get("train", "train"), spec.get("test", "test")
    for key, value in (("train", train), ("test", test)):
        if not isinstance(value, str) or not value:
            raise chk.fail(f"split.{key}", f"must be a non-empty string, got {value!r}")
    if train == test:
        raise chk.fail("split.test", f"train and test must differ, both are {train!r}")
    if "test_share" not in spec:
        if "seed" in spec:
            raise chk.fail("split.seed", "a seed needs test_share (a random hold-out)")
        column = spec.get("column")
        col = columns.get(column) if isinstance(column, str) else None
        if col is None:
            raise chk.fail(
                "split.column",
                f"{column!r} is not a declared column; name the column holding the split, or "
                "declare test_share and seed for a random hold-out",
            )
        if col.operator != "keep" or col.type != "categorical":
            raise chk.fail(
                "split.column",
                f'{column!r} must be released as is: operator = "keep", type = "categorical"',
            )
        missing = [v for v in (train, test) if v not in (col.domain or ())]
        if missing:
            raise chk.fail("split.column", f"{missing} not in columns.{column}.domain")
        return SplitPolicy("column", column, train, test)
    share, seed = spec.get("test_share"), spec.get("seed")
    if not specs.is_num(share) or not 0.0 < float(share) < 1.0:
        raise chk.fail("split.test_share", f"must be a number in (0, 1), got {share!r}")
    if not specs.is_int(seed) or not 0 <= seed < 2**63:
        raise chk.fail(
            "split.seed", f"a random hold-out needs seed = an integer >= 0, got {seed!r}"
        )
    column = spec.get("column", SPLIT_COLUMN)
    if not isinstance(column, str) or not column:
        raise chk.fail("split.column", f"must be a non-empty string, got {column!r}")
    if column in columns:
        raise chk.fail(
            "split.column",
            f"{column!r} is an input column; a random hold-out adds a new column: name another "
            "(column = ...), or drop test_share and seed to use this one as the split",
        )
    return SplitPolicy("random_holdout", column, train, test, float(share), int(seed))


def _date_shift(chk: specs.Checker, base: str, spec: dict[str, Any]) -> dict[str, Any]:
    subject = spec.get("subject")
    if not isinstance(subject, str) or not subject:
        raise chk.fail(
            f"{base}.subject", 'date_shift needs subject = "COLUMN" (whose dates move together)'
        )
    days = spec.get("shift_days", 365)
    if not specs.is_int(days) or not 1 <= days <= 36_500:
        raise chk.fail(f"{base}.shift_days", f"must be an integer in [1, 36500] days, got {days!r}")
    return {"subject": subject, "shift_days": int(days), **_date_parsing(chk, base, spec)}


def _date_parsing(chk: specs.Checker, base: str, spec: dict[str, Any]) -> dict[str, Any]:
    fmt = spec.get("date_format")
    if fmt is not None and (not isinstance(fmt, str) or "%" not in fmt):
        raise chk.fail(
            f"{base}.date_format", f'must be a strftime format such as "%d.%m.%Y", got {fmt!r}'
        )
    day_first = spec.get("day_first")
    if day_first is not None and not isinstance(day_first, bool):
        raise chk.fail(f"{base}.day_first", f"must be true or false, got {day_first!r}")
    return {"date_format": fmt, "day_first": day_first}


def _models(
    chk: specs.Checker, doc: dict[str, Any], columns: dict[str, ColumnPolicy]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    l_val = doc.get("l")
    if l_val is not None:
        if not specs.is_int(l_val) or l_val < 2:
            raise chk.fail("l", f"must be an integer >= 2, got {l_val!r}")
        out["l"] = int(l_val)
    kind = doc.get("l_diversity", "distinct")
    if kind not in ("distinct", "entropy"):
        raise chk.fail("l_diversity", f'must be "distinct" or "entropy", got {kind!r}')
    out["l_diversity"] = kind
    t_val = doc.get("t")
    if t_val is not None:
        if not specs.is_num(t_val) or not 0.0 < float(t_val) <= 1.0:
            raise chk.fail("t", f"must be a number in (0, 1], got {t_val!r}")
        out["t"] = float(t_val)
    sens = doc.get("sensitive_attributes")
    if sens is None:
        names = [c.name for c in columns.values() if c.role == "sensitive" and c.operator != "drop"]
    else:
        if not isinstance(sens, list) or not all(isinstance(v, str) for v in sens):
            raise chk.fail("sensitive_attributes", "must be a list of column names")
        names = list(sens)
        for name in names:
            col = columns.get(name)
            if col is None or col.operator == "drop" or col.role == "direct_identifier":
                raise chk.fail(
                    "sensitive_attributes",
                    f"{name!r} must be a declared, kept column that is not a direct identifier",
                )
    if ("l" in out or "t" in out) and not names:
        raise chk.fail(
            "l", 'l and t need sensitive_attributes (or columns with role = "sensitive")'
        )
    out["sensitive_attributes"] = tuple(names) if ("l" in out or "t" in out) else ()
    missing = doc.get("missing_values", [])
    if not isinstance(missing, list) or not all(isinstance(v, str) for v in missing):
        raise chk.fail("missing_values", 'must be a list of strings, e.g. ["NA", "null"]')
    out["missing_values"] = tuple(missing)
    return out


def _column(
    chk: specs.Checker, name: str, spec: Any, region: str | None, direct: list[str]
) -> ColumnPolicy:
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
    typ = spec.get("type", "text" if op in {"drop", "date_shift"} else None)
    if typ not in TYPES:
        raise chk.fail(f"{base}.type", f"unknown type {typ!r} (one of {', '.join(sorted(TYPES))})")

    if role == "direct_identifier" and op not in {"drop", "hmac", "pseudonym", "mask"}:
        raise chk.fail(
            f"{base}.operator",
            f"a direct_identifier must be drop, hmac, pseudonym or mask, not {op!r}",
        )
    if role == "quasi_identifier" and op not in {"generalize", "drop"}:
        raise chk.fail(
            f"{base}.operator",
            'a quasi_identifier needs operator = "generalize" (with intervals or hierarchy) '
            f'or "drop", not {op!r}',
        )
    if op == "generalize" and role != "quasi_identifier":
        raise chk.fail(f"{base}.operator", 'generalize is for role = "quasi_identifier" only')
    if typ in {"date", "zip"} and op not in {"generalize", "drop"}:
        raise chk.fail(
            f"{base}.type",
            f'type = "{typ}" is for generalize (or drop); use type = "text" with {op}',
        )
    if op == "noise" and typ != "numeric":
        raise chk.fail(f"{base}.type", f'noise needs type = "numeric", not {typ!r}')
    if op == "scrub" and typ != "text":
        raise chk.fail(f"{base}.type", f'scrub is for free text: type = "text", not {typ!r}')

    allowed: set[str] = {"operator", "role", "type", "description"}
    out: dict[str, Any] = {}
    if op == "date_shift":
        allowed |= {"subject", "shift_days", "date_format", "day_first"}
        out.update(_date_shift(chk, base, spec))
    if op in {"hmac", "pseudonym"} and "normalize" in spec:
        allowed |= options.PHONE_KEYS
        out.update(options.phone(chk, base, spec, region))
    if op == "mask":
        allowed |= options.MASK_KEYS
        out.update(options.mask(chk, base, spec, role))
    elif op == "noise":
        allowed |= options.NOISE_KEYS
        out["lower"], out["upper"] = specs.bounds(chk, base, spec)
        out.update(options.noise(chk, base, spec))
    elif op == "scrub":
        allowed |= options.SCRUB_KEYS
        out.update(options.scrub(chk, base, spec, [d for d in direct if d != name], region))
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
        out["domain"] = specs.domain(chk, f"{base}.domain", spec.get("domain"))
    elif op in {"keep", "generalize"} and typ == "numeric":
        allowed |= {"lower", "upper"}
        out["lower"], out["upper"] = specs.bounds(chk, base, spec)
    if op == "generalize":
        if typ == "numeric":
            allowed |= {"intervals", "bottom_code", "top_code"}
            out.update(specs.intervals(chk, base, spec, out["lower"], out["upper"]))
        elif typ == "categorical":
            allowed.add("hierarchy")
            out["hierarchy"] = specs.hierarchy(chk, f"{base}.hierarchy", spec.get("hierarchy"))
        elif typ == "date":
            allowed |= options.DATE_KEYS
            out.update(options.date_generalization(chk, base, spec))
            out.update(_date_parsing(chk, base, spec))
        elif typ == "zip":
            allowed |= options.ZIP_KEYS
            out.update(options.zip_generalization(chk, base, spec))
        else:
            raise chk.fail(
                f"{base}.type", "a generalized column must be numeric, categorical, date or zip"
            )
    for key in spec:
        if key not in allowed:
            raise chk.fail(f"{base}.{key}", f"not used with operator = {op!r} and type = {typ!r}")
    return ColumnPolicy(name=name, operator=op, role=role, type=typ, **out)
