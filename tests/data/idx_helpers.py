"""Helpers shared by the data tests: write small synthetic IDX files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def idx_bytes(array: np.ndarray, dtype_code: int = 0x08) -> bytes:
    """IDX encoding of ``array`` (uint8 unless another dtype code is given)."""
    header = struct.pack(">HBB", 0, dtype_code, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    data = idx_bytes(np.asarray(array, dtype=np.uint8))
    path.write_bytes(gzip.compress(data) if gz else data)
    return path
