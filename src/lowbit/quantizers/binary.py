"""Binary quantizer modules: BinaryConnect, BNN, XNOR-Net / BWN and ABC-Net.

Formulas, gradients, deviations and the codebook records: :mod:`lowbit.functional.binary`.
Each ``forward`` is ``record.decode(codes)`` of the functional encoder (inside the family's
gradient Function); ``encode`` returns that same ``(codes, record)``:

- BinaryConnect, BNN weights: IntegerGrid [-1, 1] x 1; XNOR/BWN weights: IntegerGrid [-1, 1] x
  alpha_c (per output channel); ABC-Net weights: BitPlanes(alphas).
- Activations (after :meth:`freeze`, ``codebook()`` and ``encode(x)``): BNN and XNOR sign
  IntegerGrid [-1, 1] x 1 (XNOR with ``kernel_size``: the same grid, times the data-dependent
  K = :meth:`XNORAct.input_scale`); ABC-Net BitPlanes(betas) with codes from the shifts.

``after_step(weight)``: BinaryConnect and BNN keep their real-valued weights in [-1, 1]. The
trainer (:func:`lowbit.train.loop.quantizer_hooks`) calls ``after_step(weight)`` on every weight
quantizer that has it, right after each ``optimizer.step()``; custom loops must do the same.

Tests: tests/quantizers/test_binary_ternary.py, tests/quantizers/test_contract.py.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.functional.binary import (
    abc_activation,
    abc_activation_encode,
    abc_activation_init,
    abc_encode,
    abc_weight,
    binaryconnect,
    binaryconnect_encode,
    bnn_sign,
    clip_,
    sign_encode,
    xnor_activation,
    xnor_encode,
    xnor_scale,
    xnor_weight,
)
from lowbit.functional.checks import check_finite, check_nonempty
from lowbit.functional.codebook import BitPlanes, IntegerGrid
from lowbit.quantizers.base import ActQuantizer, WeightQuantizer


class BinaryConnectWeight(WeightQuantizer):
    """BinaryConnect: weights in {-1, +1}, deterministic sign or the stochastic hard-sigmoid draw.

    Stochastic mode draws in training only; in eval, and for good after :meth:`freeze`, it is
    sign(w): the first of Courbariaux et al.'s (2015) test-time options (sec. 2.6 "Test-time
    inference": use the binary weights w_b, the deterministic rule of eq. 1), so the deployed
    weights are binary. Deviation: for the stochastic form the paper's experiments use its
    second option (the real-valued weights), which is not a 1-bit deployment and is not offered.
    ``encode`` (what is deployed, in every mode): codes 1{w >= 0}, IntegerGrid [-1, 1] x 1 per
    tensor; the training draw is ``binaryconnect_encode(w, stochastic=True)`` decoded.
    """

    BITS = (1,)

    def __init__(
        self, bits: int, stochastic: bool = False, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(bits)
        self.stochastic = stochastic
        self.generator = generator

    def _draws(self) -> bool:
        return self.stochastic and self.training and not self.is_frozen

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        check_finite(weight, "weight")
        return binaryconnect(weight, self._draws(), self.generator)

    def after_step(self, weight: torch.Tensor) -> None:
        """Clip the real-valued weights to [-1, 1] in place (BinaryConnect Algorithm 1)."""
        clip_(weight)

    @torch.no_grad()
    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, IntegerGrid]:
        check_finite(weight, "weight")
        return binaryconnect_encode(weight)  # the deployed (deterministic) rule

    def extra_repr(self) -> str:
        return f"bits={self.bits}, stochastic={self.stochastic}"


class BNNWeight(BinaryConnectWeight):
    """BNN weights: sign(w) with identity STE, real-valued weights clipped to [-1, 1] by
    ``after_step`` (Hubara et al. 2016, Algorithm 1); IntegerGrid [-1, 1] x 1 per tensor. This
    is deterministic BinaryConnect, which BNN's weights are."""

    def __init__(self, bits: int) -> None:
        super().__init__(bits, stochastic=False)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class _SignAct(ActQuantizer):
    """sign(x) activations: codebook IntegerGrid [-1, 1] x 1, codes 1{x >= 0}."""

    BITS = (1,)
    REPLACES_ACTIVATION = True

    def codebook(self) -> IntegerGrid:
        return sign_encode(torch.zeros(()))[1]

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, IntegerGrid]:
        check_finite(x, "activation")  # NaN has no code
        return sign_encode(x)


class BNNAct(_SignAct):
    """BNN activations: sign(x) in place of the ReLU, gradient cancelled where |x| > 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bnn_sign(x)


class XNORWeight(WeightQuantizer):
    """XNOR-Net / BWN weights alpha_c sign(w), alpha_c = mean|w| per output channel (dim 0).

    ``encode``: codes 1{w >= 0}, IntegerGrid [-1, 1] x alpha (C,).
    """

    BITS = (1,)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return xnor_weight(weight)

    @torch.no_grad()
    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, IntegerGrid]:
        check_nonempty(weight, "weight")
        check_finite(weight, "weight")
        return xnor_encode(weight)


class XNORAct(_SignAct):
    """XNOR-Net activations: sign(x) (BNN's gradient) in place of the ReLU; with
    ``kernel_size``, times the scale map K of XNOR-Net sec. 3.2 (see the functional's
    Deviation: needs stride 1 and padding (kernel_size - 1) / 2). ``None``: plain sign.

    Record: ``codebook()``/``encode(x)`` give the data-independent +-1 grid of sign(x). With
    ``kernel_size`` the output is ``decode(codes) * input_scale(x)`` exactly: K depends on the
    input, so it is not part of the grid; a runtime recomputes it from the input it already
    holds (mean_c |x|, box-filtered) and multiplies the XNOR convolution's output by it.
    """

    def __init__(
        self, bits: int, kernel_size: int | None = None, stride: int = 1, padding: int = 0
    ) -> None:
        super().__init__(bits)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return xnor_activation(x, self.kernel_size, self.stride, self.padding)

    def input_scale(self, x: torch.Tensor) -> torch.Tensor | None:
        """K of XNOR-Net sec. 3.2 for this input ((N, 1, H, W) or (N, 1)); None without
        ``kernel_size`` (the output is then the decoded grid itself)."""
        if self.kernel_size is None:
            return None
        return xnor_scale(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, kernel_size={self.kernel_size}, stride={self.stride}, " \
               f"padding={self.padding}"


class ABCWeight(WeightQuantizer):
    """ABC-Net weights: M = ``bits`` shifted-sign bases with least-squares alphas, per tensor.

    ``encode``: the M-bit pattern (bit i-1 set where B_i = +1), BitPlanes(alphas (M,)). Only
    M + 1 patterns occur (the thresholds are nested). The alphas are a statistic of the weight
    (no learned state), so :meth:`freeze` changes nothing.
    """

    BITS = (1, 2, 3, 4, 5)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return abc_weight(weight, self.bits)

    @torch.no_grad()
    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, BitPlanes]:
        return abc_encode(weight, self.bits)


class ABCAct(ActQuantizer):
    """ABC-Net activations: N = ``bits`` binary bases beta_n H_{v_n}(x) with learned shifts v
    and scales beta (``lowbit.functional.binary`` module doc, ABC-Net sec. 3.3); replaces the
    ReLU. N + 1 output levels while the v_n stay ordered.

    After :meth:`freeze` the learned shifts and betas are the fixed grid (no gradient reaches
    them): ``codebook()`` is BitPlanes(betas), ``encode(x)`` sets bit n where x + v_n >= 1/2.
    """

    BITS = (1, 2, 3, 4, 5)
    REPLACES_ACTIVATION = True

    def __init__(self, bits: int) -> None:
        super().__init__(bits)
        shifts, betas = abc_activation_init(bits)
        self.shifts = nn.Parameter(shifts)
        self.betas = nn.Parameter(betas)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_frozen:
            return abc_activation(x, self.shifts.detach(), self.betas.detach())
        return abc_activation(x, self.shifts, self.betas)

    def codebook(self) -> BitPlanes:
        return BitPlanes(self.betas.detach().clone())

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, BitPlanes]:
        return abc_activation_encode(x, self.shifts, self.betas)


__all__ = [
    "ABCAct",
    "ABCWeight",
    "BNNAct",
    "BNNWeight",
    "BinaryConnectWeight",
    "XNORAct",
    "XNORWeight",
]
