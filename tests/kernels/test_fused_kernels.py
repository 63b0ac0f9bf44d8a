"""The fused numba training kernels (lowbit.kernels.fused: lsq_*, soft_*) against the torch
paths they replace: LSQ (Esser et al. 2020, eq. 1-3) bit for bit, with the step's sum to rtol
1e-5; the soft quantizer of Quantization Networks (Yang et al. 2019, eq. 6-10) to float32
rounding. Also: channels-last layout kept, float64 / per-channel fallbacks, parallel == serial
(sums included), special values (0, -0, boundaries, half steps, inf, NaN). The declared
exactness across layouts, element positions and CPUs: test_kernel_exactness.py."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.functional.learned import lsq, lsq_grad_scale, lsq_range
from lowbit.functional.soft import ACT_LEVELS, WEIGHT_LEVELS, soft_quantize
from lowbit.kernels import fused as kernels

pytestmark = pytest.mark.skipif(kernels.numba is None, reason="numba not installed")
SETTINGS = settings(max_examples=25, deadline=None)
LEVEL_SETS = [WEIGHT_LEVELS[k] for k in WEIGHT_LEVELS] + [ACT_LEVELS[k] for k in ACT_LEVELS]


@contextlib.contextmanager
def torch_path():
    """The torch fallback, as without numba (LOWBIT_NO_NUMBA=1)."""
    saved, kernels.numba = kernels.numba, None
    try:
        yield
    finally:
        kernels.numba = saved


def close_sum(fused, ref, terms):
    """A reduction: rtol 1e-5, plus the float32 summation error of the torch path (1e-6 of the
    sum of |terms|)."""
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-6 * float(terms) + 1e-30)


# ---------------------------------------------------------------- LSQ
def lsq_inputs(gen, n, s, qn, qp):
    """Random values over the range and beyond, plus 0, -0, every level, half step, boundary."""
    x = (torch.rand(n, generator=gen) * (qn + qp + 4) - qn - 2) * s
    ks = torch.arange(-qn - 2, qp + 3, 0.5, dtype=torch.float64)
    edge = torch.tensor([0.0, -0.0, qp + 0.25, -qn - 0.25, 1e-3, -1e-3], dtype=torch.float64)
    return torch.cat([x, (torch.cat([ks, edge]) * s).float()])


def lsq_run(x, step, qn, qp, scale, up, fused=True):
    with contextlib.nullcontext() if fused else torch_path():
        xr, sr = x.clone().requires_grad_(), step.clone().requires_grad_()
        y = lsq(xr, sr, qn, qp, scale)
        y.backward(up)
    return y.detach(), xr.grad, sr.grad


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), rng=st.sampled_from([(2, True), (4, True), (8, True),
                                                           (1, False), (2, False), (4, False)]),
       n=st.integers(1, 5000), s=st.floats(1e-3, 10.0))
def test_lsq_fused_equals_torch_path(seed, rng, n, s):
    qn, qp = lsq_range(*rng)
    gen = torch.Generator().manual_seed(seed)
    x = lsq_inputs(gen, n, s, qn, qp)
    step = torch.tensor(s, dtype=torch.float32)
    up = torch.randn(x.shape, generator=gen)
    scale = lsq_grad_scale(x.numel(), qp)
    fy, fgx, fgs = lsq_run(x, step, qn, qp, scale, up)
    ty, tgx, tgs = lsq_run(x, step, qn, qp, scale, up, fused=False)
    assert torch.equal(fy, ty) and torch.equal(fgx, tgx)  # bit for bit
    q = (x * (1.0 / step)).double()
    ds = torch.where(q <= -qn, -qn, torch.where(q >= qp, qp, torch.round(q) - q))
    close_sum(fgs, tgs, (up.double() * ds).abs().sum() * scale)


def test_lsq_fused_special_values():
    step = torch.tensor(0.3)
    x = torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0, -0.0, 1e30, -1e30, 1e-40])
    fused = lsq(x, step, 2, 1)
    with torch_path():
        ref = lsq(x, step, 2, 1)
    torch.testing.assert_close(fused, ref, rtol=0, atol=0, equal_nan=True)
    assert kernels.fusable(x, step)


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided"])
def test_lsq_fused_keeps_layout(layout):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, 5, 7, generator=gen) * 2
    up = torch.randn(4, 6, 5, 7, generator=gen)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x, up = x[:, ::2], up[:, ::2]
    step = torch.tensor(0.25)
    fy, fgx, fgs = lsq_run(x, step, 4, 3, 0.1, up)
    ty, tgx, tgs = lsq_run(x, step, 4, 3, 0.1, up, fused=False)
    assert torch.equal(fy, ty) and torch.equal(fgx, tgx)
    torch.testing.assert_close(fgs, tgs, rtol=1e-5, atol=1e-6)
    if layout == "nhwc":
        for t in (fy, fgx):
            assert t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def test_lsq_fallbacks_float64_and_per_channel():
    gen = torch.Generator().manual_seed(2)
    x64 = torch.randn(300, generator=gen, dtype=torch.float64)
    step64 = torch.tensor(0.2, dtype=torch.float64)
    assert not kernels.fusable(x64, step64)
    y = lsq(x64, step64, 2, 1)
    assert y.dtype == torch.float64
    np.testing.assert_array_equal(y.numpy(), np.clip(np.round(x64.numpy() * 5.0), -2, 1) * 0.2)
    w, steps = torch.randn(4, 9, generator=gen), torch.tensor([0.1, 0.2, 0.3, 0.4])
    up = torch.randn(4, 9, generator=gen)
    got = [t.clone() for t in lsq_run_axis(w, steps, up)]
    with torch_path():
        want = lsq_run_axis(w, steps, up)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def lsq_run_axis(w, steps, up):
    wr, sr = w.clone().requires_grad_(), steps.clone().requires_grad_()
    y = lsq(wr, sr, 2, 1, 0.5, axis=0)
    y.backward(up)
    return y.detach(), wr.grad, sr.grad


# ---------------------------------------------------------------- soft quantizer (eq. 6-10)
def soft_inputs(gen, n, levels, biases, beta, scale):
    """Random values, 0, -0, every step point beta x = b_i, the midpoints between them."""
    x = torch.randn(n, generator=gen) * scale
    b = torch.tensor(biases, dtype=torch.float64)
    mids = (b[1:] + b[:-1]) / 2 if b.numel() > 1 else b
    pts = torch.cat([b, mids, b + 1e-3, b - 1e-3]) / beta
    return torch.cat([x, pts.float(), torch.tensor([0.0, -0.0])])


def soft_run(x, levels, biases, t, alpha, beta, up, t_grad=None, learn_biases=False,
             fused=True):
    with contextlib.nullcontext() if fused else torch_path():
        xr = x.clone().requires_grad_()
        b = torch.tensor(biases, dtype=x.dtype, requires_grad=learn_biases)
        a = torch.tensor(alpha, dtype=x.dtype, requires_grad=True)
        be = torch.tensor(beta, dtype=x.dtype, requires_grad=True)
        y = soft_quantize(xr, torch.tensor(levels, dtype=x.dtype), b, t, a, be,
                          grad_temperature=t_grad)
        y.backward(up)
    return y.detach(), xr.grad, b.grad, a.grad, be.grad


EPS = float(torch.finfo(torch.float32).eps)


def within(got, ref, atol, what):
    """|got - ref| <= atol + 1e-5 |ref| elementwise (``atol`` a number or a tensor)."""
    err = (got.double() - ref).abs() - 1e-5 * ref.abs()
    worst = float((err - atol).max())
    assert worst <= 0, f"{what}: off by {worst:.3g} beyond the tolerance"


def check_soft(x, levels, biases, t, alpha, beta, up, t_grad=None, learn_biases=False):
    """Fused == torch path (float32), and both == the same eq. (6)-(10) code in float64.

    rtol 1e-5 throughout, plus what float32 cannot resolve: u = x (T beta) and T b are rounded
    before the sigmoids (in both paths), so z = u - T b is known to dz ~ eps T (|beta x| + |b|),
    and sigma to sigma (1 - sigma) dz <= dz / 4; the output to a few ulp of its span alpha
    sum s_i. The torch path computes sum_i s_i sigma_i (1 - sigma_i) as acc - sum_i s_i
    sigma_i^2, which cancels to a few ulp of sum s_i per element (the fused path, 1 - sigma =
    e sigma, does not): its bound adds that."""
    args = (x, levels, biases, t, alpha, beta, up, t_grad, learn_biases)
    fused, torch32 = soft_run(*args), soft_run(*args, fused=False)
    ref = soft_run(x.double(), *args[1:6], up.double(), t_grad, learn_biases, fused=False)
    assert (fused[2] is None) == (torch32[2] is None) == (not learn_biases)
    xd, gd, rgx = x.double(), up.double(), ref[1]
    tg = t if t_grad is None else t_grad
    dz = 4 * EPS * max(t, tg) * (abs(beta) * xd.abs() + max(abs(b) for b in biases))
    span, ulps = float(np.sum(np.diff(levels))), 8 * EPS * float(np.sum(np.diff(levels)))
    at, ga = abs(alpha * tg), gd.abs()
    # per output: (tolerance of both paths, extra for the torch path's cancellation)
    bounds = [(abs(alpha) * (span * dz / 4 + ulps), 0.0),
              ((rgx.abs() + 1e-6 * at * abs(beta) * ga) * dz, at * abs(beta) * ga * ulps),
              (((rgx / beta).abs() * dz).sum(), at * float(np.max(np.diff(levels))) * ga.sum()
               * ulps),
              ((ga * (span * dz / 4 + ulps)).sum(), ga.sum() * ulps),
              (((rgx * xd / beta).abs() * dz).sum(), at * (ga * xd.abs()).sum() * ulps)]
    names = ["y", "gx", "g_biases", "g_alpha", "g_beta"]
    for i, (tol, torch_extra) in enumerate(bounds):
        if ref[i] is None:
            continue
        within(fused[i], ref[i], tol, f"fused {names[i]} vs float64")
        within(torch32[i], ref[i], tol + torch_extra, f"torch path {names[i]} vs float64")
        within(fused[i], torch32[i].double(), 2 * tol + torch_extra, f"fused vs torch {names[i]}")


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), levels=st.sampled_from(LEVEL_SETS),
       n=st.integers(1, 3000), t=st.sampled_from([0.5, 1.0, 3.0, 10.0, 50.0, 300.0]),
       alpha=st.floats(0.05, 3.0), beta=st.floats(0.1, 5.0), learn=st.booleans())
def test_soft_fused_equals_torch_path(seed, levels, n, t, alpha, beta, learn):
    gen = torch.Generator().manual_seed(seed)
    lv = np.asarray(levels)
    jitter = torch.randn(len(lv) - 1, generator=gen).numpy() * 0.1
    biases = list((lv[1:] + lv[:-1]) / 2 + jitter)
    x = soft_inputs(gen, n, levels, biases, beta, float(np.abs(lv).max()) / beta)
    up = torch.randn(x.shape, generator=gen)
    check_soft(x, levels, biases, t, alpha, beta, up, learn_biases=learn)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), levels=st.sampled_from(LEVEL_SETS[:3]),
       t=st.sampled_from([2.0, 20.0, 100.0]), t_grad=st.sampled_from([0.5, 1.0, 4.0]))
def test_soft_fused_grad_temperature_equals_torch_path(seed, levels, t, t_grad):
    gen = torch.Generator().manual_seed(seed)
    lv = np.asarray(levels)
    biases = list((lv[1:] + lv[:-1]) / 2)
    x = soft_inputs(gen, 700, levels, biases, 1.3, 3.0)
    up = torch.randn(x.shape, generator=gen)
    check_soft(x, levels, biases, t, 0.7, 1.3, up, t_grad=t_grad, learn_biases=True)


def test_soft_fused_gradients_match_eq_7_to_10_in_float64():
    """Closed form: the fused float32 gradients equal eq. (7)-(10) evaluated in float64."""
    gen = torch.Generator().manual_seed(4)
    levels, biases, t, alpha, beta = WEIGHT_LEVELS["3(±4)"], [-3.0, -1.5, -0.5, 0.5, 1.5, 3.0], \
        4.0, 0.8, 1.2
    x = torch.randn(2000, generator=gen) * 3
    up = torch.randn(2000, generator=gen)
    _, gx, gb, ga, gbe = soft_run(x, levels, biases, t, alpha, beta, up, learn_biases=True)
    xd, upd = x.double(), up.double()
    s = torch.tensor(np.diff(levels))
    sig = torch.sigmoid(t * (beta * xd[:, None] - torch.tensor(biases)[None, :]))
    dsum = (s * sig * (1 - sig)).sum(1)
    torch.testing.assert_close(gx.double(), upd * alpha * t * beta * dsum, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ga.double(), (upd * ((s * sig).sum(1) + levels[0])).sum(),
                               rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gbe.double(), (upd * alpha * t * xd * dsum).sum(), rtol=1e-5,
                               atol=1e-4)
    want_b = -(upd[:, None] * alpha * t * s * sig * (1 - sig)).sum(0)
    torch.testing.assert_close(gb.double(), want_b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shape", [(4, 6, 5, 7), (3, 6, 5, 7)])  # 630 = 16*39 + 4 + 2 (issue 7)
@pytest.mark.parametrize("layout", ["nhwc", "strided"])
def test_soft_fused_keeps_layout(layout, shape):
    """NHWC is computed in memory order: same values as the NCHW tensor, NHWC out."""
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(shape, generator=gen) * 4
    up = torch.randn(shape, generator=gen)
    levels, biases = ACT_LEVELS["2"], [0.5, 1.5, 2.5]
    ref = soft_run(x, levels, biases, 5.0, 0.9, 1.1, up)
    if layout == "nhwc":
        xl = x.contiguous(memory_format=torch.channels_last)
        got = soft_run(xl, levels, biases, 5.0, 0.9, 1.1, up)
        for t in got[:2]:
            assert t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])  # elementwise: exact
    else:
        got = soft_run(x[:, ::2], levels, biases, 5.0, 0.9, 1.1, up[:, ::2])
        ref = soft_run(x[:, ::2].contiguous(), levels, biases, 5.0, 0.9, 1.1, up[:, ::2])
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    torch.testing.assert_close(got[3], ref[3], rtol=1e-6, atol=0)
    torch.testing.assert_close(got[4], ref[4], rtol=1e-6, atol=0)


def test_soft_fused_special_values_and_fallbacks():
    levels, biases = WEIGHT_LEVELS["2"], [-0.5, 0.5]
    x = torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0, -0.0, 1e30, -1e30, 1e-40])
    lv, b = torch.tensor(levels), torch.tensor(biases)
    fused = soft_quantize(x, lv, b, 10.0, 0.5, 2.0)
    with torch_path():
        ref = soft_quantize(x, lv, b, 10.0, 0.5, 2.0)
    torch.testing.assert_close(fused, ref, rtol=1e-6, atol=1e-7, equal_nan=True)
    x64 = torch.randn(50, dtype=torch.float64)
    assert not kernels.fusable(x64)
    y64 = soft_quantize(x64, lv.double(), b.double(), 3.0)
    assert y64.dtype == torch.float64
    with torch_path():
        assert torch.equal(y64, soft_quantize(x64, lv.double(), b.double(), 3.0))


def test_parallel_kernels_equal_serial():
    """Fixed chunks and fixed sums: 2 threads give the serial results bit for bit."""
    gen = torch.Generator().manual_seed(6)
    x = torch.rand(kernels.PARALLEL_MIN * 2 + 123, generator=gen) * 4
    up = torch.randn(x.shape, generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = (soft_run(x, ACT_LEVELS["2"], [0.5, 1.5, 2.5], 6.0, 1.0, 1.0, up),
                  lsq_run(x, torch.tensor(0.4), 0, 3, 0.01, up))
        torch.set_num_threads(2)
        parallel = (soft_run(x, ACT_LEVELS["2"], [0.5, 1.5, 2.5], 6.0, 1.0, 1.0, up),
                    lsq_run(x, torch.tensor(0.4), 0, 3, 0.01, up))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(serial, parallel, strict=True):
        for u, v in zip(a, b, strict=True):
            if u is None:
                assert v is None
            else:
                assert torch.equal(u, v)
