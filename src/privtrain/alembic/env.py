"""Alembic environment for privtrain.

The database URL comes from the Config that
:mod:`privtrain.platform.db.migrate` builds (``config.attributes["url"]``, or
the ``sqlalchemy.url`` main option); when that module also passes an open
connection, migrations run inside its transaction. SQLite gets batch mode
(``render_as_batch``), because it cannot ALTER most constraints in place.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from privtrain.platform.db.engine import is_sqlite, make_engine
from privtrain.platform.db.models import metadata

config = context.config
target_metadata = metadata


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError(
            "no database URL; run migrations through privtrain.platform.db.migrate.upgrade(url)"
        )
    return str(url)


def _check_sqlite_foreign_keys(connection: Connection) -> None:
    # Migrations run with enforcement off (batch mode recreates tables), so
    # verify before commit that no row was left pointing at nothing.
    problems = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if problems:
        listed = "; ".join(f"table {row[0]} rowid {row[1]} -> {row[2]}" for row in problems[:5])
        raise RuntimeError(f"migration left dangling foreign keys: {listed}")


def _run_with(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=sqlite,
        # Our SQLite engine issues BEGIN itself (see engine.py), so DDL there
        # is transactional too and a failed migration leaves nothing behind.
        transactional_ddl=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
        if sqlite:
            _check_sqlite_foreign_keys(connection)


def run_migrations_offline() -> None:
    """Emit SQL instead of running it (``alembic upgrade --sql``)."""
    url = _url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=is_sqlite(url),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run migrations on the passed connection, or on a new engine for the URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    engine = make_engine(_url(), foreign_keys=False)
    try:
        with engine.connect() as new_connection:
            _run_with(new_connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
