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
  ``scale_grad``: "sum" is eq. (7) as printed; "mean" divides dL/dW_p (dL/dW_n) by |I_p|
  (|I_n|), an LSQ-style gradient scale (Esser et al. 2020 sec. 2.2) that keeps the scales'
  updates on the weights' scale. With "sum", SGD at lr 0.01 on ResNet-20 sends W_p/W_n far
  off and below zero within one epoch (benchmarks/results/zoo_table2: 23.65 %), so the module
  (:class:`lowbit.quantizers.ternary.TTQWeight`) defaults to "mean"; the forward is the same.

Tests: tests/functional/test_ternary.py.
"""

from __future__ import annotations

import torch

from lowbit.functional.checks import check_finite, check_nonempty, tensor_arg

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


class _TWN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, delta, alpha):
        zero = torch.zeros_like(w)
        return torch.where(w > delta, alpha, torch.where(w < -delta, -alpha, zero))

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def twn(w: torch.Tensor) -> torch.Tensor:
    """TWN: alpha * {-1, 0, +1} with delta = 0.7 mean|W| (module doc); STE gradient."""
    delta, alpha = twn_delta_alpha(w)
    return _TWN.apply(w, delta, alpha)


def ttq_delta(w: torch.Tensor, t: float = TTQ_THRESHOLD) -> torch.Tensor:
    """TTQ's threshold delta = t * max|w| (eq. 9)."""
    check_nonempty(tensor_arg(w, "w"), "weight")
    check_finite(w, "weight")
    return t * w.detach().abs().max()


class _TTQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, wp, wn, delta, mean):
        pos, neg = w > delta, w < -delta
        ctx.mean = mean
        ctx.save_for_backward(pos, neg, wp, wn)
        zero = torch.zeros_like(w)
        return torch.where(pos, wp, torch.where(neg, -wn, zero))

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
    """TTQ eq. (6): W_p above t max|w|, -W_n below -t max|w|, 0 between; gradients eq. (7)-(8)
    (``scale_grad`` "sum", as printed) or their per-region means ("mean"; module doc)."""
    check_ttq_scale_grad(scale_grad)
    delta = ttq_delta(w, t)
    wp, wn = (tensor_arg(v, name, like=w, table=True) for v, name in ((wp, "wp"), (wn, "wn")))
    return _TTQ.apply(w, wp, wn, delta, scale_grad == "mean")
