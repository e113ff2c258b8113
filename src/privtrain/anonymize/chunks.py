"""Tables in chunks: read a CSV, Parquet or JSON Lines file a few hundred thousand rows at a
time, and write the output the same way, so memory stays flat whatever the file size.

Reading keeps the rules of :func:`privtrain.anonymize.tableio.read_table`: CSV cells are
text (ZIPs keep leading zeros, ``NA`` stays a value), only the empty cell and the policy's
``missing_values`` are missing, the encoding is the one named or detected, a UTF-8 BOM is
dropped, and a header naming one column twice is refused. CSV is parsed by Arrow's
streaming reader (``pyarrow.csv.open_csv``), Parquet by ``ParquetFile.iter_batches``.

Writing goes to a temporary file in the output's folder (Parquet through
``pyarrow.parquet.ParquetWriter``, one row group per chunk, written on a worker thread
while the next chunk is prepared; CSV and JSON Lines appended
chunk by chunk exactly as :func:`~privtrain.anonymize.tableio.encode_table` writes them);
:meth:`ChunkWriter.finish` fsyncs and hashes it, :meth:`ChunkWriter.commit` renames it
into place. Until then nothing exists under the output's name.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Self

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from privtrain.anonymize.errors import AnonymizationError
from privtrain.anonymize.tableio import (
    check_header,
    check_input,
    check_unique_names,
    decode_error,
    detect_encoding,
    jsonl_cell,
    jsonl_objects,
    table_format,
)
from privtrain.errors import InvalidInput

DEFAULT_CHUNK_ROWS = 131_072
_BLOCK_BYTES = 4 << 20


def _string_types(t: pa.DataType) -> pd.api.extensions.ExtensionDtype | None:
    """Arrow -> pandas dtypes as ``read_table`` gives them (strings as ``string``)."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pd.StringDtype()
    return None


def _text_output_types(t: pa.DataType) -> pd.api.extensions.ExtensionDtype | None:
    """Nullable pandas types for CSV / JSON Lines output: an integer column with a
    missing cell stays integers (``28``, not numpy's ``28.0``)."""
    if pa.types.is_integer(t):
        return pd.Int64Dtype()
    if pa.types.is_boolean(t):
        return pd.BooleanDtype()
    return _string_types(t)


def to_pandas(table: pa.Table | pa.Array | pa.ChunkedArray) -> Any:
    """A chunk (or one column of it) as pandas, strings as ``string`` dtype."""
    return table.to_pandas(types_mapper=_string_types)


class ChunkReader:
    """One input table, readable any number of times in chunks of rows.

    Parameters
    ----------
    path : Path
        CSV, Parquet or JSON Lines file (format from the suffix).
    encoding : str | None
        Text encoding of a CSV; None: UTF-8 (BOM dropped), else detected.
    missing : tuple of str
        Cell values that mean missing besides the empty cell (text columns only).

    Attributes
    ----------
    columns : list of str
        Column names in file order.
    encoding : str | None
        The encoding a CSV is decoded with.
    unsupported_columns : dict of str to str
        Parquet columns whose cells are not one text-like value (lists, structs: why
        not; bytes: only ``hmac`` or ``drop``), with the reason.

    Raises
    ------
    NotFound
        No such file.
    AnonymizationError
        Unknown encoding, undecodable header, repeated column name, unreadable file.
    """

    def __init__(self, path: Path, encoding: str | None = None, missing: tuple[str, ...] = ()):
        self.path = Path(path)
        check_input(self.path, encoding)
        self.format = table_format(self.path)
        self.missing = tuple(missing)
        self.encoding: str | None = None
        self.unsupported_columns: dict[str, str] = {}
        self._stat = self._signature()
        try:
            if self.format == "csv":
                enc = encoding or detect_encoding(self.path)
                if codecs.lookup(enc).name in {"utf-8", "utf-8-sig"}:
                    enc = "utf-8-sig"
                self.encoding = enc
                self.columns = check_header(self.path, enc)
            elif self.format == "parquet":
                schema = pq.ParquetFile(self.path).schema_arrow
                self.columns = [n for n in schema.names if not n.startswith("__index_level_")]
                check_unique_names(self.path, self.columns)
                self.unsupported_columns = _unsupported_columns(schema)
            else:
                self.columns = self._jsonl_columns()
        except UnicodeDecodeError as exc:
            raise self._decode_error() from None
        except (ValueError, OSError, pa.ArrowException) as exc:
            raise AnonymizationError(f"{self.path}: cannot read table ({_one_line(exc)})") from None
        if not self.columns:
            raise AnonymizationError(f"{self.path}: the file is empty (no header, no columns)")

    def _signature(self) -> tuple[int, int]:
        st = self.path.stat()
        return st.st_size, st.st_mtime_ns

    def check_unchanged(self) -> None:
        """Refuse to go on when the file changed since it was opened (between the passes)."""
        if self._signature() != self._stat:
            raise AnonymizationError(
                f"{self.path}: the input changed while it was being read; run again on a "
                "file nothing else writes to"
            )

    @property
    def size_bytes(self) -> int:
        return self._stat[0]

    def _decode_error(self, start: int | None = None) -> AnonymizationError:
        return decode_error(self.path, self.encoding or "utf-8", start)

    def chunks(
        self, chunk_rows: int, columns: list[str] | None = None, position: list[int] | None = None
    ) -> Iterator[pa.Table]:
        """Yield the rows in order, ``chunk_rows`` at a time (the last chunk may be shorter).

        Parameters
        ----------
        chunk_rows : int
            Rows per chunk, >= 1.
        columns : list of str | None
            Columns to read, in this order (None: all). Unread columns cost (almost) nothing.
        position : list of int | None
            When given, ``position[0]`` is updated with the bytes of the file consumed so
            far (for progress reporting).

        Yields
        ------
        pa.Table
            Text columns as ``string``; missing cells are nulls. A column may come in
            several pieces (``combine_chunks`` joins them).
        """
        if chunk_rows < 1:
            raise InvalidInput(f"chunk_rows must be >= 1, got {chunk_rows}")
        cols = list(self.columns if columns is None else columns)
        # Arrow cannot slice a table of no columns (its row count stays), so with no
        # column asked for, one is read for the rows and left out of the chunks.
        read = cols or self.columns[:1]
        try:
            if self.format == "csv":
                # The last column is always read: it shows a quote never closed (below).
                last = self.columns[-1]
                batches = self._csv_batches(read if last in read else [*read, last], position)
            elif self.format == "parquet":
                batches = self._parquet_batches(read, chunk_rows, position)
            else:
                batches = self._jsonl_batches(read, chunk_rows)
            yield from _rechunk(batches, chunk_rows, cols)
        except UnicodeDecodeError:
            raise self._decode_error() from None
        except pa.ArrowInvalid as exc:
            if "UTF8" in str(exc) or "decode" in str(exc).lower():
                raise self._decode_error() from None
            raise AnonymizationError(f"{self.path}: {_parse_problem(exc)}") from None
        except (ValueError, OSError, pa.ArrowException) as exc:
            raise AnonymizationError(f"{self.path}: cannot read table ({_one_line(exc)})") from None

    # CSV -------------------------------------------------------------------------------
    def _csv_batches(self, cols: list[str], position: list[int] | None) -> Iterator[pa.RecordBatch]:
        assert self.encoding is not None
        native = self.encoding == "utf-8-sig"
        # One parsing thread: the reader already runs beside the anonymizer's own work
        # (:func:`~privtrain.anonymize.spool.read_ahead`); Arrow's thread pool on top of it
        # only competed for the same cores and made the first pass slower.
        read = pacsv.ReadOptions(
            encoding="utf8" if native else self.encoding,
            block_size=_BLOCK_BYTES,
            use_threads=False,
        )
        # Quoted newlines are allowed, as pandas allows them.
        parse = pacsv.ParseOptions(newlines_in_values=True)
        convert = pacsv.ConvertOptions(
            column_types={c: pa.string() for c in self.columns},
            null_values=["", *self.missing],
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
            include_columns=cols,
        )
        # A native file: Arrow reads into its own (reused) buffers, without the GIL, where
        # a Python file object would allocate a fresh bytes object per block.
        rows = 0
        final: pa.RecordBatch | None = None
        with pa.OSFile(str(self.path), "rb") as fh:
            reader = pacsv.open_csv(fh, read, parse, convert)
            for batch in reader:
                if position is not None:
                    position[0] = fh.tell()
                rows += batch.num_rows
                final = batch if batch.num_rows else final
                yield batch
        if final is not None:
            self._check_quotes_closed(final, rows)

    def _check_quotes_closed(self, final: pa.RecordBatch, rows: int) -> None:
        """Refuse a file that ends inside a quoted value.

        Arrow's reader takes everything after an unclosed quote, up to the end of the file,
        as one value of the last column (rows silently merged). A value of the last row's
        last column that holds a line break must have been quoted, so the file must then
        end with a quote (before its final line break); if it does not, the quote was never
        closed.

        Raises
        ------
        AnonymizationError
            Naming the file and its last data row.
        """
        assert self.encoding is not None
        if codecs.lookup(self.encoding).name.startswith(("utf-16", "utf-32")):
            return  # the byte check below reads ASCII-compatible text only
        column = final.column(final.schema.get_field_index(self.columns[-1]))
        value = column[final.num_rows - 1].as_py()
        if not isinstance(value, str) or ("\n" not in value and "\r" not in value):
            return
        with open(self.path, "rb") as fh:
            fh.seek(max(self.size_bytes - 64, 0))
            tail = fh.read()
        if not tail.rstrip(b"\r\n").endswith(b'"'):
            raise AnonymizationError(
                f"{self.path}: row {rows}: a quoted value is never closed, so the rest of the "
                "file was read as one value; close the quote (or double it inside the value)"
            )

    # Parquet ---------------------------------------------------------------------------
    def _parquet_batches(
        self, cols: list[str], chunk_rows: int, position: list[int] | None
    ) -> Iterator[pa.RecordBatch]:
        pf = pq.ParquetFile(self.path)
        total = max(pf.metadata.num_rows, 1)
        done = 0
        for batch in pf.iter_batches(batch_size=chunk_rows, columns=cols):
            done += batch.num_rows
            if position is not None:
                position[0] = int(self.size_bytes * done / total)
            yield self._mask_missing(batch)

    def _mask_missing(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if not self.missing:
            return batch
        marks = pa.array(self.missing, pa.string())
        arrays = []
        for arr in batch.columns:
            if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
                hit = pc.is_in(arr, value_set=marks.cast(arr.type))
                arr = pc.if_else(hit, pa.scalar(None, arr.type), arr)
            arrays.append(arr)
        return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)

    # JSON Lines ------------------------------------------------------------------------
    def _jsonl_lines(self) -> Iterator[tuple[int, dict[str, Any]]]:
        return jsonl_objects(self.path)

    def _jsonl_columns(self) -> list[str]:
        # Columns are the keys in order of first appearance, so one pass over the keys
        # fixes them before any chunk is read (a key first seen late is still a column).
        seen: dict[str, None] = {}
        for _, obj in self._jsonl_lines():
            for key in obj:
                seen.setdefault(key, None)
        return list(seen)

    def _jsonl_batches(self, cols: list[str], chunk_rows: int) -> Iterator[pa.RecordBatch]:
        rows: list[dict[str, Any]] = []

        def flush() -> pa.RecordBatch:
            arrays = [pa.array([jsonl_cell(r.get(c)) for r in rows], pa.string()) for c in cols]
            return self._mask_missing(pa.RecordBatch.from_arrays(arrays, names=cols))

        for _, obj in self._jsonl_lines():
            rows.append(obj)
            if len(rows) == chunk_rows:
                yield flush()
                rows = []
        if rows:
            yield flush()


def _rechunk(
    batches: Iterator[pa.RecordBatch], chunk_rows: int, cols: list[str]
) -> Iterator[pa.Table]:
    """Regroup record batches into tables of exactly ``chunk_rows`` rows (the last: fewer).

    A table's columns may come in several pieces: whoever needs them whole combines them
    (:func:`~privtrain.anonymize.chunk_view.encode_columns`, off the parser's thread)."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        rows += batch.num_rows
        while rows >= chunk_rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, chunk_rows).select(cols)
            rest = table.slice(chunk_rows)
            pending = rest.to_batches() if rest.num_rows else []
            rows = rest.num_rows
    if rows:
        yield pa.Table.from_batches(pending).select(cols)


def _decoded(table: pa.Table) -> pa.Table:
    """``table`` with its dictionary-encoded columns as plain values."""
    columns = [
        c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c for c in table.columns
    ]
    return pa.table(columns, names=table.column_names)


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(exc).split())


_RAGGED = re.compile(r"(?:Row #(\d+): )?Expected (\d+) columns, got (\d+)")


def _parse_problem(exc: pa.ArrowInvalid) -> str:
    """Arrow's CSV error without the row's text it quotes (cells are the owner's raw data
    and must not reach logs), with data rows counted from 1 after the header as in every
    other message."""
    text = str(exc)
    ragged = _RAGGED.search(text)
    if ragged:
        row, want, got = ragged.groups()
        where = f"row {int(row) - 1}: " if row else ""
        return f"{where}expected {want} fields as in the header, found {got}"
    if "straddling object" in text:
        return f"a row is longer than {_BLOCK_BYTES >> 20} MiB; rows that long are not supported"
    if "Empty CSV file" in text:
        return "the input has no rows"
    # Other parse errors quote the offending text after a colon: keep only what went wrong.
    head = text.split(": ", 2)
    return "cannot parse the CSV (" + ": ".join(head[:2]).strip() + ")"


def _unsupported_columns(schema: pa.Schema) -> dict[str, str]:
    """Columns whose cells are not one text-like value, by name, with the reason."""
    out = {}
    for field in schema:
        t = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
        if pa.types.is_nested(t):
            out[field.name] = f"type {t} holds several values per cell"
        elif pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
            out[field.name] = f"type {t} holds bytes, not text"
    return out


def _statistics_columns(schema: pa.Schema) -> list[str]:
    """The columns whose Parquet statistics are written: all but text."""
    out = []
    for f in schema:
        kind = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            out.append(f.name)
    return out


class ChunkWriter:
    """Write an output table chunk by chunk to a temporary file, then rename it into place.

    Parameters
    ----------
    path : Path
        Final output file; Parquet unless it ends in ``.csv`` or ``.jsonl`` / ``.ndjson``.

    Notes
    -----
    The first chunk fixes the schema (with pandas' metadata, so the file reads back with
    the same dtypes as one written by ``DataFrame.to_parquet``); later chunks are cast
    to it. A column may come dictionary-encoded (a chunk's distinct values and each
    row's index into them): Parquet then gets the chunk's dictionary page as it is,
    instead of a copy of every row's value to hash again. The file holds the plain
    value type (no Arrow schema is stored, pandas' metadata is), so it reads back as
    ``string``, ``Int64``, ... columns, never as categoricals. Use as a context manager:
    leaving it without :meth:`commit` removes the temporary file. A Parquet chunk is
    written on a worker thread (Arrow releases the GIL) while the caller prepares the
    next; at most one waits, so memory stays bounded.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.format = table_format(self.path)
        try:
            fd, tmp = tempfile.mkstemp(
                prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
            )
        except OSError as exc:
            raise InvalidInput(f"cannot write {self.path}: {exc.strerror}") from None
        os.fchmod(fd, 0o644)
        self.tmp = Path(tmp)
        self._fh: IO[bytes] | None = os.fdopen(fd, "wb")
        self._parquet: pq.ParquetWriter | None = None
        self._sink: pa.NativeFile | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None
        self._schema: pa.Schema | None = None
        self._header = True
        self.rows = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    def write_arrow(
        self, columns: dict[str, pa.Array | pa.ChunkedArray], like: pd.DataFrame
    ) -> None:
        """Append one chunk given as Arrow columns (output order).

        ``like`` is an empty frame with the output's pandas dtypes; its metadata goes into
        the schema, so the file reads back as if ``DataFrame.to_parquet`` had written it.
        """
        assert self._fh is not None
        if self._schema is None:
            meta = pa.Schema.from_pandas(like, preserve_index=False).metadata
            fields = [pa.field(n, a.type) for n, a in columns.items()]
            self._schema = pa.schema(fields, metadata=meta)
        try:
            table = pa.Table.from_arrays(list(columns.values()), names=list(columns))
            table = table.cast(self._schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise AnonymizationError(
                f"{self.path}: an output column changed type between chunks ({exc})"
            ) from None
        self.rows += table.num_rows
        if self.format == "parquet":
            if self._parquet is None:
                # A native file: the worker thread writes pages without taking the GIL,
                # which a Python file object needs for every write.
                self._sink = pa.OSFile(str(self.tmp), "wb")
                # Statistics of a dictionary-encoded column are updated once per write
                # batch (a hash of its indices each time): 16k rows a batch rather than
                # 1k cost a fifth of the writing time less, with the same file.
                # Min/max statistics for numbers and dates only: for text (tokens,
                # pseudonyms, labels) they help no reader and cost much of the writing time.
                self._parquet = pq.ParquetWriter(
                    self._sink, self._schema, store_schema=False, write_batch_size=1 << 14,
                    write_statistics=_statistics_columns(self._schema),
                )  # fmt: skip
                if self._schema.metadata:
                    self._parquet.add_key_value_metadata(self._schema.metadata)
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="privtrain-write")
            if table.num_rows:
                self._wait()
                assert self._pool is not None
                self._pending = self._pool.submit(self._parquet.write_table, table)
        else:
            self._write_text(_decoded(table).to_pandas(types_mapper=_text_output_types))

    def _write_text(self, frame: pd.DataFrame) -> None:
        assert self._fh is not None
        try:
            if self.format == "jsonl":
                if len(frame):
                    frame.to_json(self._fh, orient="records", lines=True, force_ascii=False)
            else:
                frame.to_csv(
                    self._fh, index=False, header=self._header, encoding="utf-8",
                    lineterminator="\n",
                )
                self._header = False
        except OSError as exc:
            raise AnonymizationError(f"cannot write {self.path}: {_one_line(exc)}") from None

    def _wait(self) -> None:
        """Wait for the chunk being written, re-raising its error with the output's name."""
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending.result()
            except (OSError, pa.ArrowException) as exc:
                raise AnonymizationError(f"cannot write {self.path}: {_one_line(exc)}") from None

    def _stop(self) -> None:
        try:
            self._wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None

    def finish(self) -> tuple[str, int]:
        """Close and fsync the temporary file; return its SHA-256 (hex) and size in bytes."""
        assert self._fh is not None
        self._stop()
        try:
            if self._parquet is not None:
                self._parquet.close()
            if self._sink is not None:
                self._sink.close()
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except (OSError, pa.ArrowException) as exc:
            raise AnonymizationError(f"cannot write {self.path}: {_one_line(exc)}") from None
        self._fh.close()
        self._fh = None
        digest = hashlib.sha256()
        size = 0
        with open(self.tmp, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
                size += len(block)
        return digest.hexdigest(), size

    def commit(self) -> None:
        """Rename the finished temporary file to the output name."""
        assert self._fh is None, "finish() first"
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Drop the temporary file, if it is still there."""
        if self._fh is not None:
            if self._parquet is not None:
                try:
                    self._stop()
                    self._parquet.close()
                except (OSError, pa.ArrowException):
                    pass
            if self._sink is not None:
                self._sink.close()
            self._fh.close()
            self._fh = None
        self.tmp.unlink(missing_ok=True)
