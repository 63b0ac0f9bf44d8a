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

Tests: tests/functional/test_log2.py.
"""

from __future__ import annotations

import math

import torch

from lowbit.functional.checks import check_bits, check_finite, check_nonempty, tensor_arg

SQRT2_MANTISSA = 3474676  # smallest 23-bit m with (1 + m 2^-23)^2 >= 2 (checked in the tests)


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


def _log_quant_mag(a: torch.Tensor, n_exp: int, fsr: torch.Tensor | int) -> torch.Tensor:
    """LogQuant magnitude with ``n_exp`` exponents ending at ``fsr``, for a >= 0."""
    r, nonzero = round_log2(a)
    fsr = torch.as_tensor(fsr, dtype=a.dtype, device=a.device)
    keep = nonzero & (r >= fsr - (n_exp - 1))
    p = torch.exp2(torch.minimum(r, fsr))
    return torch.where(keep, p, torch.zeros_like(p))


def _exponent_range(bits: int, signed: bool) -> int:
    """Number of power-of-two magnitudes of a (signed) b-bit code."""
    return 2 ** (bits - 1) - 1 if signed else 2**bits - 1


class _Pow2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, n_exp, fsr, signed):
        if signed:
            p = _log_quant_mag(x.abs(), n_exp, fsr)
            return torch.where(x < 0, -p, p)
        return _log_quant_mag(torch.clamp(x, min=0.0), n_exp, fsr)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None


def pow2(x: torch.Tensor, bits: int, fsr: torch.Tensor | int) -> torch.Tensor:
    """Signed power-of-two quantization (sign bit + LogQuant), 2..16 bits; see module doc."""
    bits = check_bits(bits, 2, 16)
    if tensor_arg(x, "x").numel() == 0:
        return x.clone()
    fsr = tensor_arg(fsr, "fsr", like=x, table=True)
    return _Pow2.apply(x, _exponent_range(bits, True), fsr, True)


def log_quant(x: torch.Tensor, bits: int, fsr: torch.Tensor | int) -> torch.Tensor:
    """Unsigned LogQuant (Miyashita eq. 3) for x >= 0 (negatives -> 0), 1..16 bits."""
    bits = check_bits(bits, 1, 16)
    if tensor_arg(x, "x").numel() == 0:
        return x.clone()
    fsr = tensor_arg(fsr, "fsr", like=x, table=True)
    return _Pow2.apply(x, _exponent_range(bits, False), fsr, False)


def pow2_levels(bits: int, fsr: int, signed: bool = True, dtype=torch.float32, device=None):
    """The sorted codebook of :func:`pow2` (``signed``) or :func:`log_quant`."""
    n_exp = _exponent_range(bits, signed)
    mags = torch.exp2(torch.arange(fsr - n_exp + 1, fsr + 1, dtype=dtype, device=device))
    zero = torch.zeros(1, dtype=dtype, device=device)
    return torch.cat([-mags.flip(0), zero, mags]) if signed else torch.cat([zero, mags])


def _codes(q: torch.Tensor, n_exp: int, top: int, signed: bool) -> torch.Tensor:
    _, p = torch.frexp(tensor_arg(q, "q"))
    k = (p - 1 - (top - n_exp + 1)).long() + 1  # 1..n_exp for nonzero q
    k = torch.where(q == 0, torch.zeros_like(k), k)
    if not signed:
        return k
    return torch.where(q < 0, n_exp - k, n_exp + k)


def pow2_codes(q: torch.Tensor, bits: int, fsr: int, signed: bool = True) -> torch.Tensor:
    """Index (int64) into :func:`pow2_levels` of values ``q`` already on that level set."""
    return _codes(q, _exponent_range(bits, signed), fsr, signed)


def inq_exponents(s: float, bits: int) -> tuple[int, int]:
    """INQ eq. (2)-(3): (n1, n2) from s = max|W|; s <= 0 gives n1 = 0 (every weight is 0)."""
    bits = check_bits(bits, 2, 16)
    n1 = math.floor(math.log2(4.0 * s / 3.0)) if s > 0 else 0
    return n1, n1 + 1 - 2 ** (bits - 2)


@torch.no_grad()
def inq_quantize(w: torch.Tensor, n1: int, n2: int) -> torch.Tensor:
    """INQ eq. (4): nearest of {0, +-2^n2..2^n1} with INQ's thresholds (no gradient)."""
    check_finite(check_nonempty(tensor_arg(w, "w"), "weight"), "weight")
    f, p = torch.frexp(w.abs())
    e = (p - 1 + (f >= 0.75).to(p.dtype)).clamp(n2, n1).to(w.dtype)
    mag = torch.where((f > 0) & (p >= n2), torch.exp2(e), torch.zeros_like(e))
    return torch.where(w < 0, -mag, mag)


def inq_levels(n1: int, n2: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """The sorted INQ codebook [-2^n1 .. -2^n2, 0, 2^n2 .. 2^n1] (2 (n1 - n2 + 1) + 1 values)."""
    mags = torch.exp2(torch.arange(n2, n1 + 1, dtype=dtype, device=device))
    zero = torch.zeros(1, dtype=dtype, device=device)
    return torch.cat([-mags.flip(0), zero, mags])


def inq_codes(q: torch.Tensor, n1: int, n2: int) -> torch.Tensor:
    """Index (int64) into :func:`inq_levels` of values ``q`` already on that level set."""
    return _codes(q, n1 - n2 + 1, n1, True)
