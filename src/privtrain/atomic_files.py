"""Atomic file writes: a reader sees the old file or the complete new one, never half of it.

Every area writes its outputs (keys, manifests, Parquet, checkpoints,
parameters) through this one function.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from privtrain.errors import InvalidInput


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    The temporary file is created 0600 by ``mkstemp`` and ``fchmod``-ed to
    ``mode`` before any byte is written, so a private key is never more readable
    than asked, whatever the umask; it is fsync-ed before the rename.

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
        The folder does not exist or is not writable.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise InvalidInput(f"cannot write {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
