"""lowbit/runtime/requant.py: Jacob et al. 2018's integer-only layer, requantized three ways.

* HALF_EVEN against onnxruntime bit for bit: QLinearMatMul (uint8 and int8 activations, uint8
  and int8 weights, per tensor and per column), QLinearConv through a numpy im2col (per tensor
  and per output channel, stride and padding, the weight as a graph input (MLAS's QGEMM
  path) and as an initializer with zero point 0 (MLAS's symmetric-conv path)), accumulators
  placed with the int32 bias on exact ties, above 2^24 (where int32 -> float32 rounds) and where
  a float64 multiplier or a float64 product would round differently; QuantizeLinear for
  :func:`quantize_input`. torch's fbgemm linear as a second peer.
* SINGLE and GEMMLOWP against Python-int transcriptions of TFLite's and gemmlowp's C++
  (below, with C's truncating division and int32 wrap-around), plus hand-computed cases.
* Properties (hypothesis): within 1 of the exactly rounded ``acc * M``, monotone, saturating;
  ``quantize_multiplier`` reconstructs ``M`` within ``2^-31`` relative (exact fractions).
"""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import LowbitError, NonFiniteError
from lowbit.runtime.requant import (
    INT32_MAX,
    INT32_MIN,
    AccumulatorOverflowError,
    Rounding,
    _exact_matmul,
    qgemm,
    qlinear,
    quantize_bias,
    quantize_input,
    quantize_multiplier,
    requantize,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import helper  # noqa: E402

HE, SINGLE, GEMMLOWP = Rounding.HALF_EVEN, Rounding.SINGLE, Rounding.GEMMLOWP


def _has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


# Without VNNI, MLAS's u8s8 x86 kernels use vpmaddubsw, which saturates a pair of products to
# int16 (ORT documents this); int8 weights in [-64, 63] keep every pair exact there.
S8_LO, S8_HI = (-128, 127) if _has_vnni() else (-64, 63)


# -- Python-int transcriptions of the C++ (the references) ------------------------------------

def _wrap32(v: int) -> int:
    return (v + 2**31) % 2**32 - 2**31


def _c_div(a: int, b: int) -> int:
    """C/C++ integer division: truncation toward zero."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def ref_srdhm(a: int, b: int) -> int:
    """gemmlowp fixedpoint.h SaturatingRoundingDoublingHighMul(int32, int32)."""
    overflow = a == b == INT32_MIN
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    high = _wrap32(_c_div(ab + nudge, 1 << 31))
    return INT32_MAX if overflow else high


def ref_rdbpot(x: int, exponent: int) -> int:
    """gemmlowp fixedpoint.h RoundingDivideByPOT(int32, 0 <= exponent <= 31)."""
    assert 0 <= exponent <= 31
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def ref_quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplier, with exact fractions instead of frexp."""
    r = Fraction(real)
    shift = 0
    while r >= 1:
        r /= 2
        shift += 1
    while r < Fraction(1, 2):
        r *= 2
        shift -= 1
    q = r * 2**31
    m0 = int(q + Fraction(1, 2))  # std::round, half away from zero (q > 0)
    if m0 == 2**31:
        m0, shift = m0 // 2, shift + 1
    return m0, shift


def ref_single(x: int, m0: int, shift: int) -> int:
    """TFLite MultiplyByQuantizedMultiplier with TFLITE_SINGLE_ROUNDING (common.h)."""
    assert -31 <= shift <= 30
    total_shift = 31 - shift
    rnd = 1 << (total_shift - 1)
    return (x * m0 + rnd) >> total_shift  # int64 arithmetic shift right == Python >>


def ref_double(x: int, m0: int, shift: int) -> int:
    """TFLite MultiplyByQuantizedMultiplier, default build (gemmlowp's two roundings)."""
    left = shift if shift > 0 else 0
    right = 0 if shift > 0 else -shift
    return ref_rdbpot(ref_srdhm(_wrap32(x * (1 << left)), m0), right)


def ref_requantize(acc, real: float, zp: int, qmin: int, qmax: int, rounding: Rounding):
    m0, shift = ref_quantize_multiplier(real)
    f = ref_single if rounding is SINGLE else ref_double
    return np.array([min(max(f(int(a), m0, shift) + zp, qmin), qmax) for a in acc])


# -- quantize_multiplier ----------------------------------------------------------------------

@pytest.mark.parametrize("real, m0, shift", [
    (0.5, 2**30, 0), (0.25, 2**30, -1), (1.0, 2**30, 1), (0.75, 3 * 2**29, 0),
    (3.0, 3 * 2**29, 2), (2.0**-31, 2**30, -30), (1 - 2.0**-40, 2**30, 1),  # rounds up to 2^31
    ((2**31 + 1) * 2.0**-32, 2**30 + 1, 0),  # M0 = 2^30 + 1/2: half away from zero, not even
    ((2**31 + 3) * 2.0**-32, 2**30 + 2, 0),
])
def test_quantize_multiplier_hand_cases(real, m0, shift):
    got_m0, got_shift = quantize_multiplier(real)
    assert got_m0.dtype == np.int32 and got_shift.dtype == np.int32
    assert (int(got_m0), int(got_shift)) == (m0, shift)


HALF_WAY_REALS = st.builds(lambda odd, e: float(odd) * 2.0**e,  # M0 lands on k + 1/2
                           st.integers(2**31, 2**32 - 1).map(lambda v: v | 1),
                           st.integers(-90, 10))


@given(st.one_of(st.floats(min_value=2.0**-60, max_value=2.0**40), HALF_WAY_REALS))
@settings(max_examples=400, deadline=None)
def test_quantize_multiplier_matches_tflite_and_reconstructs(real):
    m0, shift = quantize_multiplier(real)
    assert (int(m0), int(shift)) == ref_quantize_multiplier(real)
    assert 2**30 <= int(m0) < 2**31
    approx = Fraction(int(m0)) * Fraction(2) ** (int(shift) - 31)
    assert abs(approx - Fraction(real)) <= Fraction(real) / 2**31


def test_quantize_multiplier_per_channel():
    real = np.array([[0.3, 1e-3], [7.0, 2.0**-20]])
    m0, shift = quantize_multiplier(real)
    assert m0.shape == shift.shape == (2, 2)
    for r, a, b in zip(real.ravel(), m0.ravel(), shift.ravel(), strict=True):
        assert (int(a), int(b)) == ref_quantize_multiplier(float(r))


@pytest.mark.parametrize("bad", [0.0, -0.5, float("nan"), float("inf"), [0.5, 0.0], [1.0, -1]])
def test_quantize_multiplier_refuses(bad):
    with pytest.raises(ValueError, match="> 0 and finite"):
        quantize_multiplier(bad)
    with pytest.raises(TypeError):
        quantize_multiplier("0.5")


# -- gemmlowp's primitives --------------------------------------------------------------------

def test_srdhm_and_rdbpot_hand_cases():
    srdhm, rdbpot = saturating_rounding_doubling_high_mul, rounding_divide_by_pot
    # a * b / 2^31 rounded half toward +infinity; INT32_MIN^2 saturates
    cases = [((2**30, 2**30), 2**29), ((1, 2**30), 1), ((-1, 2**30), 0), ((3, 2**30), 2),
             ((-3, 2**30), -1), ((-5, 2**30), -2), ((INT32_MIN, INT32_MIN), INT32_MAX),
             ((INT32_MIN, INT32_MAX), -INT32_MAX), ((INT32_MAX, INT32_MAX), INT32_MAX - 1)]
    for (a, b), want in cases:
        assert int(srdhm(a, b)) == want == ref_srdhm(a, b), (a, b)
    # x / 2^e rounded half away from zero
    for (x, e), want in [((5, 1), 3), ((-5, 1), -3), ((3, 1), 2), ((-3, 1), -2), ((6, 2), 2),
                         ((-6, 2), -2), ((-5, 2), -1), ((-7, 2), -2), ((-1, 31), 0),
                         ((INT32_MIN, 31), -1), ((INT32_MAX, 31), 1), ((7, 0), 7)]:
        assert int(rdbpot(x, e)) == want == ref_rdbpot(x, e), (x, e)


def test_srdhm_and_rdbpot_match_gemmlowp_on_random_int32():
    rng = np.random.default_rng(0)
    edge = np.array([INT32_MIN, INT32_MIN + 1, -1, 0, 1, 2**30, INT32_MAX])
    a = np.concatenate([rng.integers(INT32_MIN, INT32_MAX, 3000, endpoint=True), edge, edge])
    b = np.concatenate([rng.integers(INT32_MIN, INT32_MAX, 3000, endpoint=True), edge,
                        edge[::-1]])
    e = rng.integers(0, 32, a.size)
    got = saturating_rounding_doubling_high_mul(a, b)
    assert got.tolist() == [ref_srdhm(int(x), int(y)) for x, y in zip(a, b, strict=True)]
    got = rounding_divide_by_pot(a, e)
    assert got.tolist() == [ref_rdbpot(int(x), int(k)) for x, k in zip(a, e, strict=True)]
    with pytest.raises(ValueError, match=r"\[0, 31\]"):
        rounding_divide_by_pot(a[:3], 32)


# -- the three roundings: hand cases ----------------------------------------------------------

@pytest.mark.parametrize("acc, half_even, single, gemmlowp", [
    (2, 0, 1, 1),      # 0.5: even / half up / half up twice
    (-2, 0, 0, -1),    # -0.5: gemmlowp's second rounding goes away from zero
    (5, 1, 1, 2),      # 1.25: gemmlowp's double rounding 2.5 -> 3 -> 1.5 -> 2
    (-5, -1, -1, -1),  # -1.25: SRDHM -2.5 -> -2, then -1
    (6, 2, 2, 2),      # 1.5
    (10, 2, 3, 3),     # 2.5
    (-10, -2, -2, -3),  # -2.5
    (-6, -2, -1, -2),  # -1.5
])
def test_roundings_hand_cases(acc, half_even, single, gemmlowp):
    for rounding, want in ((HE, half_even), (SINGLE, single), (GEMMLOWP, gemmlowp)):
        got = requantize(np.array([acc]), 0.25, 0, -128, 127, rounding)
        assert got.dtype == np.int32 and int(got[0]) == want, rounding


def test_zero_point_and_clamp_hand_case():
    acc = np.array([-1000, -20, 0, 19, 1000], dtype=np.int32)
    for rounding in Rounding:
        got = requantize(acc, 0.1, 10, 0, 255, rounding)
        assert got.tolist() == [0, 8, 10, 12, 110], rounding  # -2, 0, 1.9 -> 2, 100


# -- SINGLE and GEMMLOWP against the C++ transcriptions ---------------------------------------

@st.composite
def requant_case(draw):
    rounding = draw(st.sampled_from([SINGLE, GEMMLOWP]))
    real = draw(st.one_of(st.floats(2.0**-31, 2.0**29), st.floats(2.0**-16, 1.0),
                          st.sampled_from([0.5, 0.25, 2.0**-31, 1.0, 3.0, 2.0**29])))
    acc = draw(st.lists(st.one_of(st.integers(INT32_MIN, INT32_MAX), st.integers(-300, 300)),
                        min_size=1, max_size=40))
    if rounding is GEMMLOWP and real >= 1:  # keep TFLite's x * (1 << left) inside int32
        limit = INT32_MAX >> int(quantize_multiplier(real)[1])
        acc = [min(max(a, -limit), limit) for a in acc]
    qmin = draw(st.integers(INT32_MIN, 1000))
    qmax = draw(st.integers(qmin, INT32_MAX))
    zp = draw(st.integers(-(2**20), 2**20))
    return np.array(acc, dtype=np.int64), real, zp, qmin, qmax, rounding


@given(requant_case())
@settings(max_examples=500, deadline=None)
def test_fixed_point_matches_the_cpp(case):
    acc, real, zp, qmin, qmax, rounding = case
    got = requantize(acc, real, zp, qmin, qmax, rounding)
    np.testing.assert_array_equal(got, ref_requantize(acc, real, zp, qmin, qmax, rounding))


def test_fixed_point_matches_the_cpp_per_channel_batch():
    rng = np.random.default_rng(1)
    n = 8
    real = np.exp(rng.uniform(np.log(2.0**-30), np.log(0.9), n))
    acc = rng.integers(-(2**24), 2**24, (300, n)).astype(np.int32)
    acc[:5] = [[INT32_MIN], [INT32_MAX], [0], [1], [-1]]
    zp = rng.integers(-128, 128, n)
    for rounding in (SINGLE, GEMMLOWP):
        got = requantize(acc, real, zp, -(2**15), 2**15 - 1, rounding)
        for c in range(n):
            want = ref_requantize(acc[:, c], float(real[c]), int(zp[c]), -(2**15), 2**15 - 1,
                                  rounding)
            np.testing.assert_array_equal(got[:, c], want)


def test_gemmlowp_left_shift_saturates():
    """Deviation: acc << left saturates to int32 (TFLite's x * (1 << left) overflows)."""
    real = 4.0  # M0 = 2^30, shift 3: left shift by 3
    acc = np.array([2**29, -(2**29), 2**28 - 1])
    got = requantize(acc, real, 0, INT32_MIN, INT32_MAX, GEMMLOWP)
    assert got.tolist() == [ref_srdhm(INT32_MAX, 2**30), ref_srdhm(INT32_MIN, 2**30),
                            4 * (2**28 - 1)]


# -- properties of all three ------------------------------------------------------------------

def _round_half_even(q: Fraction) -> int:
    return round(q)  # Python rounds Fractions half to even


@given(st.lists(st.integers(INT32_MIN, INT32_MAX), min_size=1, max_size=30),
       st.floats(2.0**-31, 2.0**8), st.integers(-(2**16), 2**16), st.integers(0, 2**16),
       st.sampled_from(list(Rounding)))
@settings(max_examples=400, deadline=None)
def test_within_one_of_exact_monotone_saturating(acc, real, zp, width, rounding):
    qmin, qmax = zp - width // 2, zp + (width + 1) // 2
    acc = np.sort(np.array(acc, dtype=np.int64))
    got = requantize(acc, real, zp, qmin, qmax, rounding)
    exact = [min(max(_round_half_even(Fraction(int(a)) * Fraction(real)) + zp, qmin), qmax)
             for a in acc]
    assert np.abs(got.astype(np.int64) - exact).max() <= 1
    assert (np.diff(got) >= 0).all()
    assert got.min() >= qmin and got.max() <= qmax
    ends = requantize(np.array([INT32_MIN, INT32_MAX]), max(real, 2.0**-8), zp, qmin, qmax,
                      rounding)
    assert ends.tolist() == [qmin, qmax]


# -- errors -----------------------------------------------------------------------------------

def test_requantize_errors():
    acc = np.array([1, 2, 3], dtype=np.int32)
    with pytest.raises(ValueError, match="qmin must be <= qmax"):
        requantize(acc, 0.5, 0, 10, 9, HE)
    with pytest.raises(TypeError, match="integer array"):
        requantize(acc.astype(np.float32), 0.5, 0, 0, 255, HE)
    with pytest.raises(TypeError, match="integer array"):
        requantize(acc > 1, 0.5, 0, 0, 255, SINGLE)
    with pytest.raises(AccumulatorOverflowError, match="int32"):
        requantize(np.array([2**31]), 0.5, 0, 0, 255, GEMMLOWP)
    with pytest.raises(TypeError, match="Rounding"):
        requantize(acc, 0.5, 0, 0, 255, "half_even")
    for rounding in Rounding:
        for bad in (0.0, -1.0, float("nan"), float("inf"), [0.5, -0.5]):
            with pytest.raises(ValueError, match="> 0 and finite"):
                requantize(acc, bad, 0, 0, 255, rounding)
    with pytest.raises(ValueError, match="float32"):
        requantize(acc, 1e-50, 0, 0, 255, HE)  # flushes to 0 in float32
    for rounding in (SINGLE, GEMMLOWP):
        for bad in (2.0**30, 2.0**-33):
            with pytest.raises(ValueError, match=r"shift in \[-31, 30\]"):
                requantize(acc, bad, 0, 0, 255, rounding)
    with pytest.raises(TypeError, match="qmin"):
        requantize(acc, 0.5, 0, 0.0, 255, HE)
    assert issubclass(AccumulatorOverflowError, LowbitError)


# -- ONNX Runtime: the peer of HALF_EVEN ------------------------------------------------------

def _vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
                                         shape)


def _session(node, inputs, output, initializers=()):
    graph = helper.make_graph([node], "g", inputs, [output],
                              initializer=[onnx.numpy_helper.from_array(a, n)
                                           for n, a in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


QLINEAR_INPUTS = ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp", "y_scale", "y_zp"]


def _matmul_session(act, wdt, m, k, n, per_column):
    qshape = [n] if per_column else []
    inputs = [_vi("x", act, [m, k]), _vi("x_scale", np.float32, []), _vi("x_zp", act, []),
              _vi("w", wdt, [k, n]), _vi("w_scale", np.float32, qshape),
              _vi("w_zp", wdt, qshape), _vi("y_scale", np.float32, []), _vi("y_zp", act, [])]
    node = helper.make_node("QLinearMatMul", QLINEAR_INPUTS, ["y"])
    return _session(node, inputs, _vi("y", act, [m, n]))


def _random_layer(rng, act, wdt, k, n, per_channel, common_w_zp=False):
    """Random codes and float32 scales (over 3 decades); ``y_scale`` puts a typical output
    some tens of codes from its zero point, so most codes are neither 0 nor saturated."""
    a = np.iinfo(act)
    w_lo, w_hi = (S8_LO, S8_HI) if wdt == np.int8 else (0, 255)
    shape = (n,) if per_channel else ()
    w_zp = np.full(shape, rng.integers(w_lo, w_hi + 1)) if common_w_zp else \
        rng.integers(w_lo, w_hi + 1, shape)
    x_scale = np.float32(10 ** rng.uniform(-3, 0))
    w_scale = (10 ** rng.uniform(-3, 0, shape)).astype(np.float32)
    y_scale = x_scale * np.max(w_scale) * np.sqrt(k) * 100 * 10 ** rng.uniform(-1, 1)
    return dict(
        x_scale=x_scale, x_zp=np.array(rng.integers(a.min, a.max + 1), dtype=act),
        w=rng.integers(w_lo, w_hi + 1, (n, k)).astype(wdt), w_scale=w_scale,
        w_zp=np.asarray(w_zp, dtype=wdt), y_scale=np.float32(y_scale),
        y_zp=np.array(rng.integers(a.min, a.max + 1), dtype=act),
        qmin=int(a.min), qmax=int(a.max))


def _ours(x, p, bias=None):
    return qlinear(x, p["x_scale"], int(p["x_zp"]), p["w"], p["w_scale"],
                   p["w_zp"].astype(np.int64), bias, p["y_scale"], int(p["y_zp"]),
                   p["qmin"], p["qmax"], HE)


@pytest.mark.parametrize("act, wdt", [(np.uint8, np.uint8), (np.uint8, np.int8),
                                      (np.int8, np.int8)])
@pytest.mark.parametrize("per_column", [False, True])
def test_half_even_matches_ort_qlinearmatmul(act, wdt, per_column):
    rng = np.random.default_rng([3, per_column, np.dtype(act).num, np.dtype(wdt).num])
    m, k, n = 48, 29, 12
    session = _matmul_session(act, wdt, m, k, n, per_column)
    compared = ties = 0
    info = np.iinfo(act)
    for trial in range(40):
        p = _random_layer(rng, act, wdt, k, n, per_column)
        x = rng.integers(info.min, info.max + 1, (m, k)).astype(act)
        if trial % 4 == 0:  # powers of two, M = 2^-5 exactly, x near its zero point: many ties
            p.update(x_scale=np.float32(2**-3), w_scale=np.full_like(p["w_scale"], 2**-2),
                     y_scale=np.float32(1.0))
            x = np.clip(int(p["x_zp"]) + rng.integers(-3, 4, (m, k)), info.min, info.max)
            x = x.astype(act)
            acc = qgemm(x, int(p["x_zp"]), p["w"], p["w_zp"].astype(np.int64))
            ties += int((acc % 32 == 16).sum())
        feed = {"x": x, "w": p["w"].T.copy(), **{name: np.asarray(p[name]) for name in
                                                 QLINEAR_INPUTS if name not in ("x", "w")}}
        (y,) = session.run(None, feed)
        ours = _ours(x, p)
        assert np.array_equal(ours.astype(act), y), trial
        assert ours.min() >= info.min and ours.max() <= info.max
        compared += y.size
    assert ties > 50
    assert compared == 40 * m * n


def im2col(x, kh, kw, stride, pad, fill):
    """(N, C, H, W) -> ((N * OH * OW), C * kh * kw) patches, rows in (n, oh, ow) order, columns
    in the (c, i, j) order of a (Cout, C, kh, kw) weight reshaped to (Cout, -1)."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=fill)
    oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    cols = np.empty((n, oh, ow, c, kh, kw), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            window = xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
            cols[..., i, j] = window.transpose(0, 2, 3, 1)
    return cols.reshape(n * oh * ow, c * kh * kw), (oh, ow)


def _conv_session(act, wdt, x_shape, w_shape, y_shape, per_channel, stride, pad, const=None):
    """QLinearConv with bias; ``const``: every input but x as an initializer (lets MLAS pack
    the weight: its symmetric-conv kernels when the weight is int8 with zero point 0)."""
    cout = w_shape[0]
    qshape = [cout] if per_channel else []
    node = helper.make_node("QLinearConv", QLINEAR_INPUTS + ["bias"], ["y"],
                            strides=[stride, stride], pads=[pad] * 4)
    specs = {"x": (act, x_shape), "x_scale": (np.float32, []), "x_zp": (act, []),
             "w": (wdt, w_shape), "w_scale": (np.float32, qshape), "w_zp": (wdt, []),
             "y_scale": (np.float32, []), "y_zp": (act, []), "bias": (np.int32, [cout])}
    names = ["x"] if const is not None else list(specs)
    inits = [(name, np.asarray(v)) for name, v in (const or {}).items()]
    return _session(node, [_vi(name, *specs[name]) for name in names], _vi("y", act, y_shape),
                    inits)


def _conv_feed(p, w4, bias):
    return {"x_scale": np.asarray(p["x_scale"]), "x_zp": np.asarray(p["x_zp"]), "w": w4,
            "w_scale": np.asarray(p["w_scale"]), "w_zp": np.asarray(p["w_zp"].reshape(-1)[0]),
            "y_scale": np.asarray(p["y_scale"]), "y_zp": np.asarray(p["y_zp"]), "bias": bias}


def _ours_conv(x, p, w4, bias, stride, pad):
    cols, (oh, ow) = im2col(x, w4.shape[2], w4.shape[3], stride, pad, p["x_zp"])
    y = _ours(cols, {**p, "w": w4.reshape(w4.shape[0], -1)}, bias)
    return y.reshape(x.shape[0], oh, ow, -1).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("act, wdt, constant", [
    (np.uint8, np.int8, False), (np.uint8, np.uint8, False), (np.int8, np.int8, False),
    (np.uint8, np.int8, True), (np.int8, np.int8, True)])
@pytest.mark.parametrize("per_channel", [False, True])
def test_qlinear_matches_ort_qlinearconv_via_im2col(act, wdt, constant, per_channel):
    rng = np.random.default_rng([4, per_channel, constant, np.dtype(act).num,
                                 np.dtype(wdt).num])
    n, cin, h, w, cout, ks, stride, pad = 2, 3, 9, 8, 6, 3, 2, 1
    oh, ow = (h + 2 * pad - ks) // stride + 1, (w + 2 * pad - ks) // stride + 1
    info = np.iinfo(act)
    session = None
    for _ in range(3 if constant else 12):
        p = _random_layer(rng, act, wdt, cin * ks * ks, cout, per_channel, common_w_zp=True)
        if constant:
            p["w_zp"] = np.zeros_like(p["w_zp"])  # symmetric weights: MLAS's conv-sym path
        w4 = p["w"].reshape(cout, cin, ks, ks)
        bias = quantize_bias(rng.normal(0, 30, cout) * p["y_scale"], p["x_scale"], p["w_scale"])
        feed = _conv_feed(p, w4, bias)
        if constant or session is None:
            session = _conv_session(act, wdt, [n, cin, h, w], list(w4.shape), [n, cout, oh, ow],
                                    per_channel, stride, pad, feed if constant else None)
        for _ in range(4):
            x = rng.integers(info.min, info.max + 1, (n, cin, h, w)).astype(act)
            (y,) = session.run(None, {"x": x} if constant else {"x": x, **feed})
            assert np.array_equal(_ours_conv(x, p, w4, bias, stride, pad).astype(act), y)


def _window_session(act, cout):
    """A 1x1 QLinearConv over one input channel of 256 pixels with weight 1 (zero point 0):
    ``acc[c, p] = x[p] - x_zp + bias[c]``, so the bias places 256 consecutive accumulators
    per channel anywhere in int32."""
    return _conv_session(act, np.int8, [1, 1, 1, 256], [cout, 1, 1, 1], [1, cout, 1, 256],
                         False, 1, 0)


def _window_run(session, act, scales, centres):
    """ORT's codes and ours (:func:`qlinear`) over the windows; the accumulators too."""
    x_scale, w_scale, y_scale = (np.float32(s) for s in scales)
    info = np.iinfo(act)
    x_zp, y_zp = (int(info.min) + int(info.max) + 1) // 2, 0 if act == np.int8 else 128
    p = dict(x_scale=x_scale, x_zp=np.array(x_zp, act), w=np.ones((len(centres), 1), np.int8),
             w_scale=w_scale, w_zp=np.array(0, np.int8), y_scale=y_scale,
             y_zp=np.array(y_zp, act), qmin=int(info.min), qmax=int(info.max))
    x = np.arange(info.min, info.max + 1).astype(act)
    bias = np.clip(np.asarray(centres, np.int64), INT32_MIN + 200, INT32_MAX - 200)
    bias = bias.astype(np.int32)
    feed = _conv_feed(p, p["w"].reshape(-1, 1, 1, 1), bias)
    (y,) = session.run(None, {"x": x.reshape(1, 1, 1, 256), **feed})
    ours = _ours(x.reshape(256, 1), p, bias).T
    acc = (x.astype(np.int64) - x_zp)[None, :] + bias.astype(np.int64)[:, None]
    return y.reshape(len(centres), 256), ours, acc


def _mlas_multiplier(scales):
    s1, s2, s3 = (np.float32(s) for s in scales)
    return (s1 * s2) / s3


def _discriminating(rng, cout):
    """(scales, centres, kind): accumulators where MLAS's float32 multiplier, or its float32
    product, gives another code than the float64 alternative would."""
    found = {}
    for _ in range(300):
        s1, s2 = np.float32(10 ** rng.uniform(-3, 0, 2))
        s3 = np.float32(s1 * s2 * 2 ** rng.uniform(12, 13))  # M about 2^-12.5
        m32 = _mlas_multiplier((s1, s2, s3))
        m64 = np.float32(np.float64(s1) * np.float64(s2) / np.float64(s3))
        acc = np.arange(1, int(120 / m32), dtype=np.int64)
        ours = np.rint(acc.astype(np.float32) * m32)
        others = {"float64 multiplier differs": np.rint(acc.astype(np.float32) * m64),
                  "float64 product differs": np.rint(acc.astype(np.float64) * np.float64(m32))}
        for kind, other in others.items():
            hits = np.flatnonzero(ours != other)
            if hits.size and len(found.get(kind, ())) < 8:
                pick = np.resize(rng.permutation(hits)[:cout], cout)
                found.setdefault(kind, []).append(
                    ((s1, s2, s3), acc[pick] * rng.choice([-1, 1], cout), kind))
        if len(found) == 2 and all(len(v) == 8 for v in found.values()):
            break
    return [case for cases in found.values() for case in cases]


def test_half_even_matches_ort_on_ties_and_rounding_edges():
    """Accumulators placed where conventions differ: exact ties (M = 2^-1, 2^-4, 3 * 2^-3),
    above 2^24 (int32 -> float32 rounds), and where a float64 multiplier or a float64
    product would give another code than MLAS's float32 ones."""
    rng = np.random.default_rng(5)
    cout = 16
    sessions = {act: _window_session(act, cout) for act in (np.uint8, np.int8)}
    cases = [((0.5, 1.0, 1.0), rng.integers(-100, 100, cout), "ties"),
             ((2**-2, 2**-2, 1.0), rng.integers(-(2**11), 2**11, cout), "ties"),
             ((0.75, 0.5, 1.0), rng.integers(-300, 300, cout), "ties")]
    cases += _discriminating(rng, cout)
    s1, s2 = np.float32(10 ** rng.uniform(-3, -2, 2))
    cases.append(((s1, s2, np.float32(s1 * s2 * 2**25)),  # M about 2^-25
                  rng.integers(2**25, 2**30, cout) * rng.choice([-1, 1], cout), "acc > 2^24"))
    checked = dict.fromkeys(["ties", "float64 multiplier differs", "float64 product differs",
                             "acc > 2^24"], 0)
    for scales, centres, kind in cases:
        for act, session in sessions.items():
            y, ours, acc = _window_run(session, act, scales, centres)
            assert np.array_equal(ours.astype(act), y), (kind, scales)
            checked[kind] += y.size
    assert all(checked.values()), checked  # every kind of edge was constructed and compared


def _division_edges(rng, scale, count):
    """float32 inputs near ``(k + 1/2) * scale`` where ``x / scale`` (ONNX's QuantizeLinear)
    and ``x * (1 / scale)`` round to different codes."""
    x = ((rng.integers(-128, 128, 50 * count) + 0.5) * np.float64(scale)).astype(np.float32)
    x = np.nextafter(x, rng.choice(np.array([-np.inf, np.inf], np.float32), x.size))
    x = np.concatenate([x, np.nextafter(x, np.float32(0))])
    hits = x[np.rint(x / scale) != np.rint(x * (np.float32(1) / scale))]
    return np.resize(hits, count), hits.size


def test_quantize_input_matches_ort_quantizelinear():
    rng = np.random.default_rng(6)
    edges = 0
    for act in (np.uint8, np.int8):
        info = np.iinfo(act)
        node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])
        session = _session(node, [_vi("x", np.float32, [4000]), _vi("s", np.float32, []),
                                  _vi("z", act, [])], _vi("y", act, [4000]))
        for i in range(10):
            scale = np.float32(0.25) if i % 2 else np.float32(10 ** rng.uniform(-3, 0))
            zp = act(rng.integers(info.min, info.max + 1))
            x = (rng.normal(0, 150, 4000) * scale).astype(np.float32)
            x[:1000] = (rng.integers(-300, 300, 1000) + 0.5) * scale  # ties (exact if 0.25)
            x[1000:2000], found = _division_edges(rng, scale, 1000)
            edges += found
            x[-3:] = [np.inf, -np.inf, 0.0]
            (y,) = session.run(None, {"x": x, "s": np.asarray(scale), "z": np.asarray(zp)})
            ours = quantize_input(x, scale, int(zp), int(info.min), int(info.max))
            assert np.array_equal(ours.astype(act), y)
    assert edges > 1000
    with pytest.raises(NonFiniteError):
        quantize_input(np.array([np.nan]), 0.1, 0, 0, 255)
    with pytest.raises(ValueError, match="qmin"):
        quantize_input(np.array([1.0]), 0.1, 0, 255, 0)


# -- torch's quantized linear (fbgemm): a second HALF_EVEN peer --------------------------------

def test_half_even_matches_torch_fbgemm_linear():
    torch = pytest.importorskip("torch")
    qF = pytest.importorskip("torch.ao.nn.quantized.functional")
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        pytest.skip("torch built without the fbgemm quantized engine")
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = "fbgemm"
    rng = np.random.default_rng(7)
    try:
        for per_channel in (False, True):
            for _ in range(10):
                p = _random_layer(rng, np.uint8, np.int8, 40, 16, per_channel)
                p["w_zp"] = np.zeros_like(p["w_zp"])  # fbgemm: symmetric int8 weights
                x = rng.integers(0, 256, (32, 40)).astype(np.uint8)
                xq = torch._make_per_tensor_quantized_tensor(torch.from_numpy(x),
                                                             float(p["x_scale"]),
                                                             int(p["x_zp"]))
                wt = torch.from_numpy(p["w"])
                if per_channel:
                    wq = torch._make_per_channel_quantized_tensor(
                        wt, torch.from_numpy(p["w_scale"].astype(np.float64)),
                        torch.zeros(16, dtype=torch.int64), 0)
                else:
                    wq = torch._make_per_tensor_quantized_tensor(wt, float(p["w_scale"]), 0)
                y = qF.linear(xq, wq, None, float(p["y_scale"]), int(p["y_zp"]))
                assert np.array_equal(_ours(x, p).astype(np.uint8), y.int_repr().numpy())
    finally:
        torch.backends.quantized.engine = old


# -- qgemm, quantize_bias ---------------------------------------------------------------------

def test_qgemm_is_the_exact_sum():
    rng = np.random.default_rng(8)
    x = rng.integers(0, 256, (2, 3, 17))
    w = rng.integers(-128, 128, (5, 17))
    w_zp = rng.integers(-128, 128, 5)
    bias = rng.integers(-(2**20), 2**20, 5)
    got = qgemm(x.astype(np.uint8), 7, w.astype(np.int8), w_zp, bias)
    assert got.dtype == np.int32 and got.shape == (2, 3, 5)
    for idx in np.ndindex(2, 3, 5):
        i, j, c = idx
        want = sum((int(x[i, j, k]) - 7) * (int(w[c, k]) - int(w_zp[c])) for k in range(17))
        assert int(got[idx]) == want + int(bias[c])
    assert np.array_equal(qgemm(x, 7, w, int(w_zp[0]), None),
                          ((x - 7) @ (w - w_zp[0]).T).astype(np.int32))


def test_exact_matmul_both_paths_against_python_ints():
    rng = np.random.default_rng(9)
    for hi in (2**8, 2**29):  # float64 path (bound < 2^53), int64 path (bound >= 2^53)
        a = rng.integers(-hi, hi, (4, 6))
        b = rng.integers(-hi, hi, (6, 3))
        want = [[sum(int(a[i, k]) * int(b[k, j]) for k in range(6)) for j in range(3)]
                for i in range(4)]
        assert _exact_matmul(a, b).tolist() == want
    with pytest.raises(AccumulatorOverflowError, match="2\\^63"):
        _exact_matmul(np.full((1, 4), 2**31 - 1), np.full((4, 1), 2**31 - 1))


def test_qgemm_overflow_and_shape_errors():
    k = 2**31 // (255 * 128) + 1  # K * 255 * 128 > 2^31: the accumulator leaves int32
    x = np.full((1, k), 255, dtype=np.uint8)
    w = np.full((1, k), -128, dtype=np.int8)
    with pytest.raises(AccumulatorOverflowError, match="int32"):
        qgemm(x, 0, w, 0)
    assert int(qgemm(x[:, :-1], 0, w[:, :-1], 0)[0, 0]) == -(k - 1) * 255 * 128
    with pytest.raises(AccumulatorOverflowError, match="int32"):
        qgemm(x[:, :2], 0, w[:, :2], 0, np.array([INT32_MIN]))
    with pytest.raises(ValueError, match="do not match"):
        qgemm(x[:, :3], 0, w[:, :4], 0)
    with pytest.raises(ValueError, match="w_zp"):
        qgemm(x[:, :3], 0, w[:, :3], np.array([0, 0]))
    with pytest.raises(ValueError, match="bias_q"):
        qgemm(x[:, :3], 0, w[:, :3], 0, np.array([1, 2]))
    with pytest.raises(TypeError, match="integer"):
        qgemm(x[:, :3].astype(float), 0, w[:, :3], 0)
    with pytest.raises(ValueError, match="w_scale"):
        qlinear(x[:, :3], 0.1, 0, w[:, :3], np.ones(2), 0, None, 0.1, 0, 0, 255, HE)


def test_quantize_bias_rule_and_errors():
    bias = np.array([0.0, 1.0, -1.0, 2.5e-3, -2.5e-3, 0.123456])
    got = quantize_bias(bias, 0.05, 0.01)
    scale = np.float64(np.float32(0.05) * np.float32(0.01))  # product in float32
    assert got.dtype == np.int32
    assert got.tolist() == [round(float(b) / float(scale)) for b in bias]  # half to even
    half = quantize_bias(np.array([0.5, 1.5, 2.5, -0.5, -2.5]), 1.0, 1.0)
    assert half.tolist() == [0, 2, 2, 0, -2]
    per_channel = quantize_bias(np.array([1.0, 1.0]), 0.5, np.array([0.25, 0.125]))
    assert per_channel.tolist() == [8, 16]
    with pytest.raises(AccumulatorOverflowError, match="too small"):
        quantize_bias(np.array([1.0]), 1e-6, 1e-6)
    for bad in (np.nan, np.inf):
        with pytest.raises(NonFiniteError):
            quantize_bias(np.array([bad]), 0.1, 0.1)
    with pytest.raises(ValueError, match="> 0"):
        quantize_bias(np.array([1.0]), 0.1, 0.0)


def _ort_quantize_bias(bias, x_scale, w_scale):
    """onnxruntime.quantization's own bias rule (BaseQuantizer.quantize_bias_static_impl, an
    internal method: called on a stand-in quantizer holding a one-initializer model)."""
    base = pytest.importorskip("onnxruntime.quantization.base_quantizer")
    onnx_model = pytest.importorskip("onnxruntime.quantization.onnx_model")
    graph = helper.make_graph([], "g", [], [], initializer=[
        onnx.numpy_helper.from_array(bias.astype(np.float32), "b")])
    stand_in = type("Q", (), {})()
    stand_in.model = onnx_model.ONNXModel(helper.make_model(graph))
    stand_in.weight_qType = onnx.TensorProto.INT8
    try:
        base.BaseQuantizer.quantize_bias_static_impl(stand_in, "b", x_scale, w_scale)
    except (AttributeError, TypeError) as e:  # the internal API moved
        pytest.skip(f"onnxruntime's quantize_bias_static_impl changed: {e}")
    (q,) = [i for i in stand_in.model.initializer() if i.name == "b_quantized"]
    return onnx.numpy_helper.to_array(q)


def test_quantize_bias_matches_ort_quantization_tool():
    """Bias values placed where a float64 scale product (or float32 quotient) would round
    differently from ORT's float32 product and float64 quotient."""
    rng = np.random.default_rng(10)
    edges = 0
    for per_channel in (False, True):
        for _ in range(20):
            shape = (8,) if per_channel else (1,)
            x_scale = np.float32(10 ** rng.uniform(-3, 0, 1))
            w_scale = (10 ** rng.uniform(-3, 0, shape)).astype(np.float32)
            exact = np.float64(x_scale) * w_scale.astype(np.float64)
            k = rng.integers(-(2**20), 2**20, (64,) + shape)
            bias = ((k + 0.5) * exact).astype(np.float32)  # near ties on the float64 grid
            bias[:8] = rng.normal(0, 1, (8,) + shape)
            f32 = np.rint(bias / (x_scale * w_scale).astype(np.float64))
            edges += int((f32 != np.rint(bias / exact)).sum())
            for row in bias:
                want = _ort_quantize_bias(row, x_scale, w_scale)
                assert np.array_equal(quantize_bias(row, x_scale[0], w_scale), want)
    assert edges > 0


# -- the runtime stays numpy-only -------------------------------------------------------------

SRC = Path(__file__).resolve().parents[2] / "src"


def test_requant_imports_without_torch():
    probe = f"""
import sys, types
sys.modules["torch"] = None
pkg = types.ModuleType("lowbit"); pkg.__path__ = [{str(SRC / "lowbit")!r}]
sys.modules["lowbit"] = pkg
import numpy as np
from lowbit.runtime import requant as rq
y = rq.qlinear(np.array([[1, 2]]), 0.5, 0, np.array([[3, 4]]), 0.5, 0, None, 1.0, 0, -128, 127,
               rq.Rounding.GEMMLOWP)
assert y.tolist() == [[3]], y
heavy = [m for m, mod in sys.modules.items() if mod is not None
         and m.split(".")[0] in ("torch", "numba", "scipy", "onnx", "onnxruntime")]
assert not heavy, heavy
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
