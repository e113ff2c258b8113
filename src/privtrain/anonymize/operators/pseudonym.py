"""``pseudonym``: replace each value by a realistic fake one (Faker data), keyed and kept.

Promise (case C-A01, C-A03): under one key, a value (one person) gets one pseudonym in
every release, and two values of a column never share one, whatever files they appear
in. A keyed draw alone cannot promise both: a realistic space is small (a few million
names or e-mail addresses), so some people's draws collide, and a clash retried within a
file made the outcome depend on who else was in it. So the assignment is recorded in
the owner's pseudonym store (:mod:`privtrain.anonymize.pseudonym_store`, a SQLite file
next to the key), looked up first and only extended.

Draws. For a distinct normalized value v in column c, attempt i = 0, 1, ... derives

    d_i = HMAC-SHA256(secret, b"privtrain/pseudonym/v2\\x00" + c + b"\\x00"
                      + i (4 bytes, big-endian) + v)

(RFC 2104) and draws a candidate from it. For the providers of
:data:`~privtrain.anonymize.operators.faker_formats.PROVIDERS` (names, first / last
names, user names, e-mails) in a locale that keeps Faker's base code for them, the
candidate fills the locale's own Faker formats and word lists with their weights,
indexed by the 64-bit words of SHAKE-256(d_i) (FIPS 202), for all values of the column
at once (:mod:`privtrain.anonymize.operators.faker_formats`). Any other provider seeds
a Faker instance with the first 8 bytes of d_i and calls it (``faker.seed_instance``).

Assignment (scheme v3). d_0 is the value's identity in the store, per space (column,
provider, locale). A value the store holds gets its recorded pseudonym, whatever this
file holds. The values it does not hold claim one in the order they first appear in the
file: the first attempt whose candidate is free, i.e. not a pseudonym of the space
(recorded, or claimed earlier in this run, compared case-folded), not the case-folded
real value of anyone the space holds or of any value of this file (so a new pseudonym is
never mistaken for a real person of this or an earlier release), and ASCII for e-mail /
user-name style providers. The claims and a new store generation are committed in one
transaction before the output is written. Exact, not probabilistic: a UNIQUE constraint
on (space, folded pseudonym) and a primary key on (space, d_0). The one assumption is
that HMAC-SHA256 gives two values of a column different d_0 (chance at most
n(n-1) / 2^257 for n values: below 10^-59 at 10^9).

Costs: the store must be kept (and backed up) with the key, and named again for every
release; runs on one store claim one at a time; a value's pseudonym depends on the
store's history, not only on the key (the first release to claim a contested pseudonym
keeps it); and a pseudonym handed out earlier stays even when a later file holds a real
person whose value it equals (that cannot be undone without breaking the promise; the
run counts such values: ``Session.clashes``). Without a store (``store=None``) a call
uses a store in memory: distinct within the column, as one release.

The domain prefix differs from the ``hmac`` operator's, so a published token never
equals a pseudonym seed. :data:`SCHEME` names the derivation and assignment (v1 drew
every value through Faker and resolved values one by one; v2 drew as here and resolved
clashes within one file, in the order of d_0).
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
from privtrain.anonymize.keys import SecretKey, key_id_of
from privtrain.anonymize.operators.faker_formats import template
from privtrain.anonymize.operators.hmac_token import normalized_input
from privtrain.anonymize.operators.registry import OperatorContext, register_operator
from privtrain.anonymize.pseudonym_store import Session, Store
from privtrain.anonymize.values import distinct_normalized, expand

SCHEME = "privtrain/pseudonym/v3"
"""Names the derivation and assignment below; recorded in manifests so a changed scheme
is detected."""
# v3 draws exactly as v2 did (so a value whose v2 draw was free keeps it); what changed
# is the assignment, through the store.
DOMAIN = b"privtrain/pseudonym/v2\x00"
FOLD_DOMAIN = b"privtrain/pseudonym-store/folded/v1\x00"
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
    store: Session | None = None,
) -> pd.Series:
    """Pseudonymize a column: the store's pseudonym for a value it holds, a new claim else.

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
    store : Session | None
        The open session of the owner's pseudonym store; its claims are committed by
        whoever opened it. None: a store in memory for this call alone (pseudonyms
        distinct within the column; consistent across calls only for values whose first
        draw was free, as in any one release).

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
    if store is None:
        with Store(None, SecretKey(key_id_of(secret), secret)).session() as session:
            return pseudonyms(
                values, column, secret, provider, locale, source, (codes, uniques), session
            )
    try:
        draw = _drawer(provider, locale)
    except AttributeError:
        raise AnonymizationError(
            f"{source}: column {column!r}: Faker has no provider {provider!r} ({locale})"
        ) from None
    result = assign(uniques, column, secret, provider, locale, draw, store, source)
    return expand(codes, result, values.index)


def draws(
    uniques: list[str], column: str, secret: bytes, provider: str, locale: str, attempt: int = 0
) -> list[str]:
    """The candidate each normalized value draws at ``attempt``, before any clash is
    resolved (for audits and tests: two values with one candidate at attempt 0 clash)."""
    head = DOMAIN + column.encode("utf-8") + b"\x00" + attempt.to_bytes(4, "big")
    return _drawer(provider, locale)(
        keyed_digests(secret, head, (u.encode("utf-8") for u in uniques))
    )


def _fold(text: str) -> str:
    return text.casefold()


def assign(
    uniques: list[str],
    column: str,
    secret: bytes,
    provider: str,
    locale: str,
    draw: Draw,
    store: Session,
    source: str = "<input>",
) -> list[str]:
    """The pseudonym of each distinct normalized value, claiming new ones in ``store``.

    Values the store holds keep their pseudonym. The others, in the order given (the
    order of first appearance in the file), draw attempt 0, 1, ... until a candidate is
    free: not a pseudonym of the space (held or claimed earlier in this run), not the
    case-folded real value of anyone the space holds or of any value of this file, and
    ASCII for e-mail / user-name style providers.
    """
    ascii_only = needs_ascii(provider)
    prefix = DOMAIN + column.encode("utf-8") + b"\x00"
    fold_prefix = FOLD_DOMAIN + column.encode("utf-8") + b"\x00"
    raw = [u.encode("utf-8") for u in uniques]

    def seeds(pending: list[int], attempt: int) -> list[bytes]:
        head = prefix + attempt.to_bytes(4, "big")
        return keyed_digests(secret, head, (raw[i] for i in pending))

    space = store.space(column, provider, locale)
    first = seeds(list(range(len(uniques))), 0)
    held = store.known(space, first)
    result: list[str] = [p if p is not None else "" for p in held]
    pending = [i for i, p in enumerate(held) if p is None]
    # The case-folded real values of this file's new values (those held are in the store),
    # and their keyed digests, which the store keeps in their place.
    real = [_fold(uniques[i]) for i in pending]
    raw_folded = keyed_digests(secret, fold_prefix, (f.encode("utf-8") for f in real))
    new_folded = dict(zip(pending, raw_folded, strict=True))
    real_set = set(real)
    # A first release under the key has nothing to look up: no candidate's digest is needed.
    empty = store.is_empty(space)
    claimed: set[str] = set()
    rows: list[tuple[bytes, bytes, str, str]] = []
    for attempt in range(MAX_ATTEMPTS):
        if not pending:
            break
        digests = [first[i] for i in pending] if attempt == 0 else seeds(pending, attempt)
        candidates = draw(digests)
        folded = [_fold(c) for c in candidates]
        if empty:
            busy = [False] * len(folded)
        else:
            folded_digests = keyed_digests(
                secret, fold_prefix, (f.encode("utf-8") for f in folded)
            )
            busy = store.taken(space, folded, folded_digests)
        left = []
        for j, i in enumerate(pending):
            candidate, f = candidates[j], folded[j]
            if (
                busy[j]
                or f in claimed
                or f in real_set
                or (ascii_only and not candidate.isascii())
            ):
                left.append(i)
                continue
            claimed.add(f)
            result[i] = candidate
            rows.append((first[i], new_folded[i], candidate, f))
        pending = left
    if pending:
        held_before = store.size(space)
        raise AnonymizationError(
            f"{source}: column {column!r}: Faker provider {provider!r} ({locale}) ran out of "
            f"pseudonyms: {len(uniques)} distinct values, only {len(uniques) - len(pending)} "
            f"distinct pseudonyms found ({MAX_ATTEMPTS} tries each for the rest; the "
            f"pseudonym store holds {held_before} for this column); use a provider with a "
            f'larger space (e.g. "name") or operator = "hmac"'
        )
    store.add(space, rows)
    # A pseudonym handed out in an earlier release stays, even when this file holds a
    # real person of that name: counted, so the run can say so.
    mine = {_fold(u) for u in uniques}
    clashes = sum(
        1
        for i, p in enumerate(held)
        if p is not None and _fold(p) in mine and _fold(p) != _fold(uniques[i])
    )
    if clashes:
        store.clashes[column] = store.clashes.get(column, 0) + clashes
    return result


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
            ctx.pseudonym_store,
        )

    def output_domain(self, ctx: OperatorContext) -> dict[str, Any]:
        return {"type": "identifier"}
