"""Label checks at load time: a label outside the class range is an error naming its file, not
an ``IndexError`` deep inside the first epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lowbit.errors import DataError


def check_labels(labels: np.ndarray, num_classes: int, path: str | Path) -> np.ndarray:
    """Return ``labels`` if every value is in ``0..num_classes - 1``; else DataError naming
    ``path``, the first bad record (by index), its value and how many are bad."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{path}: label {int(labels[i])} of record {i} is outside 0..{num_classes - 1} "
            f"({bad.size} of {labels.size} labels out of range)"
        )
    return labels
