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

    Defaults are the paper's and its reference code's (czhu95/ternarynet,
    examples/Ternary-Net/ternary.py, ``tw_ternarize``: ``W_p``/``W_n`` are variables created with
    ``initializer=1.0`` and receive the plain sum of the gradients over their region, trained
    with the ResNet's SGD at lr 0.1): ``init`` "one" keeps W_p = W_n = 1 (``init_from`` changes
    nothing), ``scale_grad`` "sum" is eq. (7) as printed. The BatchNorm after each layer absorbs
    the common scale, so a unit scale is not a mismatch in the layer's output; it makes each
    step's relative change of W_p/W_n small (the summed gradient divided by 1, not by ~0.1).
    Options, kept for comparison (issue 12 item 4 measures both): ``init`` "mean" sets W_p
    (W_n) to the mean |w| of the float weights above delta (below -delta; an empty region falls
    back to mean|w| over the tensor), and ``scale_grad`` "mean" divides each scale's gradient
    by its region size (``lowbit.functional.ternary``).
    After :meth:`freeze`, W_p and W_n are the fixed table (no gradient reaches them).
    """

    BITS = (2,)
    INITS = ("one", "mean")

    def __init__(self, bits: int, t: float = TTQ_THRESHOLD, scale_grad: str = "sum",
                 init: str = "one") -> None:
        super().__init__(bits)
        if not 0.0 <= t < 1.0:
            raise ValueError(f"TTQ threshold factor t must be in [0, 1), got {t}")
        check_ttq_scale_grad(scale_grad)
        if init not in self.INITS:
            raise ValueError(f"TTQ init must be one of {self.INITS}, got {init!r}")
        self.t, self.scale_grad, self.init = t, scale_grad, init
        self.wp = nn.Parameter(torch.ones(()))
        self.wn = nn.Parameter(torch.ones(()))

    @torch.no_grad()
    def init_from(self, weight: torch.Tensor) -> None:
        if self.init == "one":  # the paper's / reference code's W_p = W_n = 1
            return
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
        return f"bits={self.bits}, t={self.t}, scale_grad={self.scale_grad}, init={self.init}"
