"""The two quantizer protocols every method implements (GUIDE.md, "How to write a quantizer").

A quantizer module holds hyper-parameters (``bits``), learned parameters and buffers, and calls
a pure function of ``lowbit.functional``. ``BITS`` is the set of bit widths the method can take;
anything else is a :class:`~lowbit.errors.BitsError` at construction.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from lowbit.errors import BitsError
from lowbit.functional.checks import check_bits


class _Quantizer(nn.Module):
    BITS: ClassVar[tuple[int, ...]] = tuple(range(1, 32))

    def __init__(self, bits: int) -> None:
        super().__init__()
        bits = check_bits(bits, what=f"{type(self).__name__} bits")  # a plain int
        if bits not in self.BITS:
            raise BitsError(
                f"{type(self).__name__} cannot take {bits} bits; it takes {bits_span(self.BITS)}"
            )
        self.bits = bits

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class WeightQuantizer(_Quantizer):
    """forward(w) -> fake-quantized w; encode(w) -> (codes, codebook) with decode == forward."""

    def init_from(self, weight: torch.Tensor) -> None:
        """Initialise learned parameters from the float weight it will quantize (default: none)."""

    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def storage_scalars(self, weight: torch.Tensor) -> int:
        """Float scalars a runtime needs beside the codes to rebuild the codebook."""
        return self.encode(weight)[1].numel()


class ActQuantizer(_Quantizer):
    """forward(x) -> quantized activation.

    ``REPLACES_ACTIVATION``: True when the function is itself the non-linearity (ivan's A_b
    contains the ReLU), False when it quantizes the output of the float activation it follows.
    """

    REPLACES_ACTIVATION: ClassVar[bool] = True


class RunningMaxAct(ActQuantizer):
    """An activation quantizer whose range is the batch max M in training and a running average
    of batch maxima (``momentum``) at inference, so that a test prediction does not depend on
    the rest of its batch. Before any training batch, eval uses the batch's own max."""

    def __init__(self, bits: int, momentum: float = 0.1) -> None:
        super().__init__(bits)
        self.momentum = momentum
        self.register_buffer("running_max", torch.zeros(()))
        self.register_buffer("num_batches", torch.zeros((), dtype=torch.long))

    def observed_max(self, x: torch.Tensor, hi: float = float("inf")) -> torch.Tensor:
        """M for this call: clamp(max x, 0, hi), updating the running average in training."""
        if not self.training and int(self.num_batches) > 0:
            return self.running_max
        m = torch.clamp(x.detach().max(), 0.0, hi)
        if self.training:
            with torch.no_grad():
                if int(self.num_batches) == 0:
                    self.running_max.copy_(m)
                else:
                    self.running_max.lerp_(m, self.momentum)
                self.num_batches += 1
        return m


def bits_span(bits: tuple[int, ...]) -> str:
    """``(2, 3, ..., 16)`` -> "2..16 (or 32 = float)"; other sets listed."""
    if len(bits) > 2 and bits == tuple(range(bits[0], bits[-1] + 1)):
        return f"{bits[0]}..{bits[-1]} (or 32 = float)"
    return ", ".join(map(str, bits)) + " (or 32 = float)"
