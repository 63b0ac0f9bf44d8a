"""Interleaved timing for ``lowbit bench``: every contender is timed in the same rounds, one
after the other (round-robin), so that a change of the machine's load reaches all of them;
medians, quartiles and min/max over the rounds, warm-up excluded.

One sample is the mean seconds per call over ``calls`` back-to-back calls, ``calls`` chosen
per function from its warm-up so that a sample lasts at least ``min_seconds`` (a 50 us call is
too short for one clock reading to mean much). :func:`threads_set` gives torch, numba and
numpy's BLAS (the reference runtime's matmuls) the same thread count (ONNX Runtime gets it per
session: :mod:`lowbit.bench.models`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import numpy as np

MAX_CALLS = 10_000


@contextlib.contextmanager
def threads_set(threads: int):
    """Within the block torch, numba and numpy's BLAS (threadpoolctl) use ``threads`` threads;
    yields what each reports (numba None when not importable). The counts are restored after."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    numba = None
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency
        pass
    numba_before = numba.get_num_threads() if numba else None
    if numba:  # first: launching numba's OpenMP layer resets torch's count
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads, user_api="blas"):
            yield {"torch": torch.get_num_threads(),
                   "numba": numba.get_num_threads() if numba else None, "blas": threads}
    finally:
        if numba:
            numba.set_num_threads(numba_before)
        torch.set_num_threads(before)


def calls_for(fn: Callable[[], object], min_seconds: float, warmup: int = 2) -> int:
    """Run ``fn`` ``warmup`` times (compilation, caches, allocator) and return the number of
    calls per sample that makes a sample last >= ``min_seconds`` (from the last call's time)."""
    dt = 0.0
    for _ in range(max(1, warmup)):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
    return int(min(MAX_CALLS, max(1, np.ceil(min_seconds / max(dt, 1e-9)))))


def sample(fn: Callable[[], object], calls: int) -> float:
    """Mean seconds per call of ``calls`` calls of ``fn``."""
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls


def interleave(fns: dict[str, Callable[[], object]], repeat: int, calls: dict[str, int],
               tick: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """``repeat`` rounds; each round takes one :func:`sample` of every function in turn.
    ``tick()`` is called after each sample (a progress bar)."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            out[k].append(sample(fn, calls[k]))
            if tick is not None:
                tick()
    return out


def stats(seconds: list[float]) -> dict[str, float]:
    """Median, quartiles (linear interpolation), min and max of the samples (seconds)."""
    a = np.asarray(seconds, dtype=np.float64)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"seconds": float(med), "seconds_q1": float(q1), "seconds_q3": float(q3),
            "seconds_min": float(a.min()), "seconds_max": float(a.max())}


def ratio(base: list[float], other: list[float]) -> float:
    """Median over rounds of ``base / other`` (the speed-up of ``other`` over ``base``, both
    measured in the same round)."""
    return float(np.median(np.asarray(base) / np.asarray(other)))
