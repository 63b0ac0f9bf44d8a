"""An activation quantizer's rank, ``searchsorted(thresholds, x, side="right")``, in numba
(the reference is numpy's searchsorted, :meth:`lowbit.runtime.records.Grid.rank`). The
strategies, chosen per grid: one threshold (binary activations) ``x >= t``; up to 16 a count
``sum_j (t_j <= x)`` over the thresholds padded to 4 or 16 (a literal width: the threshold
loop unrolls and the elements vectorise, one compare per threshold per register of elements);
evenly spaced thresholds (every integer grid) a guess ``floor((x - t_0) / step) + 1``
corrected once, branch-free, by a comparison with each neighbour -- with no check where every
threshold lies within a quarter step of the even grid (then provably exact, :func:`_guess1`),
else checked (a guess still wrong -- thresholds that drift from even -- sends the whole
tensor to the binary search); uneven up to 64 the padded count over 64; else a binary search.
The strategy and its constants are chosen once per grid (:func:`ranker`), not per call.
Measured on ResNet-20 (benchmarks/results/fast_runtime_spr_rank/, Sapphire Rapids, 1 thread,
batch 64): the 4-bit activations' quantize nodes 62.7 -> 25.8 ms with the padded count, the
8-bit ones 43.1 -> 32.1 ms with the unchecked guess.

Exact: comparisons only, so the ranks equal numpy's for every float32 input, NaN included
(numpy sorts NaN after every threshold: rank ``len(thresholds)``). Tested against numpy in
tests/runtime/kernels/test_rank.py.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from lowbit.runtime.kernels.jit import named_copy


@njit(cache=True, parallel=True)
def _rank(x: np.ndarray, t: np.ndarray, out: np.ndarray) -> None:
    n, m = x.size, t.size
    step = 4096
    for b in prange((n + step - 1) // step):
        for i in range(b * step, min(n, (b + 1) * step)):
            v = x[i]
            if v != v:  # NaN
                out[i] = m
                continue
            lo, hi = 0, m  # first index with t[idx] > v
            while lo < hi:
                mid = (lo + hi) >> 1
                if t[mid] <= v:
                    lo = mid + 1
                else:
                    hi = mid
            out[i] = lo


@njit(cache=True, parallel=True)
def _one(x: np.ndarray, t0: float, out: np.ndarray) -> None:
    """One threshold (a binary activation): ``x >= t0``, or NaN."""
    n = x.size
    step = 8192
    for b in prange((n + step - 1) // step):
        for i in range(b * step, min(n, (b + 1) * step)):
            v = x[i]
            out[i] = np.int16((v >= t0) | (v != v))


@njit(inline="always")
def _count_padded(x, tt, width, m, out):  # pragma: no cover - compiled
    """``min(sum_j (tt_j <= x), m)`` over ``width`` thresholds ``tt`` (the grid's m, then +inf
    pads; ``width`` a literal, so that LLVM unrolls the threshold loop and vectorises over the
    elements). The min undoes the pads' count for x = +inf; NaN: m."""
    n = x.size
    step = 4096
    for b in prange((n + step - 1) // step):
        for i in range(b * step, min(n, (b + 1) * step)):
            v = x[i]
            c = 0
            for j in range(width):
                c += v >= tt[j]
            out[i] = m if v != v else min(c, m)


@njit(cache=True, parallel=True)
def _count4(x: np.ndarray, tt: np.ndarray, m: int, out: np.ndarray) -> None:
    """2 to 4 thresholds, padded to 4 (:func:`_count_padded`)."""
    _count_padded(x, tt, 4, m, out)


@njit(cache=True, parallel=True)
def _count16(x: np.ndarray, tt: np.ndarray, m: int, out: np.ndarray) -> None:
    """5 to 16 thresholds (or none), padded to 16 (:func:`_count_padded`)."""
    _count_padded(x, tt, 16, m, out)


@njit(cache=True, parallel=True)
def _count64(x: np.ndarray, tt: np.ndarray, m: int, out: np.ndarray) -> None:
    """17 to 64 thresholds, padded to 64 (:func:`_count_padded`)."""
    _count_padded(x, tt, 64, m, out)


@njit(cache=True, parallel=True)
def _guess1(x: np.ndarray, tp: np.ndarray, t0: float, inv: float, out: np.ndarray) -> None:
    """:func:`_guess` without the check, for grids whose thresholds lie within a quarter step
    of ``t0 + k step`` (:func:`_drift`): the guess is then at most one off (below), so the
    one correction gives the rank. Proof: the guess counts the k with ``k <= u + e`` (u =
    (x - t0) / step, e the float32 rounding of the guess, ``|e| <= 4 (m + 2) 2^-24``), the
    rank those with ``k + d_k / step <= u`` (``|d_k| <= step / 4``); a k counted by one and not
    the other has ``|u - k| <= 1/4 + |e| < 1/2``, and at most one integer is that close to u.
    NaN ranks m; +inf, for which the +inf pad compares true, is clamped to m."""
    n, m = x.size, tp.size - 2
    fm = np.float32(m)
    step = 4096
    for b in prange((n + step - 1) // step):
        for i in range(b * step, min(n, (b + 1) * step)):
            v = x[i]
            g = (v - t0) * inv + np.float32(1.0)
            g = g if g >= np.float32(0.0) else np.float32(0.0)  # NaN too: rank fixed below
            g = g if g <= fm else fm
            r = np.int32(g)
            r = r + np.int32(tp[r + 1] <= v) - np.int32(tp[r] > v)
            r = r if r <= m else m
            out[i] = np.int16(m) if v != v else np.int16(r)


@njit(cache=True, parallel=True)
def _guess(x: np.ndarray, tp: np.ndarray, t0: float, inv: float, out: np.ndarray) -> bool:
    """Evenly spaced thresholds ``tp[1:-1]`` (``tp`` padded with -inf, +inf): the guess
    ``floor((x - t0) * inv) + 1`` corrected once by a comparison with each neighbour,
    branch-free so that it vectorises. Returns True when some rank is still wrong (the guess
    was more than one off: the caller then runs the binary search)."""
    n, m = x.size, tp.size - 2
    fm = np.float32(m)
    step = 4096
    bad = 0
    for b in prange((n + step - 1) // step):
        miss = 0
        for i in range(b * step, min(n, (b + 1) * step)):
            v = x[i]
            g = min(max((v - t0) * inv + np.float32(1.0), np.float32(0.0)), fm)
            r = np.int32(g if v == v else fm)  # NaN: rank m, as numpy sorts it last
            r = min(max(r + np.int32(tp[r + 1] <= v) - np.int32(tp[r] > v), 0), m)
            miss |= np.int32(tp[r] > v) | np.int32(tp[r + 1] <= v)
            out[i] = r
        bad += miss
    return bad != 0


# the same loops on one thread: below PARALLEL_MIN elements a parallel region's start-up
# (tens of microseconds, milliseconds when another process holds a core) costs more than
# the work
PARALLEL_MIN = 1 << 16
def serial_copy(f):
    """A one-thread copy of ``f`` under its own name (:mod:`lowbit.runtime.kernels.jit`: two
    dispatchers of one name would share cache entries)."""
    return named_copy(f, f"{f.__name__}_serial")


_SERIAL = {f: serial_copy(f) for f in (_one, _count4, _count16, _count64, _guess1, _guess,
                                        _rank)}


def _even(t: np.ndarray) -> bool:
    """Evenly spaced to within a quarter step (where the one-step correction almost always
    reaches the rank; a miss is detected and searched)."""
    if t.size < 3:
        return False
    d = np.diff(t.astype(np.float64))
    return bool(np.abs(d - d.mean()).max() <= 0.25 * d.mean())


def _drift(t: np.ndarray) -> float:
    """The largest distance of a threshold from the even grid ``t0 + k step`` (step from the
    ends), in steps (float64)."""
    t64 = t.astype(np.float64)
    step = (t64[-1] - t64[0]) / (t.size - 1)
    return float(np.abs(t64 - (t64[0] + step * np.arange(t.size))).max() / step)


def _padded(t: np.ndarray, width: int) -> np.ndarray:
    out = np.full(width, np.inf, np.float32)
    out[:t.size] = t
    return out


def ranker(thresholds: np.ndarray):
    """``f(x)``: int16 ranks of float32 ``x`` (any shape) against the increasing
    ``thresholds``, with the strategy and its constants chosen once (the runtime builds one
    per activation grid at load)."""
    t = np.ascontiguousarray(thresholds, dtype=np.float32)
    if t.size == 1:
        kind, args = _one, (t[0],)
    elif 2 <= t.size <= 4:
        kind, args = _count4, (_padded(t, 4), t.size)
    elif t.size <= 16:
        kind, args = _count16, (_padded(t, 16), t.size)
    elif _even(t):
        step = (float(t[-1]) - float(t[0])) / (t.size - 1)
        tp = np.concatenate(([-np.inf], t, [np.inf])).astype(np.float32)
        exact = _drift(t) <= 0.25 and t.size < 1 << 16  # _guess1's proof holds
        kind = _guess1 if exact else _guess
        args = (tp, np.float32(t[0]), np.float32(1.0 / step))
    elif t.size <= 64:
        kind, args = _count64, (_padded(t, 64), t.size)
    else:
        kind, args = _rank, (t,)

    def f(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty(x.shape, np.int16)
        flat, dst = x.reshape(-1), out.reshape(-1)
        big = flat.size >= PARALLEL_MIN
        k = kind if big else _SERIAL[kind]
        if k(flat, *args, dst):  # only the checked guess returns True (it missed): search
            (_rank if big else _SERIAL[_rank])(flat, t, dst)
        return out

    f.strategy = kind.__name__  # which loop serves this grid (tests, breakdowns)
    return f


def rank(thresholds: np.ndarray, x: np.ndarray) -> np.ndarray:
    """int16 ranks of float32 ``x`` (any shape) against the increasing ``thresholds``."""
    return ranker(thresholds)(x)
