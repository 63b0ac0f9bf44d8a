"""``lowbit.export(model, "net.lowbit")``: a frozen copy of the model, captured as the runtime's
operator graph (:mod:`lowbit.exporter.graph`), every tensor as a section of the container
(docs/format.md), weight codes packed at exactly their bit width.

The header's ``meta`` is ``{"lowbit": 1, "graph": [...], "input": {...}, "model": {...}}``:
one JSON object per operator (docs/format.md, "The operator graph"), tensors referred to by
section name. Before writing, the exporter checks each weight record against the quantized
weight (bit for bit) and each activation grid against its quantizer (thresholds.py).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lowbit.calibration import freeze_model
from lowbit.errors import MethodError
from lowbit.exporter.graph import ExportError, capture, mark_grids
from lowbit.exporter.records import Sections, grid_record, weight_record
from lowbit.exporter.thresholds import step_grid
from lowbit.nn.layers import QuantConv2d, QuantLinear
from lowbit.runtime.container import write_container

GRAPH_VERSION = 1


def _f32(t: torch.Tensor) -> np.ndarray:
    return np.array(t.detach().cpu().float().numpy(), order="C")


def _spec(quant) -> dict:
    """The quantizer's spec for the header (tools read it; the runtime does not): a user's
    own quantizer class, not in the registry, is named by its class."""
    try:
        return quant.spec.to_dict()
    except MethodError:
        return {"class": type(quant).__qualname__, "bits": int(quant.bits)}


def _layer(op: dict, sections: Sections) -> None:
    m, name = op.pop("_module"), op["name"]
    quantized = isinstance(m, (QuantLinear, QuantConv2d)) and m.quant_enabled
    quant = m.weight_quant if quantized else None
    op["weight"] = weight_record(m.weight, quant, f"{name}.weight", sections)
    if quant is not None:
        op["spec"] = _spec(quant)
    op["bias"] = None
    if m.bias is not None:
        sections[f"{name}.bias"] = _f32(m.bias)
        op["bias"] = f"{name}.bias"
    bn = op.pop("_bn", None)
    if bn is not None:
        op["bn"] = _bn(bn, sections)


def _bn(op: dict, sections: Sections) -> dict:
    m, name = op.pop("_module"), op["name"]
    rec = {"name": name, "eps": float(m.eps)}
    for part in ("running_mean", "running_var", "weight", "bias"):
        t = getattr(m, part)
        if t is None:
            t = torch.ones_like(m.running_mean) if part == "weight" else torch.zeros_like(
                m.running_mean)
        sections[f"{name}.{part}"] = _f32(t)
        rec[part] = f"{name}.{part}"
    return rec


def _quantize(op: dict, sections: Sections) -> None:
    q, name = op.pop("_quant"), op["name"]
    try:
        cb = q.codebook()
    except NotImplementedError as e:
        raise ExportError(f"{name}: {e}") from e
    scale = getattr(cb, "scale", None)
    if scale is not None and scale.dim():
        raise ExportError(f"{name}: a per-channel activation grid; the runtime takes per-tensor "
                          "activation quantizers")
    op["grid"] = grid_record(q, step_grid(q, name), name, sections)
    op["spec"] = _spec(q)


def build(model: nn.Module) -> tuple[list[dict], Sections]:
    """The graph (JSON-ready) and sections of ``model``, which must be frozen and in eval."""
    ops, sections = capture(model), {}
    for op in ops:
        kind = op["op"]
        if kind in ("linear", "conv2d"):
            _layer(op, sections)
        elif kind == "batchnorm":
            op.update(_bn(op, sections))
        elif kind == "quantize":
            _quantize(op, sections)
        elif kind == "normalize":
            m = op.pop("_module")
            sections[f"{op['name']}.mean"] = _f32(m.mean)
            sections[f"{op['name']}.std"] = _f32(m.std)
            op.update(mean=f"{op['name']}.mean", std=f"{op['name']}.std")
        op.pop("_module", None)
    mark_grids(ops)
    return ops, sections


def frozen_copy(model: nn.Module) -> nn.Module:
    """What export writes: a copy of ``model`` in eval mode with every quantizer frozen."""
    net = copy.deepcopy(model).eval()
    return freeze_model(net)


def export(model: nn.Module, path: str | Path, *, input_shape: tuple[int, ...] | None = None,
           model_info: dict | None = None) -> Path:
    """Write ``model`` (a float, QAT or PTQ model) as a packed ``.lowbit`` file, atomically.

    A frozen copy is exported (:func:`frozen_copy`); the model passed in is not changed.
    ``input_shape`` (C, H, W) or (features,) is recorded for tools; ``model_info`` (e.g. the
    architecture and dataset) goes into the header as is. Returns the path."""
    net = frozen_copy(model)
    ops, sections = build(net)
    meta = {"lowbit": GRAPH_VERSION, "graph": ops,
            "input": {"shape": list(input_shape) if input_shape else None,
                      "dtype": "float32"},
            "model": model_info or {}}
    path = Path(path)
    write_container(path, sections, meta)
    return path
