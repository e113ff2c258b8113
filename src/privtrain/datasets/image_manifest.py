"""Fields of the signed manifest that travels with a packed image dataset.

A packed image dataset is one safetensors file holding ``features``
(N, C, H, W) float32 and ``label`` (N,) int64 (see
:mod:`privtrain.datasets.image_arrays`). Its manifest is signed and verified
exactly like an anonymized table's (:mod:`privtrain.anonymize.manifest`) and
says which bytes it describes (``output_sha256``, ``output_bytes``) and what a
trainer may rely on: the shape and dtype of one image and the declared label
values. It carries ``"kind": "image_array"``; a table manifest has no ``kind``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

TABLE_KIND = "table"
IMAGE_KIND = "image_array"
IMAGE_MANIFEST_FORMAT = "privtrain-image-array-manifest"
IMAGE_MANIFEST_VERSION = 1
FEATURE_DTYPE = "float32"

IMAGE_REQUIRED_FIELDS: dict[str, type] = {
    "kind": str,
    "format": str,
    "version": int,
    "created_at": str,
    "tool_version": str,
    "source": str,
    "output_rows": int,
    "output_sha256": str,
    "output_bytes": int,
    "feature_shape": list,
    "feature_dtype": str,
    "n_classes": int,
    "label_values": list,
}
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# A model's output layer holds one logit per class, and DP-SGD keeps a per-sample gradient of
# it: 100,000 classes is several times the largest common label sets (ImageNet-21k has 21,841)
# while its per-sample head gradient for a 128-wide hidden layer is already 51 MB a sample.
MAX_CLASSES = 100_000
# Image sides up to 65,536 (JPEG stops at 65,535) and at most 2**28 float32 values (1 GiB) an
# image: past either, the manifest is a mistake rather than a dataset a worker could batch.
MAX_FEATURE_SIDE = 2**16
MAX_FEATURE_VALUES = 2**28


def manifest_kind(manifest: Mapping[str, Any]) -> str:
    """``image_array`` or ``table`` (a manifest without ``kind`` describes a table)."""
    return str(manifest.get("kind", TABLE_KIND))


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_image_manifest_fields(manifest: Mapping[str, Any]) -> None:
    """Raise ``ManifestError`` naming the first missing, mistyped or inconsistent field.

    ``feature_shape`` is ``[C, H, W]`` of integers in 1..:data:`MAX_FEATURE_SIDE` with at
    most :data:`MAX_FEATURE_VALUES` values an image, ``feature_dtype`` is ``float32``,
    ``label_values`` are ``n_classes`` (2..:data:`MAX_CLASSES`) distinct int64 integers in
    ascending order, ``output_rows`` ≥ 1 and ``output_bytes`` ≥ 0 are int64, and
    ``output_sha256`` is lower-case hex, and ``split`` (the owner's hold-out, optional
    in older manifests) names the ``split`` tensor and its test share.
    """
    # Imported here: the anonymizer package loads its manifest module, which dispatches to this one.
    from privtrain.anonymize.errors import ManifestError

    if manifest.get("kind") != IMAGE_KIND:
        raise ManifestError(f"unknown manifest kind {manifest.get('kind')!r}; expected {IMAGE_KIND!r} "
                            "or no kind (a table)")
    for name, typ in IMAGE_REQUIRED_FIELDS.items():
        if name not in manifest:
            raise ManifestError(f"image manifest missing field {name!r}")
        value = manifest[name]
        if isinstance(value, bool) or not isinstance(value, typ):
            raise ManifestError(f"image manifest field {name!r} has the wrong type ({type(value).__name__})")
    if manifest["format"] != IMAGE_MANIFEST_FORMAT or manifest["version"] != IMAGE_MANIFEST_VERSION:
        raise ManifestError(
            f"unsupported manifest format {manifest['format']!r} version {manifest['version']!r}"
        )
    shape = manifest["feature_shape"]
    if len(shape) != 3 or not all(_whole(d) and 1 <= d <= MAX_FEATURE_SIDE for d in shape):
        raise ManifestError(f"image manifest feature_shape must be [C, H, W] of integers in "
                            f"1..{MAX_FEATURE_SIDE}, got {shape[:4]}")
    if math.prod(shape) > MAX_FEATURE_VALUES:
        raise ManifestError(f"image manifest feature_shape {shape} holds {math.prod(shape)} values an "
                            f"image, more than the {MAX_FEATURE_VALUES} allowed")
    if manifest["feature_dtype"] != FEATURE_DTYPE:
        raise ManifestError(f"image manifest feature_dtype must be {FEATURE_DTYPE!r}, "
                            f"got {manifest['feature_dtype']!r}")
    n_classes, values = manifest["n_classes"], manifest["label_values"]
    if not 2 <= n_classes <= MAX_CLASSES:
        raise ManifestError(f"image manifest n_classes must be in 2..{MAX_CLASSES}, got {n_classes}")
    if n_classes != len(values):
        raise ManifestError(f"image manifest n_classes {n_classes} must equal the {len(values)} "
                            "label_values")
    if not all(_whole(v) and INT64_MIN <= v <= INT64_MAX for v in values) or values != sorted(set(values)):
        raise ManifestError(f"image manifest label_values must be distinct int64 integers in ascending "
                            f"order, got {values[:12]}{' ...' if len(values) > 12 else ''}")
    if not (1 <= manifest["output_rows"] <= INT64_MAX and 0 <= manifest["output_bytes"] <= INT64_MAX):
        raise ManifestError("image manifest output_rows must be in 1..2**63-1 and output_bytes in 0..2**63-1")
    if not _SHA256_HEX.fullmatch(manifest["output_sha256"]):
        raise ManifestError("image manifest output_sha256 is not a lower-case hex SHA-256")
    split = manifest.get("split")
    if split is not None and not (
        isinstance(split, dict) and split.get("method") == "random_holdout"
        and split.get("tensor") == "split" and isinstance(split.get("test_share"), float)
        and 0 < split["test_share"] < 1 and set(split) == {"method", "tensor", "test_share"}
    ):
        raise ManifestError('image manifest split must be {"method": "random_holdout", "tensor": '
                            '"split", "test_share": a number in (0, 1)}')
