"""MNIST in its original four-file IDX layout; any dataset in the same layout loads the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lowbit.data.idx import read_idx_pair
from lowbit.data.labels import check_labels
from lowbit.errors import DataError

# split -> (images file, labels file), without the optional ".gz" suffix.
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

NUM_CLASSES = 10  # MNIST's digits; any dataset loaded in this layout must use labels 0..9

HOW_TO_GET = (
    "run `lowbit data download {name}` or pass --data-dir (data_dir=) to a folder holding it"
)


def find_file(data_dir: Path, stem: str, name: str = "mnist") -> Path:
    """Return ``data_dir/stem.gz`` or ``data_dir/stem``, whichever exists; else DataError."""
    for candidate in (data_dir / f"{stem}.gz", data_dir / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"missing dataset file {data_dir / stem}[.gz]; " + HOW_TO_GET.format(name=name))


def load_mnist(
    data_dir: str | Path, split: str, num_classes: int = NUM_CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """Load one split as ``(images uint8 (N, 1, H, W), labels int64 (N,))``.

    Raises DataError naming the file for an empty split (0 images) and for a label outside
    ``0..num_classes - 1`` (the first one, by index), before anything trains on them.
    """
    if split not in MNIST_FILES:
        raise ValueError(
            f"unknown split {split!r} for an IDX dataset; use one of {list(MNIST_FILES)}"
        )
    data_dir = Path(data_dir)
    images_stem, labels_stem = MNIST_FILES[split]
    images_path, labels_path = find_file(data_dir, images_stem), find_file(data_dir, labels_stem)
    images, labels = read_idx_pair(images_path, labels_path)
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected 3 dims (N, H, W), got {images.shape}")
    if len(labels) == 0:
        raise DataError(f"{split} set is empty: {images_path} and {labels_path} hold 0 examples")
    check_labels(labels, num_classes, labels_path)
    return images[:, None, :, :], labels.astype(np.int64)

