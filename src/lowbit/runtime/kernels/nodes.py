"""Fast non-layer nodes of the runtime graph (:mod:`lowbit.runtime.model`): the residual
``add`` with a coded operand (the ranks of an activation grid) read through its grid's values
in the same pass, instead of the reference's ``x + grid.values[ranks]`` (a gather into a new
float32 tensor, then the add).

Exact: one float32 addition per element, as numpy's (IEEE addition is commutative, so the
operand order does not matter); tested equal to the reference in tests/runtime/kernels/.
A node this module does not serve (broadcasting, other dtypes) keeps its reference path.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from lowbit.runtime.kernels.rank import PARALLEL_MIN, serial_copy


@njit(cache=True, parallel=True)
def _add_coded(x: np.ndarray, values: np.ndarray, ranks: np.ndarray, out: np.ndarray) -> None:
    n = x.size
    step = 8192
    for b in prange((n + step - 1) // step):
        for i in range(b * step, min(n, (b + 1) * step)):
            out[i] = x[i] + values[ranks[i]]


@njit(cache=True, parallel=True)
def _add_coded2(va: np.ndarray, ra: np.ndarray, vb: np.ndarray, rb: np.ndarray,
                out: np.ndarray) -> None:
    n = ra.size
    step = 8192
    for b in prange((n + step - 1) // step):
        for i in range(b * step, min(n, (b + 1) * step)):
            out[i] = va[ra[i]] + vb[rb[i]]


_SERIAL = {f: serial_copy(f) for f in (_add_coded, _add_coded2)}


def _pick(f, size: int):
    return f if size >= PARALLEL_MIN else _SERIAL[f]


def _flat(a: np.ndarray) -> np.ndarray | None:
    return a.reshape(-1) if a.flags.c_contiguous else None


def add(args: list):
    """``args[0] + args[1]`` where either may be float32 or coded ``(ranks, grid)``; None when
    this kernel does not serve the operands (the caller then runs the reference)."""
    a, b = args
    if not isinstance(a, tuple):
        a, b = b, a  # coded first, if any (IEEE addition commutes)
    if not isinstance(a, tuple):
        return None
    ra, ga = a
    if isinstance(b, tuple):
        rb, gb = b
        if ra.shape != rb.shape or ra.dtype != np.int16 or rb.dtype != np.int16:
            return None
        fa, fb = _flat(ra), _flat(rb)
        if fa is None or fb is None:
            return None
        out = np.empty(ra.shape, np.float32)
        _pick(_add_coded2, fa.size)(ga.values, fa, gb.values, fb, out.reshape(-1))
        return out
    if not isinstance(b, np.ndarray) or b.dtype != np.float32 or b.shape != ra.shape or \
            ra.dtype != np.int16:
        return None
    fx, fr = _flat(b), _flat(ra)
    if fx is None or fr is None:
        return None
    out = np.empty(b.shape, np.float32)
    _pick(_add_coded, fx.size)(fx, ga.values, fr, out.reshape(-1))
    return out
