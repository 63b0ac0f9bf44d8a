"""Power-of-two (logarithmic) quantization.

1. LogQuant of D. Miyashita, E. H. Lee, B. Murmann, "Convolutional Neural Networks using
   Logarithmic Data Representation", arXiv:1603.01025, 2016, eq. (3)-(4) (the survey,
   shared/papers/guo2018-survey-quantized-neural-networks, lists the codebook in Table 4):
       LogQuant(x, b, FSR) = 0 if x = 0 else 2^Clip(Round(log2|x|), FSR - 2^b, FSR),
       Clip(e, lo, hi) = "zero" if e <= lo, hi - 1 if e >= hi, e otherwise.
   So a b-bit code holds zero and the 2^b - 1 exponents FSR - 2^b + 1 .. FSR - 1.
   We name the top exponent ``fsr`` (our fsr = the paper's FSR - 1: the exponent of the largest
   level), so :func:`log_quant` (unsigned, b bits) has the 2^b levels
       {0} U {2^e : e = fsr - 2^b + 2 .. fsr},
   and :func:`pow2` (signed: one sign bit + a (b-1)-bit LogQuant of |x|) has the 2^b - 1 levels
       {0} U {+-2^e : e = fsr - m + 1 .. fsr},  m = 2^(b-1) - 1 magnitudes
   (+0 and -0 share a value, so one of the 2^b codes is unused).
   Rounding is in the log domain, Round(log2|x|) as the paper: the threshold between 2^e and
   2^(e+1) is the geometric mean 2^(e+1/2). Computed exactly from frexp: |x| = f 2^p with
   f in [1/2, 1), Round(log2|x|) = p if f^2 >= 1/2 else p - 1 (f^2 in float64 is exact).
   Rounded exponents above fsr saturate to 2^fsr; below the smallest exponent the value is 0
   (the paper's Clip to "zero"). Negative inputs to the unsigned :func:`log_quant` give 0 (it
   is meant for ReLU outputs). Backward (both): straight-through, dq/dx = 1.
   Deviation: none in the level set; the sign bit for weights is our reading (the paper log-
   quantizes |w| and keeps the sign).

2. INQ's power-of-two codebook: A. Zhou, A. Yao, Y. Guo, L. Xu, Y. Chen, "Incremental Network
   Quantization: Towards Lossless CNNs with Low-Precision Weights", ICLR 2017, arXiv:1702.03044,
   eq. (2)-(4): levels P = {0} U {+-2^n : n = n2..n1},
       n1 = floor(log2(4 s / 3)), s = max|W| of the layer,  n2 = n1 + 1 - 2^(b-1) / 2,
   (one bit for zero, b - 1 bits for 2^(b-1) signed powers of two: 2^(b-2) magnitudes),
       q(w) = beta sgn(w) if (alpha + beta)/2 <= |w| < 3 beta / 2, else 0,
   alpha < beta adjacent in P+ = {0, 2^n2, ..., 2^n1}: nearest level in the *linear* domain,
   ties up; |w| < 2^(n2-1) -> 0. Above 3/2 2^n1 (impossible at s = max|W|) saturates to 2^n1.

Records (issue 8): :func:`pow2_encode` and :func:`inq_encode` are the primary functions and
return (codes, :func:`pow2_grid`): an IntegerGrid of the integer levels {0, (+-)2^j} times the
scale 2^e_min (e_min = the smallest exponent: a runtime shifts, the exponents stay integer),
codes in ascending value order. A Table only where that cannot be exact: 2^j beyond int64
(more than 63 magnitudes: 8-bit signed LogQuant, 7/8-bit unsigned, 8-bit INQ) or 2^e_min
below the dtype's range. :func:`pow2`, :func:`log_quant` and :func:`inq_quantize` are the
decode of those records (straight-through for the first two).

Tests: tests/functional/test_log2.py (references above, test_pow2_properties: decode(encode) is
the forward, test_pow2_grid_integer_levels_and_table_fallback,
test_pow2_wide_codes_decode_to_the_forward, test_inq_matches_paper);
tests/quantizers/test_contract.py (pow2, inq: every bit width, frozen).
"""

from __future__ import annotations

import functools
import math

import torch

from lowbit.functional.checks import check_bits, check_finite, check_nonempty, tensor_arg
from lowbit.functional.codebook import IntegerGrid, Table, decode_lookup
from lowbit.functional.ste import ste

SQRT2_MANTISSA = 3474676  # smallest 23-bit m with (1 + m 2^-23)^2 >= 2 (checked in the tests)
INT64_EXPONENTS = 63  # 2^62 is the largest power of two an int64 level holds


def round_log2(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Round(log2 a) as float, a > 0) for a >= 0, exactly (see module doc).

    float32 (the hot path) reads exponent and mantissa bits: a = 1.m 2^(E-127) rounds up iff
    1.m >= sqrt(2); subnormals count as 2^-127. Other dtypes use frexp (slower, also exact).
    """
    a = tensor_arg(a, "a")
    if a.dtype == torch.float32:
        i = a.view(torch.int32)
        e = (i >> 23) - 127 + ((i & 0x7FFFFF) >= SQRT2_MANTISSA).to(torch.int32)
        return e.to(a.dtype), a > 0
    f, p = torch.frexp(a)
    up = f.double().square() >= 0.5
    return (p - 1 + up.to(p.dtype)).to(a.dtype), f > 0


@functools.lru_cache(maxsize=256)
def pow2_grid(e_min: int, n_mag: int, signed: bool, bits: int, dtype=torch.float32,
              device=None) -> IntegerGrid | Table:
    """The codebook {0} U {(+-)2^e : e = e_min .. e_min + n_mag - 1}, codes in ascending order.

    An :class:`IntegerGrid`: levels {0, (+-)2^j : j = 0..n_mag-1} (int64) times the scale
    2^e_min, so that a runtime multiplies by shifts. Where that cannot be exact -- a level 2^j
    beyond int64 (n_mag > 63: 8-bit signed, 7- and 8-bit unsigned LogQuant, 8-bit INQ) or a
    scale 2^e_min below the dtype's smallest subnormal -- a :class:`Table` of the values (each
    an exact power of two in ``dtype``, or 0 below its range, as the forward gives).
    Cached (records are immutable; a forward builds the same few grids again and again).
    """
    scale = math.ldexp(1.0, e_min)
    exact = torch.tensor(scale, dtype=dtype).item() == scale and scale > 0
    if n_mag <= INT64_EXPONENTS and exact:
        mags = torch.ones(n_mag, dtype=torch.long, device=device) << torch.arange(
            n_mag, device=device)
        zero = torch.zeros(1, dtype=torch.long, device=device)
        levels = torch.cat([-mags.flip(0), zero, mags]) if signed else torch.cat([zero, mags])
        return IntegerGrid(levels, torch.tensor(scale, dtype=dtype, device=device), bits)
    mags = torch.exp2(torch.arange(e_min, e_min + n_mag, dtype=torch.float64, device=device))
    mags = mags.to(dtype)
    zero = torch.zeros(1, dtype=dtype, device=device)
    return Table(torch.cat([-mags.flip(0), zero, mags]) if signed else torch.cat([zero, mags]),
                 bits)


def _sign_codes(x: torch.Tensor, t: torch.Tensor, n_mag: int, signed: bool) -> torch.Tensor:
    """Codes in :func:`pow2_grid` order from t = j + 1 (magnitude index, 0 for zero)."""
    if not signed:
        return t.long()
    return (torch.where(x < 0, -t, t) + n_mag).long()


def _exponent_range(bits: int, signed: bool) -> int:
    """Number of power-of-two magnitudes of a (signed) b-bit code."""
    return 2 ** (bits - 1) - 1 if signed else 2**bits - 1


def _log_index(x: torch.Tensor, e_min: int, n_mag: int) -> torch.Tensor:
    """t = clamp(Round(log2 x) - e_min + 1, 0, n_mag) (int32) for x >= 0; 0 for x <= 0.

    float32 reads the bits as :func:`round_log2` does (Round(log2 x) = E - 127 + up, the same
    expression), in a few int32 passes; zero and negatives fall below t = 0 by themselves
    while e_min >= -126, and are masked below that (7/8-bit grids).
    Other dtypes: :func:`round_log2` (frexp)."""
    if x.dtype == torch.float32:
        i = x.view(torch.int32)
        r = (i >> 23).add_((i & 0x7FFFFF) >= SQRT2_MANTISSA)  # E + up, E = biased exponent
        t = r.sub_(126 + e_min).clamp_(0, n_mag)
        return t if e_min >= -126 else t.mul_(x > 0)
    r, nonzero = round_log2(torch.clamp(x, min=0.0))
    t = (r - (e_min - 1)).clamp(0, n_mag).to(torch.int32)
    return torch.where(nonzero, t, torch.zeros_like(t))


def pow2_encode(x: torch.Tensor, bits: int, fsr: torch.Tensor | int, signed: bool = True
                ) -> tuple[torch.Tensor, IntegerGrid | Table]:
    """(codes, codebook) of signed power-of-two quantization (sign bit + LogQuant, 2..16 bits)
    or, ``signed=False``, of the unsigned LogQuant (Miyashita eq. 3, 1..16 bits; negatives ->
    0). The primary definition: :func:`pow2` and :func:`log_quant` are ``decode`` of it.

    Codes in ascending value order: with n magnitudes (2^(b-1) - 1 signed, 2^b - 1 unsigned),
    e_min = fsr - n + 1 and t = clamp(Round(log2|x|) - e_min + 1, 0, n) (0: the value 0),
    code = t (unsigned) or n + sign(x) t (signed). Record: :func:`pow2_grid` (levels
    (+-)2^j times 2^e_min).
    """
    bits = check_bits(bits, 2 if signed else 1, 16)
    x = tensor_arg(x, "x").detach()
    top = int(tensor_arg(fsr, "fsr", like=x, table=True))
    n_mag = _exponent_range(bits, signed)
    e_min = top - n_mag + 1
    grid = pow2_grid(e_min, n_mag, signed, bits, x.dtype, x.device)
    if not signed:
        return _log_index(x, e_min, n_mag).long(), grid
    t = _log_index(x.abs(), e_min, n_mag)
    if x.dtype == torch.float32:  # n + sign(x) t from the sign bit s = 0 / -1: (t ^ s) - s
        sign = x.view(torch.int32) >> 31
        return t.bitwise_xor_(sign).sub_(sign).add_(n_mag).long(), grid
    return torch.where(x < 0, n_mag - t, t.add_(n_mag)).long(), grid


def pow2(x: torch.Tensor, bits: int, fsr: torch.Tensor | int) -> torch.Tensor:
    """Signed power-of-two quantization, decode(:func:`pow2_encode`), straight-through."""
    if tensor_arg(x, "x").numel() == 0:
        check_bits(bits, 2, 16)
        return x.clone()
    codes, grid = pow2_encode(x, bits, fsr)
    return ste(x, decode_lookup(codes, grid))


def log_quant(x: torch.Tensor, bits: int, fsr: torch.Tensor | int) -> torch.Tensor:
    """Unsigned LogQuant (Miyashita eq. 3), decode(:func:`pow2_encode`, signed=False), STE."""
    if tensor_arg(x, "x").numel() == 0:
        check_bits(bits, 1, 16)
        return x.clone()
    codes, grid = pow2_encode(x, bits, fsr, signed=False)
    return ste(x, decode_lookup(codes, grid))


def inq_exponents(s: float, bits: int) -> tuple[int, int]:
    """INQ eq. (2)-(3): (n1, n2) from s = max|W|; s <= 0 gives n1 = 0 (every weight is 0)."""
    bits = check_bits(bits, 2, 16)
    n1 = math.floor(math.log2(4.0 * s / 3.0)) if s > 0 else 0
    return n1, n1 + 1 - 2 ** (bits - 2)


@torch.no_grad()
def inq_encode(w: torch.Tensor, n1: int, n2: int, bits: int | None = None
               ) -> tuple[torch.Tensor, IntegerGrid | Table]:
    """(codes, codebook) of INQ eq. (4): nearest of {0, +-2^n2..2^n1} with INQ's thresholds.

    Record: :func:`pow2_grid` with e_min = n2, n1 - n2 + 1 magnitudes, ``bits`` (default: the
    fewest that hold the 2 (n1 - n2 + 1) + 1 codes, INQ's b = log2(magnitudes) + 2).
    """
    check_finite(check_nonempty(tensor_arg(w, "w"), "weight"), "weight")
    n_mag = n1 - n2 + 1
    if n_mag < 1:
        raise ValueError(f"INQ needs n1 >= n2, got n1={n1}, n2={n2}")
    bits = int(math.log2(n_mag)) + 2 if bits is None else bits
    f, p = torch.frexp(w.abs())
    e = (p - 1 + (f >= 0.75).to(p.dtype)).clamp(n2, n1)
    t = torch.where((f > 0) & (p >= n2), e - (n2 - 1), torch.zeros_like(e))
    return _sign_codes(w, t, n_mag, True), pow2_grid(n2, n_mag, True, bits, w.dtype, w.device)


@torch.no_grad()
def inq_quantize(w: torch.Tensor, n1: int, n2: int) -> torch.Tensor:
    """INQ eq. (4) values, decode(:func:`inq_encode`) (no gradient: INQ freezes them)."""
    codes, grid = inq_encode(w, n1, n2)
    return grid.decode(codes)
