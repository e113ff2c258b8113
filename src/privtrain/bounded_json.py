"""JSON from a caller, parsed within bounds: depth, number size, finiteness, length.

Python's :func:`json.loads` accepts what later code cannot handle: ``1e999`` and
``Infinity`` become ``inf`` (``int(inf)`` raises OverflowError), ``NaN`` compares
unequal to itself, an integer of 5,000 digits raises ValueError on conversion (the
interpreter's 4,300-digit limit, CVE-2020-10735), and a few thousand nested ``[``
raise RecursionError in the parser or in whatever walks the result. :func:`loads`
refuses each of them with one :class:`JSONLimitError` (a ``ValueError``) that says
what to change, so a caller's mistake never reaches those code paths.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 32
"""Deepest nesting of arrays and objects accepted by default."""
MAX_INT_DIGITS = 32
"""Most digits of an integer accepted by default (2**64 has 20)."""
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


class JSONLimitError(ValueError):
    """The text is not JSON, or is JSON beyond the limits (depth, number size, length)."""


def loads(text: str | bytes, *, what: str = "JSON", max_depth: int = MAX_DEPTH,
          max_int_digits: int = MAX_INT_DIGITS, max_chars: int | None = None) -> Any:
    """Parse ``text`` as JSON within bounds.

    Parameters
    ----------
    text : str or bytes
        The document (bytes are decoded as UTF-8).
    what : str
        How error messages name the document (e.g. ``model_options_json``).
    max_depth : int
        Deepest nesting of arrays and objects (a scalar document has depth 0).
    max_int_digits : int
        Most digits of an integer.
    max_chars : int, optional
        Longest document, in characters.

    Returns
    -------
    Any
        The parsed value; every float in it is finite.

    Raises
    ------
    JSONLimitError
        Not UTF-8, not JSON, ``NaN``/``Infinity`` or a number that overflows a float,
        an integer longer than ``max_int_digits`` digits, nesting deeper than
        ``max_depth``, or a document longer than ``max_chars``.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JSONLimitError(f"{what} is not UTF-8 (byte {exc.start})") from None
    if max_chars is not None and len(text) > max_chars:
        raise JSONLimitError(f"{what} is {len(text)} characters long; the limit is {max_chars}")
    _check_depth(text, what, max_depth)
    try:
        return json.loads(text, parse_constant=_refuse_constant(what),
                          parse_float=_finite_float(what),
                          parse_int=_bounded_int(what, max_int_digits))
    except JSONLimitError:
        raise
    except RecursionError:  # not reached after _check_depth; kept as the last line of defence
        raise JSONLimitError(f"{what} nests deeper than {max_depth} levels") from None
    except ValueError as exc:  # json.JSONDecodeError: the position of the first mistake
        raise JSONLimitError(f"{what} is not JSON: {exc}") from None


def _check_depth(text: str, what: str, max_depth: int) -> None:
    """Refuse nesting deeper than ``max_depth`` before the recursive parser sees it.

    Strings are cut out first (escapes included), then the brackets left are counted,
    so a document of 100,000 ``[`` costs a scan, not a RecursionError.
    """
    depth = 0
    for bracket in _BRACKET.findall(_STRING.sub("", text)):
        if bracket in "[{":
            depth += 1
            if depth > max_depth:
                raise JSONLimitError(f"{what} nests deeper than {max_depth} levels")
        else:
            depth -= 1


def _refuse_constant(what: str) -> Any:
    def refuse(name: str) -> Any:
        raise JSONLimitError(f"{what} contains {name}; only finite numbers are accepted")

    return refuse


def _finite_float(what: str) -> Any:
    def parse(literal: str) -> float:
        value = float(literal)
        if not math.isfinite(value):
            shown = literal if len(literal) <= 24 else literal[:20] + "..."
            raise JSONLimitError(f"{what} contains the number {shown}, beyond the range of a "
                                 "64-bit float")
        return value

    return parse


def _bounded_int(what: str, max_digits: int) -> Any:
    def parse(literal: str) -> int:
        digits = len(literal.lstrip("-"))
        if digits > max_digits:
            raise JSONLimitError(f"{what} contains an integer of {digits} digits; the limit is "
                                 f"{max_digits}")
        return int(literal)

    return parse
