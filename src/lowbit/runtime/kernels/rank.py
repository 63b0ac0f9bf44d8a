"""An activation quantizer's rank, ``searchsorted(thresholds, x, side="right")``, in numba
(the reference is numpy's searchsorted, :meth:`lowbit.runtime.records.Grid.rank`). Three
strategies, chosen per grid: up to 16 thresholds a count ``sum_j (t_j <= x)`` that vectorises
over the elements; evenly spaced thresholds (every integer grid) a guess
``floor((x - t_0) / step) + 1`` corrected by comparisons with its neighbours; else a binary
search.

Exact: comparisons only, so the ranks equal numpy's for every float32 input, NaN included
(numpy sorts NaN after every threshold: rank ``len(thresholds)``). Tested against numpy in
tests/runtime/kernels/test_rank.py.
"""

from __future__ import annotations

import types

import numpy as np
from numba import njit, prange


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
def _count(x: np.ndarray, t: np.ndarray, out: np.ndarray) -> None:
    n, m = x.size, t.size
    step = 2048
    for b in prange((n + step - 1) // step):
        lo, hi = b * step, min(n, (b + 1) * step)
        acc = np.zeros(hi - lo, np.int16)
        for j in range(m):
            tj = t[j]
            for i in range(lo, hi):
                acc[i - lo] += x[i] >= tj
        for i in range(lo, hi):
            v = x[i]
            out[i] = m if v != v else acc[i - lo]


@njit(cache=True, parallel=True)
def _guess(x: np.ndarray, t: np.ndarray, t0: float, inv: float, out: np.ndarray) -> None:
    n, m = x.size, t.size
    step = 4096
    for b in prange((n + step - 1) // step):
        for i in range(b * step, min(n, (b + 1) * step)):
            v = x[i]
            if v != v:
                out[i] = m
                continue
            g = (v - t0) * inv + 1.0
            r = 0 if g < 0.0 else (m if g > m else int(g))
            while r < m and t[r] <= v:
                r += 1
            while r > 0 and t[r - 1] > v:
                r -= 1
            out[i] = r


# the same loops on one thread: below PARALLEL_MIN elements a parallel region's start-up
# (tens of microseconds, milliseconds when another process holds a core) costs more than
# the work
PARALLEL_MIN = 1 << 16
def _serial(f):
    """A one-thread copy of ``f`` under its own name (numba's cache is keyed by the function's
    qualified name: two dispatchers of one name would share cache entries)."""
    g = types.FunctionType(f.py_func.__code__, f.py_func.__globals__, f"{f.__name__}_serial")
    g.__qualname__ = g.__name__
    return njit(cache=True)(g)


_SERIAL = {f: _serial(f) for f in (_count, _guess, _rank)}


def _even(t: np.ndarray) -> bool:
    """Evenly spaced to within a quarter step (so the guess is at most one off)."""
    if t.size < 3:
        return False
    d = np.diff(t.astype(np.float64))
    return bool(np.abs(d - d.mean()).max() <= 0.25 * d.mean())


def rank(thresholds: np.ndarray, x: np.ndarray) -> np.ndarray:
    """int16 ranks of float32 ``x`` (any shape) against the increasing ``thresholds``."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    t = np.ascontiguousarray(thresholds, dtype=np.float32)
    out = np.empty(x.shape, np.int16)
    flat, dst = x.reshape(-1), out.reshape(-1)

    def pick(f):
        return f if flat.size >= PARALLEL_MIN else _SERIAL[f]

    if t.size <= 16:
        pick(_count)(flat, t, dst)
    elif _even(t):
        step = (float(t[-1]) - float(t[0])) / (t.size - 1)
        pick(_guess)(flat, t, float(t[0]), 1.0 / step, dst)
    else:
        pick(_rank)(flat, t, dst)
    return out
