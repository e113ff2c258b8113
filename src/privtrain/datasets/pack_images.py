"""The data owner's step for image data: pack arrays into safetensors and sign a manifest.

The counterpart of ``privtrain anonymize run`` for images: the output is
``OUT.safetensors`` (see :mod:`privtrain.datasets.image_arrays`) plus
``OUT.safetensors.manifest.json``, signed with the data owner's key by
:func:`privtrain.anonymize.manifest.sign_manifest`, which the server verifies
at upload exactly as it verifies a table's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from privtrain import __version__
from privtrain.anonymize.manifest import sign_manifest
from privtrain.atomic_files import atomic_write_bytes
from privtrain.datasets.digits import fetch_digits
from privtrain.datasets.image_arrays import (
    SPLIT,
    TEST_FRACTION,
    draw_split,
    encode_image_arrays,
    read_image_arrays,
)
from privtrain.datasets.image_manifest import (
    FEATURE_DTYPE,
    IMAGE_KIND,
    IMAGE_MANIFEST_FORMAT,
    IMAGE_MANIFEST_VERSION,
)
from privtrain.datasets.mnist_subset import fetch_mnist_subset
from privtrain.errors import InvalidInput, NotFound


@dataclass(frozen=True)
class ImageSource:
    """A packable image source: its loader and its label values, declared (not read off the data)."""

    fetch: Callable[[], tuple[np.ndarray, np.ndarray]]
    label_values: tuple[int, ...]


SOURCES: dict[str, ImageSource] = {
    "digits": ImageSource(fetch_digits, tuple(range(10))),
    "mnist-subset": ImageSource(lambda: fetch_mnist_subset(), tuple(range(10))),
}


@dataclass(frozen=True)
class PackReport:
    """What :func:`pack_images` wrote."""

    path: Path
    manifest_path: Path
    rows: int
    feature_shape: tuple[int, int, int]
    sha256: str
    bytes: int


def manifest_path_for(out: Path) -> Path:
    """``OUT.manifest.json`` next to ``OUT``."""
    return out.with_name(out.name + ".manifest.json")


def image_manifest(source: str, data: bytes, rows: int, feature_shape: tuple[int, ...],
                   label_values: tuple[int, ...], test_fraction: float = TEST_FRACTION) -> dict[str, Any]:
    """The (unsigned) manifest describing the packed bytes ``data``; ``split`` declares the
    owner's random hold-out (the file's ``split`` tensor, ``test_fraction`` of the rows)."""
    return {
        "kind": IMAGE_KIND,
        "format": IMAGE_MANIFEST_FORMAT,
        "version": IMAGE_MANIFEST_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "tool_version": __version__,
        "source": source,
        "output_rows": rows,
        "output_sha256": hashlib.sha256(data).hexdigest(),
        "output_bytes": len(data),
        "feature_shape": [int(d) for d in feature_shape],
        "feature_dtype": FEATURE_DTYPE,
        "n_classes": len(label_values),
        "label_values": list(label_values),
        "split": {"method": "random_holdout", "tensor": SPLIT, "test_share": test_fraction},
    }


def _check_outputs(out: Path, manifest_path: Path, overwrite: bool) -> None:
    """Refuse, before anything is fetched or written, an output that is a folder, that
    (unless ``overwrite``) already exists, or whose folder is missing."""
    if out.is_dir():
        raise InvalidInput(f"--out {out} is a directory; give a file name such as "
                           f"{out / 'images.safetensors'}")
    if manifest_path.is_dir():
        raise InvalidInput(f"the manifest path {manifest_path} is a directory; choose another --out")
    existing = [str(path) for path in (out, manifest_path) if path.exists()]
    if existing and not overwrite:
        raise InvalidInput(f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
                           "pass --force to replace")
    if not out.parent.is_dir():
        raise InvalidInput(f"cannot write --out {out}: folder {out.parent} does not exist")


def pack_images(source: str, out: Path, *, signing_key_path: Path,
                signing_cert_path: Path, overwrite: bool = False,
                test_fraction: float = TEST_FRACTION) -> PackReport:
    """Pack a named image source into ``out`` (safetensors) and its signed manifest.

    Parameters
    ----------
    source : str
        A key of :data:`SOURCES` (``digits``: 1,797 × (1, 8, 8); ``mnist-subset``: 5,000 × (1, 28, 28)).
    out : Path
        Safetensors file to write; the manifest goes to ``OUT.manifest.json``.
    signing_key_path, signing_cert_path : Path
        The data owner's PEM private key and certificate (the uploader's mTLS pair).
    overwrite : bool
        Replace ``out`` and its manifest when they exist; without it an existing one is refused.
    test_fraction : float
        The owner's test share: each image is held out with this probability, on its own
        (:func:`privtrain.datasets.image_arrays.draw_split`).

    Raises
    ------
    InvalidInput
        Unknown source, an output path that names an input, is a directory or (without
        ``overwrite``) exists, or labels outside the declared values; nothing is written.
    NotFound
        The signing key or certificate cannot be read.
    ManifestError
        The key and certificate do not match or are unsupported.
    DatasetUnavailable
        The source could not be fetched.
    """
    if source not in SOURCES:
        raise InvalidInput(f"unknown image source {source!r}; available: {sorted(SOURCES)}")
    out = Path(out)
    manifest_path = manifest_path_for(out)
    inputs = {Path(signing_key_path).resolve(), Path(signing_cert_path).resolve()}
    if out.resolve() in inputs or manifest_path.resolve() in inputs:
        raise InvalidInput(f"--out {out} would overwrite the signing key or certificate")
    _check_outputs(out, manifest_path, overwrite)
    try:
        key_pem, cert_pem = Path(signing_key_path).read_bytes(), Path(signing_cert_path).read_bytes()
    except OSError as exc:
        raise NotFound(f"{exc.filename}: cannot read signing key/certificate ({exc.strerror})") from None
    features, labels = SOURCES[source].fetch()
    data = encode_image_arrays(features, labels, draw_split(len(labels), test_fraction))
    manifest = image_manifest(source, data, len(labels), features.shape[1:], SOURCES[source].label_values,
                              test_fraction)
    read_image_arrays(data, manifest)  # the file must pass the trainer's own checks before it is signed
    signed = sign_manifest(manifest, key_pem, cert_pem)
    atomic_write_bytes(out, data)
    atomic_write_bytes(manifest_path, signed)
    c, h, w = (int(d) for d in features.shape[1:])
    return PackReport(path=out, manifest_path=manifest_path, rows=len(labels), feature_shape=(c, h, w),
                      sha256=manifest["output_sha256"], bytes=len(data))
