"""The 1,797 8×8 handwritten digits shipped inside scikit-learn.

Source: the test set of the UCI "Optical Recognition of Handwritten Digits"
data (Alpaydin & Kaynak 1998, https://archive.ics.uci.edu/dataset/80, CC BY 4.0):
32×32 bitmaps downsampled to 8×8 blocks counting set pixels (0-16).
scikit-learn vendors it as ``sklearn/datasets/data/digits.csv.gz`` and
:func:`sklearn.datasets.load_digits` reads it from the installed package, so
nothing is downloaded.
"""

from __future__ import annotations

import numpy as np

from privtrain.datasets.wheel import DatasetUnavailable

ROWS = 1_797
PIXEL_MAX = 16.0


def fetch_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digit images and labels.

    Returns
    -------
    images : ndarray, shape (1797, 1, 8, 8), float32 in [0, 1] (the 0-16 counts / 16)
    labels : ndarray, shape (1797,), int64 in 0..9

    Raises
    ------
    DatasetUnavailable
        The installed scikit-learn does not hold the expected 1,797 images.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images)
    if images.shape != (ROWS, 8, 8):
        raise DatasetUnavailable(f"scikit-learn's digits have shape {images.shape}, expected ({ROWS}, 8, 8)")
    features = (images / PIXEL_MAX).astype(np.float32).reshape(ROWS, 1, 8, 8)
    return features, np.asarray(bunch.target, dtype=np.int64)
