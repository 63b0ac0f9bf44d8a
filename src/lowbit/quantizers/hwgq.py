"""The HWGQ activation quantizer (Cai et al., CVPR 2017): a fixed half-wave Gaussian quantizer in
place of ReLU. Formulas and deviations: :mod:`lowbit.functional.hwgq`.

Registry name ``hwgq`` is activations only: Cai et al. pair HWGQ with binary (BWN) weights; mix it
with a binary weight method, e.g. ``Recipe(weight="xnor", w_bits=1, act="hwgq", a_bits=2)``
(``--w-method xnor``).

Record (:func:`lowbit.functional.hwgq.hwgq_codebook`): UNIFORM fit IntegerGrid 0..2^b - 1 x step,
LLOYD fit Table [0, q_1..q_m]; the levels are fixed at construction (fitted offline to N(0, 1)),
so ``codebook()`` and ``encode(x)`` are available in every state and :meth:`freeze` changes
nothing. Tests: tests/quantizers/test_soft_hwgq.py, tests/quantizers/test_contract.py.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from lowbit.functional.codebook import IntegerGrid, LevelRange, Table
from lowbit.functional.hwgq import (
    HWGQ_MAX_BITS,
    HWGQBackward,
    LevelFit,
    hwgq,
    hwgq_codebook,
    hwgq_encode,
)
from lowbit.quantizers.base import ActQuantizer


class HWGQAct(ActQuantizer):
    """Q(x) = 0 for x <= 0, else the nearest of 2^b - 1 positive levels fitted (once, offline)
    to the half-normal N(0, 1) restricted to x > 0 (inputs are assumed batch-normalised).

    Input-scale assumption (Cai et al. 2017 sec. 3: the levels are fitted once to N(0, 1)
    because batch normalisation makes the pre-activations approximately unit Gaussian): lowbit's
    BatchNorm layers are affine, so a channel's input here is roughly N(beta, gamma^2) with its
    learned gamma, beta, not N(0, 1). In the zoo's float ResNet-20
    (benchmarks/results/zoo_table2/float_aug) the median |gamma| is 0.70 (10th-90th percentile
    0.50-0.95) and the median beta -0.19, so the fixed 2-bit step 0.538 is ~1.4x the step
    that is MSE-optimal for the median channel (0.538 x 0.70). Training can move gamma to fit
    the levels (as the paper relies on), but a short fine-tune barely does; the levels are not
    rescaled here (a per-layer observed-std scale would change the deployed grid and is not
    the paper's). Results that use HWGQ should say so (issue 12 item 7).
    ``backward``: HWGQBackward.CLIPPED (default, the paper's), LOG_TAILED or RELU.
    ``fit``: LevelFit.UNIFORM (default: uniform steps as Cai et al. deploy) or LLOYD (non-uniform).
    """

    BITS: ClassVar[tuple[int, ...]] = tuple(range(1, HWGQ_MAX_BITS + 1))
    REPLACES_ACTIVATION: ClassVar[bool] = True

    def __init__(self, bits: int, backward: HWGQBackward = HWGQBackward.CLIPPED,
                 fit: LevelFit = LevelFit.UNIFORM) -> None:
        super().__init__(bits)
        if not isinstance(backward, HWGQBackward):
            raise TypeError(f"backward must be an HWGQBackward, got {backward!r}")
        if not isinstance(fit, LevelFit):
            raise TypeError(f"fit must be a LevelFit, got {fit!r}")
        self.backward_mode = backward
        self.fit = fit
        record = hwgq_codebook(bits, fit)
        self.register_buffer("levels", record.decode(torch.arange(1, 2**bits)))

    @property
    def backward(self) -> HWGQBackward:
        """The ``backward`` option (kept as ``backward_mode``; read back by its spec)."""
        return self.backward_mode

    def codebook(self) -> IntegerGrid | Table:
        """UNIFORM: IntegerGrid(0..2^b - 1) x levels[0] (the step; ``levels`` holds its decoded
        values); LLOYD: Table [0, *levels]."""
        if self.fit is LevelFit.UNIFORM:
            return IntegerGrid(LevelRange(0, self.levels.numel()), self.levels[0].clone(),
                               self.bits)
        return Table(torch.cat([self.levels.new_zeros(1), self.levels]), self.bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return hwgq(x, self.codebook(), self.backward_mode)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, IntegerGrid | Table]:
        return hwgq_encode(x, self.codebook())

    def extra_repr(self) -> str:
        return f"bits={self.bits}, backward={self.backward_mode.name}, fit={self.fit.name}"
