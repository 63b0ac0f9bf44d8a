"""Fixed-point modules with Gupta et al.'s stochastic rounding, and WAGE's rounding (Wu et al.).

Formulas and deviations: :mod:`lowbit.functional.stochastic`.
"""

from __future__ import annotations

import torch

from lowbit.functional.stochastic import (
    finite_absmax,
    fixed_point_codes,
    fixed_point_round,
    pow2_step,
    stochastic_round,
    wu_codes,
    wu_round,
)
from lowbit.quantizers.base import RunningMaxAct, WeightQuantizer


class StochasticWeight(WeightQuantizer):
    """Signed fixed point <IL, FL> of ``bits`` bits: k 2^-FL, k in [-2^(b-1), 2^(b-1) - 1].

    FL is chosen per forward from the weight (dynamic fixed point): 2^(IL-1) is the smallest
    power of two >= max|w|; values beyond the top level saturate (Gupta et al. 2015).
    Training: stochastic rounding (unbiased inside the range). Eval: round to nearest with
    ties down (survey eq. 6), deterministic; ``encode`` describes the eval forward.
    Deviation: Gupta et al. fix <IL, FL> per experiment; we derive it from max|w|.
    """

    BITS = tuple(range(2, 17))

    def __init__(self, bits: int, generator: torch.Generator | None = None) -> None:
        super().__init__(bits)
        self.generator = generator
        self.qmin, self.qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def step(self, weight: torch.Tensor) -> torch.Tensor:
        return pow2_step(finite_absmax(weight, "weight"), self.bits)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        step = self.step(weight)
        if self.training:
            return stochastic_round(weight, step, self.generator, self.qmin, self.qmax)
        return fixed_point_round(weight, step, self.qmin, self.qmax)

    @torch.no_grad()
    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        step = self.step(weight)
        k = fixed_point_codes(weight, step, self.qmin, self.qmax)
        grid = torch.arange(self.qmin, self.qmax + 1, dtype=weight.dtype, device=weight.device)
        return k - self.qmin, grid * step

    def storage_scalars(self, weight: torch.Tensor) -> int:
        return 1  # FL


class StochasticAct(RunningMaxAct):
    """Unsigned fixed point k 2^-FL, k in [0, 2^b - 1], of the ReLU output; 2^IL is the smallest
    power of two >= M (batch max in training, running average of batch maxima at eval).
    Stochastic rounding in training, round to nearest (ties down) at eval."""

    BITS = tuple(range(2, 17))
    REPLACES_ACTIVATION = False

    def __init__(self, bits: int, momentum: float = 0.1,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(bits, momentum)
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == 0:
            return x.clone()
        m = self.observed_max(x)
        step = pow2_step(m, self.bits + 1)  # unsigned: all b bits for the magnitude
        qmax = 2**self.bits - 1
        if self.training:
            return stochastic_round(x, step, self.generator, 0, qmax)
        return fixed_point_round(x, step, 0, qmax)


class WuWeight(WeightQuantizer):
    """WAGE (survey eq. 10): scale * clip(sigma round(w/(scale sigma)), -1 + sigma, 1 - sigma),
    sigma = 2^(1-k): 2^k - 1 levels.

    Deviation: WAGE initialises weights inside [-1 + sigma, 1 - sigma] with its own scheme and
    keeps a power-of-two layer scale on the activations; for layers with ordinary (small)
    initial weights we keep a fixed power-of-two ``scale`` buffer instead, set by ``init_from``
    to the smallest power of two >= max|w| (default 1: WAGE exactly).
    """

    BITS = tuple(range(2, 9))

    def __init__(self, bits: int) -> None:
        super().__init__(bits)
        self.register_buffer("scale", torch.ones(()))

    def init_from(self, weight: torch.Tensor) -> None:
        self.scale.copy_(pow2_step(finite_absmax(weight, "weight").float(), 1))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        finite_absmax(weight, "weight")
        return wu_round(weight / self.scale, self.bits) * self.scale

    @torch.no_grad()
    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.forward(weight)  # same checks
        top = 2 ** (self.bits - 1) - 1
        sigma = 2.0 ** (1 - self.bits)
        j = torch.arange(-top, top + 1, dtype=weight.dtype, device=weight.device)
        return wu_codes(weight / self.scale, self.bits), (j * sigma) * self.scale

    def storage_scalars(self, weight: torch.Tensor) -> int:
        return 1  # scale
