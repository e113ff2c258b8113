"""``pseudonym``: replace each value by a realistic fake one (Faker data), keyed and deterministic.

For a distinct normalized value v in column c, attempt i = 0, 1, ... derives

    d_i = HMAC-SHA256(secret, b"privtrain/pseudonym/v2\\x00" + c + b"\\x00"
                      + i (4 bytes, big-endian) + v)

(RFC 2104) and draws a candidate from it. For the providers of
:data:`~privtrain.anonymize.operators.faker_formats.PROVIDERS` (names, first / last
names, user names, e-mails) in a locale that keeps Faker's base code for them, the
candidate fills the locale's own Faker formats and word lists with their weights,
indexed by the 64-bit words of SHAKE-256(d_i) (FIPS 202), for all values of the column
at once (:mod:`privtrain.anonymize.operators.faker_formats`). Any other provider seeds
a Faker instance with the first 8 bytes of d_i and calls it (``faker.seed_instance``).

A candidate is taken unless it is "used": the pseudonym of another value of this column,
a raw value of this column (so a pseudonym is never mistaken for a real person of the
table), both compared case-folded, or not ASCII for e-mail / user-name style providers.
Values are resolved in rounds: round i draws attempt i for every value still without a
pseudonym, and hands out the candidates in the order of the values' attempt-0 HMAC.
Distinct inputs therefore get distinct pseudonyms (case C-A03), and the same key gives
the same pseudonym across files and runs (case C-A01). When two values compete for one
pseudonym in the same round, the same value wins in every file that holds both. A file
holding only the loser gives it the contested pseudonym: collision freedom is per column
of one output, which is all a keyed map over a finite Faker space can offer without a
shared registry.

The domain prefix differs from the ``hmac`` operator's, so a published token never
equals a pseudonym seed. :data:`SCHEME` names this derivation (v1 drew every value
through Faker and resolved values one by one).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from faker import Faker

from privtrain.anonymize.errors import AnonymizationError
from privtrain.anonymize.keyed import keyed_digests
from privtrain.anonymize.operators.faker_formats import template
from privtrain.anonymize.operators.hmac_token import normalized_input
from privtrain.anonymize.operators.registry import OperatorContext, register_operator
from privtrain.anonymize.values import distinct_normalized, expand

SCHEME = "privtrain/pseudonym/v2"
"""Names the derivation below; recorded in manifests so a changed scheme is detected."""
DOMAIN = SCHEME.encode() + b"\x00"
MAX_ATTEMPTS = 64
_ASCII_PROVIDERS = frozenset(
    {"user_name", "domain_name", "domain_word", "hostname", "url", "uri", "slug"}
)

Draw = Callable[[list[bytes]], list[str]]


def needs_ascii(provider: str) -> bool:
    """True for providers whose values must be ASCII (e-mail addresses, user names, hosts)."""
    return "email" in provider or provider in _ASCII_PROVIDERS


@lru_cache(maxsize=8)
def _faker(locale: str) -> Faker:
    # Building a Faker loads every provider (~0.1 s); every call re-seeds, so one
    # instance per locale is safe to share within a thread.
    return Faker(locale)


@lru_cache(maxsize=32)
def _drawer(provider: str, locale: str) -> Draw:
    """Candidates from digests: the compiled Faker template, else Faker seeded per digest."""
    fake = _faker(locale)
    compiled = template(fake, provider)
    if compiled is not None:
        width = 8 * compiled.words

        def from_template(digests: list[bytes]) -> list[str]:
            stream = b"".join(hashlib.shake_256(d).digest(width) for d in digests)
            words = np.frombuffer(stream, dtype=">u8").astype(np.uint64)
            return compiled.draw(words.reshape(len(digests), compiled.words))

        return from_template
    method = getattr(fake, provider)

    def from_faker(digests: list[bytes]) -> list[str]:
        out = []
        for d in digests:
            fake.seed_instance(int.from_bytes(d[:8], "big"))
            out.append(str(method()))
        return out

    return from_faker


def pseudonyms(
    values: pd.Series,
    column: str,
    secret: bytes,
    provider: str,
    locale: str,
    source: str = "<input>",
    normalized: tuple[npt.NDArray[np.int64], list[str]] | None = None,
) -> pd.Series:
    """Pseudonymize a column, one draw per distinct normalized value (and round).

    Parameters
    ----------
    values : pd.Series
        Column of length n.
    column : str
        Column name, bound into each seed.
    secret : bytes
        32-byte HMAC key.
    provider : str
        Faker provider name (``"name"``, ``"first_name"``, ``"email"``...).
    locale : str
        Faker locale.
    source : str
        Input file name for error messages.
    normalized : (codes, uniques) | None
        The column already factorized over normalized values (E.164 phone numbers);
        None: :func:`~privtrain.anonymize.values.distinct_normalized`.

    Returns
    -------
    pd.Series
        ``string`` dtype; missing cells stay missing (C-A04); distinct inputs map to
        distinct outputs.

    Raises
    ------
    AnonymizationError
        The provider's space is too small for the column's distinct values; names the
        column and the counts. Raised before anything is written.
    """
    codes, uniques = normalized if normalized is not None else distinct_normalized(values)
    try:
        draw = _drawer(provider, locale)
    except AttributeError:
        raise AnonymizationError(
            f"{source}: column {column!r}: Faker has no provider {provider!r} ({locale})"
        ) from None
    ascii_only = needs_ascii(provider)
    prefix = DOMAIN + column.encode("utf-8") + b"\x00"
    raw = [u.encode("utf-8") for u in uniques]

    def seeds(pending: list[int], attempt: int) -> list[bytes]:
        head = prefix + attempt.to_bytes(4, "big")
        return keyed_digests(secret, head, (raw[i] for i in pending))

    first = seeds(list(range(len(uniques))), 0)
    # Case-folded, so "Miguel Hernandez" is never handed out while "miguel hernandez" is real.
    taken: set[str] = {u.casefold() for u in uniques}
    result: list[str] = [""] * len(uniques)
    pending = sorted(range(len(uniques)), key=first.__getitem__)
    for attempt in range(MAX_ATTEMPTS):
        if not pending:
            break
        digests = [first[i] for i in pending] if attempt == 0 else seeds(pending, attempt)
        left = []
        for i, candidate in zip(pending, draw(digests), strict=True):
            folded = candidate.casefold()
            if folded in taken or (ascii_only and not candidate.isascii()):
                left.append(i)
                continue
            taken.add(folded)
            result[i] = candidate
        pending = left
    if pending:
        raise AnonymizationError(
            f"{source}: column {column!r}: Faker provider {provider!r} ({locale}) ran out of "
            f"pseudonyms: {len(uniques)} distinct values, only {len(uniques) - len(pending)} "
            f"distinct pseudonyms found ({MAX_ATTEMPTS} tries each for the rest); use a "
            f'provider with a larger space (e.g. "name") or operator = "hmac"'
        )
    return expand(codes, result, values.index)


@register_operator("pseudonym")
class Pseudonym:
    """Realistic, keyed, collision-free fake values from Faker."""

    name = "pseudonym"

    def transform(self, values: pd.Series, ctx: OperatorContext) -> pd.Series:
        assert ctx.column.faker is not None
        return pseudonyms(
            values,
            ctx.column.name,
            ctx.key.secret,
            ctx.column.faker,
            ctx.locale,
            ctx.source,
            normalized_input(values, ctx),
        )

    def output_domain(self, ctx: OperatorContext) -> dict[str, Any]:
        return {"type": "identifier"}
