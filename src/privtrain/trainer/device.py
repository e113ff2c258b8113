"""Device selection: ``auto`` picks CUDA when a GPU is present."""

from __future__ import annotations

import torch

from privtrain.errors import FailedPrecondition


def resolve_device(name: str) -> torch.device:
    """Map ``auto`` / ``cpu`` / ``cuda`` to a ``torch.device``.

    Raises
    ------
    FailedPrecondition
        ``cuda`` was asked for on a machine without a usable GPU.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FailedPrecondition("device 'cuda' requested but no CUDA device is available")
    return torch.device(name)
