"""Power-of-two quantizers (Miyashita LogQuant, INQ) against numpy references (functional.log2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lowbit.errors import BitsError, NonFiniteError
from lowbit.functional.codebook import IntegerGrid, Table
from lowbit.functional.log2 import (
    inq_encode,
    inq_exponents,
    inq_quantize,
    log_quant,
    pow2,
    pow2_encode,
    pow2_grid,
    round_log2,
)

SETTINGS = settings(max_examples=40, deadline=None)
values = arrays(np.float32, st.integers(1, 40),
                elements=st.floats(-8, 8, width=32) | st.sampled_from([0.0, 0.5, -0.25, 2.0**-9]))


def np_logquant(x, b, fsr_paper):
    """Miyashita eq. (3)-(4) literally: Clip(e, lo, hi) = zero if e <= lo, hi - 1 if e >= hi."""
    out = np.zeros_like(x, dtype=np.float64)
    for i, v in enumerate(x.astype(np.float64)):
        if v <= 0:
            continue
        e = np.round(np.log2(v))
        lo, hi = fsr_paper - 2**b, fsr_paper
        if e <= lo:
            continue
        out[i] = 2.0 ** (hi - 1 if e >= hi else e)
    return out


def np_pow2(x, b, fsr):  # sign bit + (b-1)-bit LogQuant of |x|, our fsr = paper FSR - 1
    return np.sign(x) * np_logquant(np.abs(x), b - 1, fsr + 1)


def edge_inputs(fsr, n_exp):
    lo = fsr - n_exp + 1
    pts = [0.0, -0.0, 2.0**fsr, 2.0 ** (fsr + 3), 2.0**lo, 2.0 ** (lo - 1), 2.0 ** (lo - 0.5)]
    for e in range(lo - 1, fsr + 1):  # just below / above the geometric midpoints
        pts += [2.0 ** (e + 0.5) * (1 - 1e-6), 2.0 ** (e + 0.5) * (1 + 1e-6), 1.5 * 2.0**e]
    x = np.array(pts, dtype=np.float32)
    return np.concatenate([x, -x])


@pytest.mark.parametrize("bits,fsr", [(2, 0), (3, -1), (4, 2), (5, -3)])
def test_pow2_matches_reference(bits, fsr):
    x = edge_inputs(fsr, 2 ** (bits - 1) - 1)
    out = pow2(torch.from_numpy(x), bits, fsr).numpy()
    np.testing.assert_array_equal(out, np_pow2(x, bits, fsr).astype(np.float32))


@pytest.mark.parametrize("bits,fsr", [(1, 0), (2, 1), (3, -2)])
def test_log_quant_matches_paper(bits, fsr):
    x = np.abs(edge_inputs(fsr, 2**bits - 1))
    out = log_quant(torch.from_numpy(x), bits, fsr).numpy()
    np.testing.assert_array_equal(out, np_logquant(x, bits, fsr + 1).astype(np.float32))
    assert torch.equal(log_quant(torch.tensor([-3.0, -0.1]), bits, fsr), torch.zeros(2))


def test_exp2_and_round_log2_exact():
    e = torch.arange(-126, 128, dtype=torch.float32)
    assert torch.equal(torch.exp2(e), torch.tensor([2.0**k for k in range(-126, 128)]))
    a = torch.tensor([2.0**-0.5 * (1 + 1e-6), 2.0**-0.5 * (1 - 1e-6), 1.0, 0.75, 3.0, 0.0])
    r, nonzero = round_log2(a)
    assert r[:5].tolist() == [0.0, -1.0, 0.0, 0.0, 2.0] and nonzero.tolist()[-1] is False


def test_pow2_gradient_is_identity():
    x = torch.tensor([0.0, 0.3, -5.0, 1e-9, 0.7], requires_grad=True)
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    pow2(x, 3, 0).backward(g)
    assert torch.equal(x.grad, g)


@SETTINGS
@given(values, st.integers(2, 6), st.integers(-6, 4))
def test_pow2_properties(x, bits, fsr):
    xt = torch.from_numpy(x)
    q = pow2(xt, bits, fsr)
    codes, grid = pow2_encode(xt, bits, fsr)
    assert grid.num_codes == 2**bits - 1 and q.unique().numel() <= 2**bits
    assert torch.equal(grid.decode(codes), q)  # the forward is decode(encode), bit-exact
    assert torch.equal(pow2_encode(q, bits, fsr)[0], codes)  # codes of q are q's codes
    assert torch.equal(pow2(q, bits, fsr), q)  # idempotent
    order = torch.argsort(xt)
    assert bool((q[order].diff() >= 0).all())  # monotone
    assert bool((q * xt >= 0).all())  # keeps the sign
    inside = (xt.abs() >= 2.0 ** (fsr - grid.num_codes // 2 + 1)) & (xt.abs() <= 2.0**fsr)
    ratio = (q[inside] / xt[inside]).abs()  # log-domain rounding: within a factor sqrt(2)
    assert bool(((ratio >= 2**-0.5 - 1e-6) & (ratio <= 2**0.5 + 1e-6)).all())


def test_pow2_bits_rejected():
    with pytest.raises(BitsError):
        pow2(torch.ones(2), 1, 0)
    with pytest.raises(BitsError):
        log_quant(torch.ones(2), 0, 0)
    assert pow2(torch.ones(0), 3, 0).shape == (0,)


def np_inq(w, n1, n2):
    """INQ eq. (4): beta sgn(w) if (alpha+beta)/2 <= |w| < 3 beta/2 (alpha < beta adjacent in
    P+ = {0, 2^n2, ..., 2^n1}); 0 otherwise. Values >= 3/2 2^n1 saturate (our rule)."""
    pos = [0.0] + [2.0**n for n in range(n2, n1 + 1)]
    out = np.zeros(len(w))
    for i, v in enumerate(np.abs(w.astype(np.float64))):
        for a, b in zip(pos[:-1], pos[1:], strict=True):
            if (a + b) / 2 <= v < 3 * b / 2:
                out[i] = b
        if v >= 1.5 * pos[-1]:
            out[i] = pos[-1]
    return (np.sign(w) * out).astype(np.float32)


@pytest.mark.parametrize("bits,s", [(2, 1.0), (3, 0.8), (5, 0.21), (4, 3.7)])
def test_inq_matches_paper(bits, s):
    n1, n2 = inq_exponents(s, bits)
    assert n1 == math.floor(math.log2(4 * s / 3)) and n1 - n2 + 1 == 2 ** (bits - 2)
    assert 2.0**n1 <= 4 * s / 3 < 2.0 ** (n1 + 1)  # so s < 3/2 2^n1: nothing above the top
    mids = [2.0 ** (n2 - 1)] + [1.5 * 2.0**n for n in range(n2, n1)]
    pts = [0.0, s, 5 * s] + [m * f for m in mids for f in (1 - 1e-6, 1.0, 1 + 1e-6)]
    w = np.array(pts + [-p for p in pts], dtype=np.float32)
    out = inq_quantize(torch.from_numpy(w), n1, n2)
    np.testing.assert_array_equal(out.numpy(), np_inq(w, n1, n2))
    codes, grid = inq_encode(torch.from_numpy(w), n1, n2)
    assert isinstance(grid, IntegerGrid) and grid.bits == bits
    assert torch.equal(grid.decode(codes), out)
    assert grid.num_codes == 2 ** (bits - 1) + 1 <= 2**bits
    assert float(grid.scale) == 2.0**n2  # levels 0, +-2^j, j = 0..n1-n2: shifts of 2^n2


def test_inq_known_values_and_checks():
    n1, n2 = inq_exponents(0.75, 5)  # 4 s / 3 = 1 -> n1 = 0, n2 = 0 + 1 - 8 = -7
    assert (n1, n2) == (0, -7)
    assert inq_exponents(0.0, 3) == (0, -1)
    with pytest.raises(NonFiniteError):
        inq_quantize(torch.tensor([float("inf")]), 0, -1)
    with pytest.raises(BitsError):
        inq_exponents(1.0, 1)


def test_sqrt2_mantissa_threshold_and_float64_path():
    from fractions import Fraction

    from lowbit.functional.log2 import SQRT2_MANTISSA as T

    assert (1 + Fraction(T, 2**23)) ** 2 >= 2 > (1 + Fraction(T - 1, 2**23)) ** 2
    a = torch.rand(5000, generator=torch.Generator().manual_seed(0)) * 50 + 1e-3
    assert torch.equal(round_log2(a)[0].double(), round_log2(a.double())[0])


def test_pow2_grid_integer_levels_and_table_fallback():
    g = pow2_grid(-3, 3, True, 3)  # {0, +-2^-3, +-2^-2, +-2^-1}
    assert isinstance(g, IntegerGrid) and g.levels.tolist() == [-4, -2, -1, 0, 1, 2, 4]
    assert float(g.scale) == 2.0**-3 and g.decode(torch.arange(7)).tolist() == [
        -0.5, -0.25, -0.125, 0.0, 0.125, 0.25, 0.5]
    u = pow2_grid(0, 3, False, 2)  # unsigned: {0, 1, 2, 4}
    assert isinstance(u, IntegerGrid) and u.levels.tolist() == [0, 1, 2, 4]
    big = pow2_grid(-200, 127, True, 8)  # 2^126 outgrows int64; 2^-200 underflows float32
    small = pow2_grid(-150, 3, False, 2)  # scale 2^-150 is below float32's subnormals
    assert isinstance(big, Table) and isinstance(small, Table)
    assert big.values[127 + 127].item() == 2.0**-74 and small.values.tolist()[1] == 0.0


@pytest.mark.parametrize("bits,signed", [(8, True), (7, False), (8, False), (6, False)])
def test_pow2_wide_codes_decode_to_the_forward(bits, signed):
    x = torch.randn(2000, generator=torch.Generator().manual_seed(bits)) * 3
    x = torch.cat([x, torch.tensor([0.0, 2.0**-120, 2.0**-126, 1e30])])
    f = pow2 if signed else log_quant
    ref = (np_pow2 if signed else lambda v, b, e: np_logquant(v, b, e + 1))(
        x.numpy(), bits, 2)
    codes, grid = pow2_encode(x, bits, 2, signed=signed)
    assert torch.equal(grid.decode(codes), f(x, bits, 2))
    np.testing.assert_array_equal(f(x, bits, 2).numpy(), ref.astype(np.float32))
