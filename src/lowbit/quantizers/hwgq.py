"""The HWGQ activation quantizer (Cai et al., CVPR 2017): a fixed half-wave Gaussian quantizer in
place of ReLU. Formulas and deviations: :mod:`lowbit.functional.hwgq`.

Registry name ``hwgq`` is activations only: Cai et al. pair HWGQ with binary (BWN) weights; mix it
with a binary weight method, e.g. ``Recipe(weight="xnor", w_bits=1, act="hwgq", a_bits=2)``
(``--w-method xnor``).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from lowbit.functional.hwgq import HWGQ_MAX_BITS, HWGQBackward, LevelFit, hwgq, hwgq_levels
from lowbit.quantizers.base import ActQuantizer


class HWGQAct(ActQuantizer):
    """Q(x) = 0 for x <= 0, else the nearest of 2^b - 1 positive levels fitted (once, offline)
    to the half-normal N(0, 1) restricted to x > 0 (inputs are assumed batch-normalised).

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
        self.register_buffer("levels", torch.tensor(hwgq_levels(bits, fit), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return hwgq(x, self.levels, self.backward_mode)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, backward={self.backward_mode.name}, fit={self.fit.name}"
