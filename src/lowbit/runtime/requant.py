"""Integer-only inference arithmetic: the quantized linear layer and its requantization.

Jacob, Kligys, Chen, Zhu, Tang, Howard, Adam, Kalenichenko, "Quantization and Training of
Neural Networks for Efficient Integer-Arithmetic-Only Inference", CVPR 2018, arXiv:1712.05877,
sec. 2.1-2.4. A real value is ``r = S (q - Z)`` (eq. 1), so the product of two quantized
matrices, requantized to the output's grid, is (eq. 2-5)::

    q3 = Z3 + M * sum_j (q1_j - Z1)(q2_j - Z2),      M = S1 S2 / S3,

the sum an exact int32 accumulator (eq. 7 expands the zero points; here numpy does the sum
directly), the bias int32 on the scale ``S1 S2`` with zero point 0 (sec. 2.4), added to the
accumulator, and the result clamped to the output's integer range (saturating). The only
non-integer step is ``M * acc``; :class:`Rounding` names the three conventions in use for it:

``HALF_EVEN`` (ONNX Runtime's MLAS, fbgemm): ``M`` in float32, computed as
    ``float32(float32(S1 * S2) / S3)``; ``y = clamp(rint(float32(acc) * M) + Z3)``, one float32
    multiply (``cvtdq2ps``, ``mulps``), round half to even (``cvtps2dq``). Checked bit for bit
    on x86 against onnxruntime's QLinearMatMul and QLinearConv and torch's fbgemm linear
    (MLAS's ARM path, ``vcvtnq``, rounds the same way by its source; not run here).
``SINGLE`` (TFLite with ``TFLITE_SINGLE_ROUNDING``, ruy): ``M = M0 * 2^(shift-31)``;
    ``y = (acc * M0 + 2^(30-shift)) >> (31-shift)`` in int64: one rounding, half toward
    +infinity (-2.5 -> -2).
``GEMMLOWP`` (gemmlowp, TFLite's default build; the paper's sec. 2.2 and its reference code):
    ``RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(acc << left, M0), right)``,
    ``left = max(shift, 0)``, ``right = max(-shift, 0)``: two roundings, the first half toward
    +infinity (the nudge ``2^30`` or ``1 - 2^30`` then C's truncating division by ``2^31``),
    the second half away from zero.

For SINGLE and GEMMLOWP, :func:`qlinear` computes ``M`` in float64 from the float32 scales,
``double(S1) * double(S2) / double(S3)`` (TFLite's GetQuantizedConvolutionMultipler), and
:func:`quantize_multiplier` turns it into ``(M0, shift)`` as TFLite's QuantizeMultiplier does
(``frexp``, ``M0 = round_half_away(mantissa * 2^31)``, a mantissa that rounds up to ``2^31``
halved with ``shift + 1``). Eq. 6 of the paper writes ``M = 2^-n M0`` with ``M0`` in
``[0.5, 1)``; here ``M0`` is that value in Q31 (an int32 in ``[2^30, 2^31)``) and
``shift = -n``, so a positive shift is a left shift and ``M >= 1`` is allowed.

Deviations: accumulators outside int32 raise instead of wrapping (:func:`qgemm` computes in
int64 and raises :class:`AccumulatorOverflowError`; ORT and TFLite would wrap silently); the
fixed-point conventions accept ``shift`` in ``[-31, 30]`` only (TFLite's checked range, about
``2^-32 <= M < 2^30``) and raise ``ValueError`` outside it, where TFLite flushes ``M`` to zero
or clamps it; GEMMLOWP's ``acc << left`` saturates to int32 where TFLite's
``x * (1 << left_shift)`` overflows (undefined in C++; only when ``|acc * M| >= 2^30``, which
saturates any 8- or 16-bit output either way).
Equation numbers follow the arXiv text of the paper (no local copy was at hand to re-check).
Tests: tests/runtime/test_requant.py (onnxruntime peers for HALF_EVEN, QuantizeLinear and the
bias rule, torch's fbgemm, Python-int transcriptions of TFLite's and gemmlowp's C++,
hypothesis properties).
"""

from __future__ import annotations

from enum import Enum

import numpy as np

from lowbit.errors import LowbitError, NonFiniteError

__all__ = ["Rounding", "AccumulatorOverflowError", "quantize_multiplier", "requantize",
           "saturating_rounding_doubling_high_mul", "rounding_divide_by_pot", "qgemm",
           "qlinear", "quantize_bias", "quantize_input"]

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
_SHIFT_RANGE = (-31, 30)  # TFLite's MultiplyByQuantizedMultiplier checks -31 <= shift <= 30


class Rounding(Enum):
    """How ``M * acc`` becomes an integer (module doc: formulas and who uses which)."""

    HALF_EVEN = "half_even"
    SINGLE = "single"
    GEMMLOWP = "gemmlowp"


class AccumulatorOverflowError(LowbitError, OverflowError):
    """An integer accumulator (or quantized bias) that does not fit in int32."""


# -- argument checks --------------------------------------------------------------------------

def _int32_array(name: str, x: object) -> np.ndarray:
    """``x`` as an int64 array after checking it is integer-typed with values in int32."""
    a = np.asarray(x)
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
    if a.size and (int(a.min()) < INT32_MIN or int(a.max()) > INT32_MAX):
        raise AccumulatorOverflowError(f"{name} must lie in int32 [{INT32_MIN}, {INT32_MAX}], "
                                       f"got [{int(a.min())}, {int(a.max())}]")
    return a.astype(np.int64)


def _int32_scalar(name: str, x: object) -> int:
    if isinstance(x, bool) or not isinstance(x, int | np.integer):
        raise TypeError(f"{name} must be an integer, got {x!r} ({type(x).__name__})")
    if not INT32_MIN <= int(x) <= INT32_MAX:
        raise ValueError(f"{name} must lie in int32, got {x}")
    return int(x)


def _check_range(qmin: object, qmax: object) -> tuple[int, int]:
    qmin, qmax = _int32_scalar("qmin", qmin), _int32_scalar("qmax", qmax)
    if qmin > qmax:
        raise ValueError(f"qmin must be <= qmax, got qmin={qmin} > qmax={qmax}")
    return qmin, qmax


def _positive(name: str, x: object, dtype: type) -> np.ndarray:
    """``x`` as a ``dtype`` array, every value > 0 and finite (checked after the cast, so a
    float64 value that float32 flushes to 0 or overflows to inf is refused too)."""
    a = np.asarray(x)
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.number):
        raise TypeError(f"{name} must be a real number or array, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.complexfloating):
        raise TypeError(f"{name} must be real, got dtype {a.dtype}")
    with np.errstate(over="ignore", under="ignore"):
        a = a.astype(dtype)
    bad = ~(np.isfinite(a) & (a > 0))
    if bad.any():
        raise ValueError(f"{name} must be > 0 and finite (in {np.dtype(dtype).name}), got "
                         f"{a[bad].reshape(-1)[:4].tolist()}")
    return a


# -- the multiplier ---------------------------------------------------------------------------

def quantize_multiplier(real: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(M0, shift)``, int32 arrays of ``real``'s shape, with ``real ~= M0 * 2^(shift - 31)``.

    ``M0`` is the Q31 significand, in ``[2^30, 2^31)``; ``shift`` the binary exponent of
    ``real`` (``frexp``), positive for a left shift (``real >= 1``), so Jacob et al.'s eq. 6
    ``M = 2^-n M0`` has ``n = -shift``. TFLite's QuantizeMultiplier: ``M0`` is the mantissa
    times ``2^31`` rounded half away from zero (exact in float64), the relative error is at
    most ``2^-31``. ``real`` must be > 0 and finite (float64), per tensor or an array (per
    channel); ``ValueError`` otherwise. No range is imposed here (TFLite flushes
    ``real < 2^-32`` to zero): :func:`requantize` checks the shift it can apply.
    """
    real = _positive("real multiplier", real, np.float64)
    mantissa, exponent = np.frexp(real)  # real = mantissa * 2^exponent, mantissa in [0.5, 1)
    m0 = np.floor(mantissa * 2.0**31 + 0.5)  # half away from zero; every step exact
    carry = m0 == 2.0**31
    m0 = np.where(carry, 2.0**30, m0)
    return m0.astype(np.int32), (exponent + carry).astype(np.int32)


def _fixed_point(real_multiplier: object) -> tuple[np.ndarray, np.ndarray]:
    m0, shift = quantize_multiplier(real_multiplier)
    lo, hi = _SHIFT_RANGE
    if shift.size and (shift.min() < lo or shift.max() > hi):
        raise ValueError(f"fixed-point requantization needs shift in [{lo}, {hi}] (multiplier "
                         f"about [2^-32, 2^30)), got shift in [{shift.min()}, {shift.max()}]")
    return m0.astype(np.int64), shift.astype(np.int64)


# -- the three roundings ----------------------------------------------------------------------

def _half_even(acc: np.ndarray, real_multiplier: object) -> np.ndarray:
    """``rint(float32(acc) * float32(M))``: MLAS's MlasRequantizeOutput, before the clamp."""
    m = _positive("real multiplier", real_multiplier, np.float32)
    with np.errstate(over="ignore"):
        y = acc.astype(np.float32) * m
    # MLAS clamps in float before rounding; rounding and an integer clamp commute, so a wide
    # clamp here (to keep the int64 cast defined) and the exact one later give the same codes.
    return np.rint(np.clip(y, -(2.0**40), 2.0**40)).astype(np.int64)


def _single(acc: np.ndarray, real_multiplier: object) -> np.ndarray:
    """TFLite's single-rounding MultiplyByQuantizedMultiplier: ``|acc * M0| < 2^62``."""
    m0, shift = _fixed_point(real_multiplier)
    total = 31 - shift  # in [1, 62]
    return (acc * m0 + np.left_shift(np.int64(1), total - 1)) >> total


def saturating_rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gemmlowp's SaturatingRoundingDoublingHighMul on int32 values (fixedpoint.h): the high
    32 bits of ``2 a b``, ``(a b + nudge) / 2^31`` with ``nudge = 2^30`` for ``a b >= 0`` and
    ``1 - 2^30`` otherwise and C's division truncating toward zero (so: ``a b / 2^31`` rounded
    half toward +infinity); ``a = b = INT32_MIN`` saturates to ``INT32_MAX``. int64 out."""
    a, b = _int32_array("a", a), _int32_array("b", b)
    ab = a * b  # |ab| <= 2^62
    t = ab + np.where(ab >= 0, 2**30, 1 - 2**30)
    high = np.where(t >= 0, t >> 31, -((-t) >> 31))  # truncating division by 2^31
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, high)


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """gemmlowp's RoundingDivideByPOT: ``x / 2^exponent`` rounded half away from zero, on
    int32 ``x`` and ``exponent`` in ``[0, 31]`` (int64 out)."""
    x, exponent = _int32_array("x", x), _int32_array("exponent", exponent)
    if exponent.size and (exponent.min() < 0 or exponent.max() > 31):
        raise ValueError(f"exponent must lie in [0, 31], got [{exponent.min()}, "
                         f"{exponent.max()}]")
    mask = np.left_shift(np.int64(1), exponent) - 1
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + ((x & mask) > threshold)


def _gemmlowp(acc: np.ndarray, real_multiplier: object) -> np.ndarray:
    """TFLite's double-rounding MultiplyByQuantizedMultiplier (gemmlowp's two primitives)."""
    m0, shift = _fixed_point(real_multiplier)
    shifted = np.clip(acc << np.maximum(shift, 0), INT32_MIN, INT32_MAX)  # Deviation: saturate
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, m0),
                                  np.maximum(-shift, 0))


_SCALERS = {Rounding.HALF_EVEN: _half_even, Rounding.SINGLE: _single,
            Rounding.GEMMLOWP: _gemmlowp}


def requantize(acc: np.ndarray, real_multiplier: float | np.ndarray,
               zero_point: int | np.ndarray, qmin: int, qmax: int,
               rounding: Rounding) -> np.ndarray:
    """The output codes ``clamp(round(M * acc) + zero_point, qmin, qmax)`` as int32 (the caller
    casts to uint8 / int8), ``round`` the ``rounding`` convention (module doc).

    ``acc``: integer array with values in int32 (the paper's accumulator, bias included);
    ``real_multiplier`` (``M = S1 S2 / S3``, > 0 and finite) and ``zero_point`` broadcast
    against it (per output channel: shape ``(N,)`` for an ``(..., N)`` accumulator). HALF_EVEN
    uses ``M`` cast to float32; SINGLE and GEMMLOWP its :func:`quantize_multiplier` pair.
    Errors: ``TypeError`` for a non-integer ``acc`` or a ``rounding`` that is not a
    :class:`Rounding`; :class:`AccumulatorOverflowError` for ``acc`` outside int32;
    ``ValueError`` for ``M`` <= 0, NaN, inf or out of the fixed-point range, ``qmin > qmax``.
    """
    if not isinstance(rounding, Rounding):
        raise TypeError(f"rounding must be a Rounding, got {rounding!r} (Rounding({rounding!r})"
                        " converts a name)")
    acc = _int32_array("acc", acc)
    zero_point = _int32_array("zero_point", zero_point)
    qmin, qmax = _check_range(qmin, qmax)
    scaled = _SCALERS[rounding](acc, real_multiplier)
    return np.clip(scaled + zero_point, qmin, qmax).astype(np.int32)


# -- the integer GEMM and the layer -----------------------------------------------------------

def _exact_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` of int64 arrays, exact. When every partial sum is bounded by
    ``K max|a| max|b| < 2^53`` the float64 (BLAS) product is exact: each product and each
    partial sum is an integer float64 represents, in any summation order, with or without FMA.
    Otherwise numpy's int64 matmul (exact below ``2^63``); beyond that, an error."""
    k = a.shape[-1]
    bound = k * int(np.abs(a).max(initial=0)) * int(np.abs(b).max(initial=0))
    if bound < 2**53:
        return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64)
    if bound < 2**63:
        return np.matmul(a, b)
    raise AccumulatorOverflowError(f"K * max|x - x_zp| * max|w - w_zp| = {bound} >= 2^63")


def qgemm(x_q: np.ndarray, x_zp: int, w_q: np.ndarray, w_zp: int | np.ndarray,
          bias_q: np.ndarray | None = None) -> np.ndarray:
    """The int32 accumulator ``acc[..., n] = sum_k (x_q[..., k] - x_zp)(w_q[n, k] - w_zp[n])
    + bias_q[n]`` (Jacob et al. eq. 4's sum plus the sec. 2.4 bias), exact.

    ``x_q``: integer ``(..., K)``; ``w_q``: integer ``(N, K)`` (torch's Linear layout; a conv
    is this after im2col); ``x_zp`` an integer, ``w_zp`` an integer or ``(N,)``; ``bias_q``
    int32 ``(N,)`` or None. Computed in int64 (or float64 when provably exact) and returned as
    int32; an accumulator outside int32 raises :class:`AccumulatorOverflowError` (ORT, TFLite
    and gemmlowp would wrap).
    """
    x = _int32_array("x_q", x_q) - _int32_scalar("x_zp", x_zp)
    w = _int32_array("w_q", w_q)
    if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"x_q (..., K) and w_q (N, K) do not match: {x.shape}, {w.shape}")
    w_zp = _int32_array("w_zp", w_zp)
    if w_zp.shape not in ((), (1,), (w.shape[0],)):
        raise ValueError(f"w_zp must be a scalar or shape ({w.shape[0]},), got {w_zp.shape}")
    acc = _exact_matmul(x, (w - w_zp.reshape(-1, 1)).T)
    if bias_q is not None:
        bias = _int32_array("bias_q", bias_q)
        if bias.shape != (w.shape[0],):
            raise ValueError(f"bias_q must have shape ({w.shape[0]},), got {bias.shape}")
        acc = acc + bias
    if acc.size and (acc.min() < INT32_MIN or acc.max() > INT32_MAX):
        raise AccumulatorOverflowError(f"accumulator outside int32: [{acc.min()}, {acc.max()}]")
    return acc.astype(np.int32)


def _layer_multiplier(x_scale: object, w_scale: object, y_scale: object,
                      rounding: Rounding) -> np.ndarray:
    """``M = S1 S2 / S3`` from float32 scales: in float32 for HALF_EVEN (ORT's
    ComputeOutputScale, left to right), in float64 otherwise (TFLite)."""
    dtype = np.float32 if rounding is Rounding.HALF_EVEN else np.float64
    s1, s2, s3 = (_positive(n, s, np.float32).astype(dtype) for n, s in
                  (("x_scale", x_scale), ("w_scale", w_scale), ("y_scale", y_scale)))
    if s1.size != 1 or s3.size != 1:
        raise ValueError("x_scale and y_scale must be per tensor (one value)")
    return (s1.reshape(()) * s2) / s3.reshape(())


def qlinear(x_q: np.ndarray, x_scale: float, x_zp: int, w_q: np.ndarray,
            w_scale: float | np.ndarray, w_zp: int | np.ndarray, bias_q: np.ndarray | None,
            y_scale: float, y_zp: int, qmin: int, qmax: int, rounding: Rounding) -> np.ndarray:
    """The integer-only linear layer (Jacob et al. sec. 2.2-2.4): :func:`qgemm` then
    :func:`requantize` with ``M = x_scale * w_scale / y_scale`` (:func:`_layer_multiplier`:
    float32 for HALF_EVEN, as ORT's QLinearMatMul / QLinearConv; float64 for the fixed-point
    conventions, as TFLite). ``w_scale``: one value or ``(N,)`` per output channel. Returns
    the int32 codes ``(..., N)`` in ``[qmin, qmax]``; ``bias_q`` from :func:`quantize_bias`."""
    w_scale = np.asarray(w_scale)
    n = np.shape(w_q)[0] if np.ndim(w_q) == 2 else None
    if w_scale.shape not in ((), (1,), (n,)):
        raise ValueError(f"w_scale must be a scalar or shape ({n},), got {w_scale.shape}")
    acc = qgemm(x_q, x_zp, w_q, w_zp, bias_q)
    multiplier = _layer_multiplier(x_scale, w_scale, y_scale, rounding)
    return requantize(acc, multiplier, y_zp, qmin, qmax, rounding)


# -- the float boundary -----------------------------------------------------------------------

def _finite_float(name: str, x: object) -> np.ndarray:
    a = np.asarray(x)
    if (a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.number)
            or np.issubdtype(a.dtype, np.complexfloating)):
        raise TypeError(f"{name} must be a real array, got dtype {a.dtype}")
    if np.isnan(a).any():
        raise NonFiniteError(f"{name} contains NaN")
    return a


def quantize_bias(bias_float: np.ndarray, x_scale: float,
                  w_scale: float | np.ndarray) -> np.ndarray:
    """The int32 bias on the accumulator's grid (Jacob et al. sec. 2.4: scale ``S1 S2``, zero
    point 0): ``rint(float64(bias) / float64(float32(x_scale) * float32(w_scale)))``, the
    scale product in float32 and the quotient in float64, rounded half to even, as ORT's
    quantization tool (base_quantizer.quantize_bias_static_impl) does. ``w_scale`` per tensor
    or ``(N,)``. Deviation: a value outside int32 raises :class:`AccumulatorOverflowError`
    (ORT clips it and logs a warning); NaN or inf raises ``NonFiniteError``."""
    bias = _finite_float("bias_float", bias_float).astype(np.float64)
    if np.isinf(bias).any():
        raise NonFiniteError("bias_float contains inf")
    scale = _positive("x_scale", x_scale, np.float32) * _positive("w_scale", w_scale, np.float32)
    q = np.rint(bias / scale.astype(np.float64))
    if q.size and (q.min() < INT32_MIN or q.max() > INT32_MAX):
        raise AccumulatorOverflowError(f"quantized bias outside int32: [{q.min()}, {q.max()}]; "
                                       "x_scale * w_scale is too small for this bias")
    return q.astype(np.int32)


def quantize_input(x_float: np.ndarray, scale: float | np.ndarray, zp: int | np.ndarray,
                   qmin: int, qmax: int) -> np.ndarray:
    """The first activation's codes, ONNX QuantizeLinear as MLAS computes it:
    ``clamp(rint(float32(x) / float32(scale)) + zp, qmin, qmax)`` (float32 division, round
    half to even, saturating; ``+-inf`` saturate), int32 out. Jacob et al. eq. 1 inverted.
    NaN raises ``NonFiniteError``."""
    x = _finite_float("x_float", x_float).astype(np.float32)
    scale = _positive("scale", scale, np.float32)
    zp = _int32_array("zp", zp)
    qmin, qmax = _check_range(qmin, qmax)
    with np.errstate(over="ignore"):
        y = x / scale
    return np.clip(np.rint(np.clip(y, -(2.0**40), 2.0**40)).astype(np.int64) + zp,
                   qmin, qmax).astype(np.int32)
