"""Exact decision thresholds of a frozen scalar activation quantizer.

Every activation quantizer of lowbit, once frozen and per tensor, is a step function of its
float32 input, and all but ABC-Net's with a negative beta (below) are monotone non-decreasing,
with at most ``2^bits`` output values ``v_0 < ... < v_{L-1}``.
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

Not monotone, still a step function: a quantizer whose codebook is bit-planes (ABC-Net's
``sum_n beta_n H_{v_n}(x)``, Lin et al. 2017, sec. 3.3) sets each bit n of its code by a
non-decreasing indicator of ``x`` (``x + v_n >= 1/2``, a float32 addition: monotone), whatever
the signs of the betas. :func:`plane_thresholds` finds each plane's switch-on point exactly by
the same bisection on that plane's own bit; the grid's thresholds are the distinct switch
points, ``codes[j]`` the code on ``[t_{j-1}, t_j)`` and ``values[j]`` its value, in x-order and
not necessarily increasing (a negative beta after fine-tuning). :func:`step_grid` writes such
a grid only when the values do decrease somewhere (``monotone = False``); it is checked like a
monotone one, on every threshold, its float32 neighbours, between thresholds and at random.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from lowbit.errors import LowbitError
from lowbit.functional.codebook import BitPlanes

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


def _probes(t: np.ndarray, seed: int) -> np.ndarray:
    """Where a grid is checked: each threshold, its float32 neighbours, midway between
    thresholds, random inputs over their span and the special values."""
    rng = np.random.default_rng(seed)
    span = float(np.max(np.abs(t))) if len(t) else 1.0
    return np.concatenate([t, key_float(float_key(t) - 1), key_float(float_key(t) + 1),
                           _between(t), rng.standard_normal(4096) * 2 * max(span, 1e-3),
                           np.array([0.0, -0.0, -_F32_MAX, _F32_MAX])]).astype(np.float32)


def _verify(quant, values, t, reach, name, seed) -> None:
    x = _probes(t, seed)
    got = values[reach[np.searchsorted(t, x, side="right")]]
    want = _apply(quant, x)
    if not np.array_equal(got, want):
        i = int(np.flatnonzero(got != want)[0])
        raise LowbitError(f"{name}: thresholds disagree with the quantizer at x = {x[i]!r} "
                          f"({got[i]!r} vs {want[i]!r}); it is not a per-tensor monotone "
                          "step function")


def _between(t: np.ndarray) -> np.ndarray:
    """A float32 midway (in float32 order) between each two consecutive thresholds."""
    k = float_key(t)
    return key_float(k[:-1] + (k[1:] - k[:-1]) // 2) if len(t) > 1 else t[:0]


def _codes(quant: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        codes, _ = quant.encode(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return codes.numpy().astype(np.int64)


def plane_thresholds(quant: torch.nn.Module, name: str = "quantizer",
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(t, codes)`` of a frozen quantizer with a per-tensor :class:`BitPlanes` codebook whose
    every plane (bit n of ``quant.encode(x)``) is a non-decreasing step of ``x``: ``t`` the
    distinct float32 points where a plane switches on (increasing), ``codes[j]`` the code on
    ``[t_{j-1}, t_j)`` (module doc). Checks ``encode`` and the output against them on every
    threshold, its float32 neighbours, between thresholds and at random; raises
    :class:`LowbitError` where they disagree (a plane that is not a monotone step)."""
    cb = quant.codebook()
    if not isinstance(cb, BitPlanes) or cb.alphas.dim() != 1:
        raise LowbitError(f"{name}: plane thresholds need a per-tensor bit-plane codebook")
    ends = _codes(quant, np.array([-_F32_MAX, _F32_MAX], np.float32))
    planes = np.arange(cb.bits)
    lo_on, hi_on = (ends[0] >> planes) & 1, (ends[1] >> planes) & 1
    if np.any(lo_on > hi_on):
        n = int(np.flatnonzero(lo_on > hi_on)[0])
        raise LowbitError(f"{name}: bit-plane {n} is on at -max and off at +max; it is not a "
                          "non-decreasing step of the input")
    want = planes[lo_on < hi_on]  # the planes that switch on at some finite x
    lo_k, hi_k = float_key(np.array([-_F32_MAX, _F32_MAX]))
    lo, hi = np.full(len(want), lo_k), np.full(len(want), hi_k)  # plane off at lo, on at hi
    while len(want) and np.any(hi - lo > 1):
        mid = (lo + hi) // 2
        on = ((_codes(quant, key_float(mid)) >> want) & 1).astype(bool)
        hi, lo = np.where(on, mid, hi), np.where(on, lo, mid)
    t = key_float(np.unique(hi))
    codes = _codes(quant, np.concatenate([[-_F32_MAX], t]).astype(np.float32))
    _verify_planes(quant, cb.decode(torch.arange(cb.num_codes)).numpy(), t, codes, name, seed)
    return t.astype(np.float32), codes


def _verify_planes(quant, values, t, codes, name, seed) -> None:
    x = _probes(t, seed)
    rank = np.searchsorted(t, x, side="right")
    got_codes, got = codes[rank], values[codes[rank]]
    want_codes, want = _codes(quant, x), _apply(quant, x)
    bad = (got_codes != want_codes) | (got != want)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise LowbitError(f"{name}: plane thresholds disagree with the quantizer at x = "
                          f"{x[i]!r} (code {got_codes[i]} vs {want_codes[i]}, {got[i]!r} vs "
                          f"{want[i]!r}); its bit-planes are not monotone steps of the input")


class StepGrid(NamedTuple):
    """A frozen activation quantizer as the runtime's grid: ``rank = searchsorted(thresholds,
    x, "right")``, output ``values[rank]`` and code ``codes[rank]``; ``monotone`` when the
    values increase strictly."""

    thresholds: np.ndarray
    values: np.ndarray
    codes: np.ndarray
    monotone: bool


def step_grid(quant: torch.nn.Module, name: str = "quantizer", seed: int = 0) -> StepGrid:
    """The grid of ``quant``: monotone by :func:`thresholds` (each value's first code in the
    codebook), or, for a bit-plane codebook whose values decrease somewhere along ``x``, by
    :func:`plane_thresholds` (``monotone`` False). Raises :class:`LowbitError` for a quantizer
    that is neither (module doc)."""
    cb = quant.codebook()
    values = cb.decode(torch.arange(cb.num_codes)).numpy().astype(np.float32)
    plane_error = None
    if isinstance(cb, BitPlanes) and cb.alphas.dim() == 1:
        try:
            t, codes = plane_thresholds(quant, name, seed)
        except LowbitError as e:
            plane_error = e
        else:
            if np.any(np.diff(values[codes]) < 0):
                return StepGrid(t, values[codes], codes, False)
    try:
        t, reach = thresholds(quant, values, name, seed)
    except LowbitError as e:
        if plane_error is None:
            raise
        raise LowbitError(f"{name} is not a monotone step function, nor a step function of "
                          "monotone bit-planes; the runtime cannot reproduce it by thresholds. "
                          f"As monotone: {e}. As bit-planes: {plane_error}") from e
    grid_values = np.unique(values)[reach]
    codes = np.array([int(np.flatnonzero(values == v)[0]) for v in grid_values], np.int64)
    return StepGrid(t, grid_values, codes, True)
