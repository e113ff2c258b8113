"""Faker's own formats and word lists, filled from given random words instead of Faker's RNG.

Faker's ``name()`` picks one of the locale's ``formats`` (weighted when the provider
gives weights) and replaces each ``{{token}}`` by a pick from the word list behind the
token (``first_names_male``, ``last_names``, ``prefixes_female``...). ``email()`` is
``user_name() + "@" + safe_domain_name()`` in lower case, where ``user_name()`` fills
one of ``user_name_formats``, replaces ``#``, ``%``, ``$``, ``!``, ``@`` by digits and
``?`` by letters (``bothify``), and makes the result ASCII with the provider's
``_to_ascii`` and Faker's ``slugify``.

:func:`template` compiles that for one provider and locale from the locale's Faker
providers, so the values come from the same data with the same weights as Faker's. It
returns None when the locale replaces any method involved with code of its own (say a
``name()`` that romanizes), or the provider is not one of :data:`PROVIDERS`; callers
then draw from Faker itself. :meth:`Template.draw` fills the template for many values at
once, each from its own row of 64-bit random words (numpy, no Python loop per cell
except the ASCII folding of user names).
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from faker import Faker
from faker.providers.internet import Provider as InternetProvider
from faker.providers.person import Provider as PersonProvider
from faker.utils.text import slugify

Words = npt.NDArray[np.uint64]
_GENDERS = ("male", "female", "nonbinary")
# Token -> the provider attribute its base method draws from.
_ATTR = {
    "first_name": "first_names",
    "last_name": "last_names",
    "prefix": "prefixes",
    "suffix": "suffixes",
    **{f"{part}_{g}": f"{attr}_{g}" for g in _GENDERS for part, attr in (
        ("first_name", "first_names"), ("last_name", "last_names"),
        ("prefix", "prefixes"), ("suffix", "suffixes"),
    )},
}
# Token -> the method its base method falls back to when the attribute is absent.
_FALLBACK = {f"{part}_{g}": part for g in _GENDERS for part in (
    "first_name", "last_name", "prefix", "suffix")}
# Provider -> the attribute holding its formats (the base method falls back to ``formats``).
_NAME_FORMATS = {"name": "formats", **{f"name_{g}": f"formats_{g}" for g in _GENDERS}}
_DIGITS = {
    "#": {d: 1.0 for d in "0123456789"},
    "%": {d: 1.0 for d in "123456789"},
    "$": {d: 1.0 for d in "23456789"},
    "!": {"": 10.0, **{d: 1.0 for d in "0123456789"}},
    "@": {"": 9.0, **{d: 1.0 for d in "123456789"}},
    "?": {c: 1.0 for c in string.ascii_letters},
}
_TOKEN_OPEN, _TOKEN_CLOSE = "{{", "}}"


@dataclass(frozen=True)
class Choice:
    """A weighted pick among ``values``: ``cum`` is the cumulative weight, ending at 1."""

    values: npt.NDArray[np.object_]
    cum: npt.NDArray[np.float64]

    @classmethod
    def of(cls, elements: Sequence[str] | Mapping[str, float]) -> Choice:
        """Faker's ``random_element`` semantics: a mapping is weighted, a sequence uniform."""
        if isinstance(elements, Mapping):
            values, weights = list(elements), np.asarray(list(elements.values()), dtype=float)
        else:
            values, weights = list(elements), np.ones(len(elements))
        if not values:
            raise ValueError("empty element list")
        cum = np.cumsum(weights) / weights.sum()
        out = np.empty(len(values), dtype=object)
        out[:] = [str(v) for v in values]
        return cls(out, cum)

    def index(self, words: Words) -> npt.NDArray[np.intp]:
        """Index picked by each 64-bit word (its top 53 bits as a uniform number in [0, 1))."""
        u = (words >> np.uint64(11)).astype(np.float64) * 2.0**-53
        return np.minimum(np.searchsorted(self.cum, u, side="right"), len(self.values) - 1)

    def pick(self, words: Words) -> npt.NDArray[np.object_]:
        return self.values[self.index(words)]


Part = str | Choice


@dataclass(frozen=True)
class Template:
    """One Faker provider of one locale as data: weighted formats of literal and chosen parts.

    Attributes
    ----------
    formats : Choice
        Picks the format (its values are unused; ``parts[i]`` is format i).
    parts : list of list of Part
        Each format as literal text and :class:`Choice` parts.
    finish : callable | None
        Applied to each filled format (the ASCII folding of a user name).
    domains : Choice | None
        For e-mail: the domain after ``@`` (then the whole address is lower-cased).
    """

    formats: Choice
    parts: list[list[Part]]
    finish: Callable[[str], str] | None = None
    domains: Choice | None = None

    @property
    def words(self) -> int:
        """64-bit random words :meth:`draw` reads per value."""
        chosen = max(sum(isinstance(p, Choice) for p in parts) for parts in self.parts)
        return 1 + chosen + (self.domains is not None)

    def draw(self, words: Words) -> list[str]:
        """Fill the template once per row of ``words`` (shape (n, :attr:`words`), uint64)."""
        n = len(words)
        fmt = self.formats.index(words[:, 0])
        out = np.empty(n, dtype=object)
        for f, parts in enumerate(self.parts):
            rows = np.flatnonzero(fmt == f)
            if rows.size == 0:
                continue
            acc = np.full(rows.size, "", dtype=object)
            col = 1
            for part in parts:
                if isinstance(part, Choice):
                    acc = acc + part.pick(words[rows, col])
                    col += 1
                else:
                    acc = acc + part
            out[rows] = acc
        filled: list[str] = out.tolist()
        if self.finish is not None:
            filled = [self.finish(s) for s in filled]
        if self.domains is not None:
            domains = self.domains.pick(words[:, -1]).tolist()
            filled = [f"{u}@{d}".lower() for u, d in zip(filled, domains, strict=True)]
        return filled


def _is_base(provider: object, method: str, base: type) -> bool:
    return getattr(type(provider), method, None) is getattr(base, method, object())


def _person_words(fake: Faker, token: str) -> Choice | None:
    """The word list behind ``{{token}}`` when the locale keeps Faker's base person code."""
    p = getattr(getattr(fake, token, None), "__self__", None)
    if not isinstance(p, PersonProvider):
        return None
    while token in _ATTR and _is_base(p, token, PersonProvider):
        if hasattr(p, _ATTR[token]):
            return Choice.of(getattr(p, _ATTR[token]))
        if token not in _FALLBACK:
            return None
        token = _FALLBACK[token]
    return None


def _compile(fake: Faker, fmt: str, bothify: bool) -> list[Part] | None:
    """A format string as parts; None when a token is not a plain word list."""
    parts: list[Part] = []
    rest = fmt
    while rest:
        start = rest.find(_TOKEN_OPEN)
        literal = rest if start < 0 else rest[:start]
        for ch in literal:
            parts.append(Choice.of(_DIGITS[ch]) if bothify and ch in _DIGITS else ch)
        if start < 0:
            break
        end = rest.find(_TOKEN_CLOSE, start)
        if end < 0:
            return None
        token = rest[start + 2 : end].strip()
        words = _person_words(fake, token) if token.isidentifier() else None
        if words is None:
            return None
        parts.append(words)
        rest = rest[end + 2 :]
    return parts


def _formats(
    fake: Faker, formats: Sequence[str] | Mapping[str, float], bothify: bool = False
) -> tuple[Choice, list[list[Part]]] | None:
    choice = Choice.of(formats)
    compiled = [_compile(fake, str(f), bothify) for f in choice.values]
    if any(c is None for c in compiled):
        return None
    return choice, [c for c in compiled if c is not None]


def _user_name(fake: Faker) -> Template | None:
    p = getattr(fake.user_name, "__self__", None)
    if not isinstance(p, InternetProvider) or not _is_base(p, "user_name", InternetProvider):
        return None
    got = _formats(fake, p.user_name_formats, bothify=True)
    if got is None:
        return None

    def finish(s: str, to_ascii: Callable[[str], str] = p._to_ascii) -> str:
        return str(slugify(to_ascii(s.lower()), allow_unicode=True))

    return Template(got[0], got[1], finish)


PROVIDERS = frozenset({*_ATTR, *_NAME_FORMATS, "user_name", "email", "safe_email"})
"""Faker providers :func:`template` can compile (when the locale keeps Faker's base code)."""


def template(fake: Faker, provider: str) -> Template | None:
    """``provider`` of ``fake``'s locale as a :class:`Template`, or None (use Faker itself).

    Parameters
    ----------
    fake : Faker
        A single-locale Faker instance.
    provider : str
        Faker provider method name (``"name"``, ``"first_name"``, ``"email"``...).
    """
    if provider not in PROVIDERS:
        return None
    try:
        return _template(fake, provider)
    except (AttributeError, TypeError, ValueError):
        return None


def _template(fake: Faker, provider: str) -> Template | None:
    if provider in _ATTR:
        words = _person_words(fake, provider)
        return None if words is None else Template(Choice.of([""]), [[words]])
    if provider in _NAME_FORMATS:
        p: Any = getattr(fake.name, "__self__", None)
        if not isinstance(p, PersonProvider) or not _is_base(p, provider, PersonProvider):
            return None
        attr = _NAME_FORMATS[provider]
        got = _formats(fake, getattr(p, attr) if hasattr(p, attr) else p.formats)
        return None if got is None else Template(*got)
    user = _user_name(fake)
    if provider == "user_name":
        return user
    p = getattr(fake.email, "__self__", None)
    if user is None or not isinstance(p, InternetProvider):
        return None
    method = "email" if provider == "email" else "safe_email"
    if not all(_is_base(p, m, InternetProvider) for m in (method, "safe_domain_name")):
        return None
    return Template(user.formats, user.parts, user.finish, Choice.of(p.safe_domain_names))
