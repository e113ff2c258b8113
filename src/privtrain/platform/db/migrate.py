"""Run the Alembic migrations shipped inside the package.

The Alembic configuration is built in code, with ``script_location`` pointing
at ``privtrain/alembic`` next to this package, so ``privtrain db upgrade``
works after a plain ``pip install`` with no ``alembic.ini`` in the working
directory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from privtrain.errors import FailedPrecondition
from privtrain.platform.db.engine import make_engine

#: Folder holding env.py, script.py.mako and versions/.
ALEMBIC_DIR = Path(__file__).resolve().parent.parent.parent / "alembic"

_Action = Callable[[Config], None]


def alembic_config(url: str, connection: Connection | None = None) -> Config:
    """Return an Alembic :class:`Config` for ``url`` without any ini file.

    Parameters
    ----------
    url : str
        SQLAlchemy URL of the database to migrate.
    connection : Connection | None
        An open connection for ``env.py`` to use (and whose transaction it
        joins); None lets ``env.py`` build its own engine from ``url``.
    """
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    # ConfigParser interpolation would eat a '%' of a URL-encoded password.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["url"] = url
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision``, in one transaction.

    On SQLite foreign-key enforcement is off while migrating (batch mode
    recreates tables) and ``PRAGMA foreign_key_check`` runs before commit.
    """
    _run(url, lambda config: command.upgrade(config, revision))


def downgrade(url: str, revision: str) -> None:
    """Migrate the database at ``url`` down to ``revision`` (``"base"`` empties it)."""
    _run(url, lambda config: command.downgrade(config, revision))


def current_revision(url: str) -> str | None:
    """Return the revision the database at ``url`` is at, or None if unmigrated."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    """Return the newest revision shipped with this version of privtrain."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def check_migrated(url: str) -> None:
    """Refuse to use a database that is not at the latest migration (the server, and the
    operator's commands on its home).

    Raises
    ------
    FailedPrecondition
        Naming the revision found and the command that fixes it.
    """
    try:
        current = current_revision(url)
    except Exception as exc:  # SQLAlchemy or driver error: unreadable or unreachable database
        raise FailedPrecondition(f"cannot read the database at {url}: {exc}") from None
    if current != head_revision():
        raise FailedPrecondition(
            f"the database at {url} is at revision {current or 'none'}, not {head_revision()}: "
            "run `privtrain db upgrade` first"
        )


def _run(url: str, action: _Action) -> None:
    engine = make_engine(url, foreign_keys=False)
    try:
        with engine.begin() as connection:
            action(alembic_config(url, connection))
    finally:
        engine.dispose()
