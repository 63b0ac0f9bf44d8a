"""DoReFa-Net modules: k-bit weights (eq. 9, or eq. 7 at 1 bit), k-bit activations
quantize_k(clip(x, 0, 1)) and k-bit gradients (survey eq. 31-32 with DoReFa's noise).

Formulas, deviations and records (IntegerGrid: odd integers -n..n times 1/n for k >= 2
weights, +-1 times E|w| at 1 bit, 0..n times 1/n for activations): :mod:`lowbit.functional.
dorefa`. Deterministic and stateless: ``freeze()`` changes nothing, DoReFaAct's codebook() is
available at any time. Tests: tests/functional/test_dorefa.py,
tests/quantizers/test_dorefa_log2_stochastic.py, tests/quantizers/test_contract.py.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.functional.checks import check_bits
from lowbit.functional.codebook import IntegerGrid
from lowbit.functional.dorefa import (
    DOREFA_GRAD_BITS,
    dorefa_activation,
    dorefa_activation_encode,
    dorefa_weight,
    dorefa_weight_encode,
    quantize_gradient,
)
from lowbit.quantizers.base import ActQuantizer, WeightQuantizer

DOREFA_BITS = tuple(range(1, 17))


class DoReFaWeight(WeightQuantizer):
    """k >= 2: 2^k levels 2j/(2^k - 1) - 1 of tanh-normalised weights (eq. 9), per tensor;
    k = 1: E(|w|) sign(w) with one scalar per layer (eq. 7). No learned parameters."""

    BITS = DOREFA_BITS

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return dorefa_weight(weight, self.bits)

    @torch.no_grad()
    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, IntegerGrid]:
        return dorefa_weight_encode(weight, self.bits)


class DoReFaAct(ActQuantizer):
    """quantize_k(clip(x, 0, 1)): the clip is the non-linearity (it replaces the ReLU)."""

    BITS = DOREFA_BITS
    REPLACES_ACTIVATION = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dorefa_activation(x, self.bits)

    def codebook(self) -> IntegerGrid:
        return self.encode(torch.zeros(0))[1]

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, IntegerGrid]:
        return dorefa_activation_encode(x, self.bits)


class DoReFaGradient(nn.Module):
    """Identity forward; backward quantizes the incoming gradient to ``bits`` (2..16) with
    :func:`lowbit.functional.dorefa.dorefa_gradient`. For the ``output_grad_quant`` slot of
    QuantLinear / QuantConv2d (the gradient w.r.t. the layer output, as DoReFa quantizes dr).

    DoReFa reports that gradients need 6+ bits in practice (their Table 1); 2..5 are allowed for
    experiments. ``generator`` draws the noise N(k) (None: torch's default generator, which
    :func:`lowbit.train.fit` seeds and checkpoints). ``per_example``: max over all axes but the
    batch axis (DoReFa's max_0), else one max per tensor.
    """

    BITS = tuple(range(DOREFA_GRAD_BITS[0], DOREFA_GRAD_BITS[1] + 1))

    def __init__(
        self, bits: int, per_example: bool = True, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        lo, hi = DOREFA_GRAD_BITS
        self.bits = check_bits(bits, lo, hi, what="DoReFaGradient bits")
        self.per_example = per_example
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quantize_gradient(x, self.bits, self.generator, self.per_example)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_example={self.per_example}"
