"""Modules for the learned-range quantizers LSQ (weights and activations) and PACT (activations).

Formulas, equation numbers, deviations and records (IntegerGrid over LevelRange times the
learned step: -Q_N..Q_P for LSQ weights, 0..Q_P for LSQ activations, 0..2^b-1 times alpha/n
for PACT): :mod:`lowbit.functional.learned`. ``freeze()``: the learned step / alpha simply
become the grid (an LSQAct that never saw a training batch has no step and refuses).
Tests: tests/quantizers/test_learned_modules.py, tests/quantizers/test_contract.py.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.functional.checks import check_finite, check_nonempty
from lowbit.functional.codebook import IntegerGrid
from lowbit.functional.learned import (
    lsq,
    lsq_encode,
    lsq_grad_scale,
    lsq_init_step,
    lsq_range,
    pact,
    pact_encode,
)
from lowbit.quantizers.base import ActQuantizer, WeightQuantizer


class LSQWeight(WeightQuantizer):
    """LSQ weights: signed grid [-2^(b-1), 2^(b-1) - 1] times a learned step (eq. 1-3).

    One step per tensor (the paper), or one per output channel (dim 0) with ``per_channel=True``
    (an extension; each channel's gradient scale then uses N = elements of that channel).
    ``init_from`` sets s = 2 mean|w| / sqrt(Q_P) (sec. 2.1). 1 bit is not offered: the signed
    1-bit grid {-s, 0} (Q_P = 0) is degenerate and sqrt(Q_P) = 0 in the initialisation; LSQ
    binary weights would need a different grid (e.g. {-s, +s}).
    """

    BITS = tuple(range(2, 9))

    def __init__(self, bits: int, per_channel: bool = False) -> None:
        super().__init__(bits)
        self.per_channel = per_channel
        self.qn, self.qp = lsq_range(bits, signed=True)
        self.step = nn.Parameter(torch.ones(()))

    def init_from(self, weight: torch.Tensor) -> None:
        check_nonempty(weight, "weight")
        step = lsq_init_step(weight, self.qp, 0 if self.per_channel else None)
        self.step = nn.Parameter(step.to(dtype=torch.float32, device=weight.device))

    def _axis(self) -> int | None:
        return 0 if self.per_channel and self.step.dim() > 0 else None

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        check_nonempty(weight, "weight")
        check_finite(weight, "weight")
        axis = self._axis()
        n = weight.numel() // (weight.shape[0] if axis is not None else 1)
        return lsq(weight, self.step, self.qn, self.qp, lsq_grad_scale(n, self.qp), axis)

    @torch.no_grad()
    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, IntegerGrid]:
        check_nonempty(weight, "weight")
        return lsq_encode(weight, self.step, self.qn, self.qp, self._axis())

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel={self.per_channel}"


class LSQAct(ActQuantizer):
    """LSQ activations: unsigned grid [0, 2^b - 1] times a learned step, in place of the ReLU.

    The unsigned clip to [0, Q_P] contains the ReLU: output, input gradient and step gradient
    are those of LSQ applied after a ReLU (for x < 0 both give 0 and a zero step gradient), so
    the ReLU is dropped, saving two passes over the activation (tested equal).
    The step is initialised from the first training batch's ReLU outputs,
    s = 2 mean|relu(x)| / sqrt(Q_P) (sec. 2.1; an all-zero batch is skipped). Evaluated before
    any training batch, the step is derived from the batch at hand without being stored.
    Gradient scale g = 1/sqrt(N_F Q_P) with N_F = features per example (numel / batch size;
    our reading of "features in the layer").
    """

    BITS = tuple(range(1, 9))
    REPLACES_ACTIVATION = True

    def __init__(self, bits: int) -> None:
        super().__init__(bits)
        self.qn, self.qp = lsq_range(bits, signed=False)
        self.step = nn.Parameter(torch.ones(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == 0:
            return x.clone()
        step = self.step
        if not bool(self.initialized):
            relu = x.detach().clamp(min=0)
            init = lsq_init_step(relu, self.qp)
            if self.training and bool(relu.sum() > 0):
                with torch.no_grad():
                    self.step.copy_(init)
                    self.initialized.fill_(True)
            else:
                step = init.to(self.step.dtype)
        n = x.numel() // x.shape[0] if x.dim() > 1 else x.numel()
        return lsq(x, step, self.qn, self.qp, lsq_grad_scale(n, self.qp))

    def _freeze(self) -> None:
        if not bool(self.initialized):
            raise LowbitError("LSQAct has seen no (non-zero) training batch: its step is not "
                              "initialised; train or calibrate it before freeze()")

    def codebook(self) -> IntegerGrid:
        return self.encode(torch.zeros(0))[1]

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, IntegerGrid]:
        self.require_frozen()
        return lsq_encode(x, self.step, self.qn, self.qp)


ALPHA_FROM = ("init", "mse")  # PACTAct's alpha_from: the fixed alpha_init, or observed (MSE)
ALPHA_CANDIDATES = 64  # alphas tried by pact_mse_alpha, as fractions of the batch's max


@torch.no_grad()
def pact_mse_alpha(x: torch.Tensor, bits: int, candidates: int = ALPHA_CANDIDATES
                   ) -> torch.Tensor:
    """The alpha among (k / candidates) max(x), k = 1..candidates, minimising the mean squared
    error between :func:`pact` (x, alpha, bits) and relu(x) on the batch ``x``: the clipping
    level whose quantized activation is closest to the float model's ReLU. Ties: the smallest."""
    relu = x.detach().float().clamp(min=0).flatten()
    top = relu.max()
    if not bool(top > 0):
        return top.new_ones(())
    alphas = top * torch.arange(1, candidates + 1, dtype=relu.dtype) / candidates
    sample = relu[:: max(1, relu.numel() // 200_000)]  # a strided sample bounds the cost
    errors = torch.stack([((pact(sample, a, bits) - sample) ** 2).mean() for a in alphas])
    return alphas[int(torch.argmin(errors))]


class PACTAct(ActQuantizer):
    """PACT (eq. 1-3): clip(x, 0, alpha), quantized to 2^b levels; replaces the ReLU.

    ``alpha``: one learned scalar per layer. ``alpha_from`` "init" (default) starts it at
    ``alpha_init`` = 10, the paper's initial value for training from scratch. ``alpha_from``
    "mse" is for fine-tuning a trained float model (issue 12 item 6): the first training batch
    sets alpha to :func:`pact_mse_alpha` of the layer's pre-activation, the alpha whose b-bit
    output is closest (MSE) to the float ReLU it replaces. Why not the max or a high percentile:
    at 2 bits the levels are {0, 1, 2, 3} alpha/3, and with alpha at the max of a BN output
    (~10-20, like the paper's 10) most activations round to 0 (the committed dorefa+pact 2/2
    fine-tune: 28.87 %); the MSE choice trades that rounding against clipping per bit width
    (it approaches the max as b grows). Until that batch (or in eval before any training) the
    alpha is derived from the batch at hand without being stored, as :class:`LSQAct` does.
    ``regularization()`` returns lambda_alpha * alpha^2, the paper's L2 on alpha;
    ``lowbit.train`` adds it to the loss of every module that has it. Note: the optimizer's
    ``weight_decay`` also reaches alpha (it is a parameter like any other): decay wd is the
    gradient of (wd/2) alpha^2, so set ``lambda_alpha=0`` to rely on it alone. The default
    lambda_alpha = 1e-4 is our choice; the paper tunes it per network.
    PACT pairs with DoReFa weights in the paper; here the registry's ``pact`` has no weight
    quantizer: mix methods, e.g. a Recipe with weight="dorefa", act="pact".
    """

    BITS = tuple(range(1, 9))
    REPLACES_ACTIVATION = True

    def __init__(self, bits: int, alpha_init: float = 10.0, lambda_alpha: float = 1e-4,
                 alpha_from: str = "init") -> None:
        super().__init__(bits)
        if not alpha_init > 0:
            raise ValueError(f"alpha_init must be > 0, got {alpha_init}")
        if alpha_from not in ALPHA_FROM:
            raise ValueError(f"alpha_from must be one of {ALPHA_FROM}, got {alpha_from!r}")
        self.lambda_alpha = float(lambda_alpha)
        self.alpha_init = float(alpha_init)  # the option (alpha itself is learned from there)
        self.alpha_from = alpha_from
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))
        if alpha_from != "init":  # only then: older files of the default PACTAct still load
            self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha
        if self.alpha_from != "init" and not bool(self.initialized) and x.numel():
            observed = pact_mse_alpha(x, self.bits).to(self.alpha.dtype)
            if self.training and bool(x.detach().max() > 0):
                with torch.no_grad():
                    self.alpha.copy_(observed)
                    self.initialized.fill_(True)
            else:
                alpha = observed
        return pact(x, alpha, self.bits)

    def _freeze(self) -> None:
        if self.alpha_from != "init" and not bool(self.initialized):
            raise LowbitError("PACTAct(alpha_from='mse') has seen no training batch: its alpha "
                              "is not initialised; train or calibrate it before freeze()")

    def codebook(self) -> IntegerGrid:
        return self.encode(torch.zeros(0))[1]

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, IntegerGrid]:
        self.require_frozen()
        return pact_encode(x, self.alpha, self.bits)

    def regularization(self) -> torch.Tensor:
        """lambda_alpha * alpha^2, to be added to the training loss."""
        return self.lambda_alpha * self.alpha**2

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, lambda_alpha={self.lambda_alpha}, "
                f"alpha_from={self.alpha_from}")
