"""The two quantizer protocols every method implements (GUIDE.md, "How to write a quantizer").

A quantizer module holds hyper-parameters (``bits``), learned parameters and buffers, and calls
a pure function of ``lowbit.functional``. ``BITS`` is the set of bit widths the method can take;
anything else is a :class:`~lowbit.errors.BitsError` at construction.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from lowbit.errors import BitsError, LowbitError
from lowbit.functional.checks import check_bits
from lowbit.functional.codebook import Codebook


class Quantizer(nn.Module):
    BITS: ClassVar[tuple[int, ...]] = tuple(range(1, 32))

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))
        bits = check_bits(bits, what=f"{type(self).__name__} bits")  # a plain int
        if bits not in self.BITS:
            raise BitsError(
                f"{type(self).__name__} cannot take {bits} bits; it takes {bits_span(self.BITS)}"
            )
        self.bits = bits

    def extra_repr(self) -> str:
        return f"bits={self.bits}"

    @property
    def spec(self):
        """This quantizer's :class:`~lowbit.quantizers.spec.QuantSpec` (method, role, bits,
        options), read back from its class and attributes."""
        from lowbit.quantizers.spec import QuantSpec  # spec -> registry -> every quantizer

        return QuantSpec.of(self)

    @property
    def is_frozen(self) -> bool:
        return bool(self.frozen)

    def freeze(self) -> Quantizer:
        """Switch to the inference function, for good (saved in the state dict): stochastic ->
        deterministic as the paper deploys it, soft -> hard, observed ranges -> fixed, a frozen
        quantizer's learned parameters no longer change its output's grid. The one explicit
        way into what export and the runtime compute. Returns the quantizer."""
        self._freeze()
        self.frozen.fill_(True)
        return self

    def _freeze(self) -> None:
        """What freezing changes for this method (default: nothing; deterministic methods)."""

    def require_frozen(self, why: str = "") -> None:
        """Raise unless frozen: what an ``encode``/``codebook`` whose grid is only fixed by
        :meth:`freeze` calls first (``why``: what the grid is until then)."""
        if not self.is_frozen:
            raise LowbitError(f"{type(self).__name__}: freeze() it before asking for its grid"
                              + (f" ({why})" if why else ""))

    def regularization(self) -> torch.Tensor | None:
        """A term the trainer adds to the loss (e.g. PACT's L2 on alpha); None: no term."""
        return None

    @property
    def regularized(self) -> bool:
        """Whether this method defines :meth:`regularization` (the trainer asks only those)."""
        return type(self).regularization is not Quantizer.regularization

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # state dicts written before quantizers could be frozen: not frozen
        state_dict.setdefault(prefix + "frozen", torch.zeros((), dtype=torch.bool))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class WeightQuantizer(Quantizer):
    """forward(w) -> fake-quantized w; encode(w) -> (codes, codebook) with
    ``codebook.decode(codes)`` equal to the forward (after :meth:`freeze`: bit for bit), the
    codebook a typed record of :mod:`lowbit.functional.codebook`."""

    def init_from(self, weight: torch.Tensor) -> None:
        """Initialise learned parameters from the float weight it will quantize (default: none)."""

    def observe(self, weight: torch.Tensor) -> None:
        """Refit the statistics this quantizer derives from the weight (a stored scale),
        without touching learned parameters; :func:`lowbit.calibration.freeze_model` calls it
        right before :meth:`freeze` (default: nothing)."""

    def after_step(self, weight: torch.Tensor) -> None:
        """Called by the trainer after every optimizer step with the layer's float weight
        (e.g. BinaryConnect's clip to [-1, 1]); default: nothing."""

    @property
    def has_after_step(self) -> bool:
        return type(self).after_step is not WeightQuantizer.after_step

    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, Codebook]:
        raise NotImplementedError

    def storage_bytes(self, weight: torch.Tensor) -> int:
        """Bytes a packed file needs for ``weight``: its codes at their bits plus the codebook
        record (derived from the record, :meth:`Codebook.storage_bytes`)."""
        codes, codebook = self.encode(weight)
        return codebook.storage_bytes(codes.numel())


class ActQuantizer(Quantizer):
    """forward(x) -> quantized activation.

    ``REPLACES_ACTIVATION``: True when the function is itself the non-linearity (ivan's A_b
    contains the ReLU), False when it quantizes the output of the float activation it follows.
    """

    REPLACES_ACTIVATION: ClassVar[bool] = True

    def codebook(self) -> Codebook:
        """The grid of this quantizer's outputs, once frozen (data-independent from then on)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its grid yet")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, Codebook]:
        """(codes, codebook) of ``x`` after :meth:`freeze`, ``codebook.decode(codes)`` equal to
        the forward of the frozen quantizer, bit for bit."""
        raise NotImplementedError(f"{type(self).__name__} cannot encode activations yet")


class RunningMaxAct(ActQuantizer):
    """An activation quantizer whose range is the batch max M in training and a running average
    of batch maxima (``momentum``) at inference, so that a test prediction does not depend on
    the rest of its batch. Before any training batch, eval uses the batch's own max."""

    def __init__(self, bits: int, momentum: float = 0.1) -> None:
        super().__init__(bits)
        self.momentum = momentum
        self.register_buffer("running_max", torch.zeros(()))
        self.register_buffer("num_batches", torch.zeros((), dtype=torch.long))

    def _freeze(self) -> None:
        if int(self.num_batches) == 0:
            raise LowbitError(f"{type(self).__name__} has seen no training batch: its range is "
                              "unknown; train or calibrate it before freeze()")

    def observed_max(self, x: torch.Tensor, hi: float = float("inf")) -> torch.Tensor:
        """M for this call: clamp(max x, 0, hi), updating the running average in training;
        once frozen, the running value in every mode."""
        if self.is_frozen or (not self.training and int(self.num_batches) > 0):
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

