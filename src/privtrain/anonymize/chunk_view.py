"""One chunk of the input as the two passes see it, and one column of it as released.

A :class:`Chunk` holds a chunk's Arrow table, its columns dictionary-encoded
(:func:`encode_columns`: each column's distinct values and every row's index into
them), with its offset in the file so errors name the file's rows (:func:`rows_from`).
A :class:`Released` column holds what the writer gets: values per distinct value with
each row's code into them, or values per row; :meth:`Released.rows` turns it into an
Arrow array for the Parquet writer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from privtrain.anonymize.aggregate import ValueIds, ids_of
from privtrain.anonymize.chunks import to_pandas
from privtrain.errors import InvalidInput

IntArray = npt.NDArray[np.int64]
_ROW = re.compile(r"\brow (\d+)\b")


@contextmanager
def rows_from(offset: int) -> Iterator[None]:
    """Re-raise an operator's error with its chunk row number turned into the file's."""
    try:
        yield
    except InvalidInput as exc:
        if offset == 0 or not _ROW.search(str(exc)):
            raise
        text = _ROW.sub(lambda m: f"row {int(m[1]) + offset}", str(exc), count=1)
        raise type(exc)(text) from None


def encoded(column: pa.Array | pa.ChunkedArray) -> pa.DictionaryArray:
    """A column of a chunk dictionary-encoded: distinct values in order of first appearance."""
    if isinstance(column, pa.ChunkedArray):
        if column.num_chunks == 1:
            column = column.chunk(0)
        else:
            column = decoded(column).combine_chunks()
    if pa.types.is_dictionary(column.type):
        return column
    return pc.dictionary_encode(column)


def decoded(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """A dictionary-encoded column as plain values (any other column as it is)."""
    if pa.types.is_dictionary(column.type):
        return column.cast(column.type.value_type)
    return column


def encode_columns(table: pa.Table, names: frozenset[str]) -> pa.Table:
    """``table`` with each column in one piece, those in ``names`` dictionary-encoded
    (see :func:`encoded`)."""
    table = table.combine_chunks()
    # Column by column in place: a table of no columns keeps its row count.
    for i, name in enumerate(table.column_names):
        if name in names:
            table = table.set_column(i, name, encoded(table.column(i)))
    return table


def keyed_text(values: pa.Array) -> pa.Array:
    """Keyed values as text, written the way a CSV holds the same number: a whole float
    (below 2**53) as an integer (``1.0`` and ``13055550134.0`` as ``"1"`` and
    ``"13055550134"``), other floats and booleans as Arrow writes them, decimals without
    trailing zeros (``1.50`` as ``"1.5"``, ``1.00`` as ``"1"``); NaN is missing. So an id
    stored as a Parquet float or decimal is keyed like the same id read from a CSV or
    stored as an integer. Other types are returned as they are."""
    t = values.type
    if pa.types.is_floating(t):
        values = pc.if_else(pc.is_nan(values), pa.scalar(None, t), values)
        whole = pc.and_(pc.equal(pc.floor(values), values), pc.less(pc.abs(values), 2.0**53))
        as_int = pc.cast(pc.if_else(whole, values, pa.scalar(0, t)), pa.int64())
        return pc.if_else(whole, as_int.cast(pa.string()), values.cast(pa.string()))
    if pa.types.is_decimal(t):
        text = pc.replace_substring_regex(values.cast(pa.string()), r"(\.[0-9]*?)0+$", r"\1")
        return pc.replace_substring_regex(text, r"\.$", "")
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return values.cast(pa.string())
    return values


def row_codes(column: pa.Array | pa.ChunkedArray) -> IntArray:
    """Row codes (-1 = missing) of one column of a chunk into its distinct values
    (:func:`encoded`'s dictionary, which holds exactly the values of its rows)."""
    enc = encoded(column)
    indices = enc.indices if enc.indices.null_count == 0 else pc.fill_null(enc.indices, -1)
    return indices.to_numpy(zero_copy_only=False).astype(np.int64)


@dataclass(frozen=True)
class Released:
    """One column of a chunk as released: ``values`` per distinct value with each row's
    ``codes`` into them (-1: missing), or per row (codes None). Values computed in Arrow
    stay Arrow (no round trip through pandas on the way to the writer)."""

    values: pd.Series | pa.Array
    codes: IntArray | None

    def series(self, positions: IntArray | None = None) -> pd.Series:
        """The values (those at ``positions``) as pandas."""
        values = self.values
        if isinstance(values, pa.Array):
            return to_pandas(values if positions is None else values.take(positions))
        return values if positions is None else values.take(positions)

    def rows(self, kept: IntArray | None) -> pa.Array | pa.ChunkedArray:
        """The kept rows as an Arrow array: dictionary-encoded when per distinct value
        (the writer stores the values once per chunk, not once per row)."""
        if isinstance(self.values, pa.Array):
            arr = self.values
        else:
            arr = pa.array(self.values.reset_index(drop=True), from_pandas=True)
        if self.codes is None:
            return arr if kept is None else pc.take(arr, pa.array(kept))
        idx = (self.codes if kept is None else self.codes[kept]).astype(np.int32)
        indices = pa.array(idx, mask=idx < 0) if len(idx) and idx.min() < 0 else pa.array(idx)
        if isinstance(arr, pa.ChunkedArray):  # a pandas column built by concatenation
            arr = arr.combine_chunks()
        if arr.null_count:
            # Parquet takes no dictionary holding a null: such a column goes row by row.
            return pc.take(arr, indices)
        unique = pc.dictionary_encode(arr)
        if len(unique.dictionary) < len(arr):
            # Values repeat (generalized labels, numbers written two ways): Parquet's
            # writer sizes its dictionary page by the entries, repeats included, and
            # leaves the excess unwritten, so the file would hold stray memory bytes.
            indices, arr = pc.take(unique.indices, indices), unique.dictionary
        return pa.DictionaryArray.from_arrays(indices, arr)

    def ids(
        self, ids: ValueIds, kept: IntArray | None, key: Callable[[pd.Series], Any]
    ) -> IntArray:
        """Ids of the kept rows' values, given in order of first appearance among them."""
        if self.codes is None:
            return ids_of(ids, self.series(kept).reset_index(drop=True), key)
        codes = self.codes if kept is None else self.codes[kept]
        order = pd.unique(codes)
        order = order[order >= 0]
        lookup = np.zeros(len(self.values) + 1, dtype=np.int64)
        lookup[order] = ids.lookup(key(self.series(order)))[:-1]
        return ids.note(lookup[codes])

    def class_ids(self, ids: ValueIds, kept: IntArray | None) -> IntArray:
        """Ids of the kept rows' quasi-identifier labels, for counting classes.

        A generalized column has few labels: all are looked up at once, held by a kept
        row or not, which spares :meth:`ids`' pass over the rows to find those present.
        Ids then follow the labels' order; class sizes do not depend on it.
        """
        if self.codes is None or 8 * len(self.values) > len(self.codes):
            return self.ids(ids, kept, as_list)
        codes = self.codes if kept is None else self.codes[kept]
        return ids.note(ids.lookup(as_list(self.series()))[codes])


@dataclass
class Chunk:
    """One chunk being processed: its Arrow table, offset, and lazily built views."""

    table: pa.Table
    offset: int
    source: str
    _codes: dict[str, IntArray] = field(default_factory=dict)
    _frame: pd.DataFrame | None = None

    @property
    def rows(self) -> int:
        """Rows in the chunk."""
        return int(self.table.num_rows)

    def codes(self, name: str) -> IntArray:
        """Each row's code into :meth:`dictionary` (-1: missing)."""
        if name not in self._codes:
            self._codes[name] = row_codes(self.table.column(name))
        return self._codes[name]

    def dictionary(self, name: str) -> pa.Array:
        """The column's distinct values in this chunk (no missing)."""
        return encoded(self.table.column(name)).dictionary

    def frame(self) -> pd.DataFrame:
        """The chunk as pandas (strings as ``string`` dtype), built once when asked for."""
        if self._frame is None:
            self._frame = to_pandas(
                pa.table([decoded(c) for c in self.table.columns], names=self.table.column_names)
            )
        return self._frame

    def located(self, fn: Callable[[Any], Any], small: Any, rows: Callable[[], Any]) -> Any:
        """``fn(small)`` (per distinct value); on an error ``fn`` runs again on ``rows()``
        so the message names the file's row, not the value's position."""
        with rows_from(self.offset):
            try:
                return fn(small)
            except InvalidInput:
                fn(rows())
                raise


def as_list(values: pd.Series) -> list[Any]:
    """The values as a plain list (the key quasi-identifier labels are compared by)."""
    return values.tolist()
