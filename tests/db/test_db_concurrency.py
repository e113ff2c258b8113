"""Concurrent writers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from privtrain.platform.db import Database, DatasetRecord, StepMetric, upgrade
from privtrain.platform.db.engine import sqlite_url

THREADS = 4
INSERTS_PER_THREAD = 50
WORK_INSIDE_TRANSACTION_S = 0.02


def _hammer(db: Database, job_id: str) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def writer(worker: int) -> None:
        barrier.wait()
        for i in range(INSERTS_PER_THREAD):
            step = worker * INSERTS_PER_THREAD + i
            try:
                with db.transaction():
                    # Read first (a deferred SQLite transaction would now hold
                    # only a read lock), work, then write: the upgrade that
                    # used to fail with "database is locked".
                    db.metrics.count(job_id)
                    time.sleep(WORK_INSIDE_TRANSACTION_S)
                    db.metrics.add_steps(
                        job_id,
                        [
                            StepMetric(
                                step=step,
                                epoch=0,
                                loss=0.5,
                                batch_size=64,
                                samples_per_s=100.0,
                                epsilon=0.001 * step,
                            )
                        ],
                    )
            except Exception as exc:  # noqa: BLE001  (recorded for the main thread to report)
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_four_writers_on_default_sqlite_file_lose_nothing(
    tmp_path: Path, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> None:
    """C-D02: 4 threads x 50 inserts, 20 ms of work inside each transaction."""
    url = sqlite_url(tmp_path / "privtrain.db")
    upgrade(url)
    with Database(url) as db:
        job_id = submit(db, make_dataset(db).id)
        errors = _hammer(db, job_id)
        assert errors == []
        assert db.metrics.count(job_id) == THREADS * INSERTS_PER_THREAD


@pytest.mark.parametrize(
    "db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_four_writers_on_postgres_lose_nothing(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> None:
    """C-D02 on PostgreSQL (transactions overlap there instead of queueing)."""
    job_id = submit(db, make_dataset(db).id)
    assert _hammer(db, job_id) == []
    assert db.metrics.count(job_id) == THREADS * INSERTS_PER_THREAD
