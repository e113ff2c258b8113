"""``pseudonym``: replace each value by a realistic fake one (Faker), keyed and deterministic.

For a distinct normalized value v in column c, attempt i = 0, 1, ... seeds a
Faker instance with the first 8 bytes of

    HMAC-SHA256(secret, b"privtrain/pseudonym/v1\\x00" + c + b"\\x00" + i (4 bytes, big-endian) + v)

(RFC 2104) and calls the policy's provider (``faker.seed_instance``). The first
attempt whose result is unused is taken. "Unused" means: not the pseudonym of
another value of this column, not a raw value of this column (so a pseudonym is
never mistaken for a real person of the table), and ASCII for e-mail / user-name
style providers. Distinct inputs therefore get distinct pseudonyms (case C-A03),
and the same key gives the same pseudonym across files and runs (case C-A01).

Values are resolved in the order of their attempt-0 HMAC, so when two values
compete for one pseudonym the same value wins in every file that holds both.
A file holding only the loser gives it the contested pseudonym: collision
freedom is per column of one output, which is all a keyed map over a finite
Faker space can offer without a shared registry.

The domain prefix differs from the ``hmac`` operator's, so a published token
never equals a pseudonym seed.
"""

from __future__ import annotations

import hmac
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from faker import Faker

from privtrain.anonymize.errors import AnonymizationError
from privtrain.anonymize.operators.hmac_token import normalized_input
from privtrain.anonymize.operators.registry import OperatorContext, register_operator
from privtrain.anonymize.values import distinct_normalized, expand

DOMAIN = b"privtrain/pseudonym/v1\x00"
MAX_ATTEMPTS = 64
_ASCII_PROVIDERS = frozenset(
    {"user_name", "domain_name", "domain_word", "hostname", "url", "uri", "slug"}
)


def needs_ascii(provider: str) -> bool:
    """True for providers whose values must be ASCII (e-mail addresses, user names, hosts)."""
    return "email" in provider or provider in _ASCII_PROVIDERS


@lru_cache(maxsize=8)
def _faker(locale: str) -> Faker:
    # Building a Faker loads every provider (~0.1 s); every call re-seeds, so one
    # instance per locale is safe to share within a thread.
    return Faker(locale)


def pseudonyms(
    values: pd.Series,
    column: str,
    secret: bytes,
    provider: str,
    locale: str,
    source: str = "<input>",
    normalized: tuple[npt.NDArray[np.int64], list[str]] | None = None,
) -> pd.Series:
    """Pseudonymize a column, one Faker draw per distinct normalized value.

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
    fake = _faker(locale)
    draw = getattr(fake, provider)
    ascii_only = needs_ascii(provider)
    prefix = DOMAIN + column.encode("utf-8") + b"\x00"

    def seed(i: int, attempt: int) -> bytes:
        msg = prefix + attempt.to_bytes(4, "big") + uniques[i].encode("utf-8")
        return hmac.digest(secret, msg, "sha256")

    first = [seed(i, 0) for i in range(len(uniques))]
    # Case-folded, so "Miguel Hernandez" is never handed out while "miguel hernandez" is real.
    taken: set[str] = {u.casefold() for u in uniques}
    result: list[str] = [""] * len(uniques)
    assigned = 0
    for i in sorted(range(len(uniques)), key=first.__getitem__):
        for attempt in range(MAX_ATTEMPTS):
            digest = first[i] if attempt == 0 else seed(i, attempt)
            fake.seed_instance(int.from_bytes(digest[:8], "big"))
            candidate = str(draw())
            folded = candidate.casefold()
            if folded in taken or (ascii_only and not candidate.isascii()):
                continue
            taken.add(folded)
            result[i] = candidate
            assigned += 1
            break
        else:
            raise AnonymizationError(
                f"{source}: column {column!r}: Faker provider {provider!r} ({locale}) ran out of "
                f"pseudonyms: {len(uniques)} distinct values, only {assigned} distinct pseudonyms "
                f"found ({MAX_ATTEMPTS} tries for the next value); use a provider with a larger "
                f'space (e.g. "name") or operator = "hmac"'
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
