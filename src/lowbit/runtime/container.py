"""The container layer of a ``.lowbit`` file: a JSON header and raw, 64-byte aligned sections.

The layout, byte by byte, the versioning rule and why it is shaped like safetensors are in
docs/format.md; in short::

    0   8    magic b"\\x89LOWBIT\\n"
    8   8    N, the header's length in bytes, unsigned little-endian
    16  32   SHA-256 of the N header bytes
    48  N    the header: UTF-8 JSON {"format": "lowbit", "version": 1, "sections": {...},
             "meta": {...}}
    ..       zero bytes up to D = the first multiple of 64 >= 48 + N
    D   ..   the sections, in increasing offset order, section k at D + offset_k where
             offset_k is the first multiple of 64 at or after the end of section k-1 (the gaps
             are zero bytes); the file ends where the last section ends.

Version 2 adds ``"slices"`` to the header: small tensors (below :data:`POOL_BELOW` bytes) are
stored back to back in one ``pool.<dtype>`` section per dtype, and ``slices`` maps each one's
name to ``[pool section, offset in elements, shape]``; readers return them like sections. (A
ResNet-20 file has ~180 such tensors -- scales, biases, BatchNorm vectors, grids -- whose
section records and 64-byte alignment made 40 % of a 2-bit file.) Version 1 files (no slices)
are still read.

Each section record is ``{"offset", "length", "dtype", "shape", "sha256", "encoding"}``:
``offset`` relative to D, ``length`` in bytes, ``dtype`` one of :data:`DTYPES` (little-endian;
``bfloat16`` is read back as its uint16 bit patterns, numpy having no bfloat16),
``shape`` a list, ``sha256`` the hex digest of the section's bytes, ``encoding`` ``"raw"``
(the only one of version 1; readers refuse others by name).

Reading never executes code: ``json.loads`` and ``numpy.frombuffer`` (or ``numpy.memmap``)
only. Every field is checked before anything is allocated from it, so a damaged file is a
:class:`~lowbit.runtime.errors.FormatError` that names the file and what is wrong, never
another exception, a huge allocation or wrong data: the header has its own digest, every
section its own, and the layout leaves no byte unchecked (padding must be zero, nothing may
follow the last section). Writing is atomic (a temporary file in the destination's directory,
fsync, ``os.replace``). Tests: tests/runtime/test_container.py, the fuzzer
tests/runtime/fuzz_container.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lowbit.runtime.errors import FormatError

__all__ = ["MAGIC", "VERSION", "ALIGN", "DTYPES", "ENCODINGS", "Container", "write_container",
           "read_container", "read_header", "tensor_bytes"]

MAGIC = b"\x89LOWBIT\n"  # PNG-style: a high-bit byte and a line feed catch text-mode damage
VERSION = 2
READS = (1, 2)  # the versions this reader reads
ALIGN = 64
POOL_BELOW = 1024  # tensors of fewer bytes are pooled (version 2 slices)
PREFIX = len(MAGIC) + 8 + 32  # magic, header length, header digest
MAX_HEADER = 100 * 2**20  # 100 MiB: a longer header is damage, not a model
MAX_DIMS = 32
MAX_EXTENT = 2**48  # bytes an empty tensor's non-zero dimensions may span (numpy needs < 2^63)
DTYPES: dict[str, str] = {  # header name -> numpy dtype of the stored (little-endian) values
    "uint8": "<u1", "int8": "<i1", "int16": "<i2", "int32": "<i4",
    "float16": "<f2", "bfloat16": "<u2", "float32": "<f4", "float64": "<f8",
}
ENCODINGS = ("raw",)
_KEYS = {1: {"format", "version", "sections", "meta"},
         2: {"format", "version", "sections", "slices", "meta"}}
_SECTION_KEYS = {"offset", "length", "dtype", "shape", "sha256", "encoding"}


class Container(NamedTuple):
    """What :func:`read_container` returns: ``meta, sections = read_container(path)``."""

    meta: dict[str, Any]
    sections: dict[str, np.ndarray]


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


# -- writing --------------------------------------------------------------------------------

def _dtype_name(name: str, array: np.ndarray, bfloat16: Collection[str]) -> str:
    if array.dtype.name == "bfloat16" or (name in bfloat16 and array.dtype == np.uint16):
        return "bfloat16"  # ml_dtypes' bfloat16, or its uint16 bit patterns
    if name in bfloat16:
        raise TypeError(f"section {name!r} is listed as bfloat16 but is {array.dtype}, "
                        "not uint16 bit patterns")
    for key, code in DTYPES.items():
        if key != "bfloat16" and array.dtype.newbyteorder("<") == np.dtype(code):
            return key  # either byte order; stored little-endian
    raise TypeError(f"section {name!r} has dtype {array.dtype}; a lowbit file stores "
                    f"{', '.join(DTYPES)}")


def _little(name: str, value, bfloat16: Collection[str]) -> tuple[str, np.ndarray]:
    """(dtype name, C-contiguous little-endian array of the same shape)."""
    if not isinstance(name, str):
        raise TypeError(f"section names must be str, got {name!r}")
    array = np.asarray(value)
    dtype = _dtype_name(name, array, bfloat16)
    data = np.ascontiguousarray(array).view(np.uint16 if dtype == "bfloat16" else
                                            array.dtype).astype(DTYPES[dtype], copy=False)
    return dtype, np.ascontiguousarray(data).reshape(array.shape)  # 0-d stays 0-d


def _record(name: str, dtype: str, data: np.ndarray):
    raw = memoryview(data.reshape(-1).view(np.uint8))
    return (name, {"length": raw.nbytes, "dtype": dtype, "shape": list(data.shape),
                   "sha256": hashlib.sha256(raw).hexdigest(), "encoding": "raw"}, raw)


def _prepare(sections: Mapping[str, np.ndarray], bfloat16: Collection[str], pool_below: int):
    """([(name, record without offset, little-endian bytes)] per section, in order, with the
    tensors below ``pool_below`` bytes concatenated into one ``pool.<dtype>`` section per
    dtype; {name: [pool, offset, shape]} of the pooled ones)."""
    out, pools, slices = [], {}, {}
    for name, value in sections.items():
        dtype, data = _little(name, value, bfloat16)
        if data.nbytes < pool_below:
            parts = pools.setdefault(dtype, [])
            offset = sum(p.size for p in parts)
            parts.append(data.reshape(-1))
            slices[name] = [f"pool.{dtype}", offset, list(data.shape)]
        else:
            out.append(_record(name, dtype, data))
    for dtype, parts in pools.items():
        pool = f"pool.{dtype}"
        if pool in sections:
            raise ValueError(f"section name {pool!r} is reserved for pooled small tensors")
        out.append(_record(pool, dtype, np.concatenate(parts)))
    return out, slices


def _layout(prepared) -> dict[str, dict[str, Any]]:
    table, end = {}, 0
    for name, record, _ in prepared:
        offset = _aligned(end)
        table[name] = {"offset": offset, **record}
        end = offset + record["length"]
    return table


def _chunks(header: bytes, prepared, table) -> Iterable[bytes | memoryview]:
    yield MAGIC + struct.pack("<Q", len(header)) + hashlib.sha256(header).digest() + header
    pos = 0
    yield bytes(_aligned(PREFIX + len(header)) - PREFIX - len(header))
    for name, _, raw in prepared:
        yield bytes(table[name]["offset"] - pos)
        yield raw
        pos = table[name]["offset"] + raw.nbytes


def _atomic_write(path: Path, chunks: Iterable[bytes | memoryview]) -> None:
    """Write ``chunks`` to a temporary file next to ``path``, fsync, ``os.replace``: readers
    see the old file or the whole new one. (lowbit.train.files has the same helper, but that
    module imports torch.) The file gets the mode a plain ``open`` would give it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # persist the rename (best effort: not every platform opens a directory)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def write_container(path: str | Path, sections: Mapping[str, np.ndarray],
                    meta: Mapping[str, Any], *, bfloat16: Collection[str] = (),
                    pool_below: int = POOL_BELOW) -> None:
    """Write ``sections`` (name -> array of a :data:`DTYPES` type) and ``meta`` (a
    JSON-serialisable dict, no NaN/Inf) to ``path`` atomically. ``bfloat16`` names the uint16
    sections that hold bfloat16 bit patterns (an ml_dtypes bfloat16 array needs no naming).
    Tensors of fewer than ``pool_below`` bytes are pooled (module doc; 0: none)."""
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    prepared, slices = _prepare(sections, set(bfloat16), pool_below)
    table = _layout(prepared)
    header = {"format": "lowbit", "version": VERSION, "sections": table, "slices": slices,
              "meta": dict(meta)}
    try:
        text = json.dumps(header, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"meta is not plain JSON: {exc}") from exc
    header_bytes = text.encode("utf-8")
    if len(header_bytes) > MAX_HEADER:
        raise ValueError(f"header of {len(header_bytes)} bytes exceeds {MAX_HEADER}; put "
                         "large arrays in sections, not in meta")
    _atomic_write(Path(path), _chunks(header_bytes, prepared, table))


# -- reading --------------------------------------------------------------------------------

def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {dup!r}")
    return out


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _parse_header(raw: bytes, fail) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates,
                            parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        fail(f"the header is not JSON: {type(exc).__name__}: {str(exc)[:200]}")
    if not isinstance(header, dict):
        fail(f"the header is a JSON {type(header).__name__}, not an object")
    if header.get("format") != "lowbit":
        fail(f"the header's format is {str(header.get('format'))[:50]!r}, not 'lowbit'")
    version = header.get("version")
    if type(version) is not int or version not in READS:
        fail(f"format version {str(version)[:50]}: this reader reads versions "
             f"{', '.join(map(str, READS))}")
    keys = _KEYS[version]
    if set(header) != keys:
        missing, extra = sorted(keys - set(header)), sorted(set(header) - keys)
        fail(f"the header's keys are wrong for version {version} (missing {missing}, "
             f"unknown {extra[:5]})")
    header.setdefault("slices", {})
    if not all(isinstance(header[k], dict) for k in ("meta", "sections", "slices")):
        fail("the header's meta, sections and slices must be JSON objects")
    return header


def _is_count(v: Any) -> bool:
    return type(v) is int and v >= 0


def _check_record(name: str, rec: Any, fail) -> None:
    """One section record on its own: fields, types, dtype, shape x itemsize == length."""
    where = f"section {name[:80]!r}"
    if not isinstance(rec, dict):
        fail(f"{where}: the record is not a JSON object")
    encoding = rec.get("encoding")
    if encoding not in ENCODINGS:
        fail(f"{where}: encoding {str(encoding)[:50]!r} is unknown to this reader (format "
             f"version {VERSION} knows {', '.join(ENCODINGS)})")
    if set(rec) != _SECTION_KEYS:
        fail(f"{where}: keys missing {sorted(_SECTION_KEYS - set(rec))}, unknown "
             f"{sorted(set(rec) - _SECTION_KEYS)[:5]}")
    if not _is_count(rec["offset"]) or not _is_count(rec["length"]):
        fail(f"{where}: offset and length must be non-negative integers, got "
             f"{str(rec['offset'])[:30]}, {str(rec['length'])[:30]}")
    if rec["offset"] % ALIGN:
        fail(f"{where}: offset {rec['offset']} is not a multiple of {ALIGN}")
    if not isinstance(rec["dtype"], str) or rec["dtype"] not in DTYPES:
        fail(f"{where}: dtype {str(rec['dtype'])[:30]!r} is not one of {', '.join(DTYPES)}")
    shape = rec["shape"]
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(map(_is_count, shape)):
        fail(f"{where}: shape must be a list of at most {MAX_DIMS} non-negative integers")
    itemsize = np.dtype(DTYPES[rec["dtype"]]).itemsize
    if math.prod(d for d in shape if d) * itemsize > MAX_EXTENT:  # numpy's limit, for [2^62, 0]
        fail(f"{where}: shape {shape[:MAX_DIMS]} is too large for an array")
    if math.prod(shape) * itemsize != rec["length"]:
        fail(f"{where}: shape {shape} of {rec['dtype']} is {math.prod(shape) * itemsize} "
             f"bytes, but its length is {rec['length']}")
    digest = rec["sha256"]
    if not isinstance(digest, str) or len(digest) != 64 or set(digest) - set("0123456789abcdef"):
        fail(f"{where}: sha256 must be 64 lowercase hex digits")


def _check_slices(header: dict, fail) -> None:
    """Each slice: a new name, ``[pool, offset, shape]`` inside a 1-d raw pool section."""
    secs = header["sections"]
    for name, sl in header["slices"].items():
        where = f"slice {name[:80]!r}"
        if name in secs:
            fail(f"{where}: a section has the same name")
        if not (isinstance(sl, list) and len(sl) == 3 and isinstance(sl[0], str)):
            fail(f"{where}: must be [pool section, offset, shape]")
        pool, offset, shape = sl
        rec = secs.get(pool)
        if rec is None:
            fail(f"{where}: pool section {pool[:80]!r} does not exist")
        if len(rec["shape"]) != 1:
            fail(f"{where}: pool section {pool[:80]!r} is not 1-d")
        if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(
                map(_is_count, shape)) or not _is_count(offset):
            fail(f"{where}: offset must be a non-negative integer and shape a list of at "
                 f"most {MAX_DIMS} non-negative integers")
        if math.prod(d for d in shape if d) * np.dtype(DTYPES[rec["dtype"]]).itemsize > \
                MAX_EXTENT:
            fail(f"{where}: shape {shape[:MAX_DIMS]} is too large for an array")
        if offset + math.prod(shape) > rec["shape"][0]:
            fail(f"{where}: elements {offset}..{offset + math.prod(shape)} are outside its "
                 f"pool's {rec['shape'][0]}")


def _check_layout(sections: dict[str, dict], data_size: int, fail) -> None:
    """Sections in bounds, not overlapping, each at the next 64-byte boundary after the one
    before it, and the file ending where the last one ends."""
    for name, rec in sections.items():
        if rec["offset"] + rec["length"] > data_size:
            fail(f"truncated or out of bounds: section {name[:80]!r} ends at data byte "
                 f"{rec['offset'] + rec['length']}, but the data area has {data_size} bytes")
    end, prev = 0, None
    for name, rec in sorted(sections.items(), key=lambda kv: (kv[1]["offset"],
                                                               kv[1]["length"])):
        where = f"section {name[:80]!r}"
        stop = rec["offset"] + rec["length"]
        if rec["offset"] < end:
            fail(f"{where} at offset {rec['offset']} overlaps section {prev[:80]!r}, which "
                 f"ends at {end}")
        if rec["offset"] != _aligned(end):
            fail(f"{where} at offset {rec['offset']}: expected {_aligned(end)}, the first "
                 f"{ALIGN}-byte boundary after the previous section")
        end, prev = stop, name
    if data_size != end:
        fail(f"{data_size - end} bytes after the last section (the file must end there)")


def _read_prefix(handle, size: int, fail) -> bytes:
    """The header's bytes, after the magic, length and digest checks."""
    head = handle.read(PREFIX)
    if head[: len(MAGIC)] != MAGIC[: len(head)]:
        fail(f"not a lowbit file: the first bytes are {head[:8]!r}, not the magic {MAGIC!r}")
    if len(head) < PREFIX:
        fail(f"truncated: {size} bytes, shorter than the {PREFIX}-byte prefix")
    (length,) = struct.unpack("<Q", head[8:16])
    if length > MAX_HEADER:
        fail(f"header length {length} exceeds the limit of {MAX_HEADER} bytes")
    if PREFIX + length > size:
        fail(f"truncated: the header length {length} reaches beyond the file's {size} bytes")
    raw = handle.read(length)
    if len(raw) != length:
        fail(f"truncated while reading the {length}-byte header")
    if hashlib.sha256(raw).digest() != head[16:PREFIX]:
        fail("the header's sha256 does not match: the header is damaged")
    return raw


def _open(path: str | Path):
    """(handle, size, fail) where ``fail(msg)`` raises FormatError naming ``path``."""
    def fail(message: str):
        raise FormatError(f"{path}: {message}")

    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed by the callers' with)
    except FileNotFoundError:
        fail("no such file")
    except OSError as exc:
        fail(f"cannot open: {exc.strerror or exc}")
    return handle, os.fstat(handle.fileno()).st_size, fail


def _header(handle, size: int, fail) -> tuple[dict[str, Any], int]:
    header = _parse_header(_read_prefix(handle, size, fail), fail)
    data_start = _aligned(handle.tell())
    if data_start > size:
        fail(f"truncated: the header's padding ends at byte {data_start}, the file has {size}")
    for name, rec in header["sections"].items():
        _check_record(name, rec, fail)
    _check_slices(header, fail)
    _check_layout(header["sections"], size - data_start, fail)
    return header, data_start


def read_header(path: str | Path) -> dict[str, Any]:
    """The checked header (format, version, section table, meta) without reading the data:
    what ``lowbit inspect`` lists. Raises FormatError like :func:`read_container`."""
    handle, size, fail = _open(path)
    with handle:
        return _header(handle, size, fail)[0]


def _data(handle, path, data_start: int, size: int, mmap: bool, fail) -> np.ndarray:
    if size == data_start:
        return np.zeros(0, dtype=np.uint8)
    if mmap:
        return np.memmap(path, dtype=np.uint8, mode="r", offset=data_start)
    handle.seek(data_start)
    raw = bytearray(handle.read(size - data_start))
    if len(raw) != size - data_start:
        fail("truncated while reading (the file changed while it was read?)")
    return np.frombuffer(raw, dtype=np.uint8)


def _zero_gaps(buf: np.ndarray, header_pad: bytes, sections: dict[str, dict], fail) -> None:
    """Every byte that no section covers (header padding, gaps) must be zero."""
    if any(header_pad):
        fail("the padding after the header is not zero")
    end = 0
    for name, rec in sorted(sections.items(), key=lambda kv: kv[1]["offset"]):
        if buf[end: rec["offset"]].any():
            fail(f"the padding before section {name[:80]!r} is not zero")
        end = rec["offset"] + rec["length"]


def read_container(path: str | Path, verify: bool = True, mmap: bool = False) -> Container:
    """``(meta, sections)`` of the file at ``path``. Sections are arrays of their header
    dtype and shape (``bfloat16`` as uint16 bit patterns), views of one buffer: a writable
    copy of the data, or with ``mmap`` read-only views of the mapped file. ``verify`` (the
    default) checks every section's sha256; the header's own digest and the layout are always
    checked. Anything wrong raises :class:`FormatError` naming the file and the fault."""
    handle, size, fail = _open(path)
    with handle:
        header, data_start = _header(handle, size, fail)
        header_pad = handle.read(data_start - handle.tell())
        buf = _data(handle, path, data_start, size, mmap, fail)
    table = header["sections"]
    _zero_gaps(buf, header_pad, table, fail)
    sections = {}
    for name, rec in table.items():
        piece = buf[rec["offset"]: rec["offset"] + rec["length"]]
        if verify and hashlib.sha256(piece).hexdigest() != rec["sha256"]:
            fail(f"section {name[:80]!r} is damaged: its sha256 does not match the header")
        sections[name] = piece.view(DTYPES[rec["dtype"]]).reshape(rec["shape"])
    for name, (pool, offset, shape) in header["slices"].items():
        sections[name] = sections[pool][offset: offset + math.prod(shape)].reshape(shape)
    for pool in {sl[0] for sl in header["slices"].values()}:
        del sections[pool]  # what was written comes back: the pools are the format's own
    return Container(header["meta"], sections)


def tensor_bytes(header: dict) -> dict[str, int]:
    """Bytes of every tensor of a checked header: sections and slices (not pools)."""
    secs = header["sections"]
    out = {k: v["length"] for k, v in secs.items() if k not in {
        s[0] for s in header["slices"].values()}}
    for name, (pool, _, shape) in header["slices"].items():
        out[name] = math.prod(shape) * np.dtype(DTYPES[secs[pool]["dtype"]]).itemsize
    return out
