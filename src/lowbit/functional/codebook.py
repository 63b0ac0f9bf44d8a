"""Codes and typed codebooks: the one representation that export, the runtime and compression
share (GUIDE.md, "How to write a quantizer").

A quantizer's ``encode(x)`` returns ``(codes, codebook)``: ``codes`` an int64 tensor shaped
like ``x`` (vector tables: one code per vector), values in ``[0, codebook.num_codes)``, and a
codebook record whose ``decode(codes)`` gives back the quantizer's forward output bit for bit.
The records say what a runtime needs, not only the float values:

- :class:`IntegerGrid` -- ``(levels[code] - zero_point) * scale``: integer levels times a scale
  per tensor, per output channel (dim 0) or per group of ``group_size`` consecutive elements of
  each output channel. Uniform/affine, Ivan, DoReFa, TWN, XNOR/BWN, binary, LSQ, fixed point,
  power-of-two/INQ (levels ``±2^j`` times ``2^e_min``) and Quantization Networks' level sets.
- :class:`BitPlanes` -- ``sum_i alpha_i B_i`` with ``B_i = ±1`` the bits of the code (ABC-Net).
- :class:`Table` -- ``values[code]``: any level table (k-means, HWGQ-Lloyd, TTQ's
  ``{-Wn, 0, Wp}``), per tensor ``(K,)``, per channel ``(C, K)`` or vector codes ``(K, d)``.
- :class:`HalfFloat` -- the code is a float16 / bfloat16 bit pattern (post-training half
  precision weights).

Every record knows its storage: ``code_bytes(n)`` for n codes packed at ``bits`` each, and
``overhead_bytes()`` for its own tensors (float32 scales and tables at 4 bytes, integer levels
at the narrowest of int8/16/32, or 8 bytes when they are an arithmetic progression).
Test: tests/functional/test_codebook.py (decode against independent formulas, storage sizes).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

import torch

from lowbit.functional.checks import check_bits, tensor_arg

FLOAT_BYTES = 4  # scales and tables are stored as float32


def _int_width(t: torch.Tensor) -> int:
    """Bytes per integer of the narrowest signed type holding every value of ``t``."""
    if t.numel() == 0:
        return 1
    lo, hi = int(t.min()), int(t.max())
    for width in (1, 2, 4):
        if -(2 ** (8 * width - 1)) <= lo and hi < 2 ** (8 * width - 1):
            return width
    return 8


def _is_progression(levels: torch.Tensor) -> bool:
    if levels.numel() < 3:
        return True
    d = torch.diff(levels)
    return bool((d == d[0]).all())


@dataclass(frozen=True)
class LevelRange:
    """The integers ``lo..hi`` in increasing order, without 0 when ``skip_zero`` (Ivan's
    ``±1..±2^(b-1)``): a level set described by three numbers, so that a 31-bit grid needs no
    2^31-entry table. Code c is the c-th of them."""

    lo: int
    hi: int
    skip_zero: bool = False

    def __post_init__(self) -> None:
        if self.hi < self.lo or (self.skip_zero and self.lo == self.hi == 0):
            raise ValueError(f"empty level range {self.lo}..{self.hi}")

    def numel(self) -> int:
        n = self.hi - self.lo + 1
        return n - 1 if self.skip_zero and self.lo <= 0 <= self.hi else n

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        q = codes + self.lo
        return q + (q >= 0).long() if self.skip_zero and self.lo <= 0 else q

    def to_codes(self, q: torch.Tensor) -> torch.Tensor:
        """The codes of integers ``q`` (which must lie in the set)."""
        c = q.long() - self.lo
        return c - (q > 0).long() if self.skip_zero and self.lo <= 0 else c


def _check_codes(codes: torch.Tensor, num_codes: int, check: bool = True) -> torch.Tensor:
    """``codes`` as int64; with ``check`` (the default: codes from a file or a user), also that
    they lie in [0, num_codes) — a min and a max, skipped for codes fresh from an encoder."""
    codes = tensor_arg(codes, "codes")
    if codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
    if check and codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= num_codes):
        raise ValueError(f"codes must lie in [0, {num_codes}), got "
                         f"[{int(codes.min())}, {int(codes.max())}]")
    return codes.long()


_EXACT_INT = 2**24  # integers up to this are exact in float32


class _Record:
    bits: int

    @property
    def num_codes(self) -> int:
        raise NotImplementedError

    def code_bytes(self, n: int) -> int:
        """Bytes of ``n`` codes packed at ``bits`` each."""
        return math.ceil(n * self.bits / 8)

    def overhead_bytes(self) -> int:
        raise NotImplementedError

    def storage_bytes(self, n: int) -> int:
        """Codes plus the record: what a packed file needs for ``n`` codes."""
        return self.code_bytes(n) + self.overhead_bytes()


def _blocked(values: torch.Tensor, block: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """``block`` (per tensor (), per channel (C,), per group (C, G)) broadcast over ``values``
    (shaped like the quantized tensor), as a tensor of values' shape."""
    if block.dim() == 0:
        return block
    c = values.shape[0]
    if block.dim() == 1:
        return block.reshape(c, *([1] * (values.dim() - 1)))
    row = values.reshape(c, -1).shape[1]
    idx = torch.arange(row, device=values.device) // group_size
    return block[:, idx].reshape(values.shape)


@dataclass(frozen=True, eq=False)
class IntegerGrid(_Record):
    """``value = (levels[code] - zero_point) * scale``, computed as float32 ``(l - z) * s``.

    ``levels``: int64 (L,), L <= 2^bits, the integer of each code, or a :class:`LevelRange`
    (no table: ``lo..hi``, optionally without 0). ``scale`` (float) and
    ``zero_point`` (int64, default 0): shape () per tensor, (C,) per output channel (dim 0), or
    (C, G) per group: element j of channel c's flattened row uses group j // group_size.
    """

    levels: torch.Tensor | LevelRange
    scale: torch.Tensor
    bits: int
    zero_point: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.long))
    group_size: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", check_bits(self.bits, what="IntegerGrid bits"))
        levels = self.levels
        if not isinstance(levels, LevelRange):
            levels = tensor_arg(levels, "levels")
            if levels.dtype.is_floating_point or levels.dim() != 1 or levels.numel() == 0:
                raise ValueError(f"IntegerGrid levels must be a non-empty 1-d integer tensor "
                                 f"or a LevelRange, got {levels.dtype} {tuple(levels.shape)}")
            levels = levels.long()
        if levels.numel() > 2**self.bits:
            raise ValueError(f"{levels.numel()} levels do not fit {self.bits}-bit codes")
        scale = tensor_arg(self.scale, "scale", table=True)
        zp = torch.as_tensor(self.zero_point, device=scale.device)
        if zp.dtype.is_floating_point:
            raise ValueError("IntegerGrid zero_point must be integer")
        if scale.dim() > 2 or (zp.dim() and zp.shape != scale.shape):
            raise ValueError(f"scale {tuple(scale.shape)} / zero_point {tuple(zp.shape)}: "
                             "expected (), (C,) or (C, G), zero_point () or like scale")
        if (scale.dim() == 2) != (self.group_size is not None):
            raise ValueError("a (C, G) scale needs group_size, and group_size a (C, G) scale")
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", zp.long())

    @property
    def num_codes(self) -> int:
        return self.levels.numel()

    @property
    def granularity(self) -> str:
        return ("tensor", "channel", "group")[self.scale.dim()]

    def integers(self, codes: torch.Tensor, check: bool = True) -> torch.Tensor:
        """``levels[codes] - zero_point``: the integers an integer kernel multiplies (int64)."""
        codes = _check_codes(codes, self.num_codes, check)
        if isinstance(self.levels, LevelRange):
            q = self.levels.lookup(codes)
        else:
            q = self.levels.to(codes.device)[codes]
        zp = self.zero_point
        return q - (_blocked(q, zp, self.group_size) if zp.dim() else zp)

    def decode(self, codes: torch.Tensor, check: bool = True) -> torch.Tensor:
        """The values of ``codes``; ``check=False`` skips the range check (encoder output)."""
        if not self.zero_point.dim() and not bool(self.zero_point) and isinstance(
                self.levels, torch.Tensor) and self.num_codes <= _EXACT_INT:
            # fast path, the same values: small integer levels are exact in float32
            codes = _check_codes(codes, self.num_codes, check)
            table = self.levels.to(device=codes.device, dtype=self.scale.dtype)
            q = table[codes]
        else:
            q = self.integers(codes, check).to(self.scale.dtype)
        return q * _blocked(q, self.scale, self.group_size)

    def overhead_bytes(self) -> int:
        if isinstance(self.levels, LevelRange) or _is_progression(self.levels):
            levels = 8  # two int32: first and last (or first and step), + a flag bit
        else:
            levels = self.levels.numel() * _int_width(self.levels)
        zp = self.zero_point.numel() * _int_width(self.zero_point) if bool(
            self.zero_point.any()) else 0
        return FLOAT_BYTES * self.scale.numel() + levels + zp


def plane_table(alphas: torch.Tensor) -> torch.Tensor:
    """The 2^M values of ``sum_i alpha_i B_i`` for codes 0..2^M-1 (B_i = +1 where bit i of the
    code is set, else -1), summed in the order i = 0..M-1; ``alphas`` (M,) or (C, M)."""
    alphas = tensor_arg(alphas, "alphas", table=True)
    m = alphas.shape[-1]
    codes = torch.arange(2**m, device=alphas.device)
    signs = ((codes[:, None] >> torch.arange(m, device=alphas.device)) & 1) * 2 - 1  # (2^M, M)
    signs = signs.to(alphas.dtype)
    out = alphas[..., None, 0] * signs[:, 0]
    for i in range(1, m):
        out = out + alphas[..., None, i] * signs[:, i]
    return out  # (2^M,) or (C, 2^M)


def _gather(table: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``table[codes]`` (1-d table) or ``table[c, codes[c]]`` per output channel c."""
    table = table.to(codes.device)
    if table.dim() == 1:
        return table[codes]
    if table.shape[0] != codes.shape[0]:
        raise ValueError(f"per-channel table of shape {tuple(table.shape)} does not match "
                         f"codes of shape {tuple(codes.shape)}")
    flat = codes.reshape(codes.shape[0], -1)
    return torch.gather(table, 1, flat).reshape(codes.shape)


@dataclass(frozen=True, eq=False)
class BitPlanes(_Record):
    """``value = sum_i alphas[i] B_i`` (ABC-Net, Lin et al. 2017, eq. 3): bit i of the code is
    plane i (B_i = +1 if set, else -1). ``alphas``: (M,) per tensor or (C, M) per channel."""

    alphas: torch.Tensor

    def __post_init__(self) -> None:
        alphas = tensor_arg(self.alphas, "alphas", table=True)
        if alphas.dim() not in (1, 2) or alphas.shape[-1] == 0:
            raise ValueError(f"BitPlanes alphas must be (M,) or (C, M), got "
                             f"{tuple(alphas.shape)}")
        object.__setattr__(self, "alphas", alphas)

    @property
    def bits(self) -> int:
        return self.alphas.shape[-1]

    @property
    def num_codes(self) -> int:
        return 2**self.bits

    def planes(self, codes: torch.Tensor) -> torch.Tensor:
        """The M sign planes B_i (±1, int8), stacked on a new last axis."""
        codes = _check_codes(codes, self.num_codes)
        bits = (codes[..., None] >> torch.arange(self.bits, device=codes.device)) & 1
        return (bits * 2 - 1).to(torch.int8)

    def decode(self, codes: torch.Tensor, check: bool = True) -> torch.Tensor:
        return _gather(plane_table(self.alphas), _check_codes(codes, self.num_codes, check))

    def overhead_bytes(self) -> int:
        return FLOAT_BYTES * self.alphas.numel()


@dataclass(frozen=True, eq=False)
class Table(_Record):
    """``value = values[code]``: (K,) per tensor, (C, K) per output channel, or with
    ``vector=True`` (K, d) vector codes (one code per d consecutive values of the last axis:
    codes (..., n) decode to (..., n * d))."""

    values: torch.Tensor
    bits: int
    vector: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", check_bits(self.bits, what="Table bits"))
        values = tensor_arg(self.values, "values", table=True)
        if values.dim() not in (1, 2) or values.numel() == 0:
            raise ValueError(f"Table values must be (K,), (C, K) or (K, d), got "
                             f"{tuple(values.shape)}")
        if self.vector and values.dim() != 2:
            raise ValueError("a vector Table needs (K, d) values")
        object.__setattr__(self, "values", values)
        if self.num_codes > 2**self.bits:
            raise ValueError(f"{self.num_codes} table entries do not fit {self.bits}-bit codes")

    @property
    def num_codes(self) -> int:
        return self.values.shape[0] if (self.vector or self.values.dim() == 1) else \
            self.values.shape[1]

    def decode(self, codes: torch.Tensor, check: bool = True) -> torch.Tensor:
        codes = _check_codes(codes, self.num_codes, check)
        if not self.vector:
            return _gather(self.values, codes)
        out = self.values.to(codes.device)[codes]  # (..., n, d)
        return out.reshape(*codes.shape[:-1], codes.shape[-1] * self.values.shape[1])

    def overhead_bytes(self) -> int:
        return FLOAT_BYTES * self.values.numel()


HALF_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class HalfFloat(_Record):
    """Codes that *are* 16-bit floats: ``code`` is the IEEE float16 or bfloat16 bit pattern
    (0..65535, as an unsigned 16-bit integer) and ``decode`` reinterprets it and widens it to
    float32. Post-training float16 / bfloat16 weights; no overhead (no scale, no table)."""

    format: str = "float16"
    bits: int = field(default=16, init=False)

    def __post_init__(self) -> None:
        if self.format not in HALF_DTYPES:
            raise ValueError(f"HalfFloat format must be one of {', '.join(HALF_DTYPES)}, "
                             f"got {self.format!r}")

    @property
    def dtype(self) -> torch.dtype:
        return HALF_DTYPES[self.format]

    @property
    def num_codes(self) -> int:
        return 2**16

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The bit patterns of ``x`` rounded to this format (round to nearest even)."""
        return x.detach().to(self.dtype).view(torch.int16).long() & 0xFFFF

    def decode(self, codes: torch.Tensor, check: bool = True) -> torch.Tensor:
        codes = _check_codes(codes, self.num_codes, check)
        signed = torch.where(codes >= 2**15, codes - 2**16, codes)
        return signed.to(torch.int16).view(self.dtype).float()

    def overhead_bytes(self) -> int:
        return 0


Codebook = IntegerGrid | BitPlanes | Table | HalfFloat


def decode(codes: torch.Tensor, codebook: Codebook | torch.Tensor) -> torch.Tensor:
    """``codebook.decode(codes)``; a plain float tensor is a :class:`Table` (per tensor (L,) or
    per output channel (C, L)), as codebooks were before they were typed."""
    if isinstance(codebook, (IntegerGrid, BitPlanes, Table, HalfFloat)):
        return codebook.decode(codes)
    codebook = tensor_arg(codebook, "codebook", table=True)
    codes = tensor_arg(codes, "codes")
    if codebook.dim() == 2 and codebook.shape[0] != codes.shape[0]:
        raise ValueError(
            f"per-channel codebook of shape {tuple(codebook.shape)} does not match codes "
            f"of shape {tuple(codes.shape)}"
        )
    if codebook.dim() not in (1, 2):
        raise ValueError(f"codebook must be (L,) or (C, L), got {tuple(codebook.shape)}")
    return _gather(codebook, codes.long())


def decode_lookup(codes: torch.Tensor, codebook: IntegerGrid | Table) -> torch.Tensor:
    """``codebook.decode(codes)`` for a per-tensor record, as one gather: decode is elementwise,
    so decoding the ``num_codes`` codes once and indexing gives the same values bit for bit
    (tests/functional/test_stochastic.py::
    test_stochastic_encode_is_the_training_draw_and_decode_lookup_is_decode), in one pass instead
    of the record's several (range check, level lookup, int -> float, scale)."""
    codes = tensor_arg(codes, "codes")
    table = _TABLES.get(codebook)
    if table is None or table.device != codes.device:
        table = codebook.decode(torch.arange(codebook.num_codes, device=codes.device))
        _TABLES[codebook] = table
    return table.take(codes)


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # record -> decoded codes
