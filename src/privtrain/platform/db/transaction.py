"""Short transactions, with an optional ambient one that repositories join.

Every repository write is one short transaction. A caller that needs several
writes to be atomic (for example "mark the job FAILED and settle its budget")
wraps them in :meth:`Transactions.transaction`; repository calls made inside
that block, in the same thread, join it instead of opening their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from privtrain.platform.db.engine import READ_ONLY_OPTION


class Transactions:
    """Hands out sessions bound to one engine.

    Parameters
    ----------
    engine : Engine
        Built by :func:`privtrain.platform.db.engine.make_engine`.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._write = sessionmaker(engine, expire_on_commit=False)
        # On SQLite this makes the "begin" hook send a deferred BEGIN: a
        # transaction that only reads never needs the write lock.
        self._read = sessionmaker(
            engine.execution_options(**{READ_ONLY_OPTION: True}), expire_on_commit=False
        )
        # Each thread starts with an empty context, so the ambient session is
        # per thread (and per asyncio task).
        self._current: ContextVar[Session | None] = ContextVar(
            f"privtrain_db_session_{id(self)}", default=None
        )

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """Open a write transaction, or join the one already open in this thread.

        Yields
        ------
        Session
            Committed when the outermost block exits normally, rolled back
            when it raises. On SQLite it starts with ``BEGIN IMMEDIATE``.
        """
        current = self._current.get()
        if current is not None:
            yield current
            return
        with self._write() as session, session.begin():
            token = self._current.set(session)
            try:
                yield session
            finally:
                self._current.reset(token)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """Open a read-only transaction, or join the one open in this thread.

        Yields
        ------
        Session
            Do not write through it: on SQLite the transaction is deferred
            and an upgrade to a writer could fail with "database is locked".
        """
        current = self._current.get()
        if current is not None:
            yield current
            return
        with self._read() as session, session.begin():
            yield session

    def in_transaction(self) -> bool:
        """Whether this thread is inside :meth:`transaction`."""
        return self._current.get() is not None
