"""DoReFa-Net weights, activations and gradients: S. Zhou, Y. Wu, Z. Ni, X. Zhou, H. Wen, Y. Zou,
"DoReFa-Net: Training Low Bitwidth Convolutional Neural Networks with Low Bitwidth Gradients",
arXiv:1606.06160, 2016; gradient formula as printed in the survey of Guo 2018
(shared/papers/guo2018-survey-quantized-neural-networks, eq. 31-32).

quantize_k (survey eq. 32, DoReFa eq. 5), for r in [0, 1] and n = 2^k - 1:
    quantize_k(r) = round(n r) / n          (round half to even; STE: d/dr = 1)

Weights, k >= 2 bits (DoReFa eq. 9):
    w_q = 2 quantize_k( tanh(w) / (2 max|tanh(w)|) + 1/2 ) - 1
  2^k levels 2 j / n - 1, j = 0..n, per tensor. Backward: STE through quantize_k only; the
  gradient flows through tanh and through max|tanh(w)| (to its arg-max entry), as autograd of
  the formula and the authors' tensorpack code give.
Weights, k = 1 (DoReFa eq. 7-8; survey eq. 7 with one scalar for the whole layer):
    w_q = E(|w|) sign(w),   sign(0) = +1,   dw_q/dw = 1 (E(|w|) is a constant, no gradient).
  An all-zero weight tensor gives E = 0: w_q = 0.

Activations (DoReFa eq. 11 with the clip of sec. 2.6): a_q = quantize_k(clip(x, 0, 1)).
  Backward: 1 for 0 <= x <= 1, 0 elsewhere (clip's gradient, boundaries included as tf.clip).

Gradients (survey eq. 31 with the noise of DoReFa eq. 12), for dr = dc/dr of a layer output:
    M = max_0 |dr|  (over all axes but the batch axis 0 = per example; per tensor for 1-D)
    f(dr) = 2 M [ quantize_k( dr / (2 M) + 1/2 + N(k) ) - 1/2 ],  N(k) = sigma / n,
    sigma ~ U(-1/2, 1/2) independently per element.
  Then n (dr/(2M) + 1/2 + N(k)) = z + sigma with z in [0, n], and E[round(z + sigma)] = z, so
  f is an unbiased estimator of dr. Examples with M = 0 get 0.
  Deviation (reading): the survey typesets eq. 31 as quantize_k(dr / (2 max|dr| + 1/2)), i.e.
  with +1/2 in the denominator, and leaves out the noise (it mentions it in the text); the
  affine map to [0, 1] needs the +1/2 outside the fraction, as in DoReFa eq. 12, which we follow.
  The result of round is clamped to [0, n]; this only acts on float rounding at the ends.

Records (one definition per method; :func:`dorefa_weight_encode`, :func:`dorefa_activation_encode`
give int64 codes and an :class:`~lowbit.functional.codebook.IntegerGrid`, and the forwards are
its decode, bit for bit):
- weights k >= 2: level 2j - n (the odd integers -n..n, a table of 2^k int64) times 1/n, code j:
  2 j/n - 1 = (2j - n)/n. An integer grid because a runtime can multiply the odd integers and
  apply 1/n once. Deviation (numerics): the forward is computed as (2j - n) * float(1/n), as
  decode does, where it was 2 (j / n) - 1: the two differ by at most 1 ulp of 1 (tested equal
  within 2^-23); the gradient is unchanged (((g 2) / n) n, as autograd of the old formula).
- weights k = 1: ``IntegerGrid(LevelRange(-1, 1, skip_zero=True), E|w|)``, code 1 iff w >= 0.
- activations: ``IntegerGrid(LevelRange(0, n), 1/n)``, code round(n clip(x, 0, 1)).
  Deviation (numerics): j * float(1/n) where it was j / n (at most 1 ulp apart).

Tests: tests/functional/test_dorefa.py (test_dorefa_encode_decode_is_the_forward).
"""

from __future__ import annotations

import torch

from lowbit.functional.checks import check_bits, check_finite, tensor_arg
from lowbit.functional.codebook import IntegerGrid, LevelRange
from lowbit.functional.stochastic import finite_absmax

DOREFA_GRAD_BITS = (2, 16)


class RoundSTE(torch.autograd.Function):
    """round(x) forward (exactly torch.round), identity backward."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def quantize_k(r: torch.Tensor, bits: int) -> torch.Tensor:
    """Survey eq. 32: round((2^k - 1) r) / (2^k - 1) with a straight-through gradient."""
    n = float(2 ** check_bits(bits) - 1)
    return RoundSTE.apply(tensor_arg(r, "r") * n) / n


def _weight_unit(w: torch.Tensor) -> torch.Tensor:
    """tanh(w) / (2 max|tanh(w)|) + 1/2, in [0, 1]; an all-zero w maps to 1/2."""
    t = torch.tanh(w)
    m = t.abs().max()
    m = torch.where(m > 0, m, torch.ones_like(m))
    return t / (2 * m) + 0.5


def _inv(bits: int, dtype: torch.dtype) -> torch.Tensor:
    """The scale 1/n, n = 2^k - 1, of both grids (the one tensor forward and decode multiply)."""
    return torch.tensor(1.0 / (2**bits - 1), dtype=dtype)


def dorefa_weight_encode(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, IntegerGrid]:
    """Codes and IntegerGrid of :func:`dorefa_weight` (see the module doc): k >= 2, code
    j = round(n u) with levels 2j - n times 1/n; k = 1, code 1 iff w >= 0 with levels -1, +1
    (LevelRange(-1, 1, skip_zero=True)) times E(|w|)."""
    bits, w = check_bits(bits, 1, 16), tensor_arg(w, "w")
    finite_absmax(w, "weight")
    w = w.detach()
    if bits == 1:
        return (w >= 0).long(), IntegerGrid(LevelRange(-1, 1, skip_zero=True),
                                            w.abs().mean(), 1)
    n = float(2**bits - 1)
    grid = IntegerGrid(torch.arange(-int(n), int(n) + 1, 2), _inv(bits, w.dtype), bits)
    return torch.round(_weight_unit(w) * n).long(), grid


class _OddLevels(torch.autograd.Function):
    """u -> (2 round(n u) - n) * (1/n): decode of code round(n u) on the odd grid; backward
    ((g 2) / n) n, bit for bit the gradient autograd gave 2 quantize_k(u) - 1."""

    @staticmethod
    def forward(ctx, u, n, inv):
        ctx.n = n
        return torch.round(u * n).mul_(2.0).sub_(n).mul_(inv)

    @staticmethod
    def backward(ctx, grad):
        return grad * 2 / ctx.n * ctx.n, None, None


class _SignMean(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w):
        e = w.abs().mean()
        return torch.where(w >= 0, e, -e)

    @staticmethod
    def backward(ctx, grad):
        return grad


def dorefa_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa eq. 9 (k >= 2) or eq. 7 (k = 1), 1..16 bits; see the module docstring."""
    bits = check_bits(bits, 1, 16)
    finite_absmax(tensor_arg(w, "w"), "weight")
    if bits == 1:
        return _SignMean.apply(w)
    return _OddLevels.apply(_weight_unit(w), float(2**bits - 1), _inv(bits, w.dtype))


class _DoReFaActivation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, n, inv):
        ctx.save_for_backward((x >= 0) & (x <= 1))
        return _act_levels(x, n).mul_(inv)  # = grid.decode(codes)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None


def _act_levels(x: torch.Tensor, n: float) -> torch.Tensor:
    return torch.round(torch.clamp(x, 0.0, 1.0) * n)


def dorefa_activation_encode(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, IntegerGrid]:
    """Codes round(n clip(x, 0, 1)) and ``IntegerGrid(LevelRange(0, n), 1/n)``, n = 2^k - 1,
    decoding to :func:`dorefa_activation` bit for bit."""
    bits = check_bits(bits, 1, 16)
    check_finite(tensor_arg(x, "x"), "x")
    grid = IntegerGrid(LevelRange(0, 2**bits - 1), _inv(bits, x.dtype), bits)
    return _act_levels(x.detach(), float(2**bits - 1)).long(), grid


def dorefa_activation(x: torch.Tensor, bits: int) -> torch.Tensor:
    """quantize_k(clip(x, 0, 1)), 1..16 bits, as j * (1/n) (the record's decode); gradient 1
    on [0, 1], 0 outside."""
    bits = check_bits(bits, 1, 16)
    if tensor_arg(x, "x").numel() == 0:
        return x.clone()
    return _DoReFaActivation.apply(x, float(2**bits - 1), _inv(bits, x.dtype))


def dorefa_gradient(
    g: torch.Tensor,
    bits: int,
    generator: torch.Generator | None = None,
    per_example: bool = True,
) -> torch.Tensor:
    """Survey eq. 31-32 with DoReFa's noise N(k): an unbiased k-bit quantization of ``g``.

    ``per_example``: M is the max over all axes but axis 0 (DoReFa's max_0) when ``g`` has 2+
    dimensions; ``False`` (or a 1-D ``g``) uses one M for the whole tensor. 2..16 bits.
    """
    lo, hi = DOREFA_GRAD_BITS
    n = float(2 ** check_bits(bits, lo, hi, what="gradient bits") - 1)
    if tensor_arg(g, "g").numel() == 0:
        return g.clone()
    a = g.abs()
    if per_example and g.dim() > 1:
        m = a.amax(dim=tuple(range(1, g.dim())), keepdim=True)
    else:
        m = a.max()
    safe = torch.where(m > 0, m, torch.ones_like(m))
    sigma = torch.rand(g.shape, generator=generator, dtype=g.dtype, device=g.device) - 0.5
    y = g / (2 * safe) + 0.5 + sigma / n
    q = torch.clamp(torch.round(y * n), 0.0, n) / n
    return 2 * m * (q - 0.5)


class _GradQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bits, generator, per_example):
        ctx.bits, ctx.generator, ctx.per_example = bits, generator, per_example
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return dorefa_gradient(grad, ctx.bits, ctx.generator, ctx.per_example), None, None, None


def quantize_gradient(
    x: torch.Tensor,
    bits: int,
    generator: torch.Generator | None = None,
    per_example: bool = True,
) -> torch.Tensor:
    """Identity forward; backward replaces the incoming gradient by :func:`dorefa_gradient`."""
    lo, hi = DOREFA_GRAD_BITS
    bits = check_bits(bits, lo, hi, what="gradient bits")
    return _GradQuant.apply(tensor_arg(x, "x"), bits, generator, per_example)
