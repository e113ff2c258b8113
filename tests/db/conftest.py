"""Fixtures: every DB test runs on a real SQLite file and on PostgreSQL.

PostgreSQL tests get a fresh schema (selected through ``search_path`` in the
URL) that is dropped afterwards, so the shared ``test`` database is left as
it was found.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from privtrain.platform.db import Database, DatasetRecord, NewDataset, upgrade
from privtrain.platform.db.engine import sqlite_url

# Overridable so CI can point the suite at another server.
POSTGRES_URL = os.environ.get(
    "PRIVTRAIN_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)

_postgres_problem: list[str | None] = []


def postgres_unreachable_reason() -> str | None:
    """Return why PostgreSQL cannot be used, or None when it can (cached)."""
    if not _postgres_problem:
        try:
            engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            engine.dispose()
            _postgres_problem.append(None)
        except Exception as exc:  # noqa: BLE001  (any failure means: skip, saying why)
            _postgres_problem.append(f"PostgreSQL at {POSTGRES_URL} unreachable: {exc}".strip())
    return _postgres_problem[0]


BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file in tmp_path, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "privtrain.db")
        return
    reason = postgres_unreachable_reason()
    if reason is not None:
        pytest.skip(reason)
    schema = f"privtrain_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """A migrated database with all repositories."""
    upgrade(db_url)
    database = Database(db_url)
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
def make_dataset() -> Callable[..., DatasetRecord]:
    """Return a function that registers a dataset with a budget (ε, δ)."""
    return _make_dataset


@pytest.fixture
def submit() -> Callable[..., str]:
    """Return a function that submits a job (PENDING, not yet admitted) and returns its id."""
    return _submit


def _make_dataset(
    db: Database, *, name: str = "census", epsilon: float = 3.0, delta: float = 1e-5,
    input_sha256: str | None = None, previous_manifest_sha256: str | None = None,
    owner: str = "owner.example.test", sha256: str | None = None,
) -> DatasetRecord:
    record, _ = db.datasets.create(
        NewDataset(
            name=name,
            owner_common_name=owner,
            storage_path=f"/srv/privtrain/datasets/{name}.parquet",
            sha256=sha256 or hashlib.sha256(name.encode()).hexdigest(),
            size_bytes=5 * 2**30,
            rows=20,
            manifest_json='{"k_target": 5}',
            manifest_sha256=hashlib.sha256(f"manifest of {name}".encode()).hexdigest(),
            input_sha256=input_sha256,
            previous_manifest_sha256=previous_manifest_sha256,
            split_json='{"column": "split", "test": "test", "train": "train"}',
            published_train_rows=16,
            published_test_rows=4,
        ),
        epsilon_budget=epsilon,
        delta_budget=delta,
    )
    return record


def _submit(db: Database, dataset_id: str, *, request_id: str | None = None) -> str:
    job, _ = db.jobs.submit(
        request_id=request_id,
        dataset_id=dataset_id,
        submitter_common_name="trainer.example.test",
        spec_json='{"model": "linear", "epochs": 3}',
    )
    return job.id
