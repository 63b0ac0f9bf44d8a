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
from lowbit.quantizers.histogram import ACT_OBSERVERS, WEIGHT_OBSERVERS, make_observer

UNIFORM_BITS = tuple(range(2, 17))


class UniformWeight(WeightQuantizer):
    """Signed grid [-2^(b-1), 2^(b-1) - 1]; scale per output channel (``per_channel=True``,
    dim 0) or per tensor, symmetric (zero point 0) or affine.

    ``observer="minmax"`` (default): the scale follows max|w| (min/max when affine) of the
    current weight at every forward, as QAT needs. Another observer (``"mse"``, ``"percentile"``,
    ``"kl"``: :mod:`lowbit.quantizers.histogram`) is fitted to the weight by :meth:`observe`
    (``init_from`` calls it; post-training quantization calls it again on the weight it
    quantizes) and its clipping range is kept. The scale and zero point in use are stored
    (buffers ``scale``, ``zero_point``): ``freeze()`` keeps them from then on, so a weight
    written onto the grid afterwards (AdaRound) re-encodes to the same codes. Freeze through
    :func:`lowbit.calibration.freeze_model`, which observes each layer's weight first.
    """

    BITS = UNIFORM_BITS

    def __init__(self, bits: int, per_channel: bool = True, symmetric: bool = True,
                 observer: str = "minmax") -> None:
        super().__init__(bits)
        if observer not in WEIGHT_OBSERVERS:
            raise LowbitError(f"UniformWeight observer {observer!r}: one of "
                              f"{', '.join(WEIGHT_OBSERVERS)}")
        self.per_channel, self.symmetric, self.observer = per_channel, symmetric, observer
        self.qmin, self.qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        self.register_buffer("scale", torch.zeros(()))
        self.register_buffer("zero_point", torch.zeros(()))

    def _axis(self) -> int | None:
        return 0 if self.per_channel else None

    def _fit(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        axis = self._axis()
        if self.observer == "minmax":
            lo, hi = minmax(weight, axis)
            if not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
                check_finite(weight, "weight")
            return minmax_qparams(lo, hi, self.qmin, self.qmax, self.symmetric)
        obs = make_observer(self.observer, bits=self.bits, signed=True,
                            symmetric=self.symmetric, axis=axis).to(weight.device)
        obs.update(weight)
        return obs.qparams()

    @torch.no_grad()
    def observe(self, weight: torch.Tensor) -> None:
        """Fit and store the scale and zero point for ``weight`` (not once frozen)."""
        if self.is_frozen:
            return
        scale, zero_point = self._fit(weight)
        self.scale, self.zero_point = scale.detach().clone(), zero_point.detach().clone()

    def init_from(self, weight: torch.Tensor) -> None:
        self.observe(weight)

    def _observed(self) -> bool:
        return self.scale.numel() > 0 and bool((self.scale > 0).all())

    def qparams(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int | None]:
        """(scale, zero_point, axis) used for ``weight`` now."""
        if self.is_frozen or (self.observer != "minmax" and self._observed()):
            if not self._observed():
                raise LowbitError("UniformWeight was frozen before it saw its weight; freeze "
                                  "it with lowbit.calibration.freeze_model (observe(w) first)")
            return self.scale, self.zero_point, self._axis()
        scale, zero_point = self._fit(weight)
        return scale, zero_point, self._axis()

    def _freeze(self) -> None:
        if not self._observed():
            raise LowbitError("UniformWeight has not seen its weight: call observe(weight) "
                              "(lowbit.calibration.freeze_model does) before freeze()")

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        scale, zero_point, axis = self.qparams(weight)
        return uniform(weight, scale, zero_point, self.qmin, self.qmax, axis)

    @torch.no_grad()
    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, IntegerGrid]:
        scale, zero_point, axis = self.qparams(weight)
        return uniform_encode(weight, scale, zero_point, self.qmin, self.qmax, axis)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("scale", "zero_point"):  # sized by the weight; absent in older files
            saved = state_dict.setdefault(prefix + name, torch.zeros(()))
            if saved.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(saved))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        obs = f", observer={self.observer}" if self.observer != "minmax" else ""
        return (f"bits={self.bits}, per_channel={self.per_channel}, "
                f"symmetric={self.symmetric}{obs}")


class UniformAct(ActQuantizer):
    """Unsigned affine grid [0, 2^b - 1] (``symmetric=True``: zero point at the grid's middle)
    on the output of the float activation or a layer's input, its range from an observer module
    (:mod:`lowbit.quantizers.observers`):

    - ``observer="ema"`` (default, for training): moving average of batch min/max with
      ``momentum`` (torch.ao MovingAverageMinMaxObserver, momentum 0.01); training batches
      update it and are quantized with the current range;
    - ``"minmax"`` and the calibration observers ``"percentile"``, ``"mse"``, ``"kl"``
      (:mod:`lowbit.quantizers.histogram`): while
      observing (training mode, not frozen) the input passes through unchanged, as torch.ao's
      prepared models do, so that what later layers observe is not distorted by a range still
      being estimated;
    - ``"dynamic"``: no stored range; every batch is quantized with its own min/max, per tensor
      or, with ``per_row=True``, per row (dim 0: per example / token), the dynamic-range mode of
      post-training quantization. Its grid depends on the batch: ``encode(x)`` gives it,
      ``codebook()`` refuses.

    ``freeze()`` computes the scale and zero point once from the observer (it refuses an
    unobserved quantizer) and stores them (buffers ``scale``, ``zero_point``): no more updates,
    and ``codebook()`` / ``encode(x)`` give the grid the forward uses. Evaluated before any
    training batch (and not frozen), a static observer's quantizer uses the batch's own range.
    """

    BITS = UNIFORM_BITS
    REPLACES_ACTIVATION = False

    def __init__(self, bits: int, momentum: float = 0.01, observer: str = "ema",
                 symmetric: bool = False, per_row: bool = False) -> None:
        super().__init__(bits)
        if observer not in ACT_OBSERVERS:
            raise LowbitError(f"UniformAct observer {observer!r}: one of "
                              f"{', '.join(ACT_OBSERVERS)}")
        if per_row and observer != "dynamic":
            raise LowbitError("UniformAct per_row=True needs observer='dynamic' (a stored "
                              "range cannot follow the rows of every batch)")
        self.momentum, self.observer = momentum, observer
        self.symmetric, self.per_row = symmetric, per_row
        self.qmin, self.qmax = 0, 2**bits - 1
        self.range_observer = (None if observer == "dynamic"
                               else make_observer(observer, bits=bits, symmetric=symmetric,
                                                  **({"momentum": momentum}
                                                     if observer == "ema" else {})))
        self.register_buffer("scale", torch.zeros(()))
        self.register_buffer("zero_point", torch.zeros(()))

    # read-only views kept for callers of the moving range
    @property
    def running_min(self) -> torch.Tensor:
        return self.range_observer.lo

    @property
    def running_max(self) -> torch.Tensor:
        return self.range_observer.hi

    @property
    def num_batches(self) -> torch.Tensor:
        if self.range_observer is None:
            return torch.zeros((), dtype=torch.long)
        return self.range_observer.count

    def _observed(self) -> bool:
        return self.range_observer is not None and int(self.range_observer.count) > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == 0:
            return x.clone()
        if self.range_observer is None:  # dynamic: this batch's own range
            return uniform(x, *self._batch_qparams(x), self.qmin, self.qmax, self._axis(x))
        if self.is_frozen:
            return uniform(x, self.scale, self.zero_point, self.qmin, self.qmax)
        if self.training:
            self.range_observer.update(x)
            if self.observer != "ema":
                return x  # calibrating: observe only
            scale, zero_point = self.range_observer.qparams()
        elif self._observed() and self.observer == "ema":
            scale, zero_point = self.range_observer.qparams()
        else:  # eval before any training batch (or a calibration observer not frozen yet)
            scale, zero_point = self._batch_qparams(x, axis=None)
        return uniform(x, scale, zero_point, self.qmin, self.qmax)

    def _axis(self, x: torch.Tensor) -> int | None:
        return 0 if self.per_row and x.dim() > 1 else None

    def _batch_qparams(self, x: torch.Tensor, axis: int | None | str = "auto"):
        axis = self._axis(x) if axis == "auto" else axis
        lo, hi = minmax(x, axis)
        return minmax_qparams(lo, hi, self.qmin, self.qmax, self.symmetric)

    def _freeze(self) -> None:
        if self.range_observer is None:
            return  # dynamic: nothing to fix, the grid is computed per batch
        if not self._observed():
            raise LowbitError("UniformAct has seen no training batch: its range is unknown; "
                              "train or calibrate it before freeze()")
        scale, zero_point = self.range_observer.qparams()
        self.scale, self.zero_point = scale.clone(), zero_point.clone()

    def codebook(self) -> IntegerGrid:
        if self.range_observer is None:
            raise LowbitError("a dynamic UniformAct has no fixed grid: each batch gets its own "
                              "(encode(x) gives it)")
        return self.encode(torch.zeros(0))[1]

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, IntegerGrid]:
        if self.range_observer is None:
            if x.numel() == 0:
                raise LowbitError("a dynamic UniformAct cannot encode an empty batch")
            return uniform_encode(x, *self._batch_qparams(x), self.qmin, self.qmax,
                                  self._axis(x))
        self.require_frozen("its range moves with every training batch until then")
        return uniform_encode(x, self.scale, self.zero_point, self.qmin, self.qmax)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # files written before the observer module: running_min/max/num_batches -> observer
        old = {k: prefix + k for k in ("running_min", "running_max", "num_batches")}
        if old["running_min"] in state_dict and self.range_observer is not None:
            obs = prefix + "range_observer."
            state_dict[obs + "lo"] = state_dict.pop(old["running_min"])
            state_dict[obs + "hi"] = state_dict.pop(old["running_max"])
            state_dict[obs + "count"] = state_dict.pop(old["num_batches"])
            frozen = bool(state_dict.get(prefix + "frozen", False))
            if frozen and prefix + "scale" not in state_dict:
                scale, zp = minmax_qparams(state_dict[obs + "lo"], state_dict[obs + "hi"],
                                           self.qmin, self.qmax, self.symmetric)
                state_dict[prefix + "scale"], state_dict[prefix + "zero_point"] = scale, zp
        state_dict.setdefault(prefix + "scale", torch.zeros(()))
        state_dict.setdefault(prefix + "zero_point", torch.zeros(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        extra = f", symmetric={self.symmetric}" if self.symmetric else ""
        extra += ", per_row=True" if self.per_row else ""
        return f"bits={self.bits}, observer={self.observer}{extra}"
