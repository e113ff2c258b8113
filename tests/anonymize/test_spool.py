"""Pass 1's chunks kept for pass 2, and reading ahead on a thread."""

from __future__ import annotations

import threading

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from privtrain.anonymize.spool import Spool, read_ahead


def test_spool_gives_back_the_chunks_in_order_with_their_dictionaries() -> None:
    """Each chunk keeps its own dictionary (IPC stream format allows replacement)."""
    first = pa.table({"name": pc.dictionary_encode(pa.array(["Ann", None, "Bo"]))})
    second = pa.table({"name": pc.dictionary_encode(pa.array(["Cy", "Cy"]))})
    with Spool() as spool:
        spool.add(first)
        spool.add(second)
        back = list(spool.chunks())
    assert spool.rows == 5
    assert [t.column("name").to_pylist() for t in back] == [["Ann", None, "Bo"], ["Cy", "Cy"]]
    assert back[1].column("name").chunk(0).dictionary.to_pylist() == ["Cy"]


def test_spool_with_nothing_added_yields_nothing() -> None:
    with Spool() as spool:
        assert list(spool.chunks()) == []


def test_read_ahead_keeps_order_and_runs_on_another_thread() -> None:
    threads: list[str] = []

    def produce():  # type: ignore[no-untyped-def]
        for i in range(5):
            threads.append(threading.current_thread().name)
            yield i

    assert list(read_ahead(produce())) == [0, 1, 2, 3, 4]
    assert set(threads) == {"privtrain-read-ahead"}


def test_read_ahead_reraises_the_producers_error_at_its_item() -> None:
    def produce():  # type: ignore[no-untyped-def]
        yield 1
        raise ValueError("bad row 7")

    got = []
    with pytest.raises(ValueError, match="bad row 7"):
        for item in read_ahead(produce()):
            got.append(item)
    assert got == [1]


def test_read_ahead_stops_the_worker_when_the_consumer_stops() -> None:
    produced = []

    def produce():  # type: ignore[no-untyped-def]
        for i in range(1000):
            produced.append(i)
            yield i

    items = read_ahead(produce(), depth=1)
    assert next(items) == 0
    items.close()
    assert len(produced) < 10
