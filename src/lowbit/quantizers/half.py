"""Half-precision weights: post-training float16 / bfloat16 (ptq-vs-qat-overview, "float16
quantization": weights stored in half precision, half the float32 size, computed in float).

Record: :class:`~lowbit.functional.codebook.HalfFloat` (the code is the 16-bit pattern).
Forward: the weight rounded to the format (round to nearest even) and widened back to float32,
``= HalfFloat.decode(HalfFloat.encode(w))`` bit for bit; straight-through gradient
(:func:`lowbit.functional.ste.ste`), so a half-precision layer can also be fine-tuned.
Values beyond float16's range (|w| > 65504) become ±Inf: refused with a clear error.
Tests: tests/quantizers/test_half.py, tests/quantizers/test_contract.py.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from lowbit.errors import NonFiniteError
from lowbit.functional.checks import check_finite
from lowbit.functional.codebook import HalfFloat
from lowbit.functional.ste import ste
from lowbit.quantizers.base import WeightQuantizer


class Float16Weight(WeightQuantizer):
    """Weights stored as IEEE float16."""

    BITS = (16,)
    FORMAT: ClassVar[str] = "float16"

    def _record(self, weight: torch.Tensor) -> tuple[torch.Tensor, HalfFloat]:
        check_finite(weight, "weight")
        record = HalfFloat(self.FORMAT)
        codes = record.encode(weight)
        return codes, record

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        check_finite(weight, "weight")
        q = weight.detach().to(HalfFloat(self.FORMAT).dtype).to(weight.dtype)
        if not bool(torch.isfinite(q).all()):
            raise NonFiniteError(f"weight beyond the {self.FORMAT} range "
                                 f"(max |w| = {float(weight.abs().max()):.4g})")
        return ste(weight, q)

    @torch.no_grad()
    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, HalfFloat]:
        codes, record = self._record(weight)
        return codes, record


class BFloat16Weight(Float16Weight):
    """Weights stored as bfloat16 (float32's exponent range, 8 significant bits)."""

    FORMAT: ClassVar[str] = "bfloat16"
