"""Histogram observers against independent references: a brute-force MSE search on the raw
samples, a plain numpy TensorRT entropy loop, numpy.percentile, torch's fake-quant ops; the
running histogram's re-binning, per-channel = per-tensor, properties and bad input."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import BitsError, EmptyTensorError, LowbitError, MethodError, NonFiniteError
from lowbit.functional.uniform import uniform, uniform_encode
from lowbit.quantizers.histogram import (
    OBSERVERS,
    KLObserver,
    MSEObserver,
    PercentileObserver,
    histogram_mse,
    kl_threshold,
    make_observer,
)
from lowbit.quantizers.observers import MinMaxObserver, MovingAverageMinMaxObserver

HISTOGRAMS = (PercentileObserver, MSEObserver, KLObserver)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _heavy(seed: int, n: int = 8000) -> np.ndarray:
    """Student-t (3 degrees of freedom) with a few far outliers: min-max wastes the grid."""
    rng = np.random.default_rng(seed)
    x = rng.standard_t(3, n)
    x[:6] = [40.0, -35.0, 25.0, 30.0, -28.0, 22.0]
    return x.astype(np.float32)


# --- MSE: brute force on the raw samples ------------------------------------------------------

def _np_qparams(lo, hi, qmin, qmax, symmetric):
    """torch.ao's min/max rule, written again in numpy (0 inside the range)."""
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    if symmetric:
        scale = np.maximum(np.maximum(-lo, hi) / ((qmax - qmin) / 2), np.finfo(np.float32).eps)
        return scale, np.full_like(scale, 0.0 if qmin < 0 else (qmin + qmax + 1) // 2)
    scale = np.maximum((hi - lo) / (qmax - qmin), np.finfo(np.float32).eps)
    return scale, np.clip(qmin - np.round(lo / scale), qmin, qmax)


def _np_mse(x, scale, zp, qmin, qmax):
    """Mean squared fake-quantization error of samples x (n,) for K grids (K,) -> (K,)."""
    s, z = np.asarray(scale, np.float64)[:, None], np.asarray(zp, np.float64)[:, None]
    x = x.astype(np.float64)[None]
    q = np.clip(np.round(x / s) + z, qmin, qmax)
    return (((q - z) * s - x) ** 2).mean(1)


def _brute_force_best(x, qmin, qmax, symmetric):
    if symmetric:
        t = np.linspace(0, np.abs(x).max(), 1201)[1:]
        lo, hi = -t, t
    else:
        lo, hi = np.meshgrid(np.linspace(x.min(), 0, 61), np.linspace(0, x.max(), 61))
        lo, hi = lo.ravel(), hi.ravel()
    errs = np.concatenate([_np_mse(x, *_np_qparams(lo[i:i + 300], hi[i:i + 300], qmin, qmax,
                                                   symmetric), qmin, qmax)
                           for i in range(0, len(lo), 300)])
    return errs.min()


@pytest.mark.parametrize("qmin,qmax,scale,zero_point", [(-8, 7, 0.3, 0), (0, 15, 0.25, 6),
                                                        (0, 65535, 1e-4, 30000)])
def test_histogram_mse_is_the_integral_over_each_bin(qmin, qmax, scale, zero_point):
    counts = np.random.default_rng(4).integers(0, 50, 40)
    edge, width = -2.05, 0.11  # bins straddle levels, half steps and both clip points
    sub = max(4000, int(100 * width / scale))  # midpoint rule, 100+ points a step, each bin
    u = edge + width * (np.arange(40)[:, None] + (np.arange(sub) + 0.5) / sub)
    q = np.clip(np.round(u / scale) + zero_point, qmin, qmax)
    reference = ((((q - zero_point) * scale - u) ** 2).mean(1) * counts).sum()
    ours = histogram_mse(torch.from_numpy(counts), edge, width, torch.tensor([scale]),
                         torch.tensor([float(zero_point)]), qmin, qmax)
    assert float(ours[0]) == pytest.approx(reference, rel=2e-4)  # midpoint bias 1/100^2


@pytest.mark.parametrize("bits,signed,symmetric", [(4, True, True), (8, True, True),
                                                   (4, False, False), (8, False, False)])
def test_mse_range_is_near_the_brute_force_best(bits, signed, symmetric):
    x = _heavy(bits + symmetric)
    o = MSEObserver(bits, signed=signed, symmetric=symmetric)
    o.update(torch.from_numpy(x))
    scale, zp = o.qparams()
    ours = _np_mse(x, scale.numpy()[None], zp.numpy()[None], o.qmin, o.qmax)[0]
    best = _brute_force_best(x, o.qmin, o.qmax, symmetric)
    m = MinMaxObserver(bits, signed=signed, symmetric=symmetric)
    m.update(torch.from_numpy(x))
    ms, mz = m.qparams()
    minmax = _np_mse(x, ms.numpy()[None], mz.numpy()[None], o.qmin, o.qmax)[0]
    assert ours <= 1.02 * best
    assert ours < (0.9 if bits == 4 else 1.0) * minmax  # the outliers make min-max worse


# --- KL: TensorRT's loop in plain numpy -------------------------------------------------------

def _trt_reference(hist: np.ndarray, levels: int, start: int = 0) -> int:
    """Migacz 2017's pseudo-code, one candidate i at a time (i = bins included); the first i
    within 1e-9 (relative) of the least divergence wins (exact ties come out of gaps)."""
    hist = hist.astype(np.float64)
    kls = []
    first = max(levels, start)
    for i in range(first, len(hist) + 1):
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()
        sliced = hist[:i]
        starts = np.arange(levels) * (i // levels)
        merged = np.add.reduceat(sliced, starts)
        nonzero = np.add.reduceat((p != 0).astype(np.float64), starts)
        lengths = np.diff(np.append(starts, i))
        q = np.repeat(np.divide(merged, nonzero, out=np.zeros(levels), where=nonzero > 0),
                      lengths) * (p != 0)
        if q.sum() == 0:
            kls.append(np.inf)
            continue
        p, q = p / p.sum(), q / q.sum()
        on = p > 0
        kls.append(np.inf if (q[on] == 0).any()
                   else float(np.sum(p[on] * np.log(p[on] / q[on]))))
    kls = np.array(kls)
    least = kls.min()
    return first + int(np.flatnonzero(kls <= least + 1e-9 * abs(least) + 1e-15)[0])


@functools.cache
def _fixed_histograms():
    rng = np.random.default_rng(7)
    laplace = np.histogram(np.abs(rng.laplace(0, 1, 200_000)), 2048)[0]
    gappy = laplace.copy()
    gappy[900:1900] = 0  # empty stretch, then outliers: groups of Q with nothing in them
    gappy[1990:] = rng.integers(0, 3, 58)
    relu = np.histogram(np.maximum(rng.normal(0.2, 1, 100_000), 0), 2048)[0]
    return [laplace, gappy, relu]


@pytest.mark.parametrize("levels", [4, 128, 256])
@pytest.mark.parametrize("which", [0, 1, 2])
def test_kl_threshold_equals_the_tensorrt_loop(levels, which):
    hist = _fixed_histograms()[which]
    assert kl_threshold(torch.from_numpy(hist), levels) == _trt_reference(hist, levels)


@pytest.mark.parametrize("symmetric", [True, False])
def test_kl_observer_uses_the_grid_levels(symmetric):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(50_000, generator=g) * 2
    x = x if symmetric else x.clamp(min=0)  # ReLU outputs for the affine grid
    o = KLObserver(8, signed=symmetric, symmetric=symmetric)
    o.update(x)
    hist = o.counts[0].numpy().copy()
    hist[0] = hist[1]  # the zero bin takes its neighbour's count (pytorch-quantization's rule)
    i = _trt_reference(hist, 128 if symmetric else 256, o.bins // 16)
    lo, hi = o.clip_range()
    assert hi == pytest.approx(float(o.edge[0] + i * o.width[0]), rel=1e-6)
    assert lo == (-hi if symmetric else 0.0)
    assert i < o.bins  # the tail is clipped


# --- percentile -------------------------------------------------------------------------------

@pytest.mark.parametrize("percentile,symmetric", [
    (p, symmetric) for p in (99.99, 99.0, 90.0) for symmetric in (True, False)
] + [((0.5, 99.5), False)])  # a symmetric grid takes one percentile
def test_percentile_equals_numpy_within_one_bin(percentile, symmetric):
    x = np.random.default_rng(1).laplace(0.5, 1.0, 100_000).astype(np.float32)
    o = PercentileObserver(8, signed=symmetric, symmetric=symmetric, percentile=percentile)
    o.update(torch.from_numpy(x))
    lo, hi = (float(v) for v in o.clip_range())
    width = float(o.width[0])
    if symmetric:
        assert abs(hi - np.percentile(np.abs(x), percentile)) <= width
        assert lo == -hi
    else:
        low, high = percentile if isinstance(percentile, tuple) else (100 - percentile,
                                                                      percentile)
        assert abs(lo - np.percentile(x, low)) <= width
        assert abs(hi - np.percentile(x, high)) <= width


# --- running histogram: re-binning ------------------------------------------------------------

def _growing(seed=0, n=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 2000, generator=g) * (1 + 1.7 * i) + 0.4 * i for i in range(n)]


@pytest.mark.parametrize("symmetric", [True, False])
def test_rebinning_conserves_counts_and_matches_one_update(symmetric):
    batches = _growing()
    whole = torch.cat([b.reshape(-1) for b in batches])
    multi = PercentileObserver(8, signed=symmetric, symmetric=symmetric, percentile=99.9)
    for b in batches:
        multi.update(b)
    assert int(multi.counts.sum()) == whole.numel()
    # merged whole bins = the direct histogram on the final bins, but for the batch extremes
    # that sat exactly on an old top edge (the last bin kept them)
    v = (whole.abs() if symmetric else whole).double()
    idx = torch.floor((v - multi.edge) / multi.width).clamp(0, multi.bins - 1).long()
    direct = torch.bincount(idx, minlength=multi.bins)
    assert int((direct - multi.counts[0]).abs().sum()) <= 2 * len(batches)
    one = PercentileObserver(8, signed=symmetric, symmetric=symmetric, percentile=99.9)
    one.update(whole)
    tol = 2 * float(max(multi.width[0], one.width[0]))
    for a, b in zip(multi.clip_range(), one.clip_range(), strict=True):
        assert abs(float(a) - float(b)) <= tol
    m_multi, m_one = MSEObserver(4), MSEObserver(4)
    for b in batches:
        m_multi.update(b)
    m_one.update(whole)
    x = whole.numpy()
    errs = [_np_mse(x, o.qparams()[0].numpy()[None], o.qparams()[1].numpy()[None], 0, 15)[0]
            for o in (m_multi, m_one)]
    assert errs[0] <= 1.02 * errs[1]


def test_zeros_first_then_data():
    o = KLObserver(4, axis=0)
    o.update(torch.zeros(3, 10))
    scale, zp = o.qparams()
    assert torch.all(scale == torch.finfo(torch.float32).eps) and torch.all(zp == 0)
    o.update(torch.arange(30.0).reshape(3, 10))
    assert torch.equal(o.counts.sum(1), torch.tensor([20, 20, 20]))
    assert int(o.counts[0, 0]) == 11  # ten zeros and the 0.0 of the second batch


# --- per channel, fake quantization peers -----------------------------------------------------

@pytest.mark.parametrize("cls", HISTOGRAMS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_per_channel_equals_per_tensor_on_each_channel(cls, symmetric):
    g = torch.Generator().manual_seed(5)
    scales = torch.tensor([0.5, 1.0, 3.0]).reshape(1, 3, 1)
    batches = [torch.randn(4, 3, 300, generator=g) * scales * (1 + i) for i in range(3)]
    kw = dict(bits=6, signed=symmetric, symmetric=symmetric, bins=512)
    per = cls(axis=1, **kw)
    for b in batches:
        per.update(b)
    scale, zp = per.qparams()
    for c in range(3):
        one = cls(**kw)
        for b in batches:
            one.update(b[:, c])
        s, z = one.qparams()
        assert torch.equal(scale[c], s) and torch.equal(zp[c], z)


@pytest.mark.parametrize("cls", HISTOGRAMS)
@pytest.mark.parametrize("signed,symmetric", [(True, True), (False, False)])
def test_fake_quant_with_chosen_qparams_equals_torch(cls, signed, symmetric):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(6, 5, 40, generator=g) * torch.arange(1.0, 7.0).reshape(6, 1, 1)
    per = cls(8, signed=signed, symmetric=symmetric, axis=0, bins=512)
    per.update(x)
    scale, zp = per.qparams()
    ours = uniform(x, scale, zp, per.qmin, per.qmax, 0)
    peer = torch.fake_quantize_per_channel_affine(x, scale, zp.to(torch.int32), 0,
                                                  per.qmin, per.qmax)
    assert torch.equal(ours, peer)
    one = cls(8, signed=signed, symmetric=symmetric, bins=512)
    one.update(x)
    scale, zp = one.qparams()
    peer = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zp), one.qmin, one.qmax)
    assert torch.equal(uniform(x, scale, zp, one.qmin, one.qmax), peer)


# --- properties -------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(data=st.lists(st.floats(-1e4, 1e4, width=32), min_size=1, max_size=60),
       extra=st.floats(0.5, 50.0), bits=st.integers(2, 16), which=st.integers(0, 2),
       signed=st.booleans(), symmetric=st.booleans())
def test_properties(data, extra, bits, which, signed, symmetric):
    o = HISTOGRAMS[which](bits, signed=signed, symmetric=symmetric)
    x = torch.tensor(data)
    for b in (x, x * extra):  # the second batch re-bins
        o.update(b)
    seen = torch.cat([x, x * extra])
    low, high = min(float(seen.min()), 0.0), max(float(seen.max()), 0.0)
    lo, hi = (float(v) for v in o.clip_range())
    if symmetric:
        assert lo == -hi and 0.0 <= hi <= max(-low, high)
    else:
        assert low <= lo <= 0.0 <= hi <= high
    scale, zp = o.qparams()
    assert torch.isfinite(scale) and scale > 0 and o.qmin <= zp <= o.qmax
    codes, _ = uniform_encode(seen, scale, zp, o.qmin, o.qmax)
    assert int(codes.min()) >= 0 and int(codes.max()) <= o.qmax - o.qmin
    assert int(o.counts.sum()) == seen.numel()


# --- bad input, constants, state, names -------------------------------------------------------

@pytest.mark.parametrize("cls", HISTOGRAMS)
def test_bad_input_and_constants(cls):
    with pytest.raises(LowbitError, match="observed nothing"):
        cls(8).qparams()
    bad = torch.ones(4)
    bad[2] = float("inf")
    o = cls(8)
    with pytest.raises(NonFiniteError):
        o.update(bad)
    with pytest.raises(EmptyTensorError):
        o.update(torch.ones(0))
    assert int(o.count) == 0 and int(o.counts.sum()) == 0  # nothing recorded
    for bits in (1, 17, 4.0):
        with pytest.raises(BitsError):
            cls(bits)
    with pytest.raises(ValueError, match="bins"):
        cls(8, bins=1)
    for value, symmetric in ((0.0, True), (100.5, True), (float("nan"), False), (30.0, False),
                             ((1.0, 99.0), True), ((99.0, 1.0), False), ("99", False)):
        with pytest.raises(ValueError, match="percentile"):
            PercentileObserver(8, symmetric=symmetric, percentile=value)
    for constant in (0.0, 3.0, -2.5):
        for symmetric in (True, False):
            o = cls(8, signed=symmetric, symmetric=symmetric)
            o.update(torch.full((7,), constant))
            scale, zp = o.qparams()
            assert torch.isfinite(scale) and scale > 0 and not torch.isnan(zp)
            y = uniform(torch.full((7,), constant), scale, zp, o.qmin, o.qmax)
            assert torch.isfinite(y).all()
            if constant == 0.0:
                assert scale == torch.finfo(torch.float32).eps and torch.all(y == 0)


@pytest.mark.parametrize("cls", HISTOGRAMS)
@pytest.mark.parametrize("axis", [None, 0])
def test_state_dict_round_trip(cls, axis):
    o = cls(5, axis=axis, bins=256)
    for b in _growing(2, 3):
        o.update(b)
    fresh = cls(5, axis=axis, bins=256)
    fresh.load_state_dict(o.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fresh.qparams(), o.qparams(), strict=True))
    fresh.update(_growing(3, 1)[0])  # and it goes on from there
    assert int(fresh.counts.sum()) == 4 * 2000 * 4


def test_make_observer():
    assert set(OBSERVERS) == {"minmax", "ema", "percentile", "mse", "kl"}
    assert type(make_observer("ema", bits=4, momentum=0.1)) is MovingAverageMinMaxObserver
    o = make_observer("percentile", bits=4, percentile=99.0)
    assert isinstance(o, PercentileObserver) and o.bits == 4
    with pytest.raises(MethodError, match="minmax, ema, percentile, mse, kl"):
        make_observer("entropy")


def test_kl_is_not_captured_by_a_spike_at_zero():
    """Mostly-zero inputs (81 % of MNIST pixels): with the zero bin counted as is, KL clipped a
    4-bit grid at 0.04 of a [0, 1] range; its neighbour's count and TensorRT's first candidate
    (bins / 16) keep the range."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20_000, generator=g)
    x[torch.rand(20_000, generator=g) < 0.8] = 0.0
    for bits in (4, 3, 2):
        o = KLObserver(bits)
        o.update(x)
        assert float(o.clip_range()[1]) >= 1.0 / 16, bits
