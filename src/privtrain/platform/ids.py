"""Ids a caller names (jobs, datasets), checked before any lookup.

The server issues every job and dataset id as a UUID (``str(uuid.uuid4())``, 36
characters). An id a caller sends is checked first: empty, longer than
:data:`MAX_ID_CHARS` or made of other characters is INVALID_ARGUMENT; any other string
that is not a UUID is NOT_FOUND without a query. Either message quotes at most a short
prefix of what was sent (:func:`privtrain.errors.shown`), so a 20 kB id never comes back
in the trailer or fills the log.
"""

from __future__ import annotations

import re

from privtrain.errors import InvalidInput, NotFound, shown

MAX_ID_CHARS = 64
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_ID_CHARS = re.compile(r"[A-Za-z0-9._-]+")


def checked_id(value: str, field: str, kind: str) -> str:
    """``value``, when it could be an id the server issued.

    Parameters
    ----------
    value : str
        What the caller sent.
    field : str
        The request field, for the messages (e.g. ``job_id``).
    kind : str
        What it names, for the NOT_FOUND message (e.g. ``job``).

    Raises
    ------
    InvalidInput
        Empty, longer than :data:`MAX_ID_CHARS`, or characters other than letters,
        digits, ``.``, ``_`` and ``-``.
    NotFound
        Well formed but not a UUID, so no such ``kind`` exists.
    """
    if not value:
        raise InvalidInput(f"{field} is empty")
    if len(value) > MAX_ID_CHARS or not _ID_CHARS.fullmatch(value):
        raise InvalidInput(f"{field} {shown(value)} is not an id (a UUID such as "
                           "0b6f8a52-1c7e-4d2a-9e57-3f1a9d7c2b10)")
    if not _UUID.fullmatch(value):
        raise NotFound(f"{kind} {value!r} not found")
    return value
