"""Engine construction: one place decides how we talk to SQLite and PostgreSQL.

SQLite notes (why each setting is here):

- ``journal_mode=WAL`` lets readers run while one writer writes.
- ``busy_timeout=30000`` (ms) makes a writer wait for the lock instead of
  failing at once with "database is locked".
- ``foreign_keys=ON``: SQLite ignores foreign keys unless told per connection.
- ``synchronous=NORMAL`` is durable enough under WAL and much faster than FULL.
- The database file is created 0600 before SQLite opens it (and narrowed to 0600
  if it was wider): SQLite gives its ``-wal`` and ``-shm`` files the database
  file's permissions, so the job records, ledgers and audit log are the owner's only.
- pysqlite's own transaction handling sends a deferred ``BEGIN`` lazily and
  only before DML. A deferred transaction that first reads and then writes
  must upgrade its lock, and SQLite answers such an upgrade with SQLITE_BUSY
  *immediately* (busy_timeout cannot help, it would deadlock). So we follow
  the SQLAlchemy-documented recipe: put the DBAPI connection in autocommit
  mode and emit ``BEGIN IMMEDIATE`` ourselves, which takes the write lock up
  front (and waits for it under busy_timeout). Read-only transactions may ask
  for a plain deferred ``BEGIN`` with the execution option
  :data:`READ_ONLY_OPTION`; they never upgrade, so they never see BUSY.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.pool import ConnectionPoolEntry

#: Execution option: start this connection's transactions with a deferred
#: ``BEGIN`` on SQLite (for transactions that only read).
READ_ONLY_OPTION = "privtrain_read_only"

#: How long a SQLite writer waits for the write lock, in milliseconds.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def sqlite_url(path: Path) -> str:
    """Return the SQLAlchemy URL of a SQLite database file.

    Parameters
    ----------
    path : Path
        The database file; made absolute so the URL does not depend on the
        working directory.

    Returns
    -------
    str
        ``sqlite+pysqlite:////abs/path.db``.
    """
    return f"sqlite+pysqlite:///{Path(path).expanduser().resolve()}"


def is_sqlite(url: str) -> bool:
    """Return whether ``url`` names a SQLite database."""
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str, *, foreign_keys: bool = True) -> Engine:
    """Create an :class:`~sqlalchemy.Engine` configured for our workload.

    Parameters
    ----------
    url : str
        A SQLAlchemy URL (``sqlite+pysqlite:///...`` or
        ``postgresql+psycopg2://...``).
    foreign_keys : bool
        SQLite only: enforce foreign keys. Migrations turn this off because
        batch mode recreates tables, and dropping a referenced table with
        enforcement on would delete or reject the rows that refer to it; the
        migration environment runs ``PRAGMA foreign_key_check`` afterwards.

    Returns
    -------
    Engine
        With ``pool_pre_ping`` on for servers, and the SQLite pragmas and
        ``BEGIN IMMEDIATE`` recipe described in the module docstring.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database in (None, "", ":memory:"):
        # Each pooled connection would see its own empty in-memory database.
        raise ValueError(
            f"in-memory SQLite is not supported ({url!r}); use a file, e.g. sqlite_url(path)"
        )
    _private_file(Path(parsed.database))
    engine = create_engine(
        url,
        # The pysqlite timeout (seconds) is the same wait as busy_timeout.
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
    )
    _install_sqlite_recipe(engine, foreign_keys=foreign_keys)
    return engine


def _private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if missing; narrow it to 0600 if it is wider."""
    if not path.parent.is_dir():
        return  # SQLite reports the missing folder itself, naming it
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
    except PermissionError:
        return  # someone else's file: reading it is their grant to give


def _install_sqlite_recipe(engine: Engine, *, foreign_keys: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Autocommit at the DBAPI level: pysqlite must not issue its own BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(READ_ONLY_OPTION):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
