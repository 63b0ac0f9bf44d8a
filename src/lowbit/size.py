"""Model size: the float32 size and the size with each quantized weight stored at its bit width.

float bytes  = 4 bytes per parameter and float buffer of the model with every weight in
               float32: the float model's tensors plus the activation quantizers' parameters and
               ranges, which a float32 copy of the same (activation-quantized) network needs too;
               weight-quantizer state and observer modules (range statistics; their
               quantizer stores the scale and zero point it fixes) excluded.
packed bytes = for each quantized weight, what its codebook record says: the codes at their
               bits plus the record's own tensors (``WeightQuantizer.storage_bytes``; the
               weight quantizer's own training
               state, e.g. INQ's masks, is not stored); + 4 bytes per other float parameter or
               float buffer needed at inference (biases, float layers, BatchNorm statistics,
               activation quantizer parameters and ranges).

Both sides count the activation quantizers' scalars, so packed <= float whenever no weight is
stored at more bits than float (e.g. W32/A1: equal). A plain float model has no such scalars:
its float bytes are those of the quantized model minus 4 bytes per activation-quantizer scalar.
"""

from __future__ import annotations

from torch import nn

from lowbit.nn.layers import QuantConv2d, QuantLinear
from lowbit.quantizers.observers import Observer


def model_bytes(model: nn.Module) -> dict[str, int]:
    """``{"float_bytes": ..., "packed_bytes": ...}`` of ``model``."""
    weight_bytes: dict[int, int] = {}
    weight_quant_state: set[int] = set()
    for m in model.modules():
        if isinstance(m, Observer):  # calibration state; the quantizer holds the grid it fixes
            weight_quant_state |= {id(t) for t in m.buffers()}
        q = m.weight_quant if isinstance(m, (QuantLinear, QuantConv2d)) else None
        if q is None:
            continue
        weight_quant_state |= {id(t) for t in (*q.parameters(), *q.buffers())}
        w = m.weight.detach()
        weight_bytes[id(m.weight)] = q.storage_bytes(w)
    float_bytes = packed = 0
    for t in (*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())):
        if id(t) in weight_quant_state:
            continue
        float_bytes += 4 * t.numel()
        packed += weight_bytes.get(id(t), 4 * t.numel())
    return {"float_bytes": float_bytes, "packed_bytes": packed}
