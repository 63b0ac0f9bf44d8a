"""Bit packing: codes of ``bits`` bits each, stored in exactly ``ceil(n * bits / 8)`` bytes.

**Layout** (the one the ``.lowbit`` format stores, docs/format.md): the codes are taken in
flattened C order (the caller keeps the shape); code ``i`` occupies the bits
``[i * bits, (i + 1) * bits)`` of the byte string read as one little-endian bit stream, that is
bit ``k`` of the stream is bit ``k % 8`` (LSB first) of byte ``k // 8``, and the code's own
least significant bit comes first. The unused high bits of the last byte are zero when packed
and ignored when unpacked. ``int.from_bytes(data, "little") >> (i * bits) & (2**bits - 1)`` is
code ``i``: that one-line definition is the reference the tests compare with.

**Method.** Eight codes of ``b`` bits are exactly ``b`` bytes, so the codes are grouped by
eight, each group is assembled into one uint64 word by eight shift-or passes over the column
of codes (``word = sum_j code_j << (j * b)``, at most 64 bits), and the word's first ``b``
little-endian bytes are the group's bytes. Unpacking reverses it: ``b`` bytes padded to eight,
viewed as a little-endian uint64, eight shift-and-mask passes. Every pass is one numpy
operation over n/8 elements; no Python loop runs per code. 8 bits is a copy, 1 bit is
``np.packbits(codes, bitorder="little")`` (the same layout, in numpy's C loop).

**Throughput** (1M random uint8 codes, ``benchmarks/pack_throughput.py`` at a2410c0, numpy
2.4, best of 5 on a 2-vCPU machine with a 1-min load average of 5.6 from another benchmark, so
a lower bound; Mcodes/s; results in benchmarks/results/pack_throughput/):

======  =====  =====  =====  =====  =====  =====  =====  =====
bits      1      2      3      4      5      6      7      8
======  =====  =====  =====  =====  =====  =====  =====  =====
pack     6475    251    258    174    175    171    254   7603
unpack  11088    487    472    324    328    314    493  17801
======  =====  =====  =====  =====  =====  =====  =====  =====

The textbook (n, bits) bit matrix through ``np.packbits``/``np.unpackbits`` lays out the same
bytes at 28..67 (pack) and 21..37 (unpack) Mcodes/s for 2..8 bits in the same run: 3-10x slower.

**Wider codes.** :func:`pack_codes` / :func:`unpack_codes` dispatch on ``bits``: 1..8 bits
bit-packed as above; 9..16 bits (float16 / bfloat16 bit patterns, wide uniform grids) as
little-endian uint16, 2 bytes a code; 17..32 bits as little-endian uint32, 4 bytes a code.
(Byte-aligned wide codes cost at most 7/16 more than ``ceil(n * bits / 8)``; they are rare
and a runtime reads them without unpacking.)

**Errors.** A bit width that is not an integer in range is a :class:`~lowbit.errors.BitsError`;
codes that are not integers are a ``TypeError``; codes outside ``[0, 2^bits)`` a ``ValueError``
naming the range found; data shorter than the ``count`` codes need a
:class:`~lowbit.runtime.errors.FormatError` naming both byte counts.
Test: tests/runtime/test_pack.py.
"""

from __future__ import annotations

import numpy as np

from lowbit.errors import BitsError
from lowbit.runtime.errors import FormatError

__all__ = ["pack_bits", "unpack_bits", "pack_codes", "unpack_codes", "packed_bytes"]


def _check_bits(bits: object, hi: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer):
        raise BitsError(f"bits must be an integer, got {bits!r} ({type(bits).__name__})")
    if not 1 <= bits <= hi:
        raise BitsError(f"bits must be in 1..{hi}, got {bits}")
    return int(bits)


def _check_count(count: object) -> int:
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
        raise ValueError(f"count must be a non-negative integer, got {count!r}")
    return int(count)


def packed_bytes(count: int, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits take in :func:`pack_codes`' layout."""
    count, bits = _check_count(count), _check_bits(bits, 32)
    if bits <= 8:
        return (count * bits + 7) // 8
    return count * (2 if bits <= 16 else 4)


def _flat_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """``codes`` flattened (C order) after the dtype and range checks."""
    codes = np.asarray(codes)
    if codes.dtype == np.bool_ or not np.issubdtype(codes.dtype, np.integer):
        raise TypeError(f"codes must be an integer array, got dtype {codes.dtype}")
    flat = codes.reshape(-1)
    if flat.size:
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi >= 1 << bits:
            raise ValueError(f"{bits}-bit codes must lie in [0, {1 << bits}), got "
                             f"[{lo}, {hi}]")
    return flat


def _byte_view(data: object, need: int, what: str) -> np.ndarray:
    """The first ``need`` bytes of ``data`` (bytes-like or a uint8 array) as a uint8 array."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise TypeError(f"packed data must be uint8, got dtype {data.dtype}")
        buf = data.reshape(-1)
    else:
        buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    if buf.size < need:
        raise FormatError(f"truncated packed data: {what} need {need} bytes, got {buf.size}")
    return buf[:need]


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """``codes`` (any integer array, values in ``[0, 2^bits)``) packed at ``bits`` (1..8) bits
    each into a uint8 array of ``ceil(codes.size * bits / 8)`` bytes (layout: module doc)."""
    bits = _check_bits(bits, 8)
    flat = _flat_codes(codes, bits)
    n = flat.size
    nbytes = (n * bits + 7) // 8
    if bits == 8:
        return flat.astype(np.uint8)
    if bits == 1:  # the same layout; numpy's C loop is ~15x faster here
        return np.packbits(flat.astype(np.uint8), bitorder="little")
    groups = -(-n // 8)
    padded = np.zeros(groups * 8, dtype=np.uint64)
    padded[:n] = flat
    cols = padded.reshape(groups, 8)
    word = cols[:, 0].copy()
    for j in range(1, 8):  # eight whole-array passes, not a loop over codes
        word |= cols[:, j] << np.uint64(j * bits)
    out = word.astype("<u8", copy=False).view(np.uint8).reshape(groups, 8)[:, :bits]
    return out.reshape(-1)[:nbytes].copy()


def unpack_bits(data: object, bits: int, count: int) -> np.ndarray:
    """The ``count`` codes (uint8, flat; reshape to the caller's shape) that :func:`pack_bits`
    stored in ``data`` (bytes-like or a uint8 array; bytes past the first
    ``ceil(count * bits / 8)`` are ignored). Too few bytes raise ``FormatError``."""
    bits, count = _check_bits(bits, 8), _check_count(count)
    buf = _byte_view(data, (count * bits + 7) // 8, f"{count} codes of {bits} bits")
    if bits == 8:
        return buf.copy()
    if bits == 1:
        return np.unpackbits(buf, count=count, bitorder="little")
    groups = -(-count // 8)
    staged = np.zeros(groups * bits, dtype=np.uint8)  # whole groups of ``bits`` bytes
    staged[: buf.size] = buf
    block = np.zeros((groups, 8), dtype=np.uint8)  # each group padded to a uint64
    block[:, :bits] = staged.reshape(groups, bits)
    word = block.view("<u8").reshape(groups)
    mask = np.uint64((1 << bits) - 1)
    out = np.empty((groups, 8), dtype=np.uint8)
    for j in range(8):
        out[:, j] = (word >> np.uint64(j * bits)) & mask
    return out.reshape(-1)[:count]


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """``codes`` at ``bits`` (1..32) as uint8 bytes: 1..8 bits bit-packed (:func:`pack_bits`),
    9..16 bits little-endian uint16, 17..32 bits little-endian uint32."""
    bits = _check_bits(bits, 32)
    if bits <= 8:
        return pack_bits(codes, bits)
    flat = _flat_codes(codes, bits)
    return flat.astype("<u2" if bits <= 16 else "<u4").view(np.uint8)


def unpack_codes(data: object, bits: int, count: int) -> np.ndarray:
    """The ``count`` codes :func:`pack_codes` stored: uint8 for 1..8 bits, uint16 for 9..16,
    uint32 for 17..32 (native byte order), flat. Codes wider than ``bits`` (a damaged file)
    raise ``FormatError``; too few bytes too."""
    bits, count = _check_bits(bits, 32), _check_count(count)
    if bits <= 8:
        return unpack_bits(data, bits, count)
    width = 2 if bits <= 16 else 4
    buf = _byte_view(data, count * width, f"{count} codes of {bits} bits")
    codes = buf.view(f"<u{width}").astype(f"=u{width}")
    if codes.size and int(codes.max()) >> bits:
        raise FormatError(f"{bits}-bit codes stored as uint{8 * width} hold a value "
                          f">= 2^{bits} ({int(codes.max())})")
    return codes
