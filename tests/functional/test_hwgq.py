"""HWGQ (Cai et al. 2017; survey eq. 26-27): lowbit.functional.hwgq."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from lowbit.errors import BitsError
from lowbit.functional.codebook import IntegerGrid, Table
from lowbit.functional.hwgq import (
    HWGQBackward,
    LevelFit,
    hwgq,
    hwgq_codebook,
    hwgq_encode,
    hwgq_levels,
    lloyd_half_normal,
    uniform_half_normal,
)

HN = stats.halfnorm


def quad_mse(q):
    """Half-normal MSE of the quantizer with positive levels q (t_1 = 0), by numeric integration."""
    t = np.r_[0.0, (q[:-1] + q[1:]) / 2, np.inf]
    return sum(integrate.quad(lambda x, qi=qi: (x - qi) ** 2 * HN.pdf(x), t[i], t[i + 1])[0]
               for i, qi in enumerate(q))


def ref_hwgq(x, q):
    t = np.r_[0.0, (q[:-1] + q[1:]) / 2]
    out = np.zeros_like(x)
    for i, qi in enumerate(q):
        hi = t[i + 1] if i + 1 < len(t) else np.inf
        out[(x > t[i]) & (x <= hi)] = qi
    return out


def test_uniform_steps_match_published_hwgq_values():
    # steps of Cai et al.'s released quantizer: 0.799, 0.538, 0.3217, 0.185 for 1..4 bits
    assert uniform_half_normal(1)[0] == pytest.approx(math.sqrt(2 / math.pi), abs=1e-9)
    published = ((1, 0.799, 2e-3), (2, 0.538, 1e-3), (3, 0.3217, 1e-4), (4, 0.185, 1e-3))
    for bits, step, tol in published:
        q = np.asarray(uniform_half_normal(bits))
        assert len(q) == 2**bits - 1
        np.testing.assert_allclose(q, step * np.arange(1, 2**bits) * (q[0] / step), rtol=1e-12)
        assert q[0] == pytest.approx(step, abs=tol)


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_uniform_step_is_mse_optimal(bits):
    q = np.asarray(uniform_half_normal(bits))
    i = np.arange(1, 2**bits)
    best = quad_mse(q)
    for d in (-1e-2, 1e-2):
        assert quad_mse(i * (q[0] + d)) > best


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_lloyd_levels_satisfy_optimality_conditions(bits):
    q = np.asarray(lloyd_half_normal(bits))
    assert len(q) == 2**bits - 1 and np.all(np.diff(q) > 0)
    t = np.r_[0.0, (q[:-1] + q[1:]) / 2, np.inf]
    for i, qi in enumerate(q):  # each level is the conditional mean of its cell
        mass = integrate.quad(HN.pdf, t[i], t[i + 1])[0]
        mean = integrate.quad(lambda x: x * HN.pdf(x), t[i], t[i + 1])[0] / mass
        assert qi == pytest.approx(mean, abs=1e-7)
    assert quad_mse(q) <= quad_mse(np.asarray(uniform_half_normal(bits))) + 1e-12


@pytest.mark.parametrize("fit", list(LevelFit))
@pytest.mark.parametrize("bits", [1, 2, 3])
def test_forward_matches_numpy_reference(bits, fit):
    q = np.asarray(hwgq_levels(bits, fit))
    t = np.r_[0.0, (q[:-1] + q[1:]) / 2]
    x = np.concatenate([[0.0, -0.0, -1.0, 1e-9], t, q, q + 1e-6, np.linspace(-4, 6, 101)])
    got = hwgq(torch.tensor(x), torch.tensor(q)).numpy()
    np.testing.assert_array_equal(got, ref_hwgq(x, q))
    if fit is LevelFit.UNIFORM:
        np.testing.assert_array_equal(hwgq(torch.tensor(x), bits).numpy(), got)


def test_backward_closed_forms():
    q = torch.tensor(hwgq_levels(2), dtype=torch.float64)
    qm = float(q[-1])
    x0 = torch.tensor([-1.0, 0.0, 0.3, qm, qm + 0.5, qm + 3.0], dtype=torch.float64)
    expect = {
        HWGQBackward.RELU: [0, 0, 1, 1, 1, 1],
        HWGQBackward.CLIPPED: [0, 0, 1, 1, 0, 0],
        HWGQBackward.LOG_TAILED: [0, 0, 1, 1, 1 / (qm + 0.5 - (qm - 1)), 1 / (qm + 3 - (qm - 1))],
    }
    for mode, want in expect.items():
        x = x0.clone().requires_grad_()
        hwgq(x, q, mode).backward(torch.full_like(x, 2.0))
        np.testing.assert_allclose(x.grad.numpy(), 2.0 * np.asarray(want, dtype=float), rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.sampled_from(list(LevelFit)), st.integers(0, 2**31 - 1))
def test_properties(bits, fit, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.sort(torch.randn(400, generator=gen, dtype=torch.float64) * 2).values
    q = torch.tensor(hwgq_levels(bits, fit), dtype=torch.float64)
    y = hwgq(x, q)
    allowed = {0.0, *q.tolist()}
    assert set(y.tolist()) <= allowed and len(allowed) <= 2**bits
    assert bool((y[1:] >= y[:-1]).all())
    assert torch.equal(hwgq(y, q), y)  # idempotent
    assert bool((y[x <= 0] == 0).all())
    inside = (x > 0) & (x <= q[-1])
    assert bool(((y - x)[inside].abs() <= (q[-1] - q[0]) / 2 + q[0]).all())


def test_bad_input():
    for bits in (0, 9, 2.0, True):
        with pytest.raises(BitsError):
            hwgq(torch.zeros(3), bits)
    with pytest.raises(TypeError):
        hwgq(torch.zeros(3), 2, "clipped")
    with pytest.raises(ValueError):
        hwgq(torch.zeros(3), torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError):
        hwgq(torch.zeros(3), torch.tensor([0.0, 0.5]))
    assert hwgq(torch.zeros(0), 2).shape == (0,)


@pytest.mark.parametrize("bits", [1, 2, 3, 8])
def test_forward_is_decode_of_encode(bits):
    """Issue 8: the forward is record.decode(codes) of hwgq_encode, for both fits and tables."""
    x = torch.randn(2000, generator=torch.Generator().manual_seed(bits)) * 2
    grid = hwgq_codebook(bits)
    assert isinstance(grid, IntegerGrid) and grid.bits == bits and grid.num_codes == 2**bits
    codes, record = hwgq_encode(x, bits)
    assert record.integers(codes).tolist() == codes.tolist()  # the codes are the integers
    assert torch.equal(hwgq(x, bits), record.decode(codes))
    lloyd = hwgq_codebook(bits, LevelFit.LLOYD)
    assert isinstance(lloyd, Table) and lloyd.num_codes == 2**bits
    codes, record = hwgq_encode(x, lloyd)
    assert torch.equal(hwgq(x, lloyd), record.decode(codes))
    q = torch.tensor(hwgq_levels(bits, LevelFit.LLOYD), dtype=torch.float32)
    assert torch.equal(hwgq(x, q), record.decode(codes))
    # the uniform levels are float32(i) * float32(step): within 1 ulp of float32(i * step)
    old = torch.tensor(hwgq_levels(bits), dtype=torch.float32)
    new = grid.decode(torch.arange(1, 2**bits))
    assert bool(((new - old).abs() <= torch.finfo(torch.float32).eps * old).all())
