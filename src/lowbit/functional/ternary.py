"""Ternary weight quantizers: TWN (fixed threshold and scale) and TTQ (trained scales).

TWN (Li, Zhang, Liu, "Ternary Weight Networks", arXiv:1605.04711; the problem is the survey's
eq. (14), shared/papers/guo2018-survey-quantized-neural-networks), per tensor:
    min_{alpha >= 0, W^t in {-1,0,1}^n} ||W - alpha W^t||^2, approximately solved by
    delta = 0.7 * mean|W|,
    W^t_i = +1 if W_i > delta, -1 if W_i < -delta, 0 otherwise,
    alpha = mean of |W_i| over I_delta = {i : |W_i| > delta}.
  Output alpha W^t; backward straight-through, dW~/dW = 1 (delta and alpha are statistics).
  Defined edge case: I_delta empty (all-zero W) gives alpha = 0 and an all-zero output.

TTQ (Zhu, Han, Mao, Dally, "Trained Ternary Quantization", ICLR 2017, arXiv:1612.01064,
eq. 6-9 as we read the paper, which is not in shared/papers), per tensor:
    delta = t * max|w|  (t = 0.05 by default),
    w^t = W_p for w > delta, 0 for |w| <= delta, -W_n for w < -delta,
  with W_p, W_n trained scalars. Backward (eq. 7-8):
    dL/dW_p = sum_{i in I_p} dL/dw^t_i,
    dL/dW_n = -sum_{i in I_n} dL/dw^t_i,
    dL/dw_i = W_p dL/dw^t_i (i in I_p), dL/dw^t_i (middle), W_n dL/dw^t_i (i in I_n).
  Deviation (sign convention): eq. (7) is printed as the plain sum over I_n; the value there is
  -W_n, so the chain rule gives the minus sign, which we keep (descent then shrinks the loss).
  Deviation: the paper first divides the latent weights by their max (to [-1, 1]); thresholding
  at t * max|w| is the same forward, and we leave the 1/max factor out of dL/dw.
  ``scale_grad``: "sum" is eq. (7) as printed, and what the authors' reference code computes
  (czhu95/ternarynet, examples/Ternary-Net/ternary.py, ``tw_ternarize``: W_p, W_n multiply the
  mask, so each receives the plain sum over its region); "mean" divides dL/dW_p (dL/dW_n) by
  |I_p| (|I_n|), an LSQ-style gradient scale (Esser et al. 2020 sec. 2.2), kept as an option.
  The module (:class:`lowbit.quantizers.ternary.TTQWeight`) defaults to "sum" with
  W_p = W_n = 1 at the start, as the reference code (``initializer=1.0``). The divergence once
  blamed on "sum" (ResNet-20, SGD lr 0.01, 23.65 % in benchmarks/results/zoo_table2) came from
  starting the scales at the region means (~0.11): the same summed step is then ~30x larger
  relative to the scale. Measured (ResNet-20 from the zoo float model, 4000 CIFAR-10 images,
  32 SGD steps at lr 0.01, fp32, 1 thread): median relative scale step 0.0005 (init 1, sum),
  0.016 (region means, sum: scales reach -1.13, 10.95 % test), 0.00002 (region means, mean).

Codebook records (issue 8, :mod:`lowbit.functional.codebook`): the primary functions encode,
and the forward is ``record.decode(codes)`` (inside the STE / TTQ's Function), so
``decode(encode(w))`` is the forward bit for bit. Codes 0, 1, 2 = negative level, 0, positive.
  - TWN (:func:`twn_encode`): IntegerGrid(LevelRange(-1, 1), scale alpha, 2 bits), i.e.
    {-1, 0, 1} x alpha per tensor: a ternary integer kernel multiplies the integers and applies
    one float. ``LevelRange``: the levels are a range, so no table is stored.
  - TTQ (:func:`ttq_encode`): Table([-W_n, 0, W_p], 2 bits): the two trained magnitudes differ,
    so the values are not integers times one scale (a runtime can still split them into the two
    sign masks times W_p and W_n).

Tests: tests/functional/test_ternary.py (references, gradients, properties,
``test_forward_is_decode_of_encode``).
"""

from __future__ import annotations

import torch

from lowbit.functional.checks import check_finite, check_nonempty, tensor_arg
from lowbit.functional.codebook import IntegerGrid, LevelRange, Table
from lowbit.functional.ste import ste

TWN_RATIO = 0.7
TTQ_SCALE_GRADS = ("sum", "mean")  # eq. (7) as printed, or per-region means (module doc)
TTQ_THRESHOLD = 0.05


def twn_delta_alpha(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TWN's threshold delta = 0.7 mean|W| and scale alpha = mean |W| over |W| > delta."""
    check_nonempty(tensor_arg(w, "w"), "weight")
    check_finite(w, "weight")
    a = w.detach().abs()
    delta = TWN_RATIO * a.mean()
    above = a > delta
    count = above.sum()
    total = torch.where(above, a, torch.zeros_like(a)).sum()
    alpha = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
    return delta, alpha


def ternary_codes(w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Codes 0, 1, 2 for w < -delta, |w| <= delta, w > delta."""
    w = tensor_arg(w, "w")
    delta = tensor_arg(delta, "delta", like=w, table=True)
    return (w > delta).long() - (w < -delta).long() + 1


def twn_encode(w: torch.Tensor) -> tuple[torch.Tensor, IntegerGrid]:
    """TWN as codes (:func:`ternary_codes` at delta = 0.7 mean|W|) and the grid {-1, 0, 1} x alpha
    (per tensor, 2 bits)."""
    delta, alpha = twn_delta_alpha(w)
    return ternary_codes(w.detach(), delta), IntegerGrid(LevelRange(-1, 1), alpha, 2)


def twn(w: torch.Tensor) -> torch.Tensor:
    """TWN: decode(twn_encode(w)) = alpha * {-1, 0, +1} with delta = 0.7 mean|W| (module doc);
    STE gradient."""
    codes, grid = twn_encode(w)
    return ste(w, grid.decode(codes, check=False))


def ttq_delta(w: torch.Tensor, t: float = TTQ_THRESHOLD) -> torch.Tensor:
    """TTQ's threshold delta = t * max|w| (eq. 9)."""
    check_nonempty(tensor_arg(w, "w"), "weight")
    check_finite(w, "weight")
    return t * w.detach().abs().max()


def _ttq_table(wp: torch.Tensor, wn: torch.Tensor) -> Table:
    wp, wn = wp.detach().reshape(()), wn.detach().reshape(())
    return Table(torch.stack([-wn, torch.zeros_like(wn), wp]), 2)


def ttq_encode(
    w: torch.Tensor, wp: torch.Tensor, wn: torch.Tensor, t: float = TTQ_THRESHOLD
) -> tuple[torch.Tensor, Table]:
    """TTQ eq. (6) as codes (:func:`ternary_codes` at delta = t max|w|) and the table
    [-W_n, 0, W_p] (2 bits)."""
    delta = ttq_delta(w, t)
    wp, wn = (tensor_arg(v, name, like=w, table=True) for v, name in ((wp, "wp"), (wn, "wn")))
    return ternary_codes(w.detach(), delta), _ttq_table(wp, wn)


class _TTQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, wp, wn, delta, mean):
        codes = ternary_codes(w, delta)
        ctx.mean = mean
        ctx.save_for_backward(codes == 2, codes == 0, wp, wn)
        return _ttq_table(wp, wn).decode(codes, check=False)

    @staticmethod
    def backward(ctx, grad):
        pos, neg, wp, wn = ctx.saved_tensors
        zero = torch.zeros_like(grad)
        g_pos = torch.where(pos, grad, zero)
        g_neg = torch.where(neg, grad, zero)
        grad_w = grad + g_pos * (wp - 1) + g_neg * (wn - 1)
        grad_wp = g_pos.sum().reshape(wp.shape)
        grad_wn = -g_neg.sum().reshape(wn.shape)
        if ctx.mean:
            grad_wp = grad_wp / pos.sum().clamp(min=1)
            grad_wn = grad_wn / neg.sum().clamp(min=1)
        return grad_w, grad_wp, grad_wn, None, None


def check_ttq_scale_grad(scale_grad: str) -> None:
    if scale_grad not in TTQ_SCALE_GRADS:
        raise ValueError(f"scale_grad must be one of {TTQ_SCALE_GRADS}, got {scale_grad!r}")


def ttq(
    w: torch.Tensor, wp: torch.Tensor, wn: torch.Tensor, t: float = TTQ_THRESHOLD,
    scale_grad: str = "sum",
) -> torch.Tensor:
    """TTQ eq. (6): decode(ttq_encode(w, wp, wn, t)) = W_p above t max|w|, -W_n below
    -t max|w|, 0 between; gradients eq. (7)-(8) (``scale_grad`` "sum", as printed) or their
    per-region means ("mean"; module doc)."""
    check_ttq_scale_grad(scale_grad)
    delta = ttq_delta(w, t)
    wp, wn = (tensor_arg(v, name, like=w, table=True) for v, name in ((wp, "wp"), (wn, "wn")))
    return _TTQ.apply(w, wp, wn, delta, scale_grad == "mean")
