"""Uniform affine fake quantization, per tensor or per channel.

Reference: Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", CVPR 2018, arXiv:1712.05877, eq. (1)-(2); the same
function as ``torch.fake_quantize_per_tensor_affine`` / ``_per_channel_affine``.

Encode:   q = clamp(round(x * (1/scale)) + zero_point, qmin, qmax)   (:func:`uniform_encode`)
          (round half to even; 1/scale computed in float32, as torch's kernel does);
          code = q - qmin, record ``IntegerGrid(LevelRange(qmin, qmax), scale, zero_point)``.
Forward:  y = (q - zero_point) * scale = record.decode(codes), bit for bit.
Backward: dy/dx = 1 where qmin <= round(x/scale) + zero_point <= qmax, else 0 (clipped STE).

Record: an :class:`~lowbit.functional.codebook.IntegerGrid` because the stored values *are*
integers q - zero_point times one scale per tensor or per output channel (dim 0); the levels
are the range qmin..qmax (a ``LevelRange``, no table), the zero point an int64 per block.
The training forward computes the integers q once (:func:`_integers`, shared with the encoder)
and multiplies ``(q - zero_point) * scale`` in float, which is IntegerGrid.decode's arithmetic
on the same integers (|q - zero_point| < 2^24, so exact in float32): no record is built per
training step, and decode(encode(x)) equals the forward bit for bit.
Tests: tests/core/test_uniform.py (bit-equal to torch's ops, forward and gradient;
test_uniform_encode_decode_is_the_forward, test_uniform_act_freeze_encode).
"""

from __future__ import annotations

import torch

from lowbit.functional.checks import along, check_finite, check_nonempty, tensor_arg
from lowbit.functional.codebook import IntegerGrid, LevelRange


def _broadcast(
    p: torch.Tensor | float, x: torch.Tensor, axis: int | None, what: str
) -> torch.Tensor:
    p = torch.as_tensor(tensor_arg(p, what, table=True), dtype=torch.float32, device=x.device)
    return along(p, x, axis)


def _integers(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
    """round(x * (1/scale)) + zero_point, unclamped (1/scale in float32, as torch's kernel)."""
    return torch.round(x * (1.0 / scale)) + zp


def _checked(x, scale, zero_point, qmin: int, qmax: int, axis: int | None):
    if qmin >= qmax:
        raise ValueError(f"qmin ({qmin}) must be < qmax ({qmax})")
    s = _broadcast(scale, tensor_arg(x, "x"), axis, "scale")
    if bool((s <= 0).any()):  # a NaN scale (from NaN activations) propagates NaN instead
        raise ValueError("scale must be > 0")
    return s, _broadcast(zero_point, x, axis, "zero_point").round()


def uniform_encode(
    x: torch.Tensor,
    scale: torch.Tensor | float,
    zero_point: torch.Tensor | int,
    qmin: int,
    qmax: int,
    axis: int | None = None,
) -> tuple[torch.Tensor, IntegerGrid]:
    """Codes ``q - qmin`` (int64, shaped like ``x``) and the IntegerGrid whose decode is
    :func:`uniform` of ``x``; ``axis`` None (per tensor) or 0 (per output channel). The grid
    has ``(qmax - qmin).bit_length()`` bits (b for the 2^b levels of a b-bit grid)."""
    check_finite(x, "x")
    if axis is not None and axis % max(x.dim(), 1) != 0:
        raise ValueError(f"uniform_encode: per-channel grids are along dim 0, got axis={axis}")
    s, zp = _checked(x, scale, zero_point, qmin, qmax, axis)
    q = torch.clamp(_integers(x.detach(), s, zp), qmin, qmax)
    per = (-1,) if axis is not None and s.dim() else ()
    dtype = torch.promote_types(x.dtype, torch.float32)  # the forward's output dtype
    grid = IntegerGrid(LevelRange(qmin, qmax), s.reshape(per).to(dtype),
                       (qmax - qmin).bit_length(), zero_point=zp.reshape(per).long())
    return (q - qmin).long(), grid


class _Uniform(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):
        q = _integers(x, scale, zero_point)
        ctx.save_for_backward((q >= qmin) & (q <= qmax))
        return (torch.clamp(q, qmin, qmax) - zero_point) * scale  # = grid.decode(codes)

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
    Equal to ``uniform_encode``'s ``grid.decode(codes)`` (per tensor or along axis 0).
    """
    s, zp = _checked(x, scale, zero_point, qmin, qmax, axis)
    if x.numel() == 0:
        return x.clone()
    return _Uniform.apply(x, s, zp, qmin, qmax)


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
