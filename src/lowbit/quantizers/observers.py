"""Observers: small modules that watch tensors and say which integer grid fits them.

``update(x)`` accumulates statistics of ``x`` (no gradient, no effect on ``x``); ``qparams()``
gives ``(scale, zero_point)`` and ``codebook()`` the :class:`~lowbit.functional.codebook.
IntegerGrid` ``(q - zero_point) * scale``, q in [qmin, qmax], that a quantizer or the runtime
uses. Per tensor or per channel (``axis``), symmetric or affine, any bits 2..16, signed
(``[-2^(b-1), 2^(b-1) - 1]``) or unsigned (``[0, 2^b - 1]``) grids.

- :class:`MinMaxObserver`: the running min and max of everything seen (torch.ao's
  ``MinMaxObserver`` / ``PerChannelMinMaxObserver``).
- :class:`MovingAverageMinMaxObserver`: min and max as exponential moving averages of the batch
  min/max with ``momentum`` (Jacob et al. 2018, sec. 3.1's EMA ranges; torch.ao's
  ``MovingAverageMinMaxObserver`` with ``averaging_constant = momentum``).

The scale and zero point follow :func:`lowbit.functional.uniform.minmax_qparams` (the range
widened to contain 0, torch.ao's rule). NaN/Inf in an observed tensor raise NonFiniteError
before anything is recorded; an empty tensor raises EmptyTensorError; ``qparams()`` before any
``update`` raises a LowbitError. The histogram observers (percentile, MSE, KL) build on this
interface: :mod:`lowbit.quantizers.histogram`.
Test: tests/quantizers/test_observers.py (torch.ao's observers as the peer).
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.errors import BitsError, LowbitError
from lowbit.functional.checks import check_bits, check_finite, check_nonempty
from lowbit.functional.codebook import IntegerGrid, LevelRange
from lowbit.functional.uniform import minmax, minmax_qparams

OBSERVER_BITS = tuple(range(2, 17))


class Observer(nn.Module):
    """Base: grid bounds, the (lazily sized, per-channel) ``lo``/``hi`` buffers, codebook()."""

    _sized_by_first_update = ("lo", "hi")  # buffers whose saved shape a load adopts

    def __init__(self, bits: int = 8, signed: bool = False, symmetric: bool = False,
                 axis: int | None = None) -> None:
        super().__init__()
        bits = check_bits(bits, what=f"{type(self).__name__} bits")
        if bits not in OBSERVER_BITS:
            raise BitsError(f"{type(self).__name__} takes 2..16 bits, got {bits}")
        self.bits, self.signed, self.symmetric, self.axis = bits, signed, symmetric, axis
        self.qmin, self.qmax = ((-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed
                                else (0, 2**bits - 1))
        self.register_buffer("lo", torch.zeros(() if axis is None else (0,)))
        self.register_buffer("hi", torch.zeros(() if axis is None else (0,)))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def _batch_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = check_nonempty(x.detach(), "observed tensor")
        lo, hi = minmax(x.float(), self.axis)
        if not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):  # NaN reaches min/max
            check_finite(x, f"tensor observed by {type(self).__name__}")
        return lo, hi

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> torch.Tensor:
        """Record ``x``'s statistics; returns ``x`` unchanged (so it can sit in a forward)."""
        lo, hi = self._batch_range(x)
        if int(self.count) == 0:
            self.lo, self.hi = lo.clone(), hi.clone()
        else:
            if lo.shape != self.lo.shape:
                raise LowbitError(f"{type(self).__name__} saw {self.lo.numel()} channels "
                                  f"before and {lo.numel()} now")
            self._merge(lo, hi)
        self.count += 1
        return x

    def _merge(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.update(x)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero_point) of the observed range: float32 scale, integer-valued zero point."""
        if int(self.count) == 0:
            raise LowbitError(f"{type(self).__name__} has observed nothing yet")
        return minmax_qparams(self.lo, self.hi, self.qmin, self.qmax, self.symmetric)

    def codebook(self) -> IntegerGrid:
        """The grid ``(q - zero_point) * scale``, q in [qmin, qmax] (code = q - qmin)."""
        scale, zero_point = self.qparams()
        return IntegerGrid(LevelRange(self.qmin, self.qmax), scale, self.bits,
                           zero_point=zero_point.round().long())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self._sized_by_first_update:  # per-channel buffers: the first update sizes
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(saved))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, signed={self.signed}, symmetric={self.symmetric}, "
                f"axis={self.axis}")


class MinMaxObserver(Observer):
    """The min and max of every tensor seen so far (per tensor, or per channel along ``axis``)."""

    def _merge(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        self.lo = torch.minimum(self.lo, lo)
        self.hi = torch.maximum(self.hi, hi)


class MovingAverageMinMaxObserver(Observer):
    """lo <- lo + momentum (batch min - lo), the same for hi; the first batch sets them."""

    def __init__(self, bits: int = 8, signed: bool = False, symmetric: bool = False,
                 axis: int | None = None, momentum: float = 0.01) -> None:
        super().__init__(bits, signed, symmetric, axis)
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum!r}")
        self.momentum = momentum

    def _merge(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        self.lo = self.lo + self.momentum * (lo - self.lo)
        self.hi = self.hi + self.momentum * (hi - self.hi)

