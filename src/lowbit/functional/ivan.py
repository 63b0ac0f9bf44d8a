"""The weight and activation quantizers Q_b and A_b of C. Ivan, "Quantization Schemes for
Training Neural Networks" (shared/papers/ivan-quantization-schemes-for-training).

Q_b, eq. (3), on x in [-1, 1], with s = 2^(b-1):
    Q_b(x) = max(0, ceil(x s)/s) + max(0, -floor(x s)/s) * sign(x)
  i.e. ceil(x s)/s for x > 0 and floor(x s)/s for x < 0: 2^b levels +-k/s, k = 1..s, no zero.
  Deviation: eq. (3) gives Q_b(0) = 0, a (2^b + 1)-th level that the paper dismisses as having
  probability 2^-32 per weight. We map x = 0 to +1/s, the level of the smallest positive
  inputs, so that there are exactly 2^b levels (every b-bit code is used, no extra one) and
  Q_1 is the sign function with sign(0) = +1, as the paper says it reduces to.
  Note: the paper's text lists the levels as +-alpha k / 2^b; eq. (3) gives +-alpha k / 2^(b-1),
  which is what we follow (the text's set would need b + 1 bits).
  Backward: straight-through, dQ/dx = 1.

Eq. (4), the scaled layer weight: W = |alpha| * Q_b(w_hat), w_hat = w / max|w|.
  Deviation (reading): the paper writes w_hat = alpha w / max|w| *and* multiplies Q_b by |alpha|,
  which would scale twice and feed Q_b values outside [-1, 1]; its own stated level set
  {+-alpha k / ...} follows from feeding Q_b the weights scaled to [-1, 1] and multiplying by
  |alpha| once, which is what we do. max|w| is a statistic (no gradient flows through it):
  dW/dw = |alpha| / max|w|, dW/dalpha = sign(alpha) Q_b(w_hat).

A_b, eq. (5), with n = 2^b - 1 and x_hat = clip(x, 0, n):
    A_b(x) = ReLU( max(x_hat)/n * ceil(x_hat n / max(x_hat)) )
  2^b levels {0, M/n, ..., M}, M = max(x_hat) over the tensor. Backward: straight-through
  inside the clip range, dA/dx = 1 for 0 < x <= n, 0 elsewhere (the gradients of ReLU and
  clip). M is a statistic (no gradient). When M = 0 (no positive input) the output is 0.
  ``max_value`` lets a module pass a running M for inference (see quantizers/ivan.py).

Records (one definition per method): each function has an encoder giving int64 codes and an
:class:`~lowbit.functional.codebook.IntegerGrid`, and the forward is that grid's decode:
- Q_b and eq. (4): ``IntegerGrid(LevelRange(-s, s, skip_zero=True), scale)``, code c the c-th
  of -s..-1, 1..s; scale 1/s for Q_b (:func:`ivan_weight_encode`), |alpha|/s for eq. (4)
  (:func:`ivan_scaled_encode`). An integer grid because the levels are the integers +-k times
  one scale; a LevelRange (no table) so that 31-bit weights allocate nothing.
- A_b: ``IntegerGrid(LevelRange(0, 2^b - 1), M/n)`` (:func:`ivan_activation_encode`).
  For b >= 25, n = 2^b - 1 is not a float32: the forward's float32 clip and ceil use
  float32(n) = 2^b, and the code of the top level is clamped to 2^b - 1, whose float32 is that
  same 2^b: decode still equals the forward.
The forwards compute the same float integers k (the fused kernels ``signed_levels`` and
``ivan_act``, bit-exact against their torch expressions) and multiply by the same scale tensor
as IntegerGrid.decode does, without building a record per training step.

Tests: tests/core/test_ivan.py (numpy reference of eq. 3 and 5, gradients, properties;
test_ivan_encode_decode_is_the_forward, test_ivan_act_encode_31_bits).
"""

from __future__ import annotations

import torch

from lowbit.functional.checks import check_bits, check_finite, check_nonempty, tensor_arg
from lowbit.functional.codebook import IntegerGrid, LevelRange
from lowbit.functional.ste import ste
from lowbit.kernels.fused import ivan_act, ivan_act_grad, signed_levels


def _signed_grid(bits: int, scale: torch.Tensor) -> IntegerGrid:
    s = 2 ** (bits - 1)
    return IntegerGrid(LevelRange(-s, s, skip_zero=True), scale, bits)


def _q_levels(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed level k in {-s..-1, 1..s} (float) of Q_b(x) = k / s, and the scale 1/s.

    k = clamp(ceil(|x s|), 1, s) with the sign of x, and sign(0) = sign(-0.0) = +1
    (x / (1/s) == x * s exactly: 1/s is a power of two).
    """
    inv = torch.tensor(1.0 / 2 ** (bits - 1), dtype=x.dtype)
    return signed_levels(x, inv, float(2 ** (bits - 1))), inv


def ivan_weight_encode(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, IntegerGrid]:
    """Q_b(x), eq. (3): codes and ``IntegerGrid(LevelRange(-s, s, skip_zero=True), 1/s)``."""
    bits, x = check_bits(bits), tensor_arg(x, "x")
    check_finite(x, "x")
    k, inv = _q_levels(x.detach(), bits)
    grid = _signed_grid(bits, inv)
    return grid.levels.to_codes(k), grid


def ivan_weight(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Q_b(x), ivan eq. (3), for x in [-1, 1]; straight-through gradient (see module doc).
    Equal to ``grid.decode(codes)`` of :func:`ivan_weight_encode`."""
    bits, x = check_bits(bits), tensor_arg(x, "x")
    k, inv = _q_levels(x.detach(), bits)
    return ste(x, k * inv)


def _scaled_levels(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed level indices k of Q_b(w / max|w|) and max|w| (1 for an all-zero ``w``).

    ``w / (m / s)`` equals ``(w / m) * s`` exactly (m / s and the product by s are exact
    power-of-two scalings), so this is Q_b of w / max|w| bit for bit. Raises NonFiniteError for
    NaN/Inf in ``w`` (max|w| is NaN or Inf iff ``w`` holds one: no extra pass over ``w``).
    """
    lo, hi = torch.aminmax(w.detach())
    m = torch.maximum(-lo, hi)
    if not bool(torch.isfinite(m)):
        check_finite(w, "weight")
    m = m if bool(m > 0) else torch.ones_like(m)
    s = float(2 ** (bits - 1))
    return signed_levels(w, m / s, s), m


def _scaled_checked(w, alpha, bits: int):
    bits = check_bits(bits)
    check_nonempty(tensor_arg(w, "w"), "weight")
    return tensor_arg(alpha, "alpha", like=w, table=True), bits


def ivan_scaled_encode(w: torch.Tensor, alpha: torch.Tensor, bits: int
                       ) -> tuple[torch.Tensor, IntegerGrid]:
    """Eq. (4), |alpha| Q_b(w / max|w|): codes and ``IntegerGrid(LevelRange(-s, s,
    skip_zero=True), |alpha| / s)`` (per tensor), decoding to :func:`ivan_scaled_weight`."""
    alpha, bits = _scaled_checked(w, alpha, bits)
    k, _ = _scaled_levels(w, bits)
    scale = (alpha.detach().abs() / float(2 ** (bits - 1)))
    grid = _signed_grid(bits, scale.to(torch.promote_types(w.dtype, scale.dtype)))
    return grid.levels.to_codes(k), grid


class _IvanScaledWeight(torch.autograd.Function):
    """W = |alpha| Q_b(w / max|w|) and its straight-through gradient, in one Function."""

    @staticmethod
    def forward(ctx, w, alpha, bits):
        k, m = _scaled_levels(w, bits)
        s = float(2 ** (bits - 1))
        ctx.save_for_backward(k, alpha, m)
        ctx.s = s
        return k * (alpha.abs() / s)  # = grid.decode(codes) of ivan_scaled_encode

    @staticmethod
    def backward(ctx, grad):
        k, alpha, m = ctx.saved_tensors
        grad_w = grad * (alpha.abs() / m)
        dot = torch.dot(grad.reshape(-1), k.reshape(-1))
        grad_alpha = (dot * (torch.sign(alpha) / ctx.s)).reshape(alpha.shape)
        return grad_w, grad_alpha, None


def ivan_scaled_weight(w: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
    """Eq. (4): |alpha| * Q_b(w / max|w|). An all-zero ``w`` maps to +|alpha|/2^(b-1)."""
    alpha, bits = _scaled_checked(w, alpha, bits)
    return _IvanScaledWeight.apply(w, alpha, bits)


def _act_step(x: torch.Tensor, n: float, max_value: torch.Tensor | None) -> torch.Tensor:
    """M / n: M = max(x_hat) or ``max_value``. max(clip(x, 0, n)) == clip(max(x), 0, n): clip
    is monotone (NaN propagates)."""
    m = torch.clamp(x.max(), 0.0, n) if max_value is None else max_value.to(x.dtype)
    return m / float(n)


def ivan_activation_encode(x: torch.Tensor, bits: int, max_value: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, IntegerGrid]:
    """A_b(x), eq. (5): codes k = clamp(ceil(x_hat / (M/n)), 0, n) and ``IntegerGrid(
    LevelRange(0, 2^b - 1), M/n)``, decoding to :func:`ivan_activation` bit for bit."""
    bits = check_bits(bits)
    check_finite(tensor_arg(x, "x"), "x")
    n_int = 2**bits - 1
    if max_value is not None:
        max_value = tensor_arg(max_value, "max_value", like=x, table=True)
    empty = x.numel() == 0 and max_value is None  # no M at all: a zero grid
    step = torch.zeros((), dtype=x.dtype) if empty else _act_step(x.detach(), n_int, max_value)
    grid = IntegerGrid(LevelRange(0, n_int), step, bits)
    if x.numel() == 0 or bool(step == 0):
        return torch.zeros_like(x, dtype=torch.long), grid
    n = float(n_int)
    k = torch.clamp(torch.ceil(torch.clamp(x.detach(), 0.0, n) / step), 0.0, n)
    return k.long().clamp_(max=n_int), grid  # float32(n) is 2^b for b >= 25: see module doc


class _IvanActivation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, n, max_value):
        step = _act_step(x, n, max_value)
        ctx.save_for_backward(x)
        ctx.n = n
        if bool(step == 0):  # no positive input (or a zero running max): A_b is 0 everywhere
            return torch.zeros_like(x)
        return ivan_act(x, n, step)  # = grid.decode(codes); a NaN in x makes M NaN: NaN

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return ivan_act_grad(grad, x, ctx.n), None, None


def ivan_activation(
    x: torch.Tensor, bits: int, max_value: torch.Tensor | None = None
) -> torch.Tensor:
    """A_b(x), ivan eq. (5). ``max_value`` replaces max(x_hat) (e.g. a running max in eval).

    ``ceil(x_hat n / M)`` is computed as ``ceil(x_hat / (M / n))``, the same step the output is
    multiplied by, so that outputs are exactly ``k * step`` for integer k in 0..n.
    """
    n = float(2 ** check_bits(bits) - 1)
    if tensor_arg(x, "x").numel() == 0:
        return x.clone()
    if max_value is not None:
        max_value = tensor_arg(max_value, "max_value", like=x, table=True)
    return _IvanActivation.apply(x, n, max_value)
