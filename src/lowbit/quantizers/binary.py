"""Binary quantizer modules: BinaryConnect, BNN, XNOR-Net / BWN and ABC-Net.

Formulas, gradients and deviations: :mod:`lowbit.functional.binary`.

``after_step(weight)``: BinaryConnect and BNN keep their real-valued weights in [-1, 1]. The
trainer (:func:`lowbit.train.loop.quantizer_hooks`) calls ``after_step(weight)`` on every weight
quantizer that has it, right after each ``optimizer.step()``; custom loops must do the same.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.functional.binary import (
    abc_activation,
    abc_activation_init,
    abc_codes_alphas,
    abc_levels,
    abc_weight,
    binaryconnect,
    bnn_sign,
    clip_,
    xnor_activation,
    xnor_alpha,
    xnor_weight,
)
from lowbit.functional.checks import check_finite, check_nonempty
from lowbit.quantizers.base import ActQuantizer, WeightQuantizer


def _sign_codes(weight: torch.Tensor) -> torch.Tensor:
    return (weight >= 0).long()  # 0 -> -1, 1 -> +1


def _pm_one(weight: torch.Tensor) -> torch.Tensor:
    return torch.tensor([-1.0, 1.0], dtype=weight.dtype, device=weight.device)


class BinaryConnectWeight(WeightQuantizer):
    """BinaryConnect: weights in {-1, +1}, deterministic sign or the stochastic hard-sigmoid draw.

    Stochastic mode draws in training only; in eval it uses sign(w) ("use the binary weights",
    the paper's first test-time option), so the deployed weights are binary.
    Deviation: the paper's other test-time option (real-valued weights) is not offered.
    ``encode`` describes the eval forward (sign); codebook (-1, +1) per tensor.
    """

    BITS = (1,)

    def __init__(
        self, bits: int, stochastic: bool = False, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(bits)
        self.stochastic = stochastic
        self.generator = generator

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        check_finite(weight, "weight")
        return binaryconnect(weight, self.stochastic and self.training, self.generator)

    def after_step(self, weight: torch.Tensor) -> None:
        """Clip the real-valued weights to [-1, 1] in place (BinaryConnect Algorithm 1)."""
        clip_(weight)

    @torch.no_grad()
    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_finite(weight, "weight")
        return _sign_codes(weight), _pm_one(weight)

    def storage_scalars(self, weight: torch.Tensor) -> int:
        return 0  # the levels are the constants -1, +1

    def extra_repr(self) -> str:
        return f"bits={self.bits}, stochastic={self.stochastic}"


class BNNWeight(BinaryConnectWeight):
    """BNN weights: sign(w) with identity STE, real-valued weights clipped to [-1, 1] by
    ``after_step`` (Hubara et al. 2016, Algorithm 1); codebook (-1, +1) per tensor. This is
    deterministic BinaryConnect, which BNN's weights are."""

    def __init__(self, bits: int) -> None:
        super().__init__(bits, stochastic=False)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class BNNAct(ActQuantizer):
    """BNN activations: sign(x) in place of the ReLU, gradient cancelled where |x| > 1."""

    BITS = (1,)
    REPLACES_ACTIVATION = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bnn_sign(x)


class XNORWeight(WeightQuantizer):
    """XNOR-Net / BWN weights alpha_c sign(w), alpha_c = mean|w| per output channel (dim 0).

    Codes: 0 for -alpha_c, 1 for +alpha_c; codebook (C, 2) = [-alpha_c, +alpha_c].
    """

    BITS = (1,)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return xnor_weight(weight)

    @torch.no_grad()
    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_nonempty(weight, "weight")
        check_finite(weight, "weight")
        alpha = xnor_alpha(weight).reshape(-1, 1)
        return _sign_codes(weight).reshape(weight.shape), torch.cat([-alpha, alpha], dim=1)

    def storage_scalars(self, weight: torch.Tensor) -> int:
        return weight.shape[0] if weight.dim() else 1


class XNORAct(ActQuantizer):
    """XNOR-Net activations: sign(x) (BNN's gradient) in place of the ReLU; with
    ``kernel_size``, times the scale map K of XNOR-Net sec. 3.2 (see the functional's
    Deviation: needs stride 1 and padding (kernel_size - 1) / 2). ``None``: plain sign."""

    BITS = (1,)
    REPLACES_ACTIVATION = True

    def __init__(
        self, bits: int, kernel_size: int | None = None, stride: int = 1, padding: int = 0
    ) -> None:
        super().__init__(bits)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return xnor_activation(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, kernel_size={self.kernel_size}, stride={self.stride}, " \
               f"padding={self.padding}"


class ABCWeight(WeightQuantizer):
    """ABC-Net weights: M = ``bits`` shifted-sign bases with least-squares alphas, per tensor.

    Codes: the M-bit pattern (bit i-1 set where B_i = +1); codebook of 2^M levels
    sum_i alpha_i (+-1). Only M + 1 patterns occur (the thresholds are nested).
    """

    BITS = (1, 2, 3, 4, 5)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return abc_weight(weight, self.bits)

    @torch.no_grad()
    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes, alphas = abc_codes_alphas(weight, self.bits)
        return codes, abc_levels(alphas)

    def storage_scalars(self, weight: torch.Tensor) -> int:
        return self.bits  # the alphas


class ABCAct(ActQuantizer):
    """ABC-Net activations: N = ``bits`` binary bases beta_n H_{v_n}(x) with learned shifts v
    and scales beta (``lowbit.functional.binary`` module doc, ABC-Net sec. 3.3); replaces the
    ReLU. N + 1 output levels (the thresholds are ordered while the v_n stay ordered)."""

    BITS = (1, 2, 3, 4, 5)
    REPLACES_ACTIVATION = True

    def __init__(self, bits: int) -> None:
        super().__init__(bits)
        shifts, betas = abc_activation_init(bits)
        self.shifts = nn.Parameter(shifts)
        self.betas = nn.Parameter(betas)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return abc_activation(x, self.shifts, self.betas)


__all__ = [
    "ABCAct",
    "ABCWeight",
    "BNNAct",
    "BNNWeight",
    "BinaryConnectWeight",
    "XNORAct",
    "XNORWeight",
]
