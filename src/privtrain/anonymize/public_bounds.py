"""Public bounds and domains for ``anonymize inspect``: never the private data's extremes.

Every numeric bound and category domain of a policy travels in the signed manifest
and in every trained model's parameter file, so it is a public declaration of the
data owner, not a summary of the rows. ``inspect`` proposes:

* numeric bounds: round public limits strictly beyond the observed range
  (:func:`public_range`): the largest round number below the smallest value and the
  smallest round number above the largest one, rounded at the order of magnitude of
  the values, so no proposed bound equals an observed minimum or maximum, and a bound
  says only in which decade (or power of ten) the extreme lies;
* category domains: the standard values of a well-known vocabulary (a 0/1 flag,
  true/false, yes/no, a train/test split) when the observed values are a subset of
  one (:func:`declared_domain`), whatever values the rows hold; otherwise the observed
  values, marked ``no public domain known``.

Each is marked for the owner to confirm with a ``TO CONFIRM`` comment in the proposed
policy (:func:`bounds_comment`, :func:`domain_comment`): the owner replaces it with the
documented domain (the data's codebook), or with a differentially private estimate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

CONFIRM = "TO CONFIRM"
NO_PUBLIC_DOMAIN = "no public domain known"

# (what it is, its values in order): a column whose observed values are a subset of one
# is given all of them, so the domain does not say which of them occur.
VOCABULARIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("a 0/1 flag", ("0", "1")),
    ("a true/false flag", ("false", "true")),
    ("a true/false flag", ("False", "True")),
    ("a true/false flag", ("FALSE", "TRUE")),
    ("a yes/no flag", ("no", "yes")),
    ("a yes/no flag", ("No", "Yes")),
    ("a Y/N flag", ("N", "Y")),
    ("a train/test split", ("train", "test")),
)


def _round(x: float, step: float) -> float:
    digits = max(0, -math.floor(math.log10(step)))
    value = round(x, digits)
    return float(int(value)) if float(value).is_integer() else value


def public_range(lo: float, hi: float, integral: bool = True) -> tuple[float, float]:
    """Round bounds strictly beyond the observed ``[lo, hi]``.

    The rounding step is the power of ten at or below the values' magnitude
    (``max(|lo|, |hi|, hi - lo)``), at least 10 for whole numbers (a step of 1 would put
    a bound right next to the extreme): ages 17..90 give 10..100, dollars 0..99,999 give
    -1..100,000, a score 1..10 gives 0..20, a count 0..7 gives -1..10. An extreme of
    exactly 0 gets the unit (1, or the step when that is finer) beyond it, so a count
    stays near its natural range.

    Parameters
    ----------
    lo, hi : float
        The observed smallest and largest value.
    integral : bool
        Whether the values are whole numbers.

    Returns
    -------
    (lower, upper)
        ``lower < lo`` and ``upper > hi``; whole numbers as integral floats.
    """
    magnitude = max(abs(lo), abs(hi), hi - lo)
    step = 10.0 ** math.floor(math.log10(magnitude)) if magnitude > 0 else 1.0
    if integral:
        step = max(step, 10.0)
    unit = min(step, 1.0)
    if lo == 0:
        lower = -unit
    else:
        m = math.floor(lo / step)
        lower = _round(m * step, step)
        if lower >= lo:
            lower = _round((m - 1) * step, step)
    if hi == 0:
        upper = unit
    else:
        m = math.ceil(hi / step)
        upper = _round(m * step, step)
        if upper <= hi:
            upper = _round((m + 1) * step, step)
    return lower, upper


def declared_domain(observed: Iterable[str]) -> tuple[list[str], str | None]:
    """The domain to propose for these observed values, and the vocabulary it comes from.

    Returns
    -------
    (values, vocabulary)
        A known vocabulary's values and its description when the observed values are a
        subset of it; else the observed values, sorted, and None (no public domain known).
    """
    seen = set(observed)
    for what, values in VOCABULARIES:
        if seen and seen <= set(values):
            return list(values), what
    return sorted(seen), None


def bounds_comment() -> list[str]:
    """The ``TO CONFIRM`` comment of proposed numeric bounds."""
    return [
        f"# {CONFIRM} lower/upper: round public limits strictly beyond the observed range,",
        "# never the smallest or largest value (the manifest publishes the bounds).",
        "# Set the documented range of the column if it has one.",
    ]


def domain_comment(
    vocabulary: str | None, count: int, rare: int, k: int, what: str = "domain"
) -> list[str]:
    """The ``TO CONFIRM`` comment of a proposed domain (or hierarchy) of ``count`` values.

    ``rare`` is how many of the observed values occur in fewer than ``k`` rows.
    """
    if vocabulary is not None:
        return [
            f"# {CONFIRM} {what}: the standard values of {vocabulary}, declared whatever",
            "# the rows hold (not the list of observed values).",
        ]
    few = f"; {rare} of them in fewer than {k} rows" if rare else ""
    when = " when the column is released raw (level 0)" if what == "hierarchy" else ""
    return [
        f"# {CONFIRM} {what}: {NO_PUBLIC_DOMAIN}, so these are the {count} observed values{few}.",
        f"# The manifest publishes them{when}, and a rare value listed there is disclosed:",
        "# replace them with the documented code list of the column.",
    ]
