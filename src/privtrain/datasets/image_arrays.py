"""Packed image datasets: one safetensors file, checked against its signed manifest.

The file holds exactly two tensors, ``features`` (N, C, H, W) float32 and
``label`` (N,) int64, and nothing else (safetensors cannot carry code, unlike
pickle). Train and test rows are told apart by a seeded permutation
(:func:`split_indices`), so the server and a client holding the same file and
seed draw the same test rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
from safetensors import SafetensorError, safe_open

from privtrain.errors import InvalidInput

FEATURES = "features"
LABEL = "label"
# Share of the rows held out for testing; fixed so that a split is named by its seed alone.
TEST_FRACTION = 0.2
_SAFETENSORS_DTYPES = {FEATURES: "F32", LABEL: "I64"}
_NUMPY_TO_SAFETENSORS = {"float32": "F32", "int64": "I64"}
# Features are checked in blocks of this many bytes, so checking a stored file of any size
# holds one block in memory rather than the whole tensor.
CHECK_BLOCK_BYTES = 64 * 2**20


def encode_image_arrays(features: np.ndarray, labels: np.ndarray) -> bytes:
    """The safetensors bytes of ``features`` (N, C, H, W) float32 and ``labels`` (N,) int64.

    Raises
    ------
    InvalidInput
        Wrong ranks, dtypes, or row counts that differ.
    """
    if features.ndim != 4 or features.dtype != np.float32:
        raise InvalidInput(f"features must be (N, C, H, W) float32, got {features.shape} {features.dtype}")
    if labels.ndim != 1 or labels.dtype != np.int64 or len(labels) != len(features):
        raise InvalidInput(f"labels must be ({len(features)},) int64, got {labels.shape} {labels.dtype}")
    return safetensors.numpy.save({FEATURES: np.ascontiguousarray(features),
                                   LABEL: np.ascontiguousarray(labels)})


def _expected_shapes(manifest: Mapping[str, Any]) -> dict[str, list[int]]:
    rows = int(manifest["output_rows"])
    return {FEATURES: [rows, *(int(d) for d in manifest["feature_shape"])], LABEL: [rows]}


def _check_layout(found: Mapping[str, tuple[list[int], str]], manifest: Mapping[str, Any]) -> None:
    expected = _expected_shapes(manifest)
    if set(found) != set(expected):
        raise InvalidInput(f"image dataset must hold exactly the tensors {sorted(expected)}, "
                           f"found {sorted(found)}")
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


def read_image_arrays(data: bytes, manifest: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Parse a packed file and map its labels to class indices.

    Returns
    -------
    features : ndarray, shape (N, C, H, W), float32
    classes : ndarray, shape (N,), int64 index into the manifest's ``label_values``

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
    return features, _classes_of(tensors[LABEL], manifest)


def split_sizes(rows: int, test_fraction: float = TEST_FRACTION) -> tuple[int, int]:
    """(train rows, test rows) of :func:`split_indices`: at least one of each.

    Raises
    ------
    InvalidInput
        Fewer than 2 rows, or ``test_fraction`` outside (0, 1).
    """
    if rows < 2:
        raise InvalidInput(f"an image dataset needs at least 2 rows to split, has {rows}")
    if not 0 < test_fraction < 1:
        raise InvalidInput(f"test_fraction must be in (0, 1), got {test_fraction}")
    test = min(rows - 1, max(1, round(rows * test_fraction)))
    return rows - test, test


def split_indices(rows: int, seed: int, test_fraction: float = TEST_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices, each ascending; the test rows are a ``test_fraction`` share
    drawn by a permutation from ``numpy.random.default_rng(seed)``.

    Raises
    ------
    InvalidInput
        See :func:`split_sizes`.
    """
    _, test = split_sizes(rows, test_fraction)
    order = np.random.default_rng(seed).permutation(rows)
    return np.sort(order[test:]), np.sort(order[:test])
