"""Reader for the IDX file format of MNIST and of datasets laid out like it (Fashion-MNIST, ...).

An IDX file starts with a big-endian header: two zero bytes, one dtype byte, one byte giving the
number of dimensions ``ndim``, then ``ndim`` big-endian uint32 sizes. The data follow in row-major
order. MNIST images have magic 2051 (``0x00000803``: uint8, 3 dims) and labels magic 2049
(``0x00000801``: uint8, 1 dim). Files may be gzip-compressed; compression is detected from the
first two bytes, not from the file name.

Reference: Y. LeCun, C. Cortes, "The MNIST database of handwritten digits" (file format section).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from lowbit.errors import DataError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

# IDX dtype byte -> big-endian numpy dtype.
IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """Return the (decompressed) content of ``path``; DataError if missing or corrupt."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"IDX file not found: {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"corrupt or truncated gzip file {path}: {exc}") from exc


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes into a numpy array in native byte order.

    ``name`` is used in error messages only. Raises DataError on a bad magic number, an
    unknown dtype byte, or a length that does not match the header's dimensions.
    """
    if len(data) < 4:
        raise DataError(f"{name}: too short for an IDX header ({len(data)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code not in IDX_DTYPES or ndim == 0:
        magic = struct.unpack(">I", data[:4])[0]
        raise DataError(f"{name}: not an IDX file (bad magic number {magic:#010x})")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(f"{name}: truncated IDX header ({len(data)} of {header_len} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = np.dtype(IDX_DTYPES[dtype_code])
    expected = header_len + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(
            f"{name}: IDX file {kind}: header says shape {shape} ({expected} bytes), "
            f"file has {len(data)} bytes"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | Path, magic: int | None = None) -> np.ndarray:
    """Read one IDX file (raw or gzipped); if ``magic`` is given, require that magic number."""
    path = Path(path)
    data = _read_bytes(path)
    if magic is not None and len(data) >= 4:
        found = struct.unpack(">I", data[:4])[0]
        if found != magic:
            raise DataError(
                f"{path}: wrong IDX magic number {found} ({found:#010x}), expected {magic}"
            )
    return parse_idx(data, name=str(path))


def read_idx_pair(
    images_path: str | Path, labels_path: str | Path
) -> tuple[np.ndarray, np.ndarray]:
    """Read an images file (magic 2051) and its labels file (magic 2049) as uint8 arrays.

    Returns ``(images (N, H, W), labels (N,))``. Raises DataError if the counts differ.
    """
    images = read_idx(images_path, magic=IMAGES_MAGIC)
    labels = read_idx(labels_path, magic=LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(
            f"{labels_path}: {len(labels)} labels but {images_path} has {len(images)} images"
        )
    return images, labels
