"""Atomic file writes: a reader sees the old file or the complete new one, never half of it.

Every area writes its outputs (keys, manifests, Parquet, checkpoints,
parameters) through these functions.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from privtrain.errors import InvalidInput


@contextmanager
def staged_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> Iterator[Callable[[], None]]:
    """Write ``data`` to a temporary file beside ``path`` and yield the function that
    renames it into place (``os.replace``); leaving the block without calling it removes
    the temporary file, so ``path`` is untouched.

    For a file that must only appear together with another one (a manifest and the
    output it describes): stage it first, so a full disk fails before either is in place.
    The temporary file is created 0600 by ``mkstemp`` and ``fchmod``-ed to ``mode`` before
    any byte is written, so a private key is never more readable than asked, whatever the
    umask; it is fsync-ed before the rename.

    Parameters
    ----------
    path : Path
        Destination; its folder must exist.
    data : bytes
        Complete file content.
    mode : int
        Permission bits of the new file (``0o600`` for secrets).

    Raises
    ------
    InvalidInput
        The folder does not exist or is not writable; names ``path``.
    OSError
        Writing failed (e.g. the disk is full); its ``filename`` is ``path``.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise InvalidInput(f"cannot write {path}: {exc.strerror}") from None
    try:
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            # The same error, naming the file (a full disk says nothing of which).
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        yield lambda: os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``
    (:func:`staged_bytes`, renamed at once).

    Raises
    ------
    InvalidInput, OSError
        As :func:`staged_bytes`.
    """
    with staged_bytes(path, data, mode=mode) as commit:
        commit()
