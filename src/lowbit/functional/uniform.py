"""Uniform affine fake quantization, per tensor or per channel.

Reference: Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", CVPR 2018, arXiv:1712.05877, eq. (1)-(2); the same
function as ``torch.fake_quantize_per_tensor_affine`` / ``_per_channel_affine``.

Forward:  q = clamp(round(x * (1/scale)) + zero_point, qmin, qmax);  y = (q - zero_point) * scale
          (round half to even; 1/scale computed in float32, as torch's kernel does).
Backward: dy/dx = 1 where qmin <= round(x/scale) + zero_point <= qmax, else 0 (clipped STE).
Test: tests/functional/test_uniform.py (bit-equal to torch's ops, forward and gradient).
"""

from __future__ import annotations

import torch

from lowbit.functional.checks import check_nonempty, tensor_arg


def _broadcast(
    p: torch.Tensor | float, x: torch.Tensor, axis: int | None, what: str
) -> torch.Tensor:
    p = torch.as_tensor(tensor_arg(p, what, table=True), dtype=torch.float32, device=x.device)
    if axis is None or p.dim() == 0:
        return p
    shape = [1] * x.dim()
    shape[axis] = -1
    return p.reshape(shape)


def uniform_codes(
    x: torch.Tensor,
    scale: torch.Tensor | float,
    zero_point: torch.Tensor | int,
    qmin: int,
    qmax: int,
    axis: int | None = None,
) -> torch.Tensor:
    """The integer grid values q in [qmin, qmax] (as float32) that :func:`uniform` decodes."""
    x = tensor_arg(x, "x")
    zp = _broadcast(zero_point, x, axis, "zero_point").round()
    return torch.clamp(_grid(x, _broadcast(scale, x, axis, "scale"), zp), qmin, qmax)


def _grid(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
    """round(x * (1/scale)) + zero_point, unclamped (1/scale in float32, as torch's kernel)."""
    return torch.round(x * (1.0 / scale)) + zp


class _Uniform(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):
        zp = zero_point.round()
        q = _grid(x, scale, zp)
        ctx.save_for_backward((q >= qmin) & (q <= qmax))
        return (torch.clamp(q, qmin, qmax) - zp) * scale

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def uniform(
    x: torch.Tensor,
    scale: torch.Tensor | float,
    zero_point: torch.Tensor | int,
    qmin: int,
    qmax: int,
    axis: int | None = None,
) -> torch.Tensor:
    """Fake-quantize ``x`` on the grid ``scale * (q - zero_point)``, q in [qmin, qmax].

    ``scale``/``zero_point`` are scalars (per tensor) or 1-D tensors along ``axis`` (per channel).
    Equal to ``torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)`` and to
    ``torch.fake_quantize_per_channel_affine(x, scale, zero_point, axis, qmin, qmax)``.
    Gradient flows to ``x`` only (the observer-driven scale is a statistic, not a parameter).
    """
    if qmin >= qmax:
        raise ValueError(f"qmin ({qmin}) must be < qmax ({qmax})")
    if tensor_arg(x, "x").numel() == 0:
        return x.clone()
    s = _broadcast(scale, x, axis, "scale")
    if bool((s <= 0).any()):  # a NaN scale (from NaN activations) propagates NaN instead
        raise ValueError("scale must be > 0")
    return _Uniform.apply(x, s, _broadcast(zero_point, x, axis, "zero_point"), qmin, qmax)


def minmax_qparams(
    lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point from a min/max range, as torch.ao's MinMaxObserver computes them.

    The range is first widened to contain 0 so that 0 is exactly representable. Symmetric:
    scale = max(|lo|, |hi|) / ((qmax - qmin) / 2), zero_point = 0 (for signed grids) or the
    grid midpoint. Affine: scale = (hi - lo) / (qmax - qmin), zero_point = qmin - round(lo/scale).
    A zero range (all values 0) gives scale = float32 eps: every value quantizes to exactly 0.
    """
    lo = torch.clamp(tensor_arg(lo, "lo", table=True).float(), max=0.0)
    hi = torch.clamp(tensor_arg(hi, "hi", table=True).float(), min=0.0)
    eps = torch.finfo(torch.float32).eps
    if symmetric:
        scale = torch.maximum(-lo, hi) / ((qmax - qmin) / 2)
        scale = torch.clamp(scale, min=eps)
        mid = 0 if qmin < 0 else (qmin + qmax + 1) // 2
        zero_point = torch.full_like(scale, float(mid))
    else:
        scale = torch.clamp((hi - lo) / (qmax - qmin), min=eps)
        zero_point = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax)
    return scale, zero_point


def minmax(x: torch.Tensor, axis: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor or per-channel (along ``axis``) min and max of ``x``."""
    check_nonempty(tensor_arg(x, "x"), "observed tensor")
    if axis is None:
        return x.detach().min(), x.detach().max()
    flat = x.detach().transpose(0, axis).reshape(x.shape[axis], -1)
    return flat.min(dim=1).values, flat.max(dim=1).values
