"""A quantized model's quantizers as specs, and the model rebuilt from them.

:func:`quantizer_slots` lists every quantized module of a model (QuantLinear, QuantConv2d,
QuantAct) with its names and, per slot (``weight_quant``, ``input_quant``,
``output_grad_quant``; ``quant`` of a QuantAct), the :class:`~lowbit.quantizers.spec.QuantSpec`
of the quantizer there (``None``: the slot is empty, the tensor stays float). It is what
``model.pt`` stores, so that a model made by any route (``quantize`` with a recipe,
``requantize``, ``add_input_quantizers``, post-training quantization) is rebuilt exactly by
:func:`apply_specs` on the float architecture, options included, before its state dict is
loaded. The recipe is kept in the file as the record of intent, not needed to rebuild.
Test: tests/core/test_slots.py.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lowbit.errors import CheckpointError, LowbitError
from lowbit.nn.layers import QuantAct, QuantConv2d, QuantLinear
from lowbit.quantizers.spec import QuantSpec

WEIGHT_SLOTS = ("weight_quant", "input_quant", "output_grad_quant")
KIND = {QuantLinear: "linear", QuantConv2d: "conv2d", QuantAct: "activation"}
FLOAT_TYPES = {"linear": nn.Linear, "conv2d": nn.Conv2d}


def _spec(q: nn.Module | None) -> dict[str, Any] | None:
    return None if q is None else QuantSpec.of(q).to_dict()


def quantizer_slots(model: nn.Module) -> list[dict[str, Any]]:
    """One entry per quantized module, in module order: ``{"names": [...], "kind": "linear" |
    "conv2d" | "activation", "slots": {slot: spec dict or None}}`` (JSON-ready)."""
    units: dict[int, dict[str, Any]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        kind = KIND.get(type(m))
        if kind is None:
            continue
        if id(m) in units:
            units[id(m)]["names"].append(name)
            continue
        slots = ({"quant": _spec(m.quant)} if kind == "activation"
                 else {s: _spec(getattr(m, s)) for s in WEIGHT_SLOTS})
        units[id(m)] = {"names": [name], "kind": kind, "slots": slots}
    return list(units.values())


def _built(d: dict[str, Any] | None, where: str) -> nn.Module | None:
    if d is None:
        return None
    try:
        return QuantSpec.from_dict(d).build()
    except LowbitError as exc:
        raise CheckpointError(f"{where}: {exc}") from exc


def apply_specs(model: nn.Module, entries: list[dict[str, Any]]) -> nn.Module:
    """Rebuild, in place on the float ``model``, the quantized modules ``entries`` (from
    :func:`quantizer_slots`) describe; returns the model (fresh quantizers: load the state
    dict afterwards). A name that is missing or of the wrong float type is a CheckpointError."""
    for e in entries:
        names, kind = e["names"], e["kind"]
        try:
            old = model.get_submodule(names[0])
        except AttributeError:
            raise CheckpointError(f"the saved model has a quantized {kind} {names[0]!r} that "
                                  f"{type(model).__name__} does not have") from None
        where = f"{kind} {names[0]!r}"
        slots = e["slots"]
        if kind == "activation":
            new: nn.Module = QuantAct(_built(slots["quant"], where), old)
        else:
            float_type = FLOAT_TYPES[kind]
            if type(old) is not float_type:
                raise CheckpointError(f"{where}: the saved model has a {kind} there, "
                                      f"{type(model).__name__} has {type(old).__name__}")
            layer_type = QuantLinear if kind == "linear" else QuantConv2d
            new = layer_type.from_float(old, _built(slots.get("weight_quant"), where))
            for slot in ("input_quant", "output_grad_quant"):
                q = _built(slots.get(slot), where)
                if q is not None:
                    setattr(new, slot, q.to(old.weight.device))
        new.train(old.training)
        new.layer_name = names[0] + (f" (also {', '.join(names[1:])})" if names[1:] else "")
        for name in names:
            if not name:
                return new
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, new)
    return model
