"""Per-value results remembered across the chunks of one file.

A function of one cell's value (a keyed token, a parsed date, a subject's date offset)
needs computing once per distinct value of the file, not once per chunk: a chunk's
distinct values (its Arrow dictionary) are looked up among those already seen with
``pyarrow.compute.index_in`` (hashed in C, no Python loop over values), and only the
new ones are computed. Memory is bounded: past ``max_values`` remembered values the
memo starts over, which changes the time taken, never the results.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def appended_positions(pos: pa.Array, base: int) -> pa.Array:
    """Positions once the values ``index_in`` did not find are appended, in their order,
    after ``base`` known ones: ``pos`` with its nulls numbered ``base``, ``base + 1``, ...

    Saves a second ``index_in`` (which would hash the whole value set again) per chunk.
    """
    missing = np.asarray(pos.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    out = np.array(pos.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int32)
    out[missing] = base + np.arange(int(missing.sum()), dtype=np.int32)
    return pa.array(out, pa.int32())


def first_positions(n: int) -> pa.Array:
    """Positions of ``n`` distinct values that are the whole value set, in its order."""
    return pa.array(np.arange(n, dtype=np.int32), pa.int32())


class Memo:
    """Results of one per-value function for the distinct values seen so far.

    Parameters
    ----------
    max_values : int
        Values remembered at most (each costs its bytes plus its result's).
    """

    def __init__(self, max_values: int = 1 << 20) -> None:
        self.max_values = max_values
        self._keys: pa.Array | None = None
        self._results: pa.Array | None = None

    def __len__(self) -> int:
        return 0 if self._keys is None else len(self._keys)

    def _positions(self, distinct: pa.Array) -> pa.Array | None:
        if self._keys is None:
            return None
        return pc.index_in(distinct, value_set=self._keys)

    def results(self, distinct: pa.Array, compute: Callable[[pa.Array], pa.Array]) -> pa.Array:
        """The result of each of ``distinct`` (distinct, non-null values), in its order.

        ``compute`` gets the values not seen before (an array of the same type) and
        returns one result per value, in their order, as an array of one type every call.

        Raises
        ------
        ValueError
            ``compute`` returned a different number of results than it was given values.
        """
        pos = self._positions(distinct)
        new = distinct if pos is None else distinct.filter(pc.is_null(pos))
        if len(new) == 0 and pos is not None:
            assert self._results is not None
            return self._results.take(pos)
        if len(self) + len(new) > self.max_values:
            self._keys = self._results = None
            new = distinct
        out = compute(new)
        if len(out) != len(new):
            raise ValueError(f"{len(out)} results for {len(new)} values")
        if self._keys is None or self._results is None:
            self._keys, self._results = new, out
            pos = first_positions(len(distinct))
        else:
            assert pos is not None
            pos = appended_positions(pos, len(self._keys))
            self._keys = pa.concat_arrays([self._keys, new])
            self._results = pa.concat_arrays([self._results, out])
        return self._results.take(pos)


class FileValues:
    """One column's distinct values in order of first appearance in the file (so far),
    and one result computed over all of them, recomputed only when a chunk brings new
    values; for functions over a handful of distinct values (generalization levels,
    domain checks), whose fixed cost per call outweighs the values' own.

    Parameters
    ----------
    max_values : int
        Values kept at most; past it the list restarts from the current chunk's values
        (results per value are the same, only recomputed).
    """

    def __init__(self, max_values: int = 1 << 16) -> None:
        self.max_values = max_values
        self.values: pa.Array | None = None
        self.result: Any = None

    def positions(self, distinct: pa.Array) -> tuple[pa.Array, bool]:
        """Position of each of ``distinct`` (distinct, non-null) among :attr:`values`,
        adding the new ones at the end; and whether any was new (:attr:`result` stale)."""
        if self.values is None:
            self.values = distinct
            return first_positions(len(distinct)), True
        pos = pc.index_in(distinct, value_set=self.values)
        if pos.null_count == 0:
            return pos, False
        new = distinct.filter(pc.is_null(pos))
        if len(self.values) + len(new) > self.max_values:
            self.values = distinct
            return first_positions(len(distinct)), True
        pos = appended_positions(pos, len(self.values))
        self.values = pa.concat_arrays([self.values, new])
        return pos, True
