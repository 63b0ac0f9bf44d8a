"""The fused numba kernels equal their torch fallbacks bit for bit (lowbit.kernels.fused)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.kernels import fused as kernels


@pytest.mark.skipif(kernels.numba is None, reason="numba not installed")
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), bits=st.integers(1, 16), n=st.integers(1, 3000))
def test_signed_levels_kernel_equals_torch(seed, bits, n):
    g = torch.Generator().manual_seed(seed)
    s = float(2 ** (bits - 1))
    w = torch.randn(n, generator=g) * 10 ** float(torch.randint(-3, 3, (1,), generator=g))
    m = w.abs().max()
    # exact grid points k m / s, half-steps, +-0 and the extremes
    grid = torch.arange(-s, s + 1) / s * m
    half = (torch.arange(-s, s) + 0.5) / s * m
    w = torch.cat([w, grid, half, torch.tensor([0.0, -0.0])])
    d = m / s
    fast = kernels.signed_levels(w, d, s)
    ref = kernels._signed_levels_torch(w.clone(), d, s)
    assert torch.equal(fast, ref)
    assert torch.equal(torch.signbit(fast), torch.signbit(ref))
    assert fast.abs().min() >= 1 and fast.abs().max() <= s


def test_signed_levels_falls_back_for_float64_and_noncontiguous():
    w = torch.randn(6, 4, dtype=torch.float64)
    out = kernels.signed_levels(w, torch.tensor(0.25, dtype=torch.float64), 4.0)
    assert out.dtype == torch.float64
    assert torch.equal(out, kernels._signed_levels_torch(w.clone(), torch.tensor(0.25), 4.0))
    wt = torch.randn(5, 7).t()  # not contiguous
    d = wt.abs().max() / 8
    assert torch.equal(kernels.signed_levels(wt, d, 8.0),
                       kernels._signed_levels_torch(wt.clone(), d, 8.0))


@pytest.mark.skipif(kernels.numba is None, reason="numba not installed")
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), bits=st.integers(1, 16), n=st.integers(1, 3000))
def test_ivan_act_kernel_equals_torch(seed, bits, n):
    g = torch.Generator().manual_seed(seed)
    levels = float(2**bits - 1)
    x = torch.randn(n, generator=g) * levels
    m = torch.clamp(x.max(), 0.0, levels)
    if m == 0:
        m = torch.tensor(1.0)
    step = m / levels
    specials = torch.tensor([0.0, -0.0, levels, -levels, float("inf"), -float("inf"),
                             float("nan"), 1e-30])
    x = torch.cat([x, torch.arange(-2, levels + 2) * step, (torch.arange(levels) + 0.5) * step,
                   specials])
    torch.testing.assert_close(kernels.ivan_act(x, levels, step),
                               kernels._ivan_act_torch(x, levels, step),
                               rtol=0, atol=0, equal_nan=True)
    grad = torch.randn(x.shape, generator=g)
    assert torch.equal(kernels.ivan_act_grad(grad, x, levels),
                       kernels._ivan_act_grad_torch(grad, x, levels))


@pytest.mark.skipif(kernels.numba is None, reason="numba not installed")
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided"])
def test_ivan_act_kernels_keep_layout_and_values(layout):
    """Channels-last inputs are computed in place of their memory order (no NCHW round trip):
    same values as the torch path, same memory format out; other strides still work."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 5, 4, 6, generator=g) * 7
    grad = torch.randn(3, 5, 4, 6, generator=g)
    if layout == "nhwc":
        x, grad = x.contiguous(memory_format=torch.channels_last), grad.contiguous()
    elif layout == "strided":
        x, grad = x[:, ::2], grad[:, ::2]
    step = torch.tensor(0.5)
    out = kernels.ivan_act(x, 15.0, step)
    assert torch.equal(out, kernels._ivan_act_torch(x, 15.0, step))
    back = kernels.ivan_act_grad(grad, x, 15.0)
    assert torch.equal(back, kernels._ivan_act_grad_torch(grad, x, 15.0))
    if layout == "nhwc":
        assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
