"""Model size: the float32 size and the size with each quantized weight stored at its bit width.

float bytes  = 4 bytes per parameter and float buffer of the float model (quantizer state
               excluded).
packed bytes = for each quantized weight, ceil(numel * bits / 8) + 4 bytes per scalar its
               codebook is rebuilt from (``storage_scalars``); + 4 bytes per other float
               parameter or buffer needed at inference (biases, float layers, BatchNorm
               statistics, activation quantizer ranges).
"""

from __future__ import annotations

import math

from torch import nn

from lowbit.nn.layers import QuantAct, QuantConv2d, QuantLinear


def model_bytes(model: nn.Module) -> dict[str, int]:
    """``{"float_bytes": ..., "packed_bytes": ...}`` of ``model``."""
    weight_bytes: dict[int, int] = {}
    quantizer_state: set[int] = set()
    for m in model.modules():
        q = getattr(m, "weight_quant", None) if isinstance(m, (QuantLinear, QuantConv2d)) else None
        q = m.quant if isinstance(m, QuantAct) else q
        if q is None:
            continue
        quantizer_state |= {id(t) for t in q.parameters()}
        quantizer_state |= {id(t) for t in q.buffers()}
        if not isinstance(m, QuantAct):
            w = m.weight.detach()
            codes = math.ceil(w.numel() * q.bits / 8)
            weight_bytes[id(m.weight)] = codes + 4 * q.storage_scalars(w)
    float_bytes = packed = 0
    for t in model.parameters():  # quantizer parameters are counted by storage_scalars
        if id(t) not in quantizer_state:
            float_bytes += 4 * t.numel()
            packed += weight_bytes.get(id(t), 4 * t.numel())
    for t in model.buffers():
        if t.is_floating_point():
            packed += 4 * t.numel()
            float_bytes += 0 if id(t) in quantizer_state else 4 * t.numel()
    return {"float_bytes": float_bytes, "packed_bytes": packed}
