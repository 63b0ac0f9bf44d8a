"""Fused CPU kernels (numba) for the hot elementwise paths of training, with the torch
expressions they replace as the reference. Each kernel computes exactly (bit for bit) what its
torch fallback computes — IEEE float32 division, ceil and clamp, no fast-math — and is used only
for contiguous float32 CPU tensors; anything else (GPU, float64, no numba) takes the fallback.
Test: tests/functional/test_kernels.py (kernel == fallback on random and edge inputs).
"""

from __future__ import annotations

import os

import numpy as np
import torch

try:  # numba is a declared dependency; LOWBIT_NO_NUMBA=1 forces the torch path
    if os.environ.get("LOWBIT_NO_NUMBA"):
        raise ImportError
    import numba
except ImportError:  # pragma: no cover - exercised only without numba
    numba = None


def _signed_levels_torch(w: torch.Tensor, d: torch.Tensor, s: float) -> torch.Tensor:
    t = w / d
    k = t.abs().ceil_().clamp_(1.0, s)
    return k.copysign_(t.add_(0.0))  # t + 0.0 turns -0.0 into +0.0: sign(0) = +1


if numba is not None:

    @numba.njit(cache=True, nogil=True, fastmath=False)
    def _signed_levels_nb(w, d, s, out):  # pragma: no cover - compiled
        one = np.float32(1.0)
        for i in range(w.size):
            t = w[i] / d  # float32 / float32: the same IEEE division as torch
            k = min(max(np.ceil(np.abs(t)), one), s)
            out[i] = -k if t < 0 else k


def _ivan_act_torch(x: torch.Tensor, n: float, step: torch.Tensor):
    out = torch.clamp(torch.ceil(torch.clamp(x, 0.0, n) / step), 0.0, n) * step
    return out, (x > 0) & (x <= n)


if numba is not None:

    @numba.njit(cache=True, nogil=True, fastmath=False)
    def _ivan_act_nb(x, n, step, out, inside):  # pragma: no cover - compiled
        zero = np.float32(0.0)
        for i in range(x.size):
            v = x[i]
            inside[i] = v > zero and v <= n
            if v != v:  # NaN stays NaN, as in torch
                out[i] = v
                continue
            k = np.ceil(min(max(v, zero), n) / step)  # float32 / float32, as torch
            out[i] = min(max(k, zero), n) * step


def ivan_act(x: torch.Tensor, n: float, step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A_b's output clamp(ceil(clamp(x, 0, n) / step), 0, n) * step and the gradient mask
    0 < x <= n, in one pass for float32 CPU tensors."""
    x = x.detach()
    if numba is None or x.device.type != "cpu" or x.dtype != torch.float32:
        return _ivan_act_torch(x, n, step)
    x = x.contiguous()
    out = torch.empty_like(x)
    inside = torch.empty(x.shape, dtype=torch.bool)
    _ivan_act_nb(x.view(-1).numpy(), np.float32(n), np.float32(step), out.view(-1).numpy(),
                 inside.view(-1).numpy())
    return out, inside


def signed_levels(w: torch.Tensor, d: torch.Tensor, s: float) -> torch.Tensor:
    """k = clamp(ceil(|w / d|), 1, s) with the sign of w / d (sign(0) = sign(-0.0) = +1)."""
    w = w.detach()
    if numba is None or w.device.type != "cpu" or w.dtype != torch.float32:
        return _signed_levels_torch(w, d, s)
    w = w.contiguous()
    out = torch.empty_like(w)
    _signed_levels_nb(w.view(-1).numpy(), np.float32(d), np.float32(s), out.view(-1).numpy())
    return out
