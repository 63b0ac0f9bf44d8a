"""Quantizers whose range is a learned parameter: LSQ's step size and PACT's clipping level.

LSQ: S. K. Esser, J. L. McKinstry, D. Bablani, R. Appuswamy, D. S. Modha, "Learned Step Size
Quantization", ICLR 2020, arXiv:1902.08153.
  Forward, eq. (1)-(2):  v_bar = round(clip(v/s, -Q_N, Q_P)),  v_hat = v_bar * s.
  Signed (weights): Q_N = 2^(b-1), Q_P = 2^(b-1) - 1; unsigned (after ReLU): Q_N = 0, Q_P = 2^b - 1.
  Gradient w.r.t. s, eq. (3):  d v_hat / d s = -v/s + round(v/s)   if -Q_N < v/s < Q_P
                                              = -Q_N               if v/s <= -Q_N
                                              = Q_P                if v/s >= Q_P
  Gradient w.r.t. v: straight-through inside the range, 1 if -Q_N < v/s < Q_P, else 0.
  Gradient scale (sec. 2.2): the step's gradient is multiplied by g = 1/sqrt(N Q_P), N = N_W
  weights of the layer or N_F features of the activation; see :func:`lsq_grad_scale`.
  Step initialisation (sec. 2.1): s = 2 <|v|> / sqrt(Q_P); see :func:`lsq_init_step`.
  Deviation: v/s is computed as v * (1/s) in float32 (as torch's fake-quant kernels do), so the
  forward is bit-equal to ``torch.fake_quantize_per_tensor_affine(v, s, 0, -Q_N, Q_P)``.
  Deviation: a step s <= 0 (the paper never says what happens if learning drives it there) is
  used as float32 eps in the forward; its gradient is still eq. (3) at that eps.
  Note (peer): ``torch._fake_quantize_learnable_per_tensor_affine`` decides "inside the range" on
  round(v/s), not on v/s: for Q_P <= v/s < Q_P + 1/2 (and mirrored at -Q_N) it passes gradient 1
  to v and round(v/s) - v/s to s, where eq. (3) gives 0 and Q_P. We follow the paper.
  Round half to even throughout (torch.round), as torch's kernels.

PACT: J. Choi, Z. Wang, S. Venkataramani, P. I-J. Chuang, V. Srinivasan, K. Gopalakrishnan,
"PACT: Parameterized Clipping Activation for Quantized Neural Networks", arXiv:1805.06085, 2018.
  Forward, eq. (1):  y = 0.5 (|x| - |x - alpha| + alpha) = clip(x, 0, alpha);
           eq. (2):  y_q = round(y (2^k - 1) / alpha) * alpha / (2^k - 1).
  Gradient, eq. (3) (STE through round):  d y_q / d alpha = 1 if x >= alpha, else 0;
  d y_q / d x = 1 if 0 <= x < alpha, else 0.
  Deviation (edge): eq. (1) differentiated literally gives 1/2 at x = 0 (and at x = alpha for
  d/dx); we take the one-sided convention stated above (x = 0 passes, x = alpha clips).
  Deviation: eq. (2) is computed as k = round(y * (n / alpha)), y_q = k * (alpha / n), n = 2^k-1,
  so every output is exactly an integer times one step (the levels an encoder would store).
  Deviation: alpha <= 0 is used as float32 eps in the forward (eq. 3 gradient unchanged).

Records: :func:`lsq_encode` gives codes v_bar + Q_N and ``IntegerGrid(LevelRange(-Q_N, Q_P),
s)`` (per tensor, or per output channel (dim 0)); :func:`pact_encode` codes k and
``IntegerGrid(LevelRange(0, 2^k - 1), alpha / (2^k - 1))``. Integer grids because both store
integers times one learned step. The forwards (torch paths and the fused LSQ kernel) compute
the same integers and multiply by the same step tensor as decode: decode(encode(x)) is the
forward bit for bit (tests: test_lsq_encode_decode_is_the_forward, test_pact_encode_decode_is_
the_forward). No numerics change.

Tests: tests/functional/test_learned.py (numpy references of LSQ eq. 1-3 and PACT eq. 1-3,
torch peers for LSQ forward and gradients, closed-form gradients, properties);
tests/kernels/test_fused_kernels.py (LSQ's fused float32 CPU path == its torch path).
"""

from __future__ import annotations

import math

import torch

from lowbit.functional.checks import along, check_bits, check_finite, tensor_arg
from lowbit.functional.codebook import IntegerGrid, LevelRange
from lowbit.kernels import fused as kernels

_EPS = torch.finfo(torch.float32).eps


def lsq_encode(x: torch.Tensor, step: torch.Tensor, qn: int, qp: int,
               axis: int | None = None) -> tuple[torch.Tensor, IntegerGrid]:
    """Eq. (1): codes v_bar + qn (int64) and ``IntegerGrid(LevelRange(-qn, qp), s)``, s the
    step clamped to float32 eps as the forward uses it; ``axis`` None or 0 (per channel)."""
    x = tensor_arg(x, "x")
    check_finite(x, "x")
    step = tensor_arg(step, "step", like=x, table=True).detach()
    if axis is not None and axis % max(x.dim(), 1) != 0:
        raise ValueError(f"lsq_encode: per-channel grids are along dim 0, got axis={axis}")
    s = torch.clamp(along(step, x, axis), min=_EPS)
    v_bar = torch.clamp(torch.round(x.detach() * (1.0 / s)), -qn, qp)
    grid = IntegerGrid(LevelRange(-qn, qp), torch.clamp(step, min=_EPS),
                       (qn + qp).bit_length())
    return (v_bar + qn).long(), grid


class _LSQ(torch.autograd.Function):
    """Eq. (1)-(3). One step, float32 CPU: fused numba kernels (:func:`lowbit.kernels.fused.
    lsq_forward`, ``lsq_backward``), bit-equal to the torch path below (the step's sum
    in float64, so equal to summation order): the forward keeps only x, the backward recomputes
    v/s and gives the x and step gradients in one pass. Otherwise (per channel, float64, GPU):
    the torch path, which keeps the range mask and eq. (3) per element."""

    @staticmethod
    def forward(ctx, x, step, qn, qp, grad_scale, axis):
        s = torch.clamp(along(step, x, axis), min=_EPS)
        ctx.meta = (grad_scale, axis, step.shape)
        ctx.fused = s.numel() == 1 and kernels.fusable(x, s)
        if ctx.fused:
            inv = 1.0 / s
            ctx.range = (qn, qp)
            ctx.save_for_backward(x, inv)
            return kernels.lsq_forward(x, s, inv, qn, qp)
        q = x * (1.0 / s)
        v_bar = torch.round(q).clamp_(-qn, qp)
        out = v_bar * s
        inside = (q > -qn).logical_and_(q < qp)
        ds = v_bar.sub_(q.mul_(inside))  # eq. (3): round(q) - q inside, -Q_N or Q_P outside
        ctx.save_for_backward(inside, ds)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad_scale, axis, shape = ctx.meta
        if ctx.fused:
            x, inv = ctx.saved_tensors
            gx, gs = kernels.lsq_backward(grad, x, inv, *ctx.range)
            grad_s = torch.tensor(gs * grad_scale, dtype=x.dtype).reshape(shape)
            return gx, grad_s, None, None, None, None
        inside, ds = ctx.saved_tensors
        if axis is None or len(shape) == 0:
            grad_s = torch.dot(grad.reshape(-1), ds.reshape(-1))
        else:
            dims = [d for d in range(grad.dim()) if d != axis % grad.dim()]
            grad_s = (grad * ds).sum(dim=dims)
        return grad * inside, (grad_s * grad_scale).reshape(shape), None, None, None, None


def lsq(x: torch.Tensor, step: torch.Tensor, qn: int, qp: int, grad_scale: float = 1.0,
        axis: int | None = None) -> torch.Tensor:
    """LSQ fake quantization, eq. (1)-(2), with the eq. (3) step gradient times ``grad_scale``.

    ``step`` is a 0-d tensor (per tensor) or 1-D along ``axis`` (per channel). Gradients: to
    ``x`` straight-through inside (-qn, qp) (strict), to ``step`` eq. (3) summed over the
    elements sharing it, times ``grad_scale`` (g of sec. 2.2; pass 1.0 for the raw gradient).
    """
    if qn < 0 or qp <= 0:
        raise ValueError(f"need qn >= 0 and qp > 0, got qn={qn}, qp={qp}")
    x = tensor_arg(x, "x")
    step = tensor_arg(step, "step", like=x, table=True)
    if x.numel() == 0:
        return x.clone()
    return _LSQ.apply(x, step, qn, qp, float(grad_scale), axis)


def lsq_range(bits: int, signed: bool) -> tuple[int, int]:
    """(Q_N, Q_P): signed 2^(b-1), 2^(b-1) - 1; unsigned 0, 2^b - 1 (sec. 2)."""
    bits = check_bits(bits)
    if signed:
        return 2 ** (bits - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def lsq_grad_scale(n: int, qp: int) -> float:
    """g = 1 / sqrt(N Q_P) (sec. 2.2); N = elements that share one step."""
    return 1.0 / math.sqrt(max(n, 1) * qp)


def lsq_init_step(x: torch.Tensor, qp: int, axis: int | None = None) -> torch.Tensor:
    """s = 2 <|v|> / sqrt(Q_P) (sec. 2.1), per tensor or per channel along ``axis``.

    A zero mean (all-zero tensor or channel) gives step 1 there, so the step stays positive.
    """
    a = tensor_arg(x, "x").detach().abs()
    if axis is None:
        m = a.mean()
    else:
        m = a.transpose(0, axis).reshape(x.shape[axis], -1).mean(dim=1)
    s = 2.0 * m / math.sqrt(qp)
    return torch.where(s > 0, s, torch.ones_like(s))


def _pact_levels(x: torch.Tensor, a: torch.Tensor, n: float) -> torch.Tensor:
    """k = round(clip(x, 0, a) * (n / a)) (float), the integer of eq. (2)."""
    return torch.clamp(x, min=0.0).clamp_max_(a).mul_(n / a).round_()


def pact_encode(x: torch.Tensor, alpha: torch.Tensor, bits: int
                ) -> tuple[torch.Tensor, IntegerGrid]:
    """Eq. (1)-(2): codes k and ``IntegerGrid(LevelRange(0, n), a / n)``, a = max(alpha, eps),
    n = 2^bits - 1, decoding to :func:`pact` bit for bit."""
    bits = check_bits(bits)
    check_finite(tensor_arg(x, "x"), "x")
    a = torch.clamp(tensor_arg(alpha, "alpha", like=x, table=True).detach(), min=_EPS)
    n = float(2**bits - 1)
    grid = IntegerGrid(LevelRange(0, 2**bits - 1), a / n, bits)
    return _pact_levels(x.detach(), a, n).long(), grid


class _PACT(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha, n):
        a = torch.clamp(alpha, min=_EPS)
        out = _pact_levels(x, a, n).mul_(a / n)  # = grid.decode(codes) of pact_encode
        ctx.save_for_backward(x, a)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, a = ctx.saved_tensors
        above = x >= a
        grad_x = grad * (x >= 0).logical_and_(above.logical_not())
        grad_alpha = torch.dot(grad.reshape(-1), above.reshape(-1).to(grad.dtype)).reshape(a.shape)
        return grad_x, grad_alpha, None


def pact(x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
    """PACT, eq. (1)-(2): clip(x, 0, alpha) quantized to 2^bits levels k alpha/(2^bits - 1).

    ``alpha`` is a 0-d tensor (one per layer, as the paper). Gradients: eq. (3), see module doc.
    """
    n = float(2 ** check_bits(bits) - 1)
    if tensor_arg(x, "x").numel() == 0:
        return x.clone()
    return _PACT.apply(x, tensor_arg(alpha, "alpha", like=x, table=True), n)
