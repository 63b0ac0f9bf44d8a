"""Quantization Networks (Yang et al. 2019) eq. (6), (7)-(10), (11): lowbit.functional.soft."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import BitsError
from lowbit.functional.codebook import IntegerGrid, LevelRange, Table
from lowbit.functional.soft import (
    ACT_LEVELS,
    WEIGHT_LEVELS,
    hard_encode,
    hard_grid,
    hard_quantize,
    init_soft_params,
    kmeans_1d,
    levels_for,
    soft_quantize,
)

SETS = [WEIGHT_LEVELS[k] for k in WEIGHT_LEVELS] + [ACT_LEVELS["1"], ACT_LEVELS["2"]]


def paper_offset(levels):
    """Sec. 3.1: o = sum(s)/2 for weights; sec. 4.1: o = 0 for activations (levels from 0)."""
    s = np.diff(levels)
    return 0.0 if levels[0] == 0 else 0.5 * s.sum()


def ref_soft(x, levels, biases, t, alpha, beta):
    s = np.diff(np.asarray(levels, dtype=np.float64))
    acc = np.zeros_like(x, dtype=np.float64)
    for si, bi in zip(s, biases, strict=True):
        acc += si / (1.0 + np.exp(-t * (beta * x - bi)))
    return alpha * (acc - paper_offset(levels))


def ref_hard(x, levels, biases, alpha, beta):
    s = np.diff(np.asarray(levels, dtype=np.float64))
    acc = np.zeros_like(x, dtype=np.float64)
    for si, bi in zip(s, biases, strict=True):
        acc += si * ((beta * x - bi) >= 0)  # eq. (1): A(0) = 1
    return alpha * (acc - paper_offset(levels))


def mid(levels):
    lv = np.asarray(levels)
    return (lv[1:] + lv[:-1]) / 2


@pytest.mark.parametrize("levels", SETS)
def test_offset_is_minus_first_level_for_paper_sets(levels):
    assert paper_offset(levels) == -levels[0]


@pytest.mark.parametrize("levels", SETS)
def test_soft_and_hard_match_numpy_reference(levels):
    b = mid(levels) * 1.1
    alpha, beta = 0.7, 1.3
    # 0, each bias exactly (beta x == b_i), half-steps, beyond the range
    x = np.concatenate([[0.0], b / beta, np.asarray(levels) / beta, np.linspace(-20, 20, 41)])
    lv, bt = torch.tensor(levels, dtype=torch.float64), torch.tensor(b)
    xt = torch.tensor(x)
    got = soft_quantize(xt, lv, bt, 3.0, alpha, beta).numpy()
    want = ref_soft(x, levels, b, 3.0, alpha, beta)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    hard = hard_quantize(xt, lv, bt, alpha, beta).numpy()
    np.testing.assert_allclose(hard, ref_hard(x, levels, b, alpha, beta), rtol=1e-12, atol=1e-12)
    assert set(np.round(hard / alpha, 9)) <= set(levels)


def test_hard_step_at_bias_takes_upper_level():
    lv = torch.tensor([-1.0, 0.0, 1.0])
    y = hard_quantize(torch.tensor([-0.5, 0.5, 0.4999]), lv, torch.tensor([-0.5, 0.5]))
    assert y.tolist() == [0.0, 1.0, 0.0]


def paper_grads(x, levels, biases, t, alpha, beta, gy):
    """Eq. (7)-(10) as printed, with g_i = alpha s_i sigma_i (the reading that makes them the
    derivatives of eq. 6; see the module doc)."""
    s = np.diff(np.asarray(levels, dtype=np.float64))
    gx = np.zeros_like(x)
    gbeta = 0.0
    gb = []
    for si, bi in zip(s, biases, strict=True):
        g = alpha * si / (1.0 + np.exp(-t * (beta * x - bi)))
        common = g * (alpha * si - g) / (alpha * si)
        gx += gy * t * beta * common
        gbeta += np.sum(gy * t * x * common)
        gb.append(np.sum(gy * -t * common))
    y = ref_soft(x, levels, biases, t, alpha, beta)
    galpha = np.sum(gy * y / alpha)
    return gx, galpha, gbeta, np.array(gb)


@pytest.mark.parametrize("levels", [WEIGHT_LEVELS["3(±4)"], WEIGHT_LEVELS["2"], ACT_LEVELS["2"]])
def test_gradients_match_eq_7_to_10(levels):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, generator=gen, dtype=torch.float64) * 2
    gy = torch.randn(50, generator=gen, dtype=torch.float64)
    b0, t, a0, be0 = mid(levels) * 0.9, 2.5, 0.8, 1.2
    xt = x.clone().requires_grad_()
    bt = torch.tensor(b0, requires_grad=True)
    at = torch.tensor(a0, dtype=torch.float64, requires_grad=True)
    bet = torch.tensor(be0, dtype=torch.float64, requires_grad=True)
    y = soft_quantize(xt, torch.tensor(levels, dtype=torch.float64), bt, t, at, bet)
    y.backward(gy)
    gx, galpha, gbeta, gb = paper_grads(x.numpy(), levels, b0, t, a0, be0, gy.numpy())
    np.testing.assert_allclose(xt.grad.numpy(), gx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(at.grad.item(), galpha, rtol=1e-10)
    np.testing.assert_allclose(bet.grad.item(), gbeta, rtol=1e-10)
    np.testing.assert_allclose(bt.grad.numpy(), gb, rtol=1e-10, atol=1e-12)


def test_gradcheck_at_fixed_temperature():
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(12, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    lv = torch.tensor(WEIGHT_LEVELS["3(±4)"], dtype=torch.float64)
    b = torch.tensor(mid(WEIGHT_LEVELS["3(±4)"]), requires_grad=True)
    a = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    be = torch.tensor(1.4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *z: soft_quantize(z[0], lv, z[1], 2.0, z[2], z[3]),
                                    (x, b, a, be))


def test_grad_temperature_replaces_t_in_backward_only():
    lv, b = torch.tensor([-1.0, 1.0], dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    x = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    y = soft_quantize(x, lv, b, 50.0, grad_temperature=1.0)
    want = ref_soft(x.detach().numpy(), [-1, 1], [0], 50, 1, 1)
    np.testing.assert_allclose(y.detach().numpy(), want)
    y.sum().backward()
    sig = torch.sigmoid(x.detach())
    torch.testing.assert_close(x.grad, 2.0 * sig * (1 - sig))  # s = 2, T = 1


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(list(WEIGHT_LEVELS)), st.floats(0.2, 3.0), st.floats(0.2, 3.0))
def test_soft_tends_to_hard_as_temperature_grows(name, alpha, beta):
    levels = WEIGHT_LEVELS[name]
    lv, b = torch.tensor(levels, dtype=torch.float64), torch.tensor(mid(levels))
    x = torch.linspace(-20, 20, 4001, dtype=torch.float64) / beta
    away = ((beta * x[:, None] - b[None, :]).abs() > 0.05).all(1)
    hard = hard_quantize(x, lv, b, alpha, beta)
    gaps = [float((soft_quantize(x, lv, b, t, alpha, beta) - hard)[away].abs().max())
            for t in (10.0, 100.0, 1000.0)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-12


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(list(WEIGHT_LEVELS)), st.integers(0, 2**31 - 1))
def test_hard_properties(name, seed):
    levels = WEIGHT_LEVELS[name]
    gen = torch.Generator().manual_seed(seed)
    x = torch.sort(torch.randn(500, generator=gen) * 5).values
    lv, b = torch.tensor(levels), torch.tensor(mid(levels), dtype=torch.float32)
    y = hard_quantize(x, lv, b, 0.5, 1.0)
    bits = {2: 1, 3: 2, 5: 3, 7: 3, 15: 4, 31: 5}[len(levels)]
    assert len(torch.unique(y)) <= 2**bits
    assert bool((y[1:] >= y[:-1]).all())  # monotone
    assert set(torch.unique(y / 0.5).tolist()) <= set(levels)
    codes, grid = hard_encode(x, lv, b, 0.5)
    assert isinstance(grid, IntegerGrid) and grid.bits == bits
    assert torch.equal(grid.decode(codes), y)  # the forward is decode(encode)
    # idempotent for integer level sets with midpoint biases at alpha = beta = 1
    z = hard_quantize(x, lv, b)
    assert torch.equal(hard_quantize(z, lv, b), z)


def test_levels_for_names_and_bits():
    assert levels_for(1) == (-1.0, 1.0)
    assert levels_for(2) == (-1.0, 0.0, 1.0)
    assert levels_for(3) == (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0)
    assert levels_for("3(+-2)") == (-2.0, -1.0, 0.0, 1.0, 2.0)
    assert levels_for("3(±4)") == levels_for(3)
    assert levels_for(5) == tuple(float(v) for v in range(-15, 16))
    assert levels_for(1, signed=False) == (0.0, 1.0)
    assert levels_for(2, signed=False) == (0.0, 1.0, 2.0, 3.0)
    for bad in (0, 6, True, "7"):
        with pytest.raises(BitsError):
            levels_for(bad)


def test_bad_arguments():
    lv = torch.tensor([-1.0, 0.0, 1.0])
    with pytest.raises(ValueError):
        soft_quantize(torch.zeros(3), lv, torch.zeros(1), 1.0)
    with pytest.raises(ValueError):
        hard_quantize(torch.zeros(3), lv, torch.tensor([0.5, -0.5]))
    with pytest.raises(ValueError):
        hard_quantize(torch.zeros(3), torch.tensor([1.0, 0.0]), torch.zeros(1))
    assert soft_quantize(torch.zeros(0), lv, torch.zeros(2), 1.0).shape == (0,)


def ref_kmeans(v, k, iters=200):
    v = np.sort(v.astype(np.float64))
    c = np.quantile(v, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        assign = np.argmin(np.abs(v[:, None] - c[None, :]), axis=1)
        c = np.sort(np.array([v[assign == j].mean() if np.any(assign == j) else c[j]
                              for j in range(k)]))
    return c


def test_kmeans_matches_reference_and_separates_clusters():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3000, generator=gen, dtype=torch.float64)
    np.testing.assert_allclose(kmeans_1d(x, 4).numpy(), ref_kmeans(x.numpy(), 4), rtol=1e-6)
    blobs = torch.cat([torch.full((10,), -3.0), torch.full((20,), 0.5), torch.full((5,), 7.0)])
    assert kmeans_1d(blobs, 3).tolist() == [-3.0, 0.5, 7.0]


def test_init_follows_section_4_1():
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(2000, generator=gen) * 0.05
    lv = torch.tensor(levels_for(3))
    biases, alpha, beta = init_soft_params(w, lv)
    q = float(w.abs().max())
    assert beta == pytest.approx(5 * 4 / (4 * q)) and alpha == pytest.approx(1 / beta)
    c = ref_kmeans(w.numpy(), 7)
    np.testing.assert_allclose(biases.numpy(), beta * (c[1:] + c[:-1]) / 2, rtol=1e-5)
    b1, a1, be1 = init_soft_params(w, torch.tensor([-1.0, 1.0]))
    assert b1.tolist() == [0.0] and be1 == pytest.approx(5 / (4 * q))
    b0, _, _ = init_soft_params(torch.zeros(10), lv)  # q = 0: no division by zero
    assert torch.isfinite(b0).all()


def test_hard_encode_records():
    x = torch.linspace(-3, 3, 61)
    for levels, kind in (((-1.0, 1.0), torch.Tensor), ((0.0, 1.0, 2.0, 3.0), LevelRange),
                         (WEIGHT_LEVELS["3(±4)"], torch.Tensor)):
        lv = torch.tensor(levels)
        codes, grid = hard_encode(x, lv, torch.tensor(mid(levels)), 0.25, 2.0)
        assert isinstance(grid, IntegerGrid) and isinstance(grid.levels, kind)
        assert float(grid.scale) == 0.25 and grid.integers(codes).unique().tolist() == [
            int(v) for v in levels]
        assert torch.equal(grid.decode(codes), hard_quantize(x, lv, torch.tensor(mid(levels)),
                                                             0.25, 2.0))
    frac = torch.tensor([-0.5, 0.25, 1.0])  # not integer: a Table of alpha * Y
    codes, grid = hard_encode(x, frac, torch.tensor([0.0, 0.5]), 2.0)
    assert isinstance(grid, Table) and grid.values.tolist() == [-1.0, 0.5, 2.0]
    assert torch.equal(grid.decode(codes), hard_quantize(x, frac, torch.tensor([0.0, 0.5]), 2.0))
    alpha = torch.tensor(0.5, requires_grad=True)  # eq. (8) through the hard table: dy/da = Y_k
    y = hard_quantize(x, frac, torch.tensor([0.0, 0.5]), alpha)
    y.sum().backward()
    assert float(alpha.grad) == float((y.detach() / 0.5).sum())
    assert hard_grid(torch.tensor([0.0, 1.0])).bits == 1
