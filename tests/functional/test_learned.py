"""LSQ (Esser et al. 2020, eq. 1-3) and PACT (Choi et al. 2018, eq. 1-3): numpy references
written from the equations, torch's fake-quant ops as peers, closed-form gradients, properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import BitsError
from lowbit.functional.codebook import LevelRange
from lowbit.functional.learned import (
    lsq,
    lsq_encode,
    lsq_grad_scale,
    lsq_init_step,
    lsq_range,
    pact,
    pact_encode,
)

SETTINGS = settings(max_examples=40, deadline=None)
RANGES = [(2, True), (3, True), (4, True), (8, True), (1, False), (2, False), (4, False)]


# ---------------------------------------------------------------- numpy references (the paper)
def np_lsq(v, s, qn, qp):
    """Eq. (1)-(2): round(clip(v/s, -Q_N, Q_P)) * s (round half to even)."""
    return np.round(np.clip(v / s, -qn, qp)) * s


def np_lsq_grads(v, s, qn, qp):
    """Eq. (3) per element, and the STE d v_hat/d v (1 strictly inside, 0 outside).

    v/s as the documented float32 v * (1/s): at exact half-steps of an inexact s the float64
    quotient may round the other way, which changes eq. (3) by a whole unit there."""
    v32, s32 = np.float32(v), np.float32(s)
    r = (v32 * (np.float32(1.0) / s32)).astype(np.float64)
    ds = np.where(r <= -qn, -qn, np.where(r >= qp, qp, -r + np.round(r)))
    dv = ((r > -qn) & (r < qp)).astype(np.float64)
    return ds, dv


def np_pact(x, alpha, k):
    """Eq. (1): y = 0.5 (|x| - |x - alpha| + alpha); eq. (2): round(y n / alpha) alpha / n."""
    n = 2**k - 1
    y = 0.5 * (np.abs(x) - np.abs(x - alpha) + alpha)
    return np.round(y * n / alpha) * alpha / n


def special_inputs(s, qn, qp):
    """0, every level, every half-step, the clip boundaries and beyond (in units of s)."""
    ks = np.arange(-qn - 2, qp + 3, 0.5)
    extra = np.array([0.0, -0.0, qp + 0.25, -qn - 0.25, qp + 0.75, -qn - 0.75, 1e-3, -1e-3])
    return np.concatenate([ks, extra]) * s


# ---------------------------------------------------------------- LSQ forward
@pytest.mark.parametrize("bits,signed", RANGES)
def test_lsq_range(bits, signed):
    qn, qp = lsq_range(bits, signed)
    assert (qn, qp) == ((2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1))


@pytest.mark.parametrize("bits,signed", RANGES)
@pytest.mark.parametrize("s", [0.25, 1.0, 0.125])
def test_lsq_matches_numpy_reference_on_special_inputs(bits, signed, s):
    qn, qp = lsq_range(bits, signed)
    v = special_inputs(s, qn, qp)
    out = lsq(torch.tensor(v, dtype=torch.float32), torch.tensor(s), qn, qp)
    np.testing.assert_array_equal(out.numpy(), np_lsq(v, s, qn, qp).astype(np.float32))


@pytest.mark.parametrize("bits,signed", RANGES)
def test_lsq_forward_equals_torch_fake_quantize(bits, signed):
    qn, qp = lsq_range(bits, signed)
    g = torch.Generator().manual_seed(bits)
    for _ in range(5):
        s = float(torch.rand((), generator=g)) * 0.5 + 0.01
        x = torch.randn(2000, generator=g) * s * (qn + qp) / 2
        peer = torch.fake_quantize_per_tensor_affine(x, s, 0, -qn, qp)
        assert torch.equal(lsq(x, torch.tensor(s), qn, qp), peer)
        codes, grid = lsq_encode(x, torch.tensor(s), qn, qp)
        assert grid.levels == LevelRange(-qn, qp) and grid.bits == bits
        assert torch.equal(grid.decode(codes), peer)


def test_lsq_per_channel_forward_equals_torch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 3, generator=g)
    step = torch.rand(6, generator=g) * 0.3 + 0.05
    peer = torch.fake_quantize_per_channel_affine(x, step, torch.zeros(6, dtype=torch.int32),
                                                  0, -8, 7)
    assert torch.equal(lsq(x, step, 8, 7, axis=0), peer)


# ---------------------------------------------------------------- LSQ gradients
def _lsq_grads(x, step, qn, qp, g, upstream, axis=None):
    x = x.clone().requires_grad_(True)
    step = step.clone().requires_grad_(True)
    (lsq(x, step, qn, qp, g, axis) * upstream).sum().backward()
    return x.grad, step.grad


@pytest.mark.parametrize("bits,signed", RANGES)
@pytest.mark.parametrize("s", [0.25, 0.3])
def test_lsq_gradients_match_closed_form(bits, signed, s):
    qn, qp = lsq_range(bits, signed)
    v = special_inputs(s, qn, qp)
    up = np.linspace(-1.0, 2.0, v.size)
    g = lsq_grad_scale(v.size, qp)
    gx, gs = _lsq_grads(torch.tensor(v, dtype=torch.float32), torch.tensor(s), qn, qp, g,
                        torch.tensor(up, dtype=torch.float32))
    ds, dv = np_lsq_grads(v, s, qn, qp)
    np.testing.assert_array_equal(gx.numpy(), (up * dv).astype(np.float32))
    np.testing.assert_allclose(float(gs), g * float((up * ds).sum()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bits,signed", RANGES)
def test_lsq_gradients_equal_torch_learnable_fake_quantize(bits, signed):
    """Peer: torch's LSQ op; it differs (see module doc) only for Q_P <= v/s < Q_P + 1/2 and
    -Q_N - 1/2 < v/s <= -Q_N, which are excluded here and covered by the closed-form test."""
    qn, qp = lsq_range(bits, signed)
    gen = torch.Generator().manual_seed(100 + bits)
    s = torch.tensor([0.37])
    x = torch.randn(3000, generator=gen) * s * (qn + qp)
    r = x / s
    band = ((r >= qp - 1e-4) & (r < qp + 0.5 + 1e-4)) | ((r <= -qn + 1e-4) & (r > -qn - 0.5 - 1e-4))
    x = x[~band]
    up = torch.randn(x.shape, generator=gen)
    g = lsq_grad_scale(x.numel(), qp)
    gx, gs = _lsq_grads(x, s[0], qn, qp, g, up)
    xp, sp = x.clone().requires_grad_(True), s.clone().requires_grad_(True)
    y = torch._fake_quantize_learnable_per_tensor_affine(xp, sp, torch.zeros(1), -qn, qp, g)
    (y * up).sum().backward()
    assert torch.equal(gx, xp.grad)
    torch.testing.assert_close(gs, sp.grad[0], rtol=1e-4, atol=1e-6)


def test_lsq_per_channel_gradient_is_per_row_gradient():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 10, generator=gen)
    step = torch.rand(4, generator=gen) * 0.3 + 0.1
    up = torch.randn(4, 10, generator=gen)
    gx, gs = _lsq_grads(x, step, 4, 3, 0.5, up, axis=0)
    for c in range(4):
        rx, rs = _lsq_grads(x[c], step[c], 4, 3, 0.5, up[c])
        assert torch.equal(gx[c], rx)
        torch.testing.assert_close(gs[c], rs)


def test_lsq_edge_cases():
    assert lsq(torch.empty(0, 3), torch.tensor(1.0), 2, 1).shape == (0, 3)
    with pytest.raises(ValueError):
        lsq(torch.ones(3), torch.tensor(1.0), 0, 0)
    out = lsq(torch.tensor([1.0, -1.0]), torch.tensor(-0.5), 2, 1)  # s <= 0 -> eps
    assert torch.isfinite(out).all() and out.abs().max() < 1e-6


def test_lsq_init_and_grad_scale():
    w = torch.tensor([[1.0, -3.0], [0.0, 0.0]])
    assert float(lsq_init_step(w, 4)) == pytest.approx(2 * 1.0 / 2)
    torch.testing.assert_close(lsq_init_step(w, 4, axis=0), torch.tensor([2.0, 1.0]))
    assert lsq_grad_scale(50, 2) == pytest.approx(1 / math.sqrt(100))


@st.composite
def lsq_case(draw):
    bits, signed = draw(st.sampled_from(RANGES))
    s = draw(st.floats(0.01, 2.0))
    seed = draw(st.integers(0, 2**16))
    return bits, signed, s, seed


@SETTINGS
@given(lsq_case())
def test_lsq_properties(case):
    bits, signed, s, seed = case
    qn, qp = lsq_range(bits, signed)
    x = torch.randn(500, generator=torch.Generator().manual_seed(seed)) * s * (qn + qp)
    st_ = torch.tensor(s)
    y = lsq(x, st_, qn, qp)
    k = torch.round(y / st_)
    assert torch.unique(y).numel() <= 2**bits
    assert torch.equal(k * st_, y) and k.min() >= -qn and k.max() <= qp  # y in {k s}
    assert torch.equal(lsq(y, st_, qn, qp), y)  # idempotent
    xs, order = torch.sort(x)
    assert (torch.diff(y[order]) >= 0).all()  # monotone
    inside = (xs > -qn * s) & (xs < qp * s)
    assert ((xs - y[order]).abs()[inside] <= s / 2 * (1 + 1e-5)).all()


# ---------------------------------------------------------------- PACT
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("j", [0, 2])
def test_pact_matches_numpy_reference(bits, j):
    n = 2**bits - 1
    alpha = n * 2.0**-j  # step 2^-j: levels and half-steps are exact in float
    step = 2.0**-j
    x = np.concatenate([np.arange(-2, n + 3, 0.5) * step, [0.0, alpha, alpha + 1e-3, 100.0]])
    out = pact(torch.tensor(x, dtype=torch.float32), torch.tensor(alpha), bits)
    np.testing.assert_array_equal(out.numpy(), np_pact(x, alpha, bits).astype(np.float32))


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_pact_matches_numpy_reference_generic_alpha(bits):
    x = np.random.default_rng(bits).normal(0, 3, 1000)
    out = pact(torch.tensor(x, dtype=torch.float32), torch.tensor(2.7), bits)
    np.testing.assert_allclose(out.numpy(), np_pact(x, 2.7, bits), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bits", [1, 3])
def test_pact_gradients_match_eq3(bits):
    alpha = 1.5
    x = torch.tensor([-1.0, -1e-6, 0.0, 0.2, 0.75, 1.4999, 1.5, 1.6, 10.0], requires_grad=True)
    a = torch.tensor(alpha, requires_grad=True)
    up = torch.arange(1.0, 10.0)
    (pact(x, a, bits) * up).sum().backward()
    xn = x.detach().numpy()
    dx = ((xn >= 0) & (xn < alpha)).astype(np.float32)
    da = (xn >= alpha).astype(np.float32)
    np.testing.assert_array_equal(x.grad.numpy(), up.numpy() * dx)
    assert float(a.grad) == pytest.approx(float((up.numpy() * da).sum()))


def test_pact_edge_cases():
    assert pact(torch.empty(0), torch.tensor(1.0), 2).shape == (0,)
    with pytest.raises(BitsError):
        pact(torch.ones(3), torch.tensor(1.0), 0)
    out = pact(torch.tensor([1.0, -1.0]), torch.tensor(-2.0), 2)  # alpha <= 0 -> eps
    assert torch.isfinite(out).all() and out.abs().max() < 1e-6


@SETTINGS
@given(st.integers(1, 8), st.floats(0.1, 20.0), st.integers(0, 2**16))
def test_pact_properties(bits, alpha, seed):
    x = torch.randn(500, generator=torch.Generator().manual_seed(seed)) * alpha
    a = torch.tensor(alpha)
    y = pact(x, a, bits)
    step = a / (2**bits - 1)
    assert torch.unique(y).numel() <= 2**bits
    assert y.min() >= 0 and y.max() <= a * (1 + 1e-6)
    assert torch.allclose(pact(y, a, bits), y, rtol=0, atol=1e-6 * alpha)  # idempotent
    xs, order = torch.sort(x)
    assert (torch.diff(y[order]) >= 0).all()
    inside = (xs >= 0) & (xs <= a)
    # half a step, plus the float32 rounding of x / step and of k * step (a few ulp of alpha:
    # seed 17269 at 8 bits is 1.5e-5 relative above step / 2)
    tol = step / 2 + 4 * torch.finfo(torch.float32).eps * a
    assert ((xs - y[order]).abs()[inside] <= tol).all()


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("bits,signed", RANGES)
def test_lsq_encode_decode_is_the_forward(bits, signed, fused):
    """decode(lsq_encode(x)) == lsq(x) bit for bit: the fused float32 kernel (fused) and the
    torch path (float64, and per channel), on exact levels, half-steps and the clip edges."""
    qn, qp = lsq_range(bits, signed)
    g = torch.Generator().manual_seed(bits)
    dtype = torch.float32 if fused else torch.float64
    s = torch.tensor(0.037, dtype=dtype)
    k = torch.arange(-qn - 2, qp + 3, dtype=dtype)
    x = torch.cat([torch.randn(3000, generator=g, dtype=dtype) * qp * 0.037, k * s,
                   (k + 0.5) * s, torch.tensor([0.0, -0.0], dtype=dtype)])
    codes, grid = lsq_encode(x, s, qn, qp)
    assert torch.equal(grid.decode(codes), lsq(x, s, qn, qp))
    w = x[:3000].reshape(6, 500)
    step = torch.rand(6, generator=g, dtype=dtype) * 0.05 + 0.01
    codes, grid = lsq_encode(w, step, qn, qp, axis=0)
    assert grid.granularity == "channel"
    assert torch.equal(grid.decode(codes), lsq(w, step, qn, qp, axis=0))


@pytest.mark.parametrize("alpha", [0.7, 3.0, 0.0, -1.0])
@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
def test_pact_encode_decode_is_the_forward(bits, alpha):
    g = torch.Generator().manual_seed(bits)
    n = 2**bits - 1
    a = torch.tensor(alpha)
    x = torch.cat([torch.randn(2000, generator=g) * 2,
                   (torch.arange(n + 1) + 0.5) * (max(alpha, 1e-3) / n),
                   torch.tensor([0.0, -0.0, alpha, alpha + 1])])
    codes, grid = pact_encode(x, a, bits)
    assert grid.levels == LevelRange(0, n) and int(codes.max()) <= n
    assert torch.equal(grid.decode(codes), pact(x, a, bits))
