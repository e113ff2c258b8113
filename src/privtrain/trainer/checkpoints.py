"""Checkpoints and final parameters: safetensors for tensors, JSON for the rest.

Never pickle: a checkpoint or a parameter file is data, and loading it runs no
code. Files are written to a temporary name and renamed, so a crash leaves the
previous checkpoint intact. They hold what the server keeps from everyone else
(parameters, the randomness' stream counters): files are 0600, folders 0700.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, load_file, save

from privtrain.atomic_files import atomic_write_bytes
from privtrain.errors import InvalidInput

PARAMETERS_FORMAT = "privtrain-parameters-v1"
METADATA_KEY = "privtrain"


def save_checkpoint(
    directory: Path,
    *,
    epoch: int,
    model_state: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    within_epoch: bool = False,
) -> Path:
    """Save one checkpoint: ``epoch-NNNN.{safetensors,json}`` at the end of epoch ``epoch``,
    or ``step-NNNNNNNN.{safetensors,json}`` (``state["step"]``) inside an epoch.

    Tensors: model parameters under ``model.<name>``, optimizer state tensors
    (momentum buffers, Adam moments) under ``optimizer.<param index>.<name>``.
    JSON: ``state`` (step, accountant history, RNG states, ...) plus the
    optimizer's scalar state and param groups under ``optimizer``. Epoch checkpoints
    are all kept; a new checkpoint of either kind removes the older within-epoch ones,
    which only the newest position needs. Returns the safetensors path.
    """
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model_state.items()}
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in opt["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    full_state = {**state, "optimizer": {"scalars": scalars, "param_groups": opt["param_groups"]}}
    private_folder(directory)
    stem = directory / (f"step-{int(state['step']):08d}" if within_epoch else f"epoch-{epoch:04d}")
    atomic_write_bytes(stem.with_suffix(".safetensors"), save(tensors), mode=0o600)
    atomic_write_bytes(stem.with_suffix(".json"), json.dumps(full_state, sort_keys=True).encode(),
                       mode=0o600)
    # The new pair is complete before the older within-epoch pairs go.
    for older in directory.glob("step-*"):
        if older.stem != stem.name:
            older.unlink(missing_ok=True)
    return stem.with_suffix(".safetensors")


def private_folder(directory: Path) -> Path:
    """Create ``directory`` (and missing parents) and make it 0700."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    return directory


def latest_checkpoint(directory: Path) -> Path | None:
    """The checkpoint (``.safetensors`` path) furthest into training whose JSON half exists
    too, epoch or within-epoch, or None."""
    if not directory.is_dir():
        return None
    best: tuple[int, Path] | None = None
    for path in directory.glob("*.safetensors"):
        if not path.name.startswith(("epoch-", "step-")):
            continue
        try:
            step = int(json.loads(path.with_suffix(".json").read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # half-written pair (a crash between the two renames) or another file
        if best is None or step > best[0]:
            best = (step, path)
    return None if best is None else best[1]


def save_parameters(path: Path, state_dict: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """Write final parameters as safetensors with ``metadata``; returns the file's SHA-256 (hex).

    The metadata travels as one sorted JSON string under the key ``privtrain``:
    safetensors writes several metadata keys in an arbitrary order, which would
    give the same parameters a different hash on every run.
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    packed = json.dumps({"format": PARAMETERS_FORMAT, **metadata}, sort_keys=True)
    data = save(tensors, metadata={METADATA_KEY: packed})
    private_folder(path.parent)
    atomic_write_bytes(path, data, mode=0o600)
    return hashlib.sha256(data).hexdigest()


def load_parameters(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Parse safetensors bytes into (state dict, metadata).

    Raises
    ------
    InvalidInput
        The bytes are not a privtrain parameter file.
    """
    try:
        tensors = load(data)
        metadata = read_metadata(data)
    except Exception as exc:  # safetensors raises its own error types
        raise InvalidInput(f"not a safetensors parameter file: {exc}") from None
    try:
        metadata = json.loads(metadata[METADATA_KEY])
    except (KeyError, ValueError):
        raise InvalidInput("not a privtrain parameter file: no privtrain metadata") from None
    if metadata.get("format") != PARAMETERS_FORMAT:
        raise InvalidInput(f"parameter file format is {metadata.get('format')!r}, expected {PARAMETERS_FORMAT!r}")
    return tensors, metadata


def read_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes (8-byte little-endian header length, JSON header)."""
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    return dict(header.get("__metadata__") or {})


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`: (tensors, state)."""
    tensors = load_file(path)
    state = json.loads(path.with_suffix(".json").read_text())
    return tensors, state

