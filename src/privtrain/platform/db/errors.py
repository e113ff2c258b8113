"""Errors raised by the persistence layer (subclasses of the shared hierarchy)."""

from __future__ import annotations

import errno

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from privtrain.errors import FailedPrecondition
from privtrain.platform.job_states import InvalidTransition


class AlreadyExists(FailedPrecondition):
    """A row with that unique name already exists."""


class PrivacyBudgetExceeded(FailedPrecondition):
    """A job asks for more (ε, δ) than its dataset has left."""


_DISK_ERRNOS = {
    errno.ENOSPC: "the server's disk is full",
    errno.EDQUOT: "the server's disk quota is used up",
    errno.EIO: "the server's disk failed to read or write",
    errno.EROFS: "the server's storage is read-only",
}


def storage_failure(exc: BaseException) -> str | None:
    """What a storage error means to a caller, or None when ``exc`` is not one.

    Storage errors are the server's, not the caller's: a full or failing disk
    (``OSError``: ENOSPC, EDQUOT, EIO, EROFS, or any other), or a database that refuses
    work (SQLAlchemy's ``DBAPIError``: disk full, locked, connection lost, a corrupt
    file; a pool timeout). An ``IntegrityError``, ``ProgrammingError`` or ``DataError``
    is a bug or a value our checks should have refused, and is not one.

    The words returned quote nothing stored (no statement, no parameter), so they may
    reach any caller; the log line gives the operator the error itself.
    """
    if isinstance(exc, OSError):
        return _DISK_ERRNOS.get(exc.errno or 0, "the server could not read or write its storage")
    if isinstance(exc, IntegrityError | ProgrammingError | DataError):
        return None
    if isinstance(exc, DBAPIError):
        text = str(exc.orig).lower()
        if "full" in text or "no space" in text:
            return "the server's database is full"
        return "the server's database is unavailable"
    if isinstance(exc, PoolTimeout):
        return "the server's database is busy"
    return None


__all__ = ["AlreadyExists", "InvalidTransition", "PrivacyBudgetExceeded", "storage_failure"]
