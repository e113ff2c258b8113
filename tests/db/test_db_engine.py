"""SQLite engine settings and UTC timestamps."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import event, text
from sqlalchemy.dialects import sqlite

from privtrain.platform.db import Database, DatasetRecord
from privtrain.platform.db.engine import make_engine, sqlite_url
from privtrain.platform.db.models import UTCDateTime
from privtrain.platform.job_states import AlertKind


def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    engine = make_engine(sqlite_url(tmp_path / "settings.db"))
    try:
        with engine.connect() as connection:
            pragmas = {
                name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "busy_timeout", "foreign_keys", "synchronous")
            }
            # synchronous 1 is NORMAL
            assert pragmas == {
                "journal_mode": "wal",
                "busy_timeout": 30000,
                "foreign_keys": 1,
                "synchronous": 1,
            }
    finally:
        engine.dispose()


def test_sqlite_write_transactions_begin_immediate(tmp_path: Path) -> None:
    engine = make_engine(sqlite_url(tmp_path / "immediate.db"))
    statements: list[str] = []
    try:
        event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
        with engine.begin() as connection:
            connection.execute(text("SELECT 1"))
        assert "BEGIN IMMEDIATE" in statements
    finally:
        engine.dispose()


def test_in_memory_sqlite_is_refused() -> None:
    with pytest.raises(ValueError, match="in-memory"):
        make_engine("sqlite://")


def test_timestamps_come_back_timezone_aware_utc(
    db: Database, make_dataset: Callable[..., DatasetRecord]
) -> None:
    tokyo = timezone(timedelta(hours=9))
    fired = datetime(2024, 5, 1, 9, 0, tzinfo=tokyo)
    make_dataset(db)
    alert = db.alerts.fire(None, AlertKind.DEAD_WORKER, "worker gone", {}, at=fired)
    stored = db.alerts.list()[0]
    assert stored.fired_at == fired == alert.fired_at
    assert stored.fired_at.utcoffset() == timedelta(0)
    assert stored.fired_at.hour == 0
    assert db.datasets.list()[0].created_at.tzinfo is not None


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        UTCDateTime().process_bind_param(datetime(2024, 1, 1), sqlite.dialect())
