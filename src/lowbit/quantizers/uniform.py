"""Observer-driven uniform quantizers (min-max scale), for any bits 2..16.

Formula: :func:`lowbit.functional.uniform` (Jacob et al. 2018, eq. 1-2) with the scale and zero
point of :func:`lowbit.functional.minmax_qparams` (torch.ao MinMaxObserver's rule).
Records: :func:`lowbit.functional.uniform.uniform_encode`'s IntegerGrid (signed levels
-2^(b-1)..2^(b-1)-1 per output channel for weights; unsigned 0..2^b-1 with a zero point per
tensor for activations). Deterministic: ``freeze()`` fixes UniformAct's moving min/max.
Tests: tests/core/test_uniform.py, tests/quantizers/test_contract.py.
"""

from __future__ import annotations

import torch

from lowbit.errors import LowbitError
from lowbit.functional.checks import check_finite
from lowbit.functional.codebook import IntegerGrid
from lowbit.functional.uniform import minmax, minmax_qparams, uniform, uniform_encode
from lowbit.quantizers.base import ActQuantizer, WeightQuantizer

UNIFORM_BITS = tuple(range(2, 17))


class UniformWeight(WeightQuantizer):
    """Signed grid [-2^(b-1), 2^(b-1) - 1]; symmetric scale from max|w| per output channel
    (``per_channel=True``, dim 0) or per tensor. Stateless: the observer is the weight itself."""

    BITS = UNIFORM_BITS

    def __init__(self, bits: int, per_channel: bool = True, symmetric: bool = True) -> None:
        super().__init__(bits)
        self.per_channel = per_channel
        self.symmetric = symmetric
        self.qmin, self.qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def qparams(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int | None]:
        axis = 0 if self.per_channel else None
        lo, hi = minmax(weight, axis)
        if not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
            check_finite(weight, "weight")
        scale, zero_point = minmax_qparams(lo, hi, self.qmin, self.qmax, self.symmetric)
        return scale, zero_point, axis

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        scale, zero_point, axis = self.qparams(weight)
        return uniform(weight, scale, zero_point, self.qmin, self.qmax, axis)

    @torch.no_grad()
    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, IntegerGrid]:
        scale, zero_point, axis = self.qparams(weight)
        return uniform_encode(weight, scale, zero_point, self.qmin, self.qmax, axis)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel={self.per_channel}, symmetric={self.symmetric}"


class UniformAct(ActQuantizer):
    """Unsigned affine grid [0, 2^b - 1] on the output of the float activation, range from a
    moving average of batch min/max (torch.ao MovingAverageMinMaxObserver, momentum 0.01).
    ``freeze()`` fixes the moving range (it refuses an unobserved quantizer): no more updates in
    training mode, and ``codebook()`` / ``encode(x)`` give the grid the forward uses."""

    BITS = UNIFORM_BITS
    REPLACES_ACTIVATION = False

    def __init__(self, bits: int, momentum: float = 0.01) -> None:
        super().__init__(bits)
        self.momentum = momentum
        self.qmin, self.qmax = 0, 2**bits - 1
        self.register_buffer("running_min", torch.zeros(()))
        self.register_buffer("running_max", torch.zeros(()))
        self.register_buffer("num_batches", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == 0:
            return x.clone()
        if self.training and not self.is_frozen:
            self._observe(x)
        if int(self.num_batches) == 0:  # eval before any training batch: observe this one
            lo, hi = minmax(x, None)
        else:
            lo, hi = self.running_min, self.running_max
        scale, zero_point = minmax_qparams(lo, hi, self.qmin, self.qmax, symmetric=False)
        return uniform(x, scale, zero_point, self.qmin, self.qmax)

    def _freeze(self) -> None:
        if int(self.num_batches) == 0:
            raise LowbitError("UniformAct has seen no training batch: its range is unknown; "
                              "train or calibrate it before freeze()")

    def _qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.require_frozen("its range moves with every training batch until then")
        return minmax_qparams(self.running_min, self.running_max, self.qmin, self.qmax,
                              symmetric=False)

    def codebook(self) -> IntegerGrid:
        return self.encode(torch.zeros(0))[1]

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, IntegerGrid]:
        scale, zero_point = self._qparams()
        return uniform_encode(x, scale, zero_point, self.qmin, self.qmax)

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = minmax(x, None)
        if int(self.num_batches) == 0:
            self.running_min.copy_(lo)
            self.running_max.copy_(hi)
        else:
            self.running_min.lerp_(lo, self.momentum)
            self.running_max.lerp_(hi, self.momentum)
        self.num_batches += 1
