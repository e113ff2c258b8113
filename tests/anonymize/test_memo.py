"""Per-value results remembered across chunks: each value computed once, same results;
and value combinations grouped from columns as from the matrix they form."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from privtrain.anonymize.aggregate import ClassFilter, count_columns, group_columns
from privtrain.anonymize.memo import FileValues, Memo


class _Upper:
    """A per-value function that records which values it was asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, new: pa.Array) -> pa.Array:
        values = new.to_pylist()
        self.asked += values
        return pa.array([v.upper() for v in values])


def test_each_value_is_computed_once_across_chunks() -> None:
    memo, fn = Memo(), _Upper()
    first = memo.results(pa.array(["ann", "bob"]), fn)
    second = memo.results(pa.array(["cy", "bob", "ann"]), fn)
    assert first.to_pylist() == ["ANN", "BOB"]
    assert second.to_pylist() == ["CY", "BOB", "ANN"]
    assert fn.asked == ["ann", "bob", "cy"]
    assert len(memo) == 3


def test_new_values_among_known_and_repeated_ones_get_their_own_results() -> None:
    """New values anywhere in a chunk (and repeats, which hashed outputs may bring) are
    placed after the known ones without a second lookup."""
    memo, fn = Memo(), _Upper()
    memo.results(pa.array(["ann", "bob"]), fn)
    out = memo.results(pa.array(["cy", "ann", "cy", "dee", "bob"]), fn)
    assert out.to_pylist() == ["CY", "ANN", "CY", "DEE", "BOB"]
    assert memo.results(pa.array(["dee", "cy"]), fn).to_pylist() == ["DEE", "CY"]


def test_a_chunk_of_known_values_computes_nothing() -> None:
    memo, fn = Memo(), _Upper()
    memo.results(pa.array(["ann", "bob"]), fn)
    assert memo.results(pa.array(["bob"]), fn).to_pylist() == ["BOB"]
    assert fn.asked == ["ann", "bob"]


def test_past_max_values_it_starts_over_with_the_same_results() -> None:
    memo, fn = Memo(max_values=3), _Upper()
    memo.results(pa.array(["a", "b"]), fn)
    out = memo.results(pa.array(["c", "d", "a"]), fn)
    assert out.to_pylist() == ["C", "D", "A"]
    # Four values would not fit: the memo forgot "a", "b" and computed this chunk afresh.
    assert fn.asked == ["a", "b", "c", "d", "a"]
    assert len(memo) == 3


def test_a_wrong_number_of_results_is_refused() -> None:
    with pytest.raises(ValueError, match="1 results for 2 values"):
        Memo().results(pa.array(["a", "b"]), lambda new: pa.array(["x"]))


def test_file_values_keep_the_order_of_first_appearance_and_say_when_they_grow() -> None:
    seen = FileValues()
    pos, grown = seen.positions(pa.array(["b", "a"]))
    assert (pos.to_pylist(), grown) == ([0, 1], True)
    pos, grown = seen.positions(pa.array(["a", "b"]))
    assert (pos.to_pylist(), grown) == ([1, 0], False)
    pos, grown = seen.positions(pa.array(["c", "a"]))
    assert (pos.to_pylist(), grown) == ([2, 1], True)
    assert seen.values is not None and seen.values.to_pylist() == ["b", "a", "c"]


def test_file_values_restart_from_the_chunk_past_max_values() -> None:
    seen = FileValues(max_values=3)
    seen.positions(pa.array(["a", "b"]))
    pos, grown = seen.positions(pa.array(["c", "d"]))
    assert (pos.to_pylist(), grown) == ([0, 1], True)
    assert seen.values is not None and seen.values.to_pylist() == ["c", "d"]


def test_grouping_columns_equals_grouping_the_matrix() -> None:
    rng = np.random.default_rng(3)
    mat = rng.integers(0, [4, 30, 2], size=(5_000, 3)).astype(np.int64)
    rows, inverse = group_columns(list(mat.T), len(mat))
    expected_rows, expected_inverse = np.unique(mat, axis=0, return_inverse=True)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(inverse, expected_inverse.reshape(-1))
    np.testing.assert_array_equal(rows[inverse], mat)


@pytest.mark.parametrize("high", [[4, 30, 2], [900, 800, 700]])
def test_counting_columns_equals_np_unique_with_counts(high: list[int]) -> None:
    # [4, 30, 2]: few possible combinations (counted densely); [900, 800, 700]: hashed.
    rng = np.random.default_rng(5)
    mat = rng.integers(0, high, size=(5_000, 3)).astype(np.int64)
    rows, counts = count_columns(list(mat.T), len(mat))
    expected_rows, expected_counts = np.unique(mat, axis=0, return_counts=True)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(counts, expected_counts)
    assert counts.dtype == np.int64 and int(counts.sum()) == len(mat)


@pytest.mark.parametrize("cards", [[3, 4], [5_000, 5_000]])
def test_class_filter_drops_exactly_the_rows_of_suppressed_classes(cards: list[int]) -> None:
    # [3, 4]: a table of 12 classes; [5000, 5000]: 25M classes, looked up by key.
    rng = np.random.default_rng(7)
    lookups = [(rng.integers(0, card, size=50), card) for card in cards]
    ids = [rng.integers(0, 50, size=2_000) for _ in cards]
    classes = np.column_stack([lookup[i] for i, (lookup, _) in zip(ids, lookups, strict=True)])
    suppressed_rows = rng.choice(2_000, size=40, replace=False)
    # Value ids of some entries whose class is suppressed.
    suppressed = np.column_stack([i[suppressed_rows] for i in ids])
    keep = ClassFilter(lookups, suppressed).keep(ids, 2_000)
    dropped = {tuple(row) for row in classes[suppressed_rows]}
    expected = np.array([tuple(row) not in dropped for row in classes])
    np.testing.assert_array_equal(keep, expected)
    assert not keep[suppressed_rows].any()
