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


def _ivan_act_torch(x: torch.Tensor, n: float, step: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.ceil(torch.clamp(x, 0.0, n) / step), 0.0, n) * step


def _ivan_act_grad_torch(grad: torch.Tensor, x: torch.Tensor, n: float) -> torch.Tensor:
    return grad * ((x > 0) & (x <= n)).to(grad.dtype)


def _ivan_act_loop(x, n, step, out):  # pragma: no cover - compiled
    zero = np.float32(0.0)
    for i in _range(x.size):  # selects only, no branches: LLVM vectorizes the loop
        v = x[i]
        k = min(max(np.ceil(min(max(v, zero), n) / step), zero), n)  # float32 ops, as torch
        out[i] = v if v != v else k * step  # NaN stays NaN, as in torch


def _ivan_act_grad_loop(grad, x, n, out):  # pragma: no cover - compiled
    zero = np.float32(0.0)
    for i in _range(x.size):
        v = x[i]
        out[i] = grad[i] * np.float32((v > zero) & (v <= n))


PARALLEL_MIN = 1 << 16  # below this, one thread: starting the pool costs more than it saves
_KERNELS: dict[str, tuple] = {}

if numba is not None:
    _range = numba.prange  # plain range in the serial compile, a parallel loop in the other
    for _loop in (_ivan_act_loop, _ivan_act_grad_loop):
        _KERNELS[_loop.__name__] = (numba.njit(cache=True, nogil=True)(_loop),
                                    numba.njit(cache=True, nogil=True, parallel=True)(_loop))


def _launch(name: str, n: int, *args) -> None:
    serial, parallel = _KERNELS[name]
    if n >= PARALLEL_MIN and torch.get_num_threads() > 1:
        numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
        parallel(*args)
    else:
        serial(*args)


def _fast(*tensors: torch.Tensor) -> bool:
    return numba is not None and all(t.device.type == "cpu" and t.dtype == torch.float32
                                     for t in tensors)


def _layout(t: torch.Tensor) -> torch.memory_format:
    """channels_last for an NHWC-dense 4-d tensor (kept so, no copy), else contiguous."""
    nhwc = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
    if nhwc and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _flat(t: torch.Tensor) -> np.ndarray:
    """A 1-d numpy view of a dense tensor's memory, in memory order (elementwise kernels)."""
    if t.dim() == 4 and not t.is_contiguous():
        t = t.permute(0, 2, 3, 1)  # channels_last: NHWC is its contiguous order
    return t.view(-1).numpy()


def ivan_act(x: torch.Tensor, n: float, step: torch.Tensor) -> torch.Tensor:
    """A_b's output clamp(ceil(clamp(x, 0, n) / step), 0, n) * step, in one pass."""
    x = x.detach()
    if not _fast(x):
        return _ivan_act_torch(x, n, step)
    x = x.contiguous(memory_format=_layout(x))
    out = torch.empty_like(x)
    _launch("_ivan_act_loop", x.numel(), _flat(x), np.float32(n), np.float32(step), _flat(out))
    return out


def ivan_act_grad(grad: torch.Tensor, x: torch.Tensor, n: float) -> torch.Tensor:
    """A_b's straight-through gradient grad * 1{0 < x <= n}, in one pass."""
    if not _fast(grad, x):
        return _ivan_act_grad_torch(grad, x, n)
    fmt = _layout(x)
    grad, x = grad.contiguous(memory_format=fmt), x.detach().contiguous(memory_format=fmt)
    out = torch.empty_like(x)
    _launch("_ivan_act_grad_loop", x.numel(), _flat(grad), _flat(x), np.float32(n), _flat(out))
    return out


def signed_levels(w: torch.Tensor, d: torch.Tensor, s: float) -> torch.Tensor:
    """k = clamp(ceil(|w / d|), 1, s) with the sign of w / d (sign(0) = sign(-0.0) = +1)."""
    w = w.detach()
    if numba is None or w.device.type != "cpu" or w.dtype != torch.float32:
        return _signed_levels_torch(w, d, s)
    w = w.contiguous()
    out = torch.empty_like(w)
    _signed_levels_nb(w.view(-1).numpy(), np.float32(d), np.float32(s), out.view(-1).numpy())
    return out
