"""Binary quantizers against numpy references written from the papers (lowbit.functional.binary)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lowbit.errors import BitsError, EmptyTensorError, NonFiniteError
from lowbit.functional.binary import (
    abc_activation,
    abc_activation_encode,
    abc_activation_init,
    abc_encode,
    abc_weight,
    binaryconnect,
    binaryconnect_encode,
    bnn_sign,
    clip_,
    sign,
    sign_encode,
    xnor_activation,
    xnor_encode,
    xnor_scale,
    xnor_weight,
)
from lowbit.functional.codebook import BitPlanes, IntegerGrid, plane_table

EDGE = [-2.0, -1.0, -0.5, -1e-7, -0.0, 0.0, 1e-7, 0.5, 1.0, 1.0000001, 2.0, 1e8, -1e8]
floats = st.floats(-3, 3, allow_nan=False, width=32)
SETTINGS = settings(max_examples=40, deadline=None)


def np_sign(x):
    return np.where(x >= 0, 1.0, -1.0).astype(np.float32)  # survey eq. (3)


def test_sign_forward_reference_and_zero():
    x = torch.tensor(EDGE)
    for f in (sign, bnn_sign, binaryconnect):
        y = f(x)
        assert y.dtype == x.dtype
        np.testing.assert_array_equal(y.numpy(), np_sign(np.array(EDGE, dtype=np.float32)))
    assert sign(torch.tensor(-0.0)).item() == 1.0


def test_sign_propagates_nan():
    assert torch.isnan(sign(torch.tensor([float("nan")]))).all()


def test_sign_gradients_closed_form():
    x = torch.tensor(EDGE, requires_grad=True)
    g = torch.linspace(-1, 1, len(EDGE))
    sign(x).backward(g)
    np.testing.assert_array_equal(x.grad.numpy(), g.numpy())  # identity STE
    x.grad = None
    bnn_sign(x).backward(g)
    inside = np.abs(np.array(EDGE, dtype=np.float32)) <= 1  # survey eq. (4)-(5)
    np.testing.assert_array_equal(x.grad.numpy(), g.numpy() * inside)


def test_binaryconnect_stochastic_extremes_and_gradient():
    gen = torch.Generator().manual_seed(0)
    x = torch.tensor([-5.0, -1.0, 1.0, 5.0] * 100, requires_grad=True)
    y = binaryconnect(x, stochastic=True, generator=gen)
    np.testing.assert_array_equal(y.detach().numpy(), np_sign(x.detach().numpy()))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_binaryconnect_stochastic_unbiased_in_range():
    gen = torch.Generator().manual_seed(1234)
    xs = torch.tensor([-0.9, -0.5, -0.1, 0.0, 0.3, 0.75])
    n = 20000
    draws = binaryconnect(xs.repeat(n, 1), stochastic=True, generator=gen)
    assert set(draws.unique().tolist()) <= {-1.0, 1.0}
    mean = draws.mean(dim=0)
    p = (xs + 1) / 2  # hard sigmoid
    se = torch.sqrt(4 * p * (1 - p) / n)
    assert (torch.abs(mean - xs) <= 4 * se + 1e-6).all(), (mean, xs)


def test_binaryconnect_generator_reproducible():
    x = torch.randn(1000)
    a = binaryconnect(x, True, torch.Generator().manual_seed(7))
    b = binaryconnect(x, True, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_clip_in_place():
    w = torch.tensor([-3.0, -1.0, 0.2, 1.0, 4.0])
    out = clip_(w)
    assert out is w
    assert w.tolist() == pytest.approx([-1.0, -1.0, 0.2, 1.0, 1.0])


def np_xnor(w):
    flat = w.reshape(w.shape[0], -1)
    alpha = np.abs(flat).mean(axis=1)  # survey eq. (13): ||W||_1 / n
    return (alpha[:, None] * np_sign(flat)).reshape(w.shape), alpha


def test_xnor_weight_reference():
    w = np.array([[0.0, -0.5, 1.5, -2.0], [0.25, 0.25, -0.25, -0.0], [0, 0, 0, 0]], np.float32)
    got = xnor_weight(torch.from_numpy(w)).numpy()
    want, _ = np_xnor(w)
    np.testing.assert_array_equal(got, want)  # all-zero row: alpha = 0, output 0
    conv = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(xnor_weight(torch.from_numpy(conv)).numpy(), np_xnor(conv)[0],
                               rtol=1e-6)


def test_xnor_weight_gradient_closed_form():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 5)).astype(np.float32) * 1.2
    w[0, 0] = 0.0
    g = rng.normal(size=(3, 5)).astype(np.float32)
    wt = torch.from_numpy(w).requires_grad_()
    xnor_weight(wt).backward(torch.from_numpy(g))
    s, n = np_sign(w), w.shape[1]
    alpha = np.abs(w).mean(axis=1, keepdims=True)
    want = alpha * g * (np.abs(w) <= 1) + s * (g * s).sum(axis=1, keepdims=True) / n
    np.testing.assert_allclose(wt.grad.numpy(), want, rtol=1e-5, atol=1e-6)


def test_xnor_weight_bad_input():
    with pytest.raises(EmptyTensorError):
        xnor_weight(torch.empty(0, 3))
    with pytest.raises(NonFiniteError):
        xnor_weight(torch.tensor([[1.0, float("inf")]]))


def test_xnor_scale_reference_and_activation():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 5, 5)).astype(np.float32)
    a = np.abs(x).mean(axis=1)  # A: mean over channels of |I|
    ap = np.pad(a, ((0, 0), (1, 1), (1, 1)))
    k = np.zeros((2, 5, 5), np.float32)
    for i in range(5):
        for j in range(5):
            k[:, i, j] = ap[:, i:i + 3, j:j + 3].mean(axis=(1, 2))  # K = A * (1/9 box)
    got = xnor_scale(torch.from_numpy(x), 3, 1, 1)[:, 0].numpy()
    np.testing.assert_allclose(got, k, rtol=1e-5)
    y = xnor_activation(torch.from_numpy(x), 3, 1, 1).numpy()
    np.testing.assert_allclose(y, np_sign(x) * k[:, None], rtol=1e-5)
    strided = xnor_scale(torch.from_numpy(x), 3, 2, 0)
    assert strided.shape == (2, 1, 2, 2)
    with pytest.raises(ValueError, match="stride 1"):
        xnor_activation(torch.from_numpy(x), 3, 2, 0)
    vec = torch.tensor([[1.0, -3.0], [0.0, 0.5]])
    assert xnor_activation(vec, 1).tolist() == [[2.0, -2.0], [0.25, 0.25]]


def test_xnor_activation_plain_is_bnn_sign():
    x = torch.tensor(EDGE, requires_grad=True)
    xnor_activation(x).backward(torch.ones(len(EDGE)))
    assert torch.equal(x.grad, (x.detach().abs() <= 1).float())


def np_abc(w, m):
    """ABC-Net from its definition: bases by shifted signs, alphas by numpy least squares."""
    u = [0.0] if m == 1 else [-1 + i * 2 / (m - 1) for i in range(m)]
    flat = w.reshape(-1).astype(np.float64)
    b = np.stack([np_sign(flat - flat.mean() + ui * flat.std()) for ui in u], axis=1)
    alpha = np.linalg.lstsq(b, flat, rcond=None)[0]
    return (b @ alpha).reshape(w.shape), alpha


@pytest.mark.parametrize("m", [1, 2, 3, 5])
def test_abc_reference(m):
    w = np.random.default_rng(m).normal(size=(6, 20)).astype(np.float32)
    want, alpha = np_abc(w, m)
    _, planes = abc_encode(torch.from_numpy(w), m)
    got_alpha = planes.alphas
    np.testing.assert_allclose(got_alpha.numpy(), alpha, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(abc_weight(torch.from_numpy(w), m).numpy(), want, atol=1e-5)


def test_abc_m1_is_scaled_sign_and_constant_weight():
    w = torch.tensor([1.0, 2.0, 3.0, 10.0])
    y = abc_weight(w, 1)  # sign(w - mean) with the l2-optimal alpha = mean|w - ...|
    assert len(y.unique()) == 2
    c = abc_weight(torch.full((4,), 0.5), 3)  # std 0: every base equal, pinv still defined
    assert torch.allclose(c, torch.full((4,), 0.5))


def test_abc_gradient_is_identity():
    w = torch.randn(4, 4, requires_grad=True)
    g = torch.randn(4, 4)
    abc_weight(w, 3).backward(g)
    assert torch.equal(w.grad, g)


@SETTINGS
@given(arrays(np.float32, st.integers(1, 40), elements=floats), st.integers(1, 5))
def test_abc_levels_property(w, m):
    codes, planes = abc_encode(torch.from_numpy(w), m)
    y = abc_weight(torch.from_numpy(w), m)
    assert torch.equal(y, plane_table(planes.alphas)[codes])
    assert len(y.unique()) <= min(2**m, m + 1)
    order = np.argsort(w, kind="stable")
    # nested thresholds: a larger weight has every base at least as positive
    bits = (codes.numpy()[:, None] >> np.arange(m)) & 1
    assert np.all(np.diff(bits[order], axis=0) >= 0)


@SETTINGS
@given(arrays(np.float32, st.integers(1, 60), elements=floats))
def test_sign_properties(x):
    t = torch.from_numpy(x)
    y = sign(t)
    assert set(y.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(sign(y), y)  # idempotent
    order = np.argsort(x)
    assert np.all(np.diff(y.numpy()[order]) >= 0)  # monotone


@SETTINGS
@given(arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 8)), elements=floats))
def test_xnor_properties(w):
    y = xnor_weight(torch.from_numpy(w)).numpy()
    alpha = np.abs(w).mean(axis=1, keepdims=True)
    assert np.all(np.abs(y) == np.abs(y)[:, :1])  # every value of a row is +-alpha_c
    np.testing.assert_allclose(np.abs(y)[:, :1], alpha, rtol=1e-5)
    assert np.all((y >= 0) == (w >= 0) | (alpha == 0))
    assert all(len(np.unique(r)) <= 2 for r in y)


# ---- ABC-Net activations (sec. 3.3): A = sum_n beta_n H_{v_n}(R), H_v = 2 1{clip(R+v,0,1)>=.5}-1

def np_abc_act(x, v, beta):
    """Reference written from the equations, with numpy and an explicit loop over the bases."""
    out = np.zeros_like(x)
    for vn, bn in zip(v, beta, strict=True):
        h = np.clip(x + vn, 0.0, 1.0)
        out += bn * np.where(h >= 0.5, 1.0, -1.0)
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_abc_activation_reference_and_init(n):
    v, beta = abc_activation_init(n)
    np.testing.assert_allclose(v.numpy(), [0.5 - (k - 0.5) / n for k in range(1, n + 1)])
    np.testing.assert_allclose(beta.numpy(), np.full(n, 1.0 / n))
    thresholds = 0.5 - v.numpy()  # H_v flips at R = 1/2 - v
    x = np.concatenate([np.linspace(-1.5, 2.5, 97), thresholds, thresholds - 1e-4,
                        [0.0, -0.0, 1.0]]).astype(np.float32)
    got = abc_activation(torch.from_numpy(x), v, beta).numpy()
    np.testing.assert_allclose(got, np_abc_act(x, v.numpy(), beta.numpy()), atol=1e-6)
    assert len(np.unique(got.round(5))) == n + 1  # a staircase of N + 1 levels in [-1, 1]
    assert got.min() == pytest.approx(-1.0) and got.max() == pytest.approx(1.0)
    assert np.all(np.diff(got[:97]) >= 0)  # monotone in R for ordered shifts


def test_abc_activation_gradients_closed_form():
    x = torch.tensor([-0.6, -0.2, 0.0, 0.3, 0.5, 0.9, 1.2], requires_grad=True)
    v = torch.tensor([0.25, -0.25], requires_grad=True)
    beta = torch.tensor([0.7, 0.4], requires_grad=True)
    y = abc_activation(x, v, beta)
    g = torch.linspace(0.5, 2.0, len(x))
    y.backward(g)
    z = x.detach()[None, :] + v.detach()[:, None]
    inside = ((z >= 0) & (z <= 1)).float()  # d(2 clip(z, 0, 1) - 1)/dz = 2 1{0 <= z <= 1}
    h = torch.where(z >= 0.5, 1.0, -1.0)
    torch.testing.assert_close(x.grad, (2 * beta.detach()[:, None] * inside * g).sum(0))
    torch.testing.assert_close(v.grad, (2 * beta.detach()[:, None] * inside * g).sum(1))
    torch.testing.assert_close(beta.grad, (h * g).sum(1))


def test_abc_activation_module_learns_and_rejects_bad_shapes():
    from lowbit.quantizers.binary import ABCAct

    q = ABCAct(3)
    assert {n for n, _ in q.named_parameters()} == {"shifts", "betas"} and q.REPLACES_ACTIVATION
    x = torch.randn(4, 3, 5, 5)
    assert q(x).shape == x.shape
    with pytest.raises(ValueError, match="1-d"):
        abc_activation(x, torch.zeros(2), torch.zeros(3))
    with pytest.raises(BitsError):
        ABCAct(6)


def test_forward_is_decode_of_encode():
    """Issue 8: each method's forward is record.decode(codes) of its encoder, bit for bit."""
    g = torch.Generator().manual_seed(5)
    x = torch.cat([torch.tensor(EDGE), torch.randn(200, generator=g)])
    w = torch.randn(6, 3, 3, 3, generator=g)
    w[1] = 0.0
    codes, grid = sign_encode(x)
    assert isinstance(grid, IntegerGrid) and grid.bits == 1 and grid.num_codes == 2
    assert grid.integers(torch.tensor([0, 1])).tolist() == [-1, 1]
    for f in (sign, bnn_sign, binaryconnect, xnor_activation):
        assert torch.equal(f(x), grid.decode(codes))
    codes, grid = xnor_encode(w)
    assert grid.granularity == "channel" and torch.equal(xnor_weight(w), grid.decode(codes))
    a = binaryconnect(w, True, torch.Generator().manual_seed(3))
    codes, grid = binaryconnect_encode(w, True, torch.Generator().manual_seed(3))
    assert torch.equal(a, grid.decode(codes))
    for m in (1, 2, 3, 5):
        codes, planes = abc_encode(w, m)
        assert isinstance(planes, BitPlanes) and planes.bits == m
        assert torch.equal(abc_weight(w, m), planes.decode(codes))
        v, beta = torch.randn(m, generator=g) * 0.5, torch.rand(m, generator=g)
        codes, planes = abc_activation_encode(x, v, beta)
        assert torch.equal(abc_activation(x, v, beta), planes.decode(codes))
    # XNOR's K is a data-dependent factor outside the grid: output = decode(codes) * K exactly
    x4 = torch.randn(2, 3, 5, 5, generator=g)
    codes, grid = sign_encode(x4)
    assert torch.equal(xnor_activation(x4, 3, 1, 1), grid.decode(codes) * xnor_scale(x4, 3, 1, 1))
