"""TWN and TTQ against numpy references written from the papers (lowbit.functional.ternary)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lowbit.errors import EmptyTensorError, NonFiniteError
from lowbit.functional.codebook import IntegerGrid, Table
from lowbit.functional.ternary import (
    ternary_codes,
    ttq,
    ttq_encode,
    twn,
    twn_delta_alpha,
    twn_encode,
)

floats = st.floats(-3, 3, allow_nan=False, width=32)
SETTINGS = settings(max_examples=40, deadline=None)


def np_twn(w):
    """Li & Liu: delta = 0.7 E|W|, alpha = mean |W| over |W| > delta."""
    a = np.abs(w).astype(np.float64)
    delta = 7 * a.mean() / 10  # exact for the boundary case below
    big = a > delta
    alpha = a[big].mean() if big.any() else 0.0
    return alpha * (np.where(w > delta, 1, 0) - np.where(w < -delta, 1, 0)), delta, alpha


def test_twn_reference_with_boundaries():
    # mean|w| = 1.25 -> delta = 0.875 exactly; +-0.875 sit on the threshold and map to 0
    w = np.array([0.875, -0.875, 0.0, -0.0, 2.5, -1.75, 3.0, 1.0], np.float32)
    got = twn(torch.from_numpy(w)).numpy()
    want, delta, alpha = np_twn(w)
    assert (delta, alpha) == (0.875, 2.0625)
    np.testing.assert_array_equal(got, want.astype(np.float32))
    assert got.tolist() == [0, 0, 0, 0, 2.0625, -2.0625, 2.0625, 2.0625]
    big = np.random.default_rng(0).normal(size=(8, 3, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(twn(torch.from_numpy(big)).numpy(), np_twn(big)[0], rtol=1e-5)


def test_twn_threshold_is_strict():
    w = torch.tensor([1.0, 1.0, 1.0, 1.0])  # delta = 0.7: all above, alpha = 1
    assert twn(w).tolist() == [1.0] * 4
    delta, _ = twn_delta_alpha(torch.tensor([0.7, -0.7, 0.0, 2.1]))  # mean|w| = 0.875
    assert float(delta) == pytest.approx(0.6125)


def test_twn_all_zero_is_zero():
    w = torch.zeros(3, 4, requires_grad=True)
    y = twn(w)
    assert torch.equal(y, torch.zeros(3, 4))
    assert float(twn_delta_alpha(w)[1]) == 0.0
    y.sum().backward()
    assert torch.equal(w.grad, torch.ones(3, 4))


def test_twn_gradient_is_identity_and_bad_input():
    w = torch.randn(5, 5, requires_grad=True)
    g = torch.randn(5, 5)
    twn(w).backward(g)
    assert torch.equal(w.grad, g)
    with pytest.raises(EmptyTensorError):
        twn(torch.empty(0))
    with pytest.raises(NonFiniteError):
        twn(torch.tensor([float("nan"), 1.0]))


def np_ttq(w, wp, wn, t=0.05):
    delta = t * np.abs(w).max()
    return np.where(w > delta, wp, np.where(w < -delta, -wn, 0.0)), delta


def test_ttq_forward_reference():
    w = np.array([-2.0, -0.1, -0.0999, 0.0, 0.0999, 0.1, 0.5, 2.0], np.float32)  # delta = 0.1
    got = ttq(torch.from_numpy(w), torch.tensor(0.8), torch.tensor(1.5)).numpy()
    want, delta = np_ttq(w, 0.8, 1.5)
    assert delta == pytest.approx(0.1)
    np.testing.assert_array_equal(got, want.astype(np.float32))


def test_ttq_gradients_closed_form():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(4, 6)).astype(np.float32)
    g = rng.normal(size=(4, 6)).astype(np.float32)
    wt = torch.from_numpy(w).requires_grad_()
    wp = torch.tensor(0.7, requires_grad=True)
    wn = torch.tensor(1.3, requires_grad=True)
    ttq(wt, wp, wn, t=0.3).backward(torch.from_numpy(g))
    delta = 0.3 * np.abs(w).max()
    pos, neg = w > delta, w < -delta
    want_w = np.where(pos, 0.7 * g, np.where(neg, 1.3 * g, g))  # TTQ eq. (8)
    np.testing.assert_allclose(wt.grad.numpy(), want_w, rtol=1e-6)
    assert float(wp.grad) == pytest.approx(g[pos].sum(), rel=1e-5)  # eq. (7)
    assert float(wn.grad) == pytest.approx(-g[neg].sum(), rel=1e-5)  # value is -W_n


def test_ttq_scale_gradients_match_autograd_of_definition():
    w = torch.randn(10)
    wp = torch.tensor(0.9, requires_grad=True)
    wn = torch.tensor(0.4, requires_grad=True)
    delta = 0.05 * w.abs().max()
    ref = (w > delta).float() * wp - (w < -delta).float() * wn
    g = torch.randn(10)
    ref.backward(g)
    want = (wp.grad.clone(), wn.grad.clone())
    wp.grad = wn.grad = None
    ttq(w, wp, wn).backward(g)
    assert torch.allclose(wp.grad, want[0]) and torch.allclose(wn.grad, want[1])
    # "mean": the same sums divided by the region sizes; the latent-weight gradient unchanged
    wt = w.clone().requires_grad_(True)
    wp.grad = wn.grad = None
    ttq(wt, wp, wn, scale_grad="mean").backward(g)
    n_pos, n_neg = int((w > delta).sum()), int((w < -delta).sum())
    torch.testing.assert_close(wp.grad, want[0] / max(n_pos, 1))
    torch.testing.assert_close(wn.grad, want[1] / max(n_neg, 1))
    w_sum = w.clone().requires_grad_(True)
    ttq(w_sum, wp.detach(), wn.detach()).backward(g)
    assert torch.equal(wt.grad, w_sum.grad)
    with pytest.raises(ValueError, match="scale_grad"):
        ttq(w, wp, wn, scale_grad="max")


@SETTINGS
@given(arrays(np.float32, st.integers(1, 60), elements=floats))
def test_twn_properties(w):
    t = torch.from_numpy(w)
    y = twn(t)
    _, alpha = twn_delta_alpha(t)
    assert set(y.abs().unique().tolist()) <= {0.0, float(alpha)}
    assert len(y.unique()) <= 3
    order = np.argsort(w)
    assert np.all(np.diff(y.numpy()[order]) >= 0)  # monotone
    codes = ternary_codes(t, twn_delta_alpha(t)[0])
    levels = torch.stack([-alpha, torch.zeros_like(alpha), alpha])
    assert torch.equal(levels[codes], y)


@SETTINGS
@given(arrays(np.float32, st.integers(1, 60), elements=floats), st.floats(0.0, 0.9))
def test_ttq_properties(w, t):
    y = ttq(torch.from_numpy(w), torch.tensor(0.5), torch.tensor(2.0), t).numpy()
    assert set(np.unique(y).tolist()) <= {-2.0, 0.0, 0.5}
    assert np.all((y > 0) <= (w > 0)) and np.all((y < 0) <= (w < 0))


def test_forward_is_decode_of_encode():
    """Issue 8: TWN's and TTQ's forwards are record.decode(codes) of their encoders."""
    w = torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(4))
    w[0, 0] = 0.0
    codes, grid = twn_encode(w)
    assert isinstance(grid, IntegerGrid) and grid.bits == 2 and grid.num_codes == 3
    assert grid.integers(torch.tensor([0, 1, 2])).tolist() == [-1, 0, 1]
    assert torch.equal(twn(w), grid.decode(codes))
    wp, wn = torch.tensor(0.7), torch.tensor(1.3)
    codes, table = ttq_encode(w, wp, wn, 0.2)
    assert isinstance(table, Table) and table.values.tolist() == pytest.approx([-1.3, 0.0, 0.7])
    assert torch.equal(ttq(w, wp, wn, 0.2), table.decode(codes))
