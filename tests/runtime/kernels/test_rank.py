"""The numba rank kernel equals numpy's searchsorted(side="right") exactly."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lowbit.runtime.kernels.rank import rank

FLOATS = st.floats(width=32, allow_nan=True, allow_infinity=True)


@given(t=hnp.arrays(np.float32, st.integers(0, 40), elements=st.floats(
           -10, 10, width=32), unique=True),
       x=hnp.arrays(np.float32, hnp.array_shapes(max_dims=4, max_side=9), elements=FLOATS))
@settings(max_examples=150, deadline=None)
def test_rank_equals_searchsorted(t, x):
    t = np.sort(t)
    got = rank(t, x)
    want = np.searchsorted(t, x, side="right")
    assert got.dtype == np.int16 and got.shape == x.shape
    assert np.array_equal(got, want)


def test_rank_on_thresholds_and_neighbours():
    """On each threshold, its float32 neighbours, +-inf, NaN and -0, for each strategy's size:
    the padded counts (4, 16 and 64 wide: +inf input must not count the +inf pads), the even
    guess and the search."""
    rng = np.random.default_rng(3)
    t = np.array([-1.0, 0.0, 0.5, 3.0], np.float32)
    uneven = [np.unique(rng.uniform(-3, 3, m).astype(np.float32)) for m in (2, 10, 16, 40, 64,
                                                                         90)]
    for tt in [t, np.float32([0.25]), np.arange(-8, 9, dtype=np.float32) + 0.5, *uneven]:
        x = np.concatenate([tt, np.nextafter(tt, -np.inf), np.nextafter(tt, np.inf),
                            np.float32([-np.inf, np.inf, np.nan, -0.0])]).astype(np.float32)
        assert np.array_equal(rank(tt, x), np.searchsorted(tt, x, side="right")), tt.size
    big = np.random.default_rng(0).normal(size=(3, 70001)).astype(np.float32)
    assert np.array_equal(rank(t, big), np.searchsorted(t, big, side="right"))


@given(m=st.integers(17, 300), lo=st.floats(-5, 5), width=st.floats(0.01, 100),
       jitter=st.floats(0, 0.2), seed=st.integers(0, 2**16))
@settings(max_examples=60, deadline=None)
def test_rank_on_evenly_spaced_grids(m, lo, width, jitter, seed):
    """The guess-and-correct strategy (integer grids: thresholds at the midpoints)."""
    rng = np.random.default_rng(seed)
    step = width / m
    t = (lo + step * (np.arange(m) + rng.uniform(-jitter, jitter, m))).astype(np.float32)
    t = np.unique(t)
    x = np.concatenate([t, np.nextafter(t, np.float32(np.inf)), np.nextafter(
        t, np.float32(-np.inf)), rng.uniform(lo - width, lo + 2 * width, 500).astype(
            np.float32)]).astype(np.float32)
    assert np.array_equal(rank(t, x), np.searchsorted(t, x, side="right"))


def test_serial_and_parallel_variants_agree():
    """Small inputs take the one-thread copies of the loops, large ones the parallel ones."""
    from lowbit.runtime.kernels import rank as mod

    rng = np.random.default_rng(1)
    for m in (3, 12, 40, 200):
        t = np.sort(rng.normal(size=m).astype(np.float32))
        for n in (100, mod.PARALLEL_MIN + 7):
            x = rng.normal(size=n).astype(np.float32)
            assert np.array_equal(rank(t, x), np.searchsorted(t, x, side="right"))


def test_drifting_even_grid_falls_back_to_the_search():
    """Steps within a quarter of their mean (so the grid counts as even) that drift by many
    steps: the one-step correction cannot reach the rank, the kernel reports it and the
    binary search gives numpy's answer."""
    from lowbit.runtime.kernels import rank as mod

    m = 200
    d = np.where(np.arange(m - 1) < m // 2, 1.2, 0.8)
    t = np.concatenate(([0.0], np.cumsum(d))).astype(np.float32)
    assert mod._even(t)
    x = np.linspace(-5, t[-1] + 5, 5001, dtype=np.float32)
    tp = np.concatenate(([-np.inf], t, [np.inf])).astype(np.float32)
    step = (float(t[-1]) - float(t[0])) / (t.size - 1)
    out = np.empty(x.shape, np.int16)
    assert mod._SERIAL[mod._guess](x, tp, np.float32(t[0]), np.float32(1 / step), out)
    assert np.array_equal(rank(t, x), np.searchsorted(t, x, side="right"))


def test_even_grids_take_the_unchecked_guess_only_when_provably_exact():
    """Thresholds within a quarter step of the even grid (``_drift``) take ``_guess1`` (no check);
    a cumulative drift beyond it takes the checked guess; both equal numpy, at +-inf and NaN
    too, on the thresholds and their neighbours."""
    from lowbit.runtime.kernels import rank as mod

    rng = np.random.default_rng(5)
    m = 255
    even = ((np.arange(m) + 0.5) * 0.037 - 3.1).astype(np.float32)
    shake = rng.uniform(-0.1, 0.1, m)
    shake[[0, -1]] = 0  # the step is taken from the ends
    jitter = (even + shake * 0.037).astype(np.float32)
    d = np.where(np.arange(m - 1) < m // 2, 1.2, 0.8)
    drifting = np.concatenate(([0.0], np.cumsum(d))).astype(np.float32)
    for t, kernel in ((even, mod._guess1), (jitter, mod._guess1), (drifting, mod._guess)):
        assert mod.ranker(t).strategy == kernel.__name__
        x = np.concatenate([t, np.nextafter(t, -np.inf), np.nextafter(t, np.inf),
                            rng.uniform(t[0] - 3, t[-1] + 3, 4000).astype(np.float32),
                            np.float32([-np.inf, np.inf, np.nan, 3e38, -3e38])]).astype(
                                np.float32)
        want = np.searchsorted(t, x, side="right")
        assert np.array_equal(rank(t, x), want)
        big = np.tile(x, 1 + mod.PARALLEL_MIN // x.size)  # the parallel copy
        assert np.array_equal(rank(t, big), np.searchsorted(t, big, side="right"))
