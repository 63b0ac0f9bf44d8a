"""Exact decision thresholds of a frozen scalar activation quantizer.

Every activation quantizer of lowbit, once frozen and per tensor, is a monotone non-decreasing
step function of its float32 input with at most ``2^bits`` output values ``v_0 < ... < v_{L-1}``.
Such a function is fully described by ``L - 1`` thresholds: ``t_j`` = the smallest float32
``x`` with ``q(x) >= v_j``. Then for every float32 ``x``

    rank(x) = #{j : t_j <= x} = searchsorted(t, x, side="right"),   q(x) = v[rank(x)],

which is what the runtime computes (``numpy.searchsorted``). The thresholds are found by
bisection over the float32 numbers in their total order (the integer keys of their bit
patterns, :func:`float_key`), evaluating the quantizer itself: 32 vectorised steps find each
``t_j`` exactly, whatever formula the method uses (ivan's A_b, DoReFa, PACT, LSQ, HWGQ,
sign, power-of-two, Quantization Networks' step sum, ABC-Net's shifted binarizations, the
uniform affine grid). So the runtime reproduces the training quantizer bit for bit on every
float32 input without re-implementing any method; :func:`thresholds` checks this on the
thresholds, their float32 neighbours and random inputs before it returns, and refuses a
quantizer that is not monotone (tests/exporter/test_thresholds.py).
"""

from __future__ import annotations

import numpy as np
import torch

from lowbit.errors import LowbitError

_F32_MAX = np.float32(np.finfo(np.float32).max)


def float_key(x: np.ndarray) -> np.ndarray:
    """int64 keys in the order of the float32 values ``x`` (-0.0 and +0.0 share key 0)."""
    bits = np.asarray(x, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.where(bits >= 0, bits, -(bits & 0x7FFFFFFF))


def key_float(k: np.ndarray) -> np.ndarray:
    """The float32 of each key of :func:`float_key` (key 0 is +0.0)."""
    k = np.asarray(k, dtype=np.int64)
    bits = np.where(k >= 0, k, (-k) | 0x80000000).astype(np.uint32)
    return bits.view(np.float32)


def _apply(quant: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return quant(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def _rank(values: np.ndarray, out: np.ndarray, name: str) -> np.ndarray:
    r = np.searchsorted(values, out)
    r = np.minimum(r, len(values) - 1)
    if not np.array_equal(values[r], out):
        bad = out[values[r] != out][:3]
        raise LowbitError(f"{name}: the quantizer returned {bad.tolist()}, which are not in "
                          f"its codebook's values")
    return r


def thresholds(quant: torch.nn.Module, values: np.ndarray, name: str = "quantizer",
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(t, reachable)``: the float32 thresholds of ``quant`` over the sorted distinct float32
    ``values`` (its codebook decoded), and the indices of the values some finite input reaches
    (``t`` has one entry per reachable value after the first). Raises :class:`LowbitError` if
    the quantizer is not a monotone step function onto ``values``."""
    values = np.unique(np.asarray(values, dtype=np.float32))
    lo_k, hi_k = float_key(np.array([-_F32_MAX, _F32_MAX]))
    ends = _rank(values, _apply(quant, np.array([-_F32_MAX, _F32_MAX], np.float32)), name)
    want = np.arange(ends[0] + 1, ends[1] + 1)  # ranks above the lowest that finite x reach
    lo = np.full(len(want), lo_k)  # rank(q(lo)) < j
    hi = np.full(len(want), hi_k)  # rank(q(hi)) >= j
    while len(want) and np.any(hi - lo > 1):
        mid = (lo + hi) // 2
        r = _rank(values, _apply(quant, key_float(mid)), name)
        up = r >= want
        hi = np.where(up, mid, hi)
        lo = np.where(up, lo, mid)
    t = key_float(hi)
    # ranks sharing one threshold are jumped over: x >= t reaches the last of them
    last = np.r_[np.diff(float_key(t)) != 0, True] if len(t) else np.zeros(0, bool)
    reach = np.concatenate([[ends[0]], want[last]]).astype(np.int64)
    t = np.unique(t) if len(t) else t
    if len(t) != len(reach) - 1 or np.any(np.diff(float_key(t)) <= 0):
        raise LowbitError(f"{name} is not a monotone step function of its input; the runtime "
                          "cannot reproduce it by thresholds")
    _verify(quant, values, t, reach, name, seed)
    return t.astype(np.float32), reach


def _verify(quant, values, t, reach, name, seed) -> None:
    rng = np.random.default_rng(seed)
    span = float(np.max(np.abs(t))) if len(t) else 1.0
    probes = [t, key_float(float_key(t) - 1), key_float(float_key(t) + 1),
              (rng.standard_normal(4096) * 2 * max(span, 1e-3)).astype(np.float32),
              np.array([0.0, -0.0, -_F32_MAX, _F32_MAX], np.float32)]
    x = np.concatenate(probes).astype(np.float32)
    got = values[reach[np.searchsorted(t, x, side="right")]]
    want = _apply(quant, x)
    if not np.array_equal(got, want):
        i = int(np.flatnonzero(got != want)[0])
        raise LowbitError(f"{name}: thresholds disagree with the quantizer at x = {x[i]!r} "
                          f"({got[i]!r} vs {want[i]!r}); it is not a per-tensor monotone "
                          "step function")
