"""Modules for ivan's Q_b weights with trainable scale alpha (eq. 3-4) and A_b activations (eq. 5).

Formulas, deviations and records (IntegerGrid over LevelRange: +-1..+-2^(b-1) times
|alpha|/2^(b-1) for weights, 0..2^b-1 times M/(2^b-1) for activations, M the running max once
frozen): :mod:`lowbit.functional.ivan`. Tests: tests/core/test_ivan.py,
tests/quantizers/test_contract.py.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.functional.codebook import IntegerGrid
from lowbit.functional.ivan import (
    ivan_activation,
    ivan_activation_encode,
    ivan_scaled_encode,
    ivan_scaled_weight,
)
from lowbit.quantizers.base import RunningMaxAct, WeightQuantizer


class IvanWeight(WeightQuantizer):
    """W = |alpha| Q_b(w / max|w|); alpha is one trainable scalar per layer (eq. 4).

    alpha is initialised to max|w| of the float weight (``init_from``), so the quantized layer
    starts at the float layer's scale (the paper does not state an initial value).
    """

    def __init__(self, bits: int) -> None:
        super().__init__(bits)
        self.alpha = nn.Parameter(torch.ones(()))

    def init_from(self, weight: torch.Tensor) -> None:
        with torch.no_grad():
            m = weight.detach().abs().max()
            self.alpha.fill_(float(m) if float(m) > 0 else 1.0)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return ivan_scaled_weight(weight, self.alpha, self.bits)

    @torch.no_grad()
    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, IntegerGrid]:
        return ivan_scaled_encode(weight, self.alpha, self.bits)


class IvanAct(RunningMaxAct):
    """A_b (eq. 5): ReLU, clip to [0, 2^b - 1], 2^b levels up to the tensor's max M.

    Training uses the batch's M, as the paper. Inference uses a running average of the batch
    maxima (momentum 0.1), so a test prediction does not depend on the rest of its batch.
    Deviation: the paper does not say what M is at inference.
    ``freeze()`` fixes M to the running value (RunningMaxAct); then ``codebook()`` is
    ``IntegerGrid(LevelRange(0, 2^b - 1), M / (2^b - 1))`` and ``encode(x)`` its codes.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == 0:
            return x.clone()
        return ivan_activation(x, self.bits, self.observed_max(x, float(2**self.bits - 1)))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, IntegerGrid]:
        self.require_frozen("its range is the batch max until then")
        return ivan_activation_encode(x, self.bits, self.running_max)

    def codebook(self) -> IntegerGrid:
        return self.encode(torch.zeros(0))[1]
