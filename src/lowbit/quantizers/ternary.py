"""Ternary quantizer modules: TWN (fixed threshold and scale) and TTQ (trained scales W_p, W_n).

Formulas, gradients, deviations and records: :mod:`lowbit.functional.ternary`. Codes 0, 1, 2
stand for the negative level, zero and the positive level; the codebook is per tensor: TWN an
IntegerGrid {-1, 0, 1} x alpha, TTQ a Table [-W_n, 0, W_p]. The forward is the record's decode.

Tests: tests/quantizers/test_binary_ternary.py, tests/quantizers/test_contract.py.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.functional.codebook import IntegerGrid, Table
from lowbit.functional.ternary import (
    TTQ_THRESHOLD,
    check_ttq_scale_grad,
    ttq,
    ttq_delta,
    ttq_encode,
    twn,
    twn_encode,
)
from lowbit.quantizers.base import WeightQuantizer


class TWNWeight(WeightQuantizer):
    """TWN (Li & Liu 2016): alpha {-1, 0, +1}, delta = 0.7 mean|w|; codebook [-alpha, 0, alpha]."""

    BITS = (2,)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return twn(weight)

    @torch.no_grad()
    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, IntegerGrid]:
        return twn_encode(weight)


class TTQWeight(WeightQuantizer):
    """TTQ (Zhu et al. 2017): {-W_n, 0, W_p} with trained W_p, W_n; delta = t max|w|.

    ``init_from`` sets W_p (W_n) to the mean |w| of the float weights above delta (below
    -delta); an empty region falls back to mean|w| over the tensor. Before ``init_from`` both
    are 1. Deviation: the paper does not fix this initial value.
    ``scale_grad`` "mean" (default) divides the scales' gradients by their region sizes; "sum"
    is the paper's eq. (7) as printed (see ``lowbit.functional.ternary``: with "sum" and SGD
    the scales diverge on ResNet-20).
    After :meth:`freeze`, W_p and W_n are the fixed table (no gradient reaches them).
    """

    BITS = (2,)

    def __init__(self, bits: int, t: float = TTQ_THRESHOLD, scale_grad: str = "mean") -> None:
        super().__init__(bits)
        if not 0.0 <= t < 1.0:
            raise ValueError(f"TTQ threshold factor t must be in [0, 1), got {t}")
        check_ttq_scale_grad(scale_grad)
        self.t, self.scale_grad = t, scale_grad
        self.wp = nn.Parameter(torch.ones(()))
        self.wn = nn.Parameter(torch.ones(()))

    @torch.no_grad()
    def init_from(self, weight: torch.Tensor) -> None:
        w = weight.detach()
        delta = ttq_delta(w, self.t)
        fallback = w.abs().mean()
        for param, region in ((self.wp, w[w > delta]), (self.wn, -w[w < -delta])):
            param.copy_(region.mean() if region.numel() else fallback)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.is_frozen:  # the trained scales are the fixed table: no gradient reaches them
            return ttq(weight, self.wp.detach(), self.wn.detach(), self.t, self.scale_grad)
        return ttq(weight, self.wp, self.wn, self.t, self.scale_grad)

    @torch.no_grad()
    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, Table]:
        return ttq_encode(weight, self.wp, self.wn, self.t)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, t={self.t}, scale_grad={self.scale_grad}"
