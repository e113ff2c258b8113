"""JSON from a caller within bounds (issue 12): what json.loads let through and later code
failed on (OverflowError, RecursionError, ValueError) is one JSONLimitError naming it."""

from __future__ import annotations

import math

import pytest

from privtrain.bounded_json import JSONLimitError, loads
from privtrain.errors import shown


@pytest.mark.parametrize(("text", "needle"), [
    ('{"width": 1e999}', "the number 1e999, beyond the range of a 64-bit float"),
    ('{"a": -1e400}', "the number -1e400"),
    ("[NaN]", "contains NaN"),
    ('{"a": Infinity}', "contains Infinity"),
    ("[" * 100_000 + "]" * 100_000, "nests deeper than 32 levels"),
    ('{"a": ' * 40 + "1" + "}" * 40, "nests deeper than 32 levels"),
    ('{"x": ' + "9" * 5000 + "}", "an integer of 5000 digits; the limit is 32"),
    ('{"x": -' + "1" * 33 + "}", "an integer of 33 digits"),
    ("{bad", "is not JSON"),
    (b"\xff\xfe", "is not UTF-8"),
])
def test_input_beyond_the_bounds_is_one_error(text: str | bytes, needle: str) -> None:
    with pytest.raises(JSONLimitError) as err:
        loads(text)
    assert needle in str(err.value)
    assert len(str(err.value)) < 200


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    nested = '"' + "[" * 100 + '\\"' + "{" * 100 + '"'
    assert loads('{"s": ' + nested + "}") == {"s": "[" * 100 + '"' + "{" * 100}
    assert loads("[[[1]]]", max_depth=3) == [[[1]]]
    with pytest.raises(JSONLimitError):
        loads("[[[[1]]]]", max_depth=3)


def test_ordinary_documents_parse_as_json_loads_does() -> None:
    value = loads('{"a": [1, -2.5e3, true, null, "x"], "b": {"c": 18446744073709551615}}')
    assert value == {"a": [1, -2500.0, True, None, "x"], "b": {"c": 2**64 - 1}}
    assert all(math.isfinite(v) for v in (1, -2500.0))
    with pytest.raises(JSONLimitError, match="is 11 characters long; the limit is 10"):
        loads('"123456789"', max_chars=10)


def test_shown_quotes_a_short_prefix() -> None:
    assert shown("abc") == "'abc'"
    cut = shown("x" * 20_000)
    assert len(cut) <= 90 and cut.endswith("(20,000 chars)")
