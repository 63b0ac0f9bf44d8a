"""Fixed-point, stochastic, Polino and WAGE rounding against numpy references
(lowbit.functional.stochastic)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lowbit.errors import BitsError
from lowbit.functional.codebook import LevelRange, decode_lookup
from lowbit.functional.stochastic import (
    fixed_point_encode,
    fixed_point_round,
    polino_uniform,
    pow2_step,
    stochastic_encode,
    stochastic_round,
    stochastic_uniform,
    wu_encode,
    wu_round,
)

SETTINGS = settings(max_examples=40, deadline=None)
f32 = np.float32
values = arrays(np.float32, st.integers(1, 30), elements=st.floats(-3, 3, width=32))


def np_eq6(x, eps):
    """Survey eq. 6: floor_eps(x) if x <= floor_eps(x) + eps/2 else floor_eps(x) + eps."""
    fl = np.floor(x / eps) * eps
    return np.where(x <= fl + eps / 2, fl, fl + eps)


def test_fixed_point_round_eq6_ties_down():
    eps = 0.25
    x = np.array([0.0, 0.125, -0.125, 0.126, 0.375, -0.375, 1.0, 0.1, -2.3], dtype=f32)
    out = fixed_point_round(torch.from_numpy(x), eps).numpy()
    np.testing.assert_array_equal(out, np_eq6(x.astype(np.float64), eps).astype(f32))
    sat = fixed_point_round(torch.tensor([5.0, -5.0, 0.3]), eps, -4, 3)  # Gupta's saturation
    assert sat.tolist() == [0.75, -1.0, 0.25]
    codes, grid = fixed_point_encode(torch.tensor([5.0, -5.0, 0.3]), eps, -4, 3)
    assert grid.integers(codes).tolist() == [3, -4, 1] and codes.tolist() == [7, 0, 5]
    assert isinstance(grid.levels, LevelRange) and grid.bits == 3 and float(grid.scale) == eps
    assert grid.decode(codes).tolist() == sat.tolist()


def test_rounding_gradients_are_identity():
    x = torch.tensor([0.3, -1.7, 9.0, 0.0], requires_grad=True)
    g = torch.tensor([1.0, 2.0, 3.0, 4.0])
    for f in (lambda v: fixed_point_round(v, 0.5, -2, 1), lambda v: stochastic_round(v, 0.5),
              lambda v: polino_uniform(v, 2), lambda v: stochastic_uniform(v, 2),
              lambda v: wu_round(v, 3)):
        x.grad = None
        f(x).backward(g)
        assert torch.equal(x.grad, g)


def test_stochastic_round_reference_with_same_noise():
    x = torch.randn(50, generator=torch.Generator().manual_seed(0))
    out = stochastic_round(x, 0.125, torch.Generator().manual_seed(5)).numpy()
    u = torch.rand(50, generator=torch.Generator().manual_seed(5)).numpy()
    xn = x.numpy()
    fl = np.floor(xn / 0.125) * 0.125
    up = u >= 1 - (xn - fl) / 0.125  # P(up) = (x - floor)/eps, Gupta eq. (3)
    np.testing.assert_allclose(out, np.where(up, fl + 0.125, fl), atol=1e-6)


@pytest.mark.parametrize("step", [0.25, 0.1, 2.0**-6])
def test_stochastic_round_is_unbiased(step):
    vals = torch.tensor([0.0, 0.3, -0.77, 0.125, 1.01, -0.049, 0.2])
    draws = 20000
    q = stochastic_round(vals.expand(draws, -1), step, torch.Generator().manual_seed(11))
    q = q.double()
    grid = torch.round(q / step)
    assert torch.allclose(q, grid * step, atol=1e-9)
    assert bool(((q - vals.double()).abs() <= step + 1e-6).all())  # floor or ceil only
    mean, se = q.mean(0), q.std(0) / draws**0.5
    assert bool(((mean - vals.double()).abs() <= 4 * se + 1e-7).all()), (mean, vals)


@SETTINGS
@given(values, st.sampled_from([0.5, 0.25, 1 / 3, 2.0**-5]), st.integers(0, 2**31 - 1))
def test_grid_properties(x, step, seed):
    xt = torch.from_numpy(x)
    d = fixed_point_round(xt, step)
    s = stochastic_round(xt, step, torch.Generator().manual_seed(seed))
    assert bool(((d - xt).abs() <= step / 2 + 1e-5).all())
    assert bool(((s - xt).abs() < step + 1e-5).all())
    order = torch.argsort(xt)
    assert bool((d[order].diff() >= 0).all())
    if step in (0.5, 0.25, 2.0**-5):  # exact grid: idempotent
        assert torch.equal(fixed_point_round(d, step), d)
        assert torch.equal(stochastic_round(d, step, torch.Generator().manual_seed(seed)), d)


def np_polino(v, b):
    """Survey eq. 8-9: sc(v) = (v - min)/(max - min), Q = floor(x s)/s + xi/s, xi = [frac > 1/2]."""
    lo, hi = v.min(), v.max()
    s = 2**b - 1
    x = (v - lo) / (hi - lo) * s
    k = np.floor(x) + (x - np.floor(x) > 0.5)
    return lo + (hi - lo) * (k / s)


@SETTINGS
@given(values, st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_polino_reference_and_levels(x, bits, seed):
    xt = torch.from_numpy(x)
    d = polino_uniform(xt, bits)
    s = stochastic_uniform(xt, bits, torch.Generator().manual_seed(seed))
    for q in (d, s):
        assert q.unique().numel() <= 2**bits
        assert bool((q >= xt.min() - 1e-5).all() and (q <= xt.max() + 1e-5).all())
    if x.max() > x.min():
        ref = np_polino(x.astype(np.float64), bits)
        span = float(x.max() - x.min())
        close = np.isclose(d.numpy(), ref, atol=1e-5 * max(span, 1))
        x_s = (x.astype(np.float64) - x.min()) / span * (2**bits - 1)
        near_tie = np.abs(x_s - np.floor(x_s) - 0.5) < 1e-4  # float32 vs float64 at ties
        assert bool((close | near_tie).all())
    else:
        assert torch.equal(d, xt) and torch.equal(s, xt)


def test_stochastic_uniform_is_unbiased():
    v = torch.tensor([-1.0, 0.0, 0.31, 0.77, 2.0, 1.234])
    draws = 20000
    gen = torch.Generator().manual_seed(3)
    batch = stochastic_uniform(v.expand(draws, -1).contiguous().reshape(-1), 2, gen)
    batch = batch.reshape(draws, -1).double()  # same min/max: the whole tensor is v repeated
    mean, se = batch.mean(0), batch.std(0) / draws**0.5
    assert bool(((mean - v.double()).abs() <= 4 * se + 1e-7).all()), (mean, v)


@pytest.mark.parametrize("k", [2, 3, 4, 8])
def test_wu_round_eq10(k):
    sigma = 2.0 ** (1 - k)
    x = np.array([0.0, sigma / 2, -sigma / 2, 1.5 * sigma, 0.3, -0.3, 1.0, -1.0, 5.0, -0.999],
                 dtype=f32)
    ref = np.clip(sigma * np.round(x / sigma), -1 + sigma, 1 - sigma).astype(f32)  # eq. 10
    out = wu_round(torch.from_numpy(x), k)
    np.testing.assert_array_equal(out.numpy(), ref)
    codes, grid = wu_encode(torch.from_numpy(x), k)
    top = 2 ** (k - 1) - 1
    assert grid.levels == LevelRange(-top, top) and float(grid.scale) == sigma
    assert torch.equal(grid.decode(codes), out) and grid.num_codes == 2**k - 1
    with pytest.raises(BitsError):
        wu_round(torch.ones(2), 1)


def test_pow2_step_and_bad_step():
    m = torch.tensor([1.0, 0.75, 0.5, 3.0, 0.0])
    assert [float(pow2_step(v, 4)) for v in m] == [1 / 8, 1 / 8, 1 / 16, 4 / 8, 1 / 8]
    with pytest.raises(ValueError):
        stochastic_round(torch.ones(2), 0.0)
    with pytest.raises(ValueError):
        fixed_point_round(torch.ones(2), float("nan"))
    assert stochastic_round(torch.ones(0), 0.5).shape == (0,)


def test_stochastic_encode_is_the_training_draw_and_decode_lookup_is_decode():
    x = torch.randn(300, generator=torch.Generator().manual_seed(3)) * 2
    codes, grid = stochastic_encode(x, 0.125, torch.Generator().manual_seed(5), -16, 15)
    q = stochastic_round(x, 0.125, torch.Generator().manual_seed(5), -16, 15)
    assert torch.equal(grid.decode(codes), q) and torch.equal(decode_lookup(codes, grid), q)
    assert grid.bits == 5 and int(codes.min()) >= 0 and int(codes.max()) < 32
    free, g2 = fixed_point_encode(x, 0.25)  # no bounds: the range of k
    assert torch.equal(g2.decode(free), fixed_point_round(x, 0.25))
    with pytest.raises(ValueError):
        fixed_point_round(x, torch.tensor([0.25, 0.5]))  # one step per tensor
