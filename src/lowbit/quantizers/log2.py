"""Power-of-two modules: Miyashita's logarithmic weights and activations, and INQ's weights.

Formulas and deviations: :mod:`lowbit.functional.log2`; the INQ procedure that drives
:class:`INQWeight`: :mod:`lowbit.train.inq`. Every encode returns the record of
:func:`lowbit.functional.log2.pow2_grid`: an :class:`~lowbit.functional.codebook.IntegerGrid`
of levels {0, (+-)2^j} times 2^e_min (a :class:`~lowbit.functional.codebook.Table` where 2^j
outgrows int64), and the forward is its ``decode`` (contract: tests/quantizers/test_contract.py).
"""

from __future__ import annotations

import math

import torch

from lowbit.errors import LowbitError
from lowbit.functional.checks import check_finite, check_nonempty
from lowbit.functional.codebook import Codebook
from lowbit.functional.log2 import inq_encode, inq_exponents, pow2_encode, pow2_grid, round_log2
from lowbit.functional.ste import ste
from lowbit.functional.stochastic import finite_absmax
from lowbit.quantizers.base import RunningMaxAct, WeightQuantizer


def _top_exponent(m: torch.Tensor) -> torch.Tensor:
    """Round(log2 m) as int64 (0 for m = 0): the exponent m itself rounds to."""
    r, nonzero = round_log2(m.detach().float().reshape(1))
    return torch.where(nonzero, r, torch.zeros_like(r)).long().reshape(())


class Pow2Weight(WeightQuantizer):
    """{0, +-2^e : e = fsr - 2^(b-1) + 2 .. fsr}, sign bit + log code (Miyashita et al. 2016).

    ``fsr`` (a buffer, default 0) is set by ``init_from`` to Round(log2 max|w|), the exponent
    the largest float weight rounds to, and kept fixed during training like the paper's FSR.
    Deviation (from the issue's ceil(log2 max|w|)): with ceil the top level is never reached
    whenever max|w| < 2^(fsr - 1/2), wasting one of the few magnitudes.
    forward = straight-through decode(encode(w)); deterministic, so ``freeze`` changes nothing.
    """

    BITS = tuple(range(2, 9))

    def __init__(self, bits: int) -> None:
        super().__init__(bits)
        self.register_buffer("fsr", torch.zeros((), dtype=torch.long))

    def init_from(self, weight: torch.Tensor) -> None:
        check_finite(check_nonempty(weight, "weight"), "weight")
        self.fsr.copy_(_top_exponent(weight.detach().abs().max()))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        codes, codebook = self.encode(weight)
        return ste(weight, codebook.decode(codes))

    @torch.no_grad()
    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, Codebook]:
        finite_absmax(weight, "weight")
        return pow2_encode(weight, self.bits, int(self.fsr))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, fsr={int(self.fsr)}"


class Pow2Act(RunningMaxAct):
    """Unsigned LogQuant(x, b, FSR) of the ReLU output: {0} U {2^e : e = fsr - 2^b + 2 .. fsr}.

    fsr = Round(log2 M), M the batch max in training and a running average of batch maxima
    (momentum 0.1) at inference; ``freeze()`` fixes M (and so the grid) at the running value.
    Deviation: Miyashita et al. pick FSR per layer by hand.
    """

    BITS = tuple(range(1, 9))
    REPLACES_ACTIVATION = False

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, Codebook]:
        return pow2_encode(x, self.bits, int(_top_exponent(self.observed_max(x))), signed=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == 0:
            return x.clone()
        codes, codebook = self._encode(x)
        return ste(x, codebook.decode(codes))

    def codebook(self) -> Codebook:
        self._check_frozen()
        return pow2_encode(torch.zeros(0), self.bits, int(_top_exponent(self.running_max)),
                           signed=False)[1]

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, Codebook]:
        self._check_frozen()
        return self._encode(x)

    def _check_frozen(self) -> None:
        self.require_frozen("its range is the running max until then")


class INQWeight(WeightQuantizer):
    """INQ (Zhou et al. 2017): frozen weights are powers of two {0, +-2^n2..2^n1}, the rest
    stays float until :mod:`lowbit.train.inq` freezes it.

    forward(w) = where(frozen_mask, frozen_values, w). The frozen entries get a zero gradient
    (the ``where``), and the forward reads the stored ``frozen_values``, so an optimizer's
    weight decay on the float copy cannot move them. n1 = floor(log2(4 max|w| / 3)) is fixed by
    ``init_from`` (the pre-trained weight), n2 = n1 + 1 - 2^(b-2).
    ``freeze()`` is portion 1.0: the weights still float are quantized by INQ eq. (4) in every
    forward from then on (what ``partition_(w, 1.0)`` would store for them), so the frozen
    forward is decode(encode(w)) and ``encode`` is valid. Unfrozen, ``encode`` needs every
    weight partitioned (portion 1.0).
    """

    BITS = tuple(range(2, 9))

    def __init__(self, bits: int) -> None:
        super().__init__(bits)
        self.register_buffer("n1", torch.zeros((), dtype=torch.long))
        self.register_buffer("frozen_mask", torch.zeros(0, dtype=torch.bool))
        self.register_buffer("frozen_values", torch.zeros(0))

    @property
    def n2(self) -> int:
        return int(self.n1) + 1 - 2 ** (self.bits - 2)

    def init_from(self, weight: torch.Tensor) -> None:
        w = check_finite(check_nonempty(weight.detach(), "weight"), "weight")
        self.n1.fill_(inq_exponents(float(w.abs().max()), self.bits)[0])
        self.frozen_mask = torch.zeros(w.shape, dtype=torch.bool, device=w.device)
        self.frozen_values = torch.zeros_like(w)

    def _check_shape(self, weight: torch.Tensor) -> None:
        if self.frozen_mask.shape != weight.shape:
            raise LowbitError(
                f"INQWeight holds a mask of shape {tuple(self.frozen_mask.shape)} for a weight of "
                f"shape {tuple(weight.shape)}; call init_from(weight) first (quantize() does)"
            )

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        self._check_shape(weight)
        if not self.is_frozen:
            return torch.where(self.frozen_mask, self.frozen_values, weight)
        codes, codebook = self.encode(weight)
        q = codebook.decode(codes)
        return torch.where(self.frozen_mask, q, ste(weight, q))  # zero gradient where frozen

    @property
    def frozen_fraction(self) -> float:
        n = self.frozen_mask.numel()
        return float(self.frozen_mask.sum()) / n if n else 0.0

    @torch.no_grad()
    def partition_(self, weight: torch.Tensor, portion: float) -> int:
        """Freeze the largest-|w| float weights until ``portion`` of all are frozen; set them
        (in ``weight`` too) to their INQ levels. Returns the number newly frozen."""
        self._check_shape(weight)
        if not 0.0 <= portion <= 1.0 or math.isnan(portion):
            raise ValueError(f"INQ portion must be in [0, 1], got {portion!r}")
        # logical-order flat copies (the buffers may be channels-last), written back below
        mask, values = self.frozen_mask.reshape(-1).clone(), self.frozen_values.reshape(-1).clone()
        flat = weight.detach().reshape(-1)
        target = min(flat.numel(), math.floor(portion * flat.numel() + 0.5))
        k = target - int(mask.sum())
        if k > 0:
            score = torch.where(mask, torch.full_like(flat, -1.0), flat.abs())
            idx = torch.topk(score, k).indices
            codes, codebook = inq_encode(flat[idx], int(self.n1), self.n2, self.bits)
            values[idx] = codebook.decode(codes)
            mask[idx] = True
            self.frozen_mask.copy_(mask.view(self.frozen_mask.shape))
            self.frozen_values.copy_(values.view(self.frozen_values.shape))
        weight.data.copy_(torch.where(self.frozen_mask, self.frozen_values, weight.data))
        return max(k, 0)

    @torch.no_grad()
    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, Codebook]:
        """INQ eq. (4) codes of the frozen values, and (once frozen) of the weights still float."""
        self._check_shape(weight)
        if not self.is_frozen and not bool(self.frozen_mask.all()):
            raise LowbitError(
                f"INQ weight is only {100 * self.frozen_fraction:.1f}% quantized; encode needs "
                "every weight frozen (run the INQ schedule to portion 1.0, or freeze())"
            )
        w = torch.where(self.frozen_mask, self.frozen_values, weight)
        return inq_encode(w, int(self.n1), self.n2, self.bits)

    def storage_bytes(self, weight: torch.Tensor) -> int:
        """Bytes of the record INQ ends with (it depends on n1 and bits only), at any portion:
        model_bytes is asked before the schedule has run."""
        self._check_shape(weight)
        grid = pow2_grid(self.n2, int(self.n1) - self.n2 + 1, True, self.bits, weight.dtype)
        return grid.storage_bytes(weight.numel())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("frozen_mask", "frozen_values"):  # shapes follow the stored weight
            stored = state_dict.get(prefix + name)
            if stored is not None and stored.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(stored, device=self.n1.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, n1={int(self.n1)}, n2={self.n2}"
