"""The embedded default dataset: scikit-learn's bundled 8x8 handwritten digits (no download).

1797 images, 10 classes, pixel values 0..16 in the source (UCI "Optical Recognition of
Handwritten Digits", the test part as shipped in ``sklearn.datasets.load_digits``). They are
scaled to 0..255 as ``round(v * 255 / 16)`` (so 0 -> 0 and 16 -> 255) and stored as uint8.

Split (deterministic, documented): ``numpy.random.default_rng(0).permutation(1797)``; the first
1437 indices of that permutation are the train split, the last 360 the test split.
"""

from __future__ import annotations

import numpy as np

SPLIT_SEED = 0
NUM_TRAIN = 1437
NUM_CLASSES = 10


def load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images uint8 (N, 1, 8, 8), labels int64 (N,))`` for ``split`` "train" or "test"."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r} for digits; use 'train' or 'test'")
    from sklearn.datasets import load_digits as sk_load_digits  # heavy import, only when used

    x, y = sk_load_digits(return_X_y=True)
    images = np.rint(x * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 1, 8, 8)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    index = order[:NUM_TRAIN] if split == "train" else order[NUM_TRAIN:]
    return np.ascontiguousarray(images[index]), y[index].astype(np.int64)
