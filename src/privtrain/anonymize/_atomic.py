"""Atomic file writes: a reader sees the old file or the complete new one, never half of it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    Parameters
    ----------
    path : Path
        Destination; its folder must exist.
    data : bytes
        Complete file content.
    mode : int
        Permission bits of the new file (default ``0o644``).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temp_path_beside(path: Path) -> Path:
    """Return a fresh, unused path next to ``path`` for writers that need a file name.

    The caller writes there and ``os.replace``-s it onto ``path``; the same folder keeps the
    rename atomic (one file system).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)
