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


def manifest_kind(manifest: Mapping[str, Any]) -> str:
    """``image_array`` or ``table`` (a manifest without ``kind`` describes a table)."""
    return str(manifest.get("kind", TABLE_KIND))


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_image_manifest_fields(manifest: Mapping[str, Any]) -> None:
    """Raise ``ManifestError`` naming the first missing, mistyped or inconsistent field.

    ``feature_shape`` is ``[C, H, W]`` of positive integers, ``feature_dtype`` is
    ``float32``, ``label_values`` are ``n_classes`` (≥ 2) distinct integers in
    ascending order, ``output_rows`` ≥ 1 and ``output_sha256`` is lower-case hex.
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
    if len(shape) != 3 or not all(_whole(d) and d >= 1 for d in shape):
        raise ManifestError(f"image manifest feature_shape must be [C, H, W] of integers >= 1, got {shape}")
    if manifest["feature_dtype"] != FEATURE_DTYPE:
        raise ManifestError(f"image manifest feature_dtype must be {FEATURE_DTYPE!r}, "
                            f"got {manifest['feature_dtype']!r}")
    values = manifest["label_values"]
    if not all(_whole(v) for v in values) or values != sorted(set(values)):
        raise ManifestError(f"image manifest label_values must be distinct integers in ascending order, "
                            f"got {values[:12]}")
    if manifest["n_classes"] < 2 or manifest["n_classes"] != len(values):
        raise ManifestError(f"image manifest n_classes {manifest['n_classes']} must be >= 2 and equal "
                            f"the {len(values)} label_values")
    if manifest["output_rows"] < 1 or manifest["output_bytes"] < 0:
        raise ManifestError("image manifest output_rows must be >= 1 and output_bytes >= 0")
    if not _SHA256_HEX.fullmatch(manifest["output_sha256"]):
        raise ManifestError("image manifest output_sha256 is not a lower-case hex SHA-256")
