"""Feeding chunks to the two passes: read ahead on a thread, and keep pass 1's chunks.

Parsing text (CSV, JSON Lines) is the costliest part of reading, and the streaming
anonymizer reads its input twice. :class:`Spool` keeps the chunks pass 1 parsed in an
unnamed temporary file in Arrow's IPC streaming format (uncompressed, one record batch
per chunk, dictionary-encoded columns with their own dictionary per chunk; at most about
the size of the text), so pass 2 reads them back instead of parsing the
text again. The file has no name (``tempfile.TemporaryFile``), so it is gone when closed
or when the process ends, however it ends. Batches are read with plain reads, never
memory-mapped: a mapped file would count in the process's resident memory as pass 2
walks through it, and memory must stay flat whatever the file size.

:func:`read_ahead` produces the next chunk on a worker thread while the caller works on
the current one; Arrow's CSV parser and Parquet writer release the GIL, so on a machine
with two or more cores reading, transforming and writing overlap.
"""

from __future__ import annotations

import queue
import tempfile
import threading
from collections.abc import Iterator
from typing import IO, Any, Self

import pyarrow as pa

from privtrain.anonymize.errors import AnonymizationError

_DONE = object()


class Spool:
    """Chunks (Arrow tables of one schema) appended once, then read back in order.

    Use as a context manager; the temporary file is closed (and so removed) on exit.

    Raises
    ------
    AnonymizationError
        The temporary file cannot be written (e.g. the disk is full); names the folder.
    """

    def __init__(self) -> None:
        self._fh: IO[bytes] = tempfile.TemporaryFile(prefix="privtrain-spool-")
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self.rows = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, table: pa.Table) -> None:
        """Append one chunk (written as one record batch)."""
        try:
            if self._writer is None:
                self._writer = pa.ipc.new_stream(self._fh, table.schema)
            self._writer.write_table(table, max_chunksize=max(table.num_rows, 1))
        except (OSError, pa.ArrowException) as exc:
            raise AnonymizationError(
                f"cannot write the temporary copy of the input in {tempfile.gettempdir()} "
                f"({exc}); free some space there or point TMPDIR elsewhere"
            ) from None
        self.rows += table.num_rows

    def chunks(self) -> Iterator[pa.Table]:
        """The chunks in the order they were added."""
        if self._writer is None:
            return
        try:
            self._writer.close()
            # The last bytes may still be buffered: a full disk is told here.
            self._fh.flush()
            self._fh.seek(0)
        except (OSError, pa.ArrowException) as exc:
            raise AnonymizationError(
                f"cannot write the temporary copy of the input in {tempfile.gettempdir()} "
                f"({exc}); free some space there or point TMPDIR elsewhere"
            ) from None
        for batch in pa.ipc.open_stream(pa.PythonFile(self._fh, mode="r")):
            yield pa.Table.from_batches([batch])

    def close(self) -> None:
        """Close (and so remove) the temporary file; never raises: a buffer that cannot
        be flushed to a full disk is dropped with the file, and the error that told of
        the full disk stays the one reported."""
        try:
            self._fh.close()
        except OSError:
            pass  # the descriptor is closed all the same


def read_ahead(chunks: Iterator[Any], depth: int = 1) -> Iterator[Any]:
    """The items of ``chunks``, each produced on a worker thread while the previous is used.

    At most ``depth`` items wait ahead, so memory stays bounded. An exception raised by
    ``chunks`` is re-raised here, at the item where it happened. Stopping early (closing
    the returned generator) stops the worker after the item it is producing.
    """
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in chunks:
                while not stop.is_set():
                    try:
                        slots.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put((_DONE, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread
            slots.put((None, exc))

    worker = threading.Thread(target=work, name="privtrain-read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            item, exc = slots.get()
            if exc is not None:
                raise exc
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            try:
                slots.get_nowait()
            except queue.Empty:
                worker.join(0.05)
