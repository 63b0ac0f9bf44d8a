"""Fixed-point modules with Gupta et al.'s stochastic rounding, and WAGE's rounding (Wu et al.).

Formulas and deviations: :mod:`lowbit.functional.stochastic`. Every encode returns an
:class:`~lowbit.functional.codebook.IntegerGrid` over a :class:`LevelRange` (the fixed-point
words k) times the step; the deployed forward is its decode (tests/quantizers/test_contract.py).
Stochastic rounding is the training forward until :meth:`freeze`, which switches to round to
nearest for good: survey eq. 6 (shared/papers/guo2018-survey-quantized-neural-networks, sec.
3.1), Gupta et al.'s deterministic rounding to the nearest fixed-point word; stochastic rounding
(Gupta et al. 2015, eq. 2-3; survey sec. 3.2, "random rounding") is their training-time
rounding. Reading: neither text fixes a deployment rule; a deterministic file needs one, and
eq. 6 is the one the method defines (and what eval used before freeze() existed).
"""

from __future__ import annotations

import torch

from lowbit.functional.codebook import IntegerGrid
from lowbit.functional.stochastic import (
    finite_absmax,
    fixed_point_encode,
    fixed_point_round,
    pow2_step,
    stochastic_round,
    wu_encode,
    wu_round,
)
from lowbit.quantizers.base import RunningMaxAct, WeightQuantizer


class StochasticWeight(WeightQuantizer):
    """Signed fixed point <IL, FL> of ``bits`` bits: k 2^-FL, k in [-2^(b-1), 2^(b-1) - 1].

    FL is chosen per forward from the weight (dynamic fixed point): 2^(IL-1) is the smallest
    power of two >= max|w|; values beyond the top level saturate (Gupta et al. 2015).
    Training (not frozen): stochastic rounding (unbiased inside the range). Eval, and every
    mode once frozen: round to nearest with ties down (survey eq. 6), deterministic; ``encode``
    describes it. Deviation: Gupta et al. fix <IL, FL> per experiment; we derive it from max|w|.
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
        if self.training and not self.is_frozen:
            return stochastic_round(weight, step, self.generator, self.qmin, self.qmax)
        return fixed_point_round(weight, step, self.qmin, self.qmax)

    @torch.no_grad()
    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, IntegerGrid]:
        return fixed_point_encode(weight, self.step(weight), self.qmin, self.qmax, self.bits)


class StochasticAct(RunningMaxAct):
    """Unsigned fixed point k 2^-FL, k in [0, 2^b - 1], of the ReLU output; 2^IL is the smallest
    power of two >= M (batch max in training, running average of batch maxima at eval; fixed
    at the running value by :meth:`freeze`). Stochastic rounding in training (not frozen),
    round to nearest (ties down) at eval and once frozen."""

    BITS = tuple(range(2, 17))
    REPLACES_ACTIVATION = False

    def __init__(self, bits: int, momentum: float = 0.1,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(bits, momentum)
        self.generator = generator

    def _step(self, m: torch.Tensor) -> torch.Tensor:
        return pow2_step(m, self.bits + 1)  # unsigned: all b bits for the magnitude

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == 0:
            return x.clone()
        step, qmax = self._step(self.observed_max(x)), 2**self.bits - 1
        if self.training and not self.is_frozen:
            return stochastic_round(x, step, self.generator, 0, qmax)
        return fixed_point_round(x, step, 0, qmax)

    def codebook(self) -> IntegerGrid:
        return self.encode(torch.zeros(0))[1]

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, IntegerGrid]:
        self.require_frozen("its range is the running max until then")
        return fixed_point_encode(x, self._step(self.running_max), 0, 2**self.bits - 1,
                                  self.bits)


class WuWeight(WeightQuantizer):
    """WAGE (survey eq. 10): scale * clip(sigma round(w/(scale sigma)), -1 + sigma, 1 - sigma),
    sigma = 2^(1-k): 2^k - 1 levels; deterministic (``freeze`` changes nothing).

    Deviation: WAGE initialises weights inside [-1 + sigma, 1 - sigma] with its own scheme and
    keeps a power-of-two layer scale on the activations; for layers with ordinary (small)
    initial weights we keep a fixed power-of-two ``scale`` buffer instead, set by ``init_from``
    to the smallest power of two >= max|w| (default 1: WAGE exactly). The record's scale is
    sigma * scale (a power of two: a runtime shifts).
    """

    BITS = tuple(range(2, 9))

    def __init__(self, bits: int) -> None:
        super().__init__(bits)
        self.register_buffer("scale", torch.ones(()))

    def init_from(self, weight: torch.Tensor) -> None:
        self.scale.copy_(pow2_step(finite_absmax(weight, "weight").float(), 1))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        finite_absmax(weight, "weight")
        return wu_round(weight, self.bits, self.scale)

    @torch.no_grad()
    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, IntegerGrid]:
        finite_absmax(weight, "weight")
        return wu_encode(weight, self.bits, self.scale)
