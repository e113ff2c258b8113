"""Two-pass streaming anonymization: files of any size, in chunks, with flat memory (C-A07).

k-anonymity needs global counts, so the table is read twice:

1. *Scan.* Each chunk is reduced to what the lattice search needs: the distinct
   combinations of level-0 quasi-identifier values (and released sensitive values)
   with their counts (:mod:`privtrain.anonymize.aggregate`); the distinct values of
   ``pseudonym`` columns (looked up and claimed in the owner's pseudonym store, in one
   transaction before pass 2 writes: :mod:`privtrain.anonymize.pseudonym_store`); and
   whether each kept numeric column is integral (its output dtype).
   Every value is checked here, so a bad cell is reported before anything is written.
2. *Search* the generalization lattice on the counted combinations
   (:func:`privtrain.anonymize.lattice.search` with ``weights``): same node, same
   suppression, same figures as a search over the rows.
3. *Write.* Each chunk is read again (from pass 1's
   :class:`~privtrain.anonymize.spool.Spool` when the input is text, so CSV and JSON
   Lines are parsed once), transformed, generalized to the chosen levels, stripped of
   the suppressed classes' rows and appended to the output; the output's
   classes are counted again from the written labels, as an independent check of k,
   l and t.

Operators run per distinct value of a chunk: the column is dictionary-encoded by Arrow
(once, in pass 1 while the reading thread parses the next chunk; the spool keeps the
encoding for pass 2; a dropped column is not even read unless an operator reads it),
the operator transforms the distinct values (a few thousand, not a few hundred thousand
cells) and the results are taken back to the rows. That is exact for ``keep``,
``hmac``, ``generalize`` and ``pseudonym`` (:data:`PER_VALUE`), whose output for a cell
depends only on its value. So results are kept across chunks and passes: ``hmac``
tokens per value (:class:`~privtrain.anonymize.memo.Memo`, each value keyed once per
file), ``keep`` and ``generalize`` over the distinct values of the file so far
(:class:`~privtrain.anonymize.memo.FileValues`, computed again only when a chunk brings
new values). Per-value results go to the writer as dictionary-encoded columns.
``date_shift`` is split the same way: each distinct date is parsed, and each distinct
subject's offset keyed, once per file, and the rows add the two up. Any other operator
gets the chunk's rows, with ``OperatorContext.frame`` the chunk. Row numbers in error
messages count from the start of the file.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from privtrain.anonymize.aggregate import (
    ClassFilter,
    Combinations,
    LeveledIds,
    ValueIds,
    group_rows,
    input_changed,
    sensitive_from_ids,
    sensitive_key,
    unique_rows,
)
from privtrain.anonymize.chunk_view import (
    Chunk,
    Released,
    encode_columns,
    keyed_text,
    rows_from,
)
from privtrain.anonymize.chunks import ChunkReader, ChunkWriter, to_pandas
from privtrain.anonymize.errors import AnonymizationError
from privtrain.anonymize.holdout import holdout_rows
from privtrain.anonymize.keys import SecretKey
from privtrain.anonymize.lattice import LatticeResult, search
from privtrain.anonymize.memo import FileValues, Memo
from privtrain.anonymize.operators.date_shift import NO_DAY, day_numbers, shifted, subject_offsets
from privtrain.anonymize.operators.generalize import Generalization
from privtrain.anonymize.operators.registry import OperatorContext, get_operator
from privtrain.anonymize.operators.scrub import known_names
from privtrain.anonymize.policy import Policy
from privtrain.anonymize.privacy_models import ModelSpec, achieved
from privtrain.anonymize.proxies import PairMeasures, ProxySample
from privtrain.anonymize.pseudonym_store import Session, Store
from privtrain.anonymize.released_risk import ReleaseCounter, attacker_known
from privtrain.anonymize.spool import Spool, read_ahead

# Operators whose output for a cell is a function of that cell's value alone.
PER_VALUE = frozenset({"keep", "hmac", "generalize", "pseudonym"})
# ... of which these also depend on the column's whole set of distinct values.
WHOLE_COLUMN = frozenset({"pseudonym"})


Tick = Callable[[str, float], None]
IntArray = npt.NDArray[np.int64]
@dataclass
class _Written:
    """What pass 2 carries from chunk to chunk: the whole-column maps, the ids and counts
    of the written values (for the re-check), the output's dtypes, the rows done."""

    whole: Future[dict[str, tuple[pa.Array, pa.Array]]]
    out_qi: dict[str, ValueIds]
    out_sens: dict[str, ValueIds]
    check: Combinations
    like: pd.DataFrame | None = None
    offset: int = 0


class Streamer:
    """The three steps for one input, policy and key.

    Parameters
    ----------
    reader : ChunkReader
        The input.
    policy : Policy
        The validated policy (every input column declared).
    key : SecretKey
        HMAC key.
    chunk_rows : int
        Rows per chunk.
    tick : callable(stage, fraction)
        Progress callback.
    pseudonym_store : Store | None
        The owner's pseudonym store; None: one in memory (this release alone).
    on_read : callable() | None
        Called (on the read-ahead thread) once pass 1 has read the whole input.
    """

    def __init__(
        self,
        reader: ChunkReader,
        policy: Policy,
        key: SecretKey,
        chunk_rows: int,
        tick: Tick,
        pseudonym_store: Store | None = None,
        on_read: Callable[[], None] | None = None,
    ) -> None:
        self.reader = reader
        self.on_read = on_read
        self.pseudonym_store = pseudonym_store
        # Per pseudonym column: values of the file whose real text is another value's
        # pseudonym from an earlier release (see ``pseudonym_store.Session.clashes``).
        self.pseudonym_clashes: dict[str, int] = {}
        self.policy = policy
        self.key = key
        self.chunk_rows = chunk_rows
        self.tick = tick
        self.source = str(reader.path)
        self.columns = list(reader.columns)
        self.qis = list(policy.quasi_identifiers)
        self.sensitive = list(policy.sensitive_attributes)
        self.spec = ModelSpec(policy.l, policy.l_diversity, policy.t)
        for s in self.sensitive:
            if policy.columns[s].operator in WHOLE_COLUMN | {"generalize"}:
                raise AnonymizationError(
                    f"{policy.source}: sensitive_attributes: {s!r} is a "
                    f"{policy.columns[s].operator} column; l and t apply to kept values"
                )
        self.rows = 0
        self.qi_ids = {q: ValueIds() for q in self.qis}
        self.sens_ids = {s: ValueIds() for s in self.sensitive}
        self.distinct_values: dict[str, dict[str, None]] = {
            c: {} for c in self.columns if policy.columns[c].operator in WHOLE_COLUMN
        }
        self.integral = {
            c: True
            for c in self.columns
            if policy.columns[c].operator == "keep" and policy.columns[c].type == "numeric"
        }
        # Scrub columns that replace known names need every name of the file, not the chunk's.
        self.name_sources = {
            c: list(policy.columns[c].names_from) for c in self.columns
            if policy.columns[c].operator == "scrub" and "name" in policy.columns[c].scrub
        }
        self.known_names: dict[str, set[str]] = {c: set() for c in self.name_sources}
        self.combos = Combinations(len(self.qis) + len(self.sensitive))
        self.result: LatticeResult | None = None
        self.levels: dict[str, list[tuple[IntArray, int]]] = {}
        self._memos: dict[tuple[str, str], Memo] = {}
        self._files: dict[tuple[str, str], FileValues] = {}
        self.filter: ClassFilter | None = None
        # Every column but the dropped ones is dictionary-encoded once, on reading.
        self._encode = frozenset(c for c in self.columns if policy.columns[c].operator != "drop")
        # A dropped column is never read unless an operator reads it beside its own.
        needed = set(self._encode)
        for col in policy.columns.values():
            needed |= set(col.names_from) | ({col.subject} if col.subject else set())
        self._needed = [c for c in self.columns if c in needed]
        self._warmable = [c for c in self.columns
                          if policy.columns[c].operator in ("hmac", "date_shift")]
        # Parquet is cheap to read again; text is kept parsed for pass 2.
        self._spool: Spool | None = None if reader.format == "parquet" else Spool()
        # Proxies of QIs (pass 1, on a bounded sample) and what the written rows reveal
        # beyond the QIs (pass 2): :mod:`privtrain.anonymize.released_risk`.
        self.known = [c for c in attacker_known(policy.columns) if c in self.columns]
        self.proxy_sample = ProxySample(self.known, self.qis)
        self.proxies: dict[str, dict[str, PairMeasures]] = {}
        self.release: ReleaseCounter | None = None
        # Set when pass 2 fails: the pseudonym maps' thread then claims nothing.
        self._maps_stop = threading.Event()
        self.out_sens: dict[str, ValueIds] = {}

    def _ctx(
        self, name: str, level: int | None = None, frame: Any = None, store: Session | None = None
    ) -> OperatorContext:
        col = self.policy.columns[name]
        names = frozenset(self.known_names[name]) if name in self.known_names else None
        return OperatorContext(col, self.key, self.policy.locale, self.source, level, frame,
                               known_names=names, pseudonym_store=store)

    def _generalization(self, chunk: Chunk, q: str) -> tuple[IntArray, Generalization]:
        col = self.policy.columns[q]
        return self._per_file_value(
            chunk, "generalize", q, lambda v: Generalization(v, col, self.source)
        )

    def _per_file_value(
        self, chunk: Chunk, kind: str, name: str, fn: Callable[[pd.Series], Any]
    ) -> tuple[IntArray, Any]:
        """``fn`` on the column's distinct values of the file so far (both passes), run
        again only when the chunk brings new ones; the rows' codes into its result."""
        codes = chunk.codes(name)
        seen = self._files.setdefault((kind, name), FileValues())
        pos, grown = seen.positions(chunk.dictionary(name))
        if grown:
            assert seen.values is not None
            try:
                seen.result = chunk.located(
                    fn, to_pandas(seen.values), lambda: chunk.frame()[name]
                )
            except BaseException:
                del self._files[(kind, name)]
                raise
        lookup = np.append(pos.to_numpy(zero_copy_only=False).astype(np.int64), -1)
        return lookup[codes], seen.result

    def _released(self, chunk: Chunk, name: str) -> Released | None:
        """A column's released values in the chunk (None for a dropped column)."""
        col = self.policy.columns[name]
        op = get_operator(col.operator)
        ctx = self._ctx(name)
        if col.operator == "hmac":
            return self._hmac(chunk, name, lambda v: op.transform(v, ctx))
        if col.operator in PER_VALUE:
            codes, out = self._per_file_value(
                chunk, "released", name, lambda v: op.transform(v, ctx)
            )
            return None if out is None else Released(out, codes)
        if col.operator == "date_shift":
            return self._date_shift(chunk, name)
        # Row-wise operators see the file's row numbers as the index (``noise`` keys its
        # draws by row, errors name the row), so any chunking gives the same output.
        frame = chunk.frame().set_axis(pd.RangeIndex(chunk.offset, chunk.offset + chunk.rows))
        rows = op.transform(frame[name], self._ctx(name, frame=frame))
        return None if rows is None else Released(rows.reset_index(drop=True), None)

    def _memo(self, kind: str, name: str) -> Memo:
        return self._memos.setdefault((kind, name), Memo())

    def _hmac(self, chunk: Chunk, name: str, fn: Callable[[pd.Series], Any]) -> Released:
        """Keyed tokens per distinct value, each value's computed once per file."""
        codes = chunk.codes(name)
        return Released(self._hmac_tokens(chunk, name, fn), codes)

    def _hmac_tokens(self, chunk: Chunk, name: str, fn: Callable[[pd.Series], Any]) -> pa.Array:
        """The token of each of the chunk's distinct values (new ones computed and kept)."""

        def tokens(new: pa.Array) -> pa.Array:
            values = to_pandas(keyed_text(new))
            out = chunk.located(fn, values, lambda: chunk.frame()[name])
            return pa.array(out, pa.large_string())

        return self._memo("hmac", name).results(chunk.dictionary(name), tokens)

    def _warm(self, chunk: Chunk) -> None:
        """Pass 1: fill the per-value memos of the ``hmac`` and ``date_shift`` columns.

        Their results do not depend on the lattice search, and pass 1's main thread
        otherwise waits on the CSV parser; pass 2 then finds every value computed.
        Same values, same errors (named by file row) as computing them in pass 2.
        """
        for name in self._warmable:
            if name not in chunk.table.column_names:
                continue
            col = self.policy.columns[name]
            if col.operator == "hmac":
                op, ctx = get_operator("hmac"), self._ctx(name)
                self._hmac_tokens(chunk, name, lambda v: op.transform(v, ctx))
            elif col.subject in chunk.table.column_names:
                self._date_memos(chunk, name)

    def _date_memos(self, chunk: Chunk, name: str) -> list[IntArray]:
        """Per row: the day number of its date and its subject's offset (NO_DAY if missing)."""
        col = self.policy.columns[name]
        subject, window = col.subject, col.shift_days
        assert subject is not None and window is not None

        def parse(values: pd.Series) -> Any:
            return day_numbers(values, self.source, name, col.date_format, col.day_first)

        def days(new: pa.Array) -> pa.Array:
            return pa.array(chunk.located(parse, to_pandas(new), lambda: chunk.frame()[name]))

        def offsets(new: pa.Array) -> pa.Array:
            subjects = to_pandas(keyed_text(new))
            return pa.array(subject_offsets(subjects, subject, self.key.secret, window))

        per_row = []
        for kind, column, fn in (("days", name, days), ("offsets", subject, offsets)):
            codes = chunk.codes(column)
            per = self._memo(kind, name).results(chunk.dictionary(column), fn).to_numpy()
            per_row.append(np.append(per, NO_DAY)[codes])
        return per_row

    def _date_shift(self, chunk: Chunk, name: str) -> Released:
        """Dates shifted by their subject's offset: each distinct date is parsed, and each
        distinct subject's offset keyed, once per file; rows combine the two."""
        per_row = self._date_memos(chunk, name)
        with rows_from(chunk.offset):
            codes, iso = shifted(per_row[0], per_row[1], self.source, name)
        return Released(iso, codes)

    def _sensitive_row_ids(self, chunk: Chunk, name: str, ids: ValueIds) -> IntArray:
        ordered = self.policy.columns[name].type == "numeric"
        out = self._released(chunk, name)
        assert out is not None
        return out.ids(ids, None, lambda v: sensitive_key(v, ordered))

    # -- pass 1 --------------------------------------------------------------------------
    def scan(self) -> None:
        """Pass 1: count QI/sensitive combinations, collect what later steps need."""
        policy = self.policy
        generic = [s for s in self.sensitive if policy.columns[s].operator not in PER_VALUE]
        wanted = set(self.qis) | set(self.sensitive) | set(self.distinct_values)
        wanted |= {c for sources in self.name_sources.values() for c in sources}
        wanted |= set(self.integral)
        wanted |= set(self.proxy_sample.columns)
        # An operator outside PER_VALUE may read any needed column of its chunk.
        read = self._needed if generic or self._spool else [c for c in self.columns if c in wanted]
        position = [0]
        size = max(self.reader.size_bytes, 1)
        try:
            self._scan(read, position, size)
        except BaseException:
            self._close_spool()
            raise
        self.proxies = self.proxy_sample.findings()
        self.proxy_sample = ProxySample([], [])

    def _parsed(self, read: list[str], position: list[int]) -> Iterator[pa.Table]:
        # Three stages, each on its own thread: parsing; encoding (Arrow, GIL released)
        # and spooling, which cost about as much as the scan's own work; the scan (the
        # caller). The spool keeps the encoded chunks for pass 2.
        def chunks() -> Iterator[pa.Table]:
            yield from self.reader.chunks(self.chunk_rows, read, position)
            if self.on_read is not None:
                self.on_read()

        def encoded(tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
            for table in tables:
                table = encode_columns(table, self._encode)
                if self._spool is not None:
                    self._spool.add(table)
                yield table

        yield from read_ahead(encoded(read_ahead(chunks())))

    def _close_spool(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def _scan(self, read: list[str], position: list[int], size: int) -> None:
        for table in self._parsed(read, position):
            chunk = Chunk(table, self.rows, self.source)
            ids: list[IntArray] = []
            for q in self.qis:
                codes, gen = self._generalization(chunk, q)
                lookup = self.qi_ids[q].lookup(gen.labels(0).tolist())
                ids.append(self.qi_ids[q].note(lookup[codes]))
            for s in self.sensitive:
                ids.append(self._sensitive_row_ids(chunk, s, self.sens_ids[s]))
            self.combos.add(ids, chunk.rows)
            if self.proxy_sample.active:
                measured = self.proxy_sample.columns
                self.proxy_sample.add(
                    chunk.offset, ids[: len(self.qis)],
                    {c: chunk.codes(c) for c in measured},
                    {c: chunk.dictionary(c) for c in measured},
                )
            for name, seen in self.distinct_values.items():
                seen.update(dict.fromkeys(keyed_text(chunk.dictionary(name)).to_pylist()))
            for name, sources in self.name_sources.items():
                self.known_names[name] |= known_names(chunk.frame(), sources)
            for name in self.integral:
                out = self._released(chunk, name)
                if out is not None and str(out.values.dtype) != "Int64":
                    self.integral[name] = False
            self._warm(chunk)
            self.rows += chunk.rows
            self.tick("read", 0.45 * min(position[0] / size, 1.0))

    # -- search --------------------------------------------------------------------------
    def _levels(self, q: str) -> list[tuple[IntArray, int]]:
        """Per level of QI ``q``: class code of each value id (id 0 = missing)."""
        col = self.policy.columns[q]
        values = self.qi_ids[q].values
        dtype = "Int64" if col.type == "numeric" else "string"
        gen = Generalization(pd.Series(values, dtype=dtype), col, self.source)
        return [gen.codes(level) for level in range(gen.height + 1)]

    def search(self) -> LatticeResult:
        """Search the lattice on the counted combinations."""
        self.tick("generalize", 0.45)
        combos, counts = self.combos.result()
        nq = len(self.qis)
        self.levels = {q: self._levels(q) for q in self.qis}
        leveled = {q: LeveledIds(self.levels[q], combos[:, i]) for i, q in enumerate(self.qis)}
        sensitive = [
            sensitive_from_ids(
                s, self.sens_ids[s], combos[:, nq + j], self.policy.columns[s].type == "numeric"
            )
            for j, s in enumerate(self.sensitive)
        ]
        result = search(
            leveled,  # type: ignore[arg-type]
            len(combos),
            # Without quasi-identifiers no k is claimed, so none suppresses a row.
            self.policy.k if self.qis else 1,
            self.policy.max_suppression,
            self.spec,
            sensitive,
            weights=counts,
        )
        chosen = [self.levels[q][result.levels[q]] for q in self.qis]
        self.filter = ClassFilter(chosen, combos[~result.keep, :nq])
        self.result = result
        return result

    # -- pass 2 --------------------------------------------------------------------------
    def write(self, writer: ChunkWriter) -> tuple[int, dict[str, Any]]:
        """Pass 2: transform, generalize, suppress and append every chunk to ``writer``.

        Returns
        -------
        k_out : int
            Smallest class of the written rows, counted from the written labels.
        models : dict
            l and t of the written rows (``achieved``), {} without sensitive attributes.
        """
        assert self.result is not None and self.filter is not None
        # The pseudonym maps are drawn on a thread of their own while the first chunk's
        # other columns are transformed; the chunk waits for them where it needs them.
        self._maps_stop = threading.Event()
        pool = ThreadPoolExecutor(1, thread_name_prefix="privtrain-whole-maps")
        maps = pool.submit(self._whole_column_maps)
        pool.shutdown(wait=False)
        try:
            return self._write_all(writer, maps)
        except BaseException:
            self._stop_maps(maps)
            raise

    def _stop_maps(self, maps: Future[dict[str, tuple[pa.Array, pa.Array]]]) -> None:
        """After a failed or interrupted pass 2: stop the pseudonym maps' thread (its
        claims are rolled back unless its session had already ended) and wait for it and
        for a commit it started, so that nothing of the run goes on behind the error."""
        self._maps_stop.set()
        wait_for([maps])
        if self.pseudonym_store is not None and maps.exception() is None:
            try:
                _ = self.pseudonym_store.recorded
            except Exception:  # noqa: BLE001 - the run's own error is the one to tell
                pass

    def _maps_stopped(self) -> None:
        """Raise (on the maps' thread, inside the store session: rolled back) once pass 2
        has failed."""
        if self._maps_stop.is_set():
            raise AnonymizationError("stopped: pass 2 failed or was interrupted")

    def _write_all(
        self, writer: ChunkWriter, maps: Future[dict[str, tuple[pa.Array, pa.Array]]]
    ) -> tuple[int, dict[str, Any]]:
        state = _Written(
            maps,
            {q: ValueIds() for q in self.qis},
            {s: ValueIds() for s in self.sensitive},
            Combinations(len(self.qis) + len(self.sensitive)),
        )
        # Measured while writing: the columns an attacker could know (keyed tokens,
        # pseudonyms and scrubbed text are measured by the report, from the file).
        self.release = ReleaseCounter(
            self.qis, self.known, self.known, list(self.proxies), self.sensitive, state.check
        )
        self.out_sens = state.out_sens
        spool = self._spool
        tables = (
            self.reader.chunks(self.chunk_rows, self._needed) if spool is None else spool.chunks()
        )
        try:
            if spool is None:
                tables = (encode_columns(t, self._encode) for t in tables)
            for table in read_ahead(tables):
                self._write_chunk(writer, Chunk(table, state.offset, self.source), state)
            self.reader.check_unchanged()
            if state.offset != self.rows:
                raise input_changed(self.source)
            state.whole.result()  # the maps' thread has ended (its claims are committing)
            # The written combinations are counted on the release's counting thread; its
            # per-column counts are added up there while the caller re-checks k and
            # closes the output (whoever reads them waits for it).
            self.release.drain()
            self.release.merge()
            return self._recheck(state.check, state.out_sens)
        except BaseException:
            self.release.close()
            raise
        finally:
            self._close_spool()

    def close(self) -> None:
        """Stop the release's counting thread, if it still runs (idempotent)."""
        if self.release is not None:
            self.release.close()

    def _write_chunk(self, writer: ChunkWriter, chunk: Chunk, state: _Written) -> None:
        """Transform, filter and append one chunk."""
        policy, result, row_filter = self.policy, self.result, self.filter
        assert result is not None and row_filter is not None
        whole, out_qi, out_sens = state.whole, state.out_qi, state.out_sens
        # Which rows stay: the class of their level-0 values at the chosen node.
        gens: dict[str, tuple[IntArray, Generalization]] = {}
        ids = []
        for q in self.qis:
            codes, gen = self._generalization(chunk, q)
            try:
                lookup = self.qi_ids[q].lookup(gen.labels(0).tolist(), add=False)
            except LookupError:
                raise input_changed(self.source) from None
            gens[q] = (codes, gen)
            ids.append(lookup[codes])
        keep = row_filter.keep(ids, chunk.rows)
        kept = None if bool(keep.all()) else np.flatnonzero(keep)

        made: dict[str, Released] = {}
        for name in self.columns:
            col = policy.columns[name]
            if col.operator in WHOLE_COLUMN | {"drop"}:
                continue
            if col.operator == "generalize":
                codes, gen = gens[name]
                made[name] = Released(gen.labels(result.levels[name]), codes)
            else:
                released = self._released(chunk, name)
                if released is None:
                    continue
                if name in self.integral and not self.integral[name]:
                    released = Released(released.values.astype("Float64"), released.codes)
                made[name] = released
        # Last, as the first chunk may still wait for the maps (see ``write``).
        for name in self.columns:
            if policy.columns[name].operator in WHOLE_COLUMN:
                raw, mapped = whole.result()[name]
                pos = pc.index_in(keyed_text(chunk.dictionary(name)), value_set=raw)
                if pos.null_count:
                    raise input_changed(self.source)
                made[name] = Released(mapped.take(pos), chunk.codes(name))
        outs = {name: made[name] for name in self.columns if name in made}
        split = policy.split
        if split is not None and split.method == "random_holdout":
            assert split.seed is not None and split.test_share is not None
            released = [n for n in self.columns if policy.columns[n].operator != "drop"]
            is_test = holdout_rows(
                self.key.secret, split.seed, split.test_share,
                [chunk.table.column(n) for n in released],
            )  # fmt: skip
            outs[split.column] = Released(
                pa.array([split.train, split.test], pa.string()), is_test.astype(np.int64)
            )
        if state.like is None:
            state.like = pd.DataFrame({n: o.series().iloc[:0] for n, o in outs.items()})
        writer.write_arrow({n: o.rows(kept) for n, o in outs.items()}, state.like)
        # Independent re-check: classes of the values as written.
        check_ids = [outs[q].class_ids(out_qi[q], kept) for q in self.qis]
        for s in self.sensitive:
            ordered = policy.columns[s].type == "numeric"
            check_ids.append(
                outs[s].ids(out_sens[s], kept, lambda v, o=ordered: sensitive_key(v, o))
            )
        rows_kept = chunk.rows if kept is None else len(kept)
        assert self.release is not None
        # Counted on the release's thread, into ``state.check`` too.
        nq = len(self.qis)
        self.release.add(outs, check_ids[:nq], check_ids[nq:], kept, rows_kept,
                         [len(out_qi[q]) for q in self.qis])  # fmt: skip
        state.offset += chunk.rows
        self.tick("write", 0.5 + 0.45 * state.offset / max(self.rows, 1))

    def _whole_column_maps(self) -> dict[str, tuple[pa.Array, pa.Array]]:
        """Each :data:`WHOLE_COLUMN` column's distinct raw values (in order of first
        appearance) and their outputs, claimed in one pseudonym store session."""
        maps: dict[str, tuple[pa.Array, pa.Array]] = {}
        if not self.distinct_values:
            return maps
        store = self.pseudonym_store or Store(None, self.key)
        # The claims are written and committed while pass 2 runs; the manifest waits
        # for the commit (``Store.recorded``) before it is signed.
        with store.session(commit_in_background=True) as session:
            for name, seen in self.distinct_values.items():
                self._maps_stopped()
                raw = pd.Series(list(seen), dtype="string")
                op = get_operator(self.policy.columns[name].operator)
                mapped = op.transform(raw, self._ctx(name, store=session))
                assert mapped is not None
                maps[name] = (
                    pa.array(raw, pa.string()),
                    pa.array(mapped.reset_index(drop=True), pa.string()),
                )
            self._maps_stopped()  # nothing is claimed for a pass that has failed
        self.pseudonym_clashes = dict(session.clashes)
        return maps

    def _recheck(
        self, check: Combinations, out_sens: dict[str, ValueIds]
    ) -> tuple[int, dict[str, Any]]:
        combos, counts = check.result()
        if len(counts) == 0:
            return 0, {}
        nq = len(self.qis)
        _, cls_counts = unique_rows(combos[:, :nq], counts)
        k_out = int(cls_counts.min())
        if not self.sensitive:
            return k_out, {}
        classes, cls = group_rows(combos[:, :nq])
        sizes = np.bincount(cls, weights=counts, minlength=len(classes)).astype(np.int64)
        sens = [
            sensitive_from_ids(
                s, out_sens[s], combos[:, nq + j], self.policy.columns[s].type == "numeric"
            )
            for j, s in enumerate(self.sensitive)
        ]
        return k_out, achieved(cls, sizes, self.spec, sens, counts)
