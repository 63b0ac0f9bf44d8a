"""CIFAR-10, binary version: 3073-byte records (label byte, then R, G, B planes of 32x32).

Reference: A. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", Tech. Report,
University of Toronto, 2009; file layout as described on the CIFAR-10 page ("binary version").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lowbit.data.labels import check_labels
from lowbit.errors import DataError

RECORD_BYTES = 1 + 3 * 32 * 32
NUM_CLASSES = 10
CIFAR10_FILES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}

HOW_TO_GET = (
    "run `lowbit data download cifar10` or pass --data-dir (data_dir=) to a folder holding it"
)


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file as ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``."""
    path = Path(path)
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"missing dataset file {path}; {HOW_TO_GET}") from None
    except OSError as exc:
        raise DataError(f"cannot read CIFAR-10 file {path}: {exc}") from exc
    if raw.size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes, no CIFAR-10 records)")
    if raw.size % RECORD_BYTES:
        raise DataError(
            f"{path}: length {raw.size} bytes is not a multiple of the "
            f"{RECORD_BYTES}-byte CIFAR-10 record (truncated or not a CIFAR-10 batch)"
        )
    records = raw.reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    check_labels(labels, NUM_CLASSES, path)
    images = np.ascontiguousarray(records[:, 1:]).reshape(-1, 3, 32, 32)
    return images, labels


def load_cifar10(data_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load the train split (5 batch files, in order) or the test split of CIFAR-10."""
    if split not in CIFAR10_FILES:
        raise ValueError(f"unknown split {split!r} for cifar10; use one of {list(CIFAR10_FILES)}")
    parts = [read_cifar_batch(Path(data_dir) / name) for name in CIFAR10_FILES[split]]
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
