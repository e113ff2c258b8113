"""Packed image datasets: one safetensors file, checked against its signed manifest.

The file holds exactly three tensors, ``features`` (N, C, H, W) float32, ``label``
(N,) int64 and ``split`` (N,) uint8, and nothing else (safetensors cannot carry
code, unlike pickle). ``split`` is the data owner's train/test split: 1 marks a
test row. :func:`draw_split` draws it when the file is packed, each row on its own
(Bernoulli with the test share, from the operating system's CSPRNG), so adding or
removing one image changes no other image's side, and no trainer can steer it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
from safetensors import SafetensorError, safe_open

from privtrain.errors import InvalidInput

FEATURES = "features"
LABEL = "label"
SPLIT = "split"
# Default share of the rows the owner holds out for testing.
TEST_FRACTION = 0.2
_SAFETENSORS_DTYPES = {FEATURES: "F32", LABEL: "I64", SPLIT: "U8"}
_NUMPY_TO_SAFETENSORS = {"float32": "F32", "int64": "I64", "uint8": "U8"}
# Features are checked in blocks of this many bytes, so checking a stored file of any size
# holds one block in memory rather than the whole tensor.
CHECK_BLOCK_BYTES = 64 * 2**20


def draw_split(rows: int, test_fraction: float = TEST_FRACTION) -> np.ndarray:
    """The owner's split of ``rows`` images: ``(rows,)`` uint8, 1 for a test row.

    Each row is a test row with probability ``test_fraction``, independently, from
    ``os.urandom`` (32-bit uniforms).

    Raises
    ------
    InvalidInput
        ``test_fraction`` outside (0, 1).
    """
    if not 0 < test_fraction < 1:
        raise InvalidInput(f"test_fraction must be in (0, 1), got {test_fraction}")
    words = np.frombuffer(os.urandom(4 * rows), dtype=np.uint32)
    return (words < np.uint32(int(test_fraction * 2**32))).astype(np.uint8)


def encode_image_arrays(features: np.ndarray, labels: np.ndarray, split: np.ndarray) -> bytes:
    """The safetensors bytes of ``features`` (N, C, H, W) float32, ``labels`` (N,) int64 and
    ``split`` (N,) uint8 (1 for a test row, see :func:`draw_split`).

    Raises
    ------
    InvalidInput
        Wrong ranks, dtypes, or row counts that differ.
    """
    if features.ndim != 4 or features.dtype != np.float32:
        raise InvalidInput(f"features must be (N, C, H, W) float32, got {features.shape} {features.dtype}")
    if labels.ndim != 1 or labels.dtype != np.int64 or len(labels) != len(features):
        raise InvalidInput(f"labels must be ({len(features)},) int64, got {labels.shape} {labels.dtype}")
    if split.shape != labels.shape or split.dtype != np.uint8 or (split > 1).any():
        raise InvalidInput(f"split must be ({len(features)},) uint8 of 0 and 1, got {split.shape} "
                           f"{split.dtype}")
    return safetensors.numpy.save({FEATURES: np.ascontiguousarray(features),
                                   LABEL: np.ascontiguousarray(labels),
                                   SPLIT: np.ascontiguousarray(split)})


def _expected_shapes(manifest: Mapping[str, Any]) -> dict[str, list[int]]:
    rows = int(manifest["output_rows"])
    return {FEATURES: [rows, *(int(d) for d in manifest["feature_shape"])], LABEL: [rows],
            SPLIT: [rows]}


def _check_layout(found: Mapping[str, tuple[list[int], str]], manifest: Mapping[str, Any]) -> None:
    expected = _expected_shapes(manifest)
    if set(found) != set(expected):
        hint = (" (a file packed without the owner's train/test split: pack it again)"
                if set(found) == {FEATURES, LABEL} else "")
        raise InvalidInput(f"image dataset must hold exactly the tensors {sorted(expected)}, "
                           f"found {sorted(found)}{hint}")
    for name, (shape, dtype) in found.items():
        if list(shape) != expected[name] or dtype != _SAFETENSORS_DTYPES[name]:
            raise InvalidInput(f"tensor {name!r} is {list(shape)} {dtype}; the manifest declares "
                               f"{expected[name]} {_SAFETENSORS_DTYPES[name]}")


def check_image_file(path: Path, manifest: Mapping[str, Any]) -> None:
    """Run the trainer's checks of :func:`read_image_arrays` on a stored file, without loading it whole.

    Tensor names, shapes and dtypes are read from the header; the features are then
    read in blocks of at most :data:`CHECK_BLOCK_BYTES` and the labels once, so the
    extra memory is one block plus the (N,) int64 labels (8 bytes a row).

    Raises
    ------
    InvalidInput
        Not a safetensors file, a layout other than the manifest's, non-finite pixels,
        or a label outside the declared ``label_values`` (the messages of :func:`read_image_arrays`).
    """
    try:
        with safe_open(str(path), framework="np") as handle:
            found = {name: (handle.get_slice(name).get_shape(), handle.get_slice(name).get_dtype())
                     for name in handle.keys()}  # noqa: SIM118 - safe_open is not a mapping
            _check_layout(found, manifest)
            features = handle.get_slice(FEATURES)
            rows, *image = features.get_shape()
            step = max(1, CHECK_BLOCK_BYTES // (4 * math.prod(image)))
            for start in range(0, rows, step):
                _check_finite(features[start:min(start + step, rows)])
            _classes_of(handle.get_tensor(LABEL), manifest)
            _split_of(handle.get_tensor(SPLIT))
    except SafetensorError as exc:
        raise InvalidInput(f"image dataset is not a readable safetensors file: {exc}") from None


def _check_finite(features: np.ndarray) -> None:
    if not np.isfinite(features).all():
        raise InvalidInput("image dataset features hold NaN or infinite values")


def _classes_of(labels: np.ndarray, manifest: Mapping[str, Any]) -> np.ndarray:
    """Index of each label in the ascending ``label_values``; raises naming labels not among them."""
    declared = manifest["label_values"]
    # Parameter metadata read back by a client reaches here without the signed-manifest field check.
    try:
        values = np.asarray(declared, dtype=np.int64)
    except (OverflowError, TypeError, ValueError):
        raise InvalidInput(f"label_values must be int64 integers, got {list(declared)[:12]}") from None
    index = np.clip(np.searchsorted(values, labels), 0, len(values) - 1)
    outside = values[index] != labels
    if outside.any():
        shown = values[:12].tolist()
        raise InvalidInput(f"image dataset labels {sorted(set(labels[outside].tolist()))[:5]} are outside "
                           f"the declared label_values ({len(values)} values: "
                           f"{shown}{' ...' if len(values) > len(shown) else ''})")
    return index.astype(np.int64)


def _split_of(split: np.ndarray) -> np.ndarray:
    """``(N,)`` bool, True for a test row; raises on values other than 0 and 1."""
    if (split > 1).any():
        raise InvalidInput("image dataset split tensor holds values other than 0 (train) and 1 (test)")
    return split.astype(bool)


def read_image_arrays(data: bytes, manifest: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse a packed file and map its labels to class indices.

    Returns
    -------
    features : ndarray, shape (N, C, H, W), float32
    classes : ndarray, shape (N,), int64 index into the manifest's ``label_values``
    is_test : ndarray, shape (N,), bool: the owner's test rows

    Raises
    ------
    InvalidInput
        Unreadable file, a layout other than the manifest's, non-finite pixels, or a
        label outside the declared ``label_values``.
    """
    try:
        tensors = safetensors.numpy.load(data)
    except SafetensorError as exc:
        raise InvalidInput(f"image dataset is not a readable safetensors file: {exc}") from None
    _check_layout({name: (list(t.shape), _NUMPY_TO_SAFETENSORS.get(t.dtype.name, t.dtype.name))
                   for name, t in tensors.items()}, manifest)
    features = tensors[FEATURES]
    _check_finite(features)
    return features, _classes_of(tensors[LABEL], manifest), _split_of(tensors[SPLIT])
