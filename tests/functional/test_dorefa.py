"""DoReFa-Net weights, activations and gradients vs numpy references (functional.dorefa)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lowbit.errors import BitsError, EmptyTensorError, NonFiniteError
from lowbit.functional.dorefa import (
    dorefa_activation,
    dorefa_activation_encode,
    dorefa_gradient,
    dorefa_weight,
    dorefa_weight_encode,
    quantize_gradient,
)

SETTINGS = settings(max_examples=40, deadline=None)
f32 = np.float32
weights = arrays(np.float32, st.integers(1, 40), elements=st.floats(-4, 4, width=32))


def np_quantize_k(r, k):  # survey eq. 32, in float32 like torch
    n = f32(2**k - 1)
    return (np.round(r.astype(f32) * n) / n).astype(f32)


def np_dorefa_weight(w, k):
    w = w.astype(f32)
    if k == 1:  # DoReFa eq. 7: E(|w|) sign(w), sign(0) = +1
        e = np.abs(w).mean(dtype=f32)
        return np.where(w >= 0, e, -e).astype(f32)
    t = np.tanh(w).astype(f32)
    m = np.abs(t).max()
    m = m if m > 0 else f32(1)
    return (2 * np_quantize_k(t / (2 * m) + f32(0.5), k) - 1).astype(f32)  # eq. 9


@pytest.mark.parametrize("k", [1, 2, 3, 4, 8])
def test_weight_matches_reference(k):
    w = np.array([0.0, -0.0, 0.1, -0.1, 0.5, -2.0, 3.0, 1e-7, -1e-7], dtype=f32)
    out = dorefa_weight(torch.from_numpy(w), k).numpy()
    np.testing.assert_allclose(out, np_dorefa_weight(w, k), rtol=0, atol=1e-6)
    assert out[0] >= 0  # sign(0) = +1 / zero maps to the upper half


def test_weight_half_steps_round_half_even():
    # with max|tanh| = m, tanh(w)/(2m) + 1/2 = (j + 1/2)/n exactly where tanh(w) = m (2j+1-n)/n
    k, n = 2, 3
    m = float(np.tanh(f32(2.0)))
    t = np.array([m * (2 * j + 1 - n) / n for j in range(n)] + [m], dtype=np.float64)
    w = np.arctanh(t).astype(f32)
    out = dorefa_weight(torch.from_numpy(w), k).numpy()
    np.testing.assert_allclose(out, np_dorefa_weight(w, k), atol=1e-6)


def test_weight_gradient_closed_form():
    torch.manual_seed(0)
    w = torch.randn(6, 7, dtype=torch.float64, requires_grad=True)
    g = torch.randn(6, 7, dtype=torch.float64)
    dorefa_weight(w, 3).backward(g)
    t = torch.tanh(w.detach())
    m = t.abs().max()
    dt = g / m  # d(2 quantize(t/(2m)+1/2) - 1)/dt with STE, m constant
    i = t.abs().argmax()
    dt.view(-1)[i] += torch.sign(t.view(-1)[i]) * (-(g * t).sum() / m**2)  # through max|t|
    torch.testing.assert_close(w.grad, dt * (1 - t**2))


def test_weight_one_bit_gradient_is_identity():
    w = torch.randn(5, 3, requires_grad=True)
    g = torch.randn(5, 3)
    dorefa_weight(w, 1).backward(g)
    torch.testing.assert_close(w.grad, g)


@SETTINGS
@given(weights, st.integers(1, 6))
def test_weight_levels_codes_and_monotone(w, k):
    x = torch.from_numpy(w)
    out = dorefa_weight(x, k)
    codes, grid = dorefa_weight_encode(x, k)
    assert grid.num_codes == 2**k and out.unique().numel() <= 2**k
    assert torch.equal(grid.decode(codes), out)  # decode == forward, bit for bit
    order = torch.argsort(x)
    assert bool((out[order].diff() >= 0).all())


def test_weight_bad_input():
    with pytest.raises(BitsError):
        dorefa_weight(torch.ones(3), 0)
    with pytest.raises(BitsError):
        dorefa_weight(torch.ones(3), 17)
    with pytest.raises(NonFiniteError):
        dorefa_weight(torch.tensor([1.0, float("nan")]), 2)
    with pytest.raises(EmptyTensorError):
        dorefa_weight(torch.ones(0), 2)


def test_all_zero_weight():
    assert torch.equal(dorefa_weight(torch.zeros(4), 1), torch.zeros(4))
    out = dorefa_weight(torch.zeros(4), 2)  # t = 0 -> 1/2 -> round(1.5)/3 = 2/3 -> 1/3
    assert torch.allclose(out, torch.full((4,), 1 / 3))


@pytest.mark.parametrize("k", [1, 2, 4])
def test_activation_reference_and_gradient(k):
    n = 2**k - 1
    half = [(j + 0.5) / n for j in range(n)]
    x = np.array([-1.0, -0.0, 0.0, 0.3, 1.0, 1.5, *half], dtype=f32)
    xt = torch.from_numpy(x).requires_grad_()
    out = dorefa_activation(xt, k)
    # the record's arithmetic j * float32(1/n), within half an ulp of 1 of eq. 5's j / n
    n32 = f32(n)
    ref = (np.round(np.clip(x, 0, 1) * n32) * f32(1.0 / n)).astype(f32)
    np.testing.assert_array_equal(out.detach().numpy(), ref)
    np.testing.assert_allclose(out.detach().numpy(), np_quantize_k(np.clip(x, 0, 1), k),
                               rtol=0, atol=np.finfo(f32).eps / 2)
    out.sum().backward()
    np.testing.assert_array_equal(xt.grad.numpy(), ((x >= 0) & (x <= 1)).astype(f32))


@SETTINGS
@given(arrays(np.float32, st.integers(1, 30), elements=st.floats(-2, 2, width=32)),
       st.integers(1, 8))
def test_activation_properties(x, k):
    out = dorefa_activation(torch.from_numpy(x), k)
    n = 2**k - 1
    assert out.unique().numel() <= 2**k
    assert bool(((out * n - torch.round(out * n)).abs() < 1e-4).all())  # on the grid j/n
    assert torch.equal(dorefa_activation(out, k), out)  # idempotent
    inside = (x >= 0) & (x <= 1)
    assert bool(((out - torch.from_numpy(x)).abs()[torch.from_numpy(inside)] <= 0.5 / n + 1e-6)
                .all())


def test_gradient_levels_and_per_example_max():
    g = torch.tensor([[0.5, -1.0, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0], [3.0, 1.0, -2.0, 0.1]])
    q = dorefa_gradient(g, 3, torch.Generator().manual_seed(0))
    m = g.abs().amax(dim=1, keepdim=True)
    j = (q / (2 * m) + 0.5) * 7  # must be integers 0..7 (rows with m > 0)
    ok = torch.isclose(j, torch.round(j), atol=1e-5) & (j > -1e-5) & (j < 7 + 1e-5)
    assert bool(ok[[0, 2]].all())
    assert torch.equal(q[1], torch.zeros(4))  # an example with zero gradient stays zero
    assert bool((q.abs() <= m + 1e-6).all())
    whole = dorefa_gradient(g, 3, torch.Generator().manual_seed(0), per_example=False)
    assert bool((whole.abs() <= 3.0 + 1e-6).all())


def test_gradient_reference_with_same_noise():
    g = torch.randn(4, 9, generator=torch.Generator().manual_seed(1))
    k, n = 4, 15
    q = dorefa_gradient(g, k, torch.Generator().manual_seed(7)).numpy()
    sigma = (torch.rand(g.shape, generator=torch.Generator().manual_seed(7)) - 0.5).numpy()
    gn = g.numpy()
    m = np.abs(gn).max(axis=1, keepdims=True)
    ref = 2 * m * (np_quantize_k(gn / (2 * m) + 0.5 + sigma / n, k) - 0.5)  # survey eq. 31
    np.testing.assert_allclose(q, ref, atol=1e-6)


@pytest.mark.parametrize("k", [2, 6])
def test_gradient_is_unbiased(k):
    vals = torch.tensor([1.0, -0.37, 0.123, 0.0, -0.9, 0.55, 0.01, -0.01])
    draws = 20000
    g = vals.expand(draws, -1).contiguous().reshape(draws, 1, -1)
    q = dorefa_gradient(g, k, torch.Generator().manual_seed(3)).reshape(draws, -1).double()
    mean, se = q.mean(0), q.std(0) / draws**0.5
    assert bool(((mean - vals.double()).abs() <= 4 * se + 1e-7).all()), (mean, vals)


def test_quantize_gradient_is_identity_forward_and_quantizes_backward():
    x = torch.randn(3, 5, requires_grad=True)
    y = quantize_gradient(x, 2, torch.Generator().manual_seed(0))
    assert torch.equal(y, x)
    g = torch.randn(3, 5)
    y.backward(g)
    expect = dorefa_gradient(g, 2, torch.Generator().manual_seed(0))
    assert torch.equal(x.grad, expect)
    with pytest.raises(BitsError):
        quantize_gradient(x, 1)
    with pytest.raises(BitsError):
        dorefa_gradient(g, 17)
    assert dorefa_gradient(torch.zeros(0, 3), 4).shape == (0, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", range(1, 17))
def test_dorefa_encode_decode_is_the_forward(k, dtype):
    """decode(encode(.)) == forward bit for bit: weights on the odd-integer grid (2j - n) / n
    (k >= 2) or +-E|w| (k = 1), activations j / n on LevelRange(0, n); inputs at level
    half-steps, 0, -0.0 and the clip edges. The forward is within 1 ulp of 1 of the old
    2 (j / n) - 1 and j / n (the product by float(1/n) instead of the division)."""
    gen = torch.Generator().manual_seed(k)
    n = 2**k - 1
    w = torch.cat([torch.randn(400, generator=gen), torch.tensor([0.0, -0.0, 3.0, -3.0])])
    w = w.to(dtype)
    codes, grid = dorefa_weight_encode(w, k)
    out = dorefa_weight(w, k)
    assert grid.bits == k and int(codes.max()) < 2**k and torch.equal(grid.decode(codes), out)
    if k > 1:
        assert torch.equal(grid.integers(codes) % 2, torch.ones_like(codes))  # odd integers
        old = 2 * (codes.to(dtype) / n) - 1
        assert float((out - old).abs().max()) <= torch.finfo(dtype).eps
    x = torch.cat([torch.rand(400, generator=gen) * 1.4 - 0.2,
                   (torch.arange(n + 1) + 0.5) / n, torch.tensor([0.0, -0.0, 1.0])]).to(dtype)
    codes, grid = dorefa_activation_encode(x, k)
    out = dorefa_activation(x, k)
    assert torch.equal(grid.decode(codes), out)
    assert float((out - codes.to(dtype) / n).abs().max()) <= torch.finfo(dtype).eps / 2
