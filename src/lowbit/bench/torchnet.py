"""The float twin of a ``.lowbit`` file as a torch module: :func:`torch_net` interprets the
runtime's checked operator graph (:class:`lowbit.runtime.model.Model`) with torch's float ops,
so that any exported file can be benchmarked against torch and ONNX Runtime without its
``model.pt``.

What it computes, node by node (docs/format.md, "The operator graph"):

- ``linear`` / ``conv2d``: an ``nn.Linear`` / ``nn.Conv2d`` holding the layer's *decoded*
  weight (:meth:`lowbit.runtime.records.Weight.decoded`: the quantized values as float32, bit
  for bit training's) and its bias; a folded BatchNorm as the runtime applies it, ``y * a + b``
  (:func:`lowbit.runtime.ops.bn_affine`). A linear layer flattens a >2-d input (as the runtime).
- ``quantize``: not quantized. With ``grids=False`` (the benchmark's float network) it is
  ``clamp(x, min(values), max(values))``, the identity on the grid's range: a quantizer that
  replaces its activation (a sign, Ivan's A_b, DoReFa's clip) leaves no other trace of the
  non-linearity in the graph, and a plain identity would make such a net linear. With
  ``grids=True`` it is the quantizer itself, ``values[#{j : thresholds[j] <= x}]``
  (``torch.bucketize(..., right=True)``): the fake-quantized model's forward, used by the tests.
- everything else: its torch function (normalize, batchnorm ``x * a + b``, the activations,
  max / average / adaptive pooling, flatten, add).

Layers are ``nn.Linear`` / ``nn.Conv2d`` submodules so that
``torch.ao.quantization.quantize_dynamic`` can swap them and ``torch.onnx.export`` traces them.
Tests: tests/bench/test_torchnet.py (a float net exported and interpreted gives the float
net's logits; a quantized one with ``grids=True`` the frozen fake-quantized model's).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as TF
from torch import nn

_SIMPLE = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _layer_module(layer) -> nn.Module:
    w = _t(layer.weight.decoded())
    bias = layer.bias is not None
    if layer.kind == "linear":
        m = nn.Linear(w.shape[1], w.shape[0], bias=bias)
    else:
        m = nn.Conv2d(w.shape[1] * layer.groups, w.shape[0], tuple(w.shape[2:]),
                      stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                      groups=layer.groups, bias=bias)
    with torch.no_grad():
        m.weight.copy_(w)
        if bias:
            m.bias.copy_(_t(layer.bias))
    return m.eval()


class GraphNet(nn.Module):
    """``GraphNet(model, grids=False)``: the float network of a loaded runtime ``Model``
    (module doc). ``forward(x)`` takes a float32 (N, ...) tensor and returns the logits."""

    def __init__(self, model, grids: bool = False) -> None:
        super().__init__()
        self.grids = bool(grids)
        self.layers = nn.ModuleDict()
        self.steps: list[dict] = []
        for i, node in enumerate(model.nodes):
            key = f"n{i}"
            step = {"op": node.op, "key": key, "inputs": list(node.inputs),
                    "output": node.output, "bn": False}
            if node.layer is not None:
                self.layers[key] = _layer_module(node.layer)
                if node.layer.bn is not None:
                    self._affine(key, node.layer.bn["affine"])
                    step["bn"] = True
            elif node.op == "batchnorm":
                self._affine(key, node.bn["affine"])
            elif node.op == "normalize":
                self.register_buffer(f"{key}_mean", _t(node.mean))
                self.register_buffer(f"{key}_std", _t(node.std))
            elif node.op == "quantize":
                self.register_buffer(f"{key}_thresholds", _t(node.grid.thresholds))
                self.register_buffer(f"{key}_values", _t(node.grid.values))
                step["range"] = (float(node.grid.values.min()), float(node.grid.values.max()))
            step.update(_attrs(node))
            self.steps.append(step)
        self.eval()

    def _affine(self, key: str, affine) -> None:
        a, b = affine
        self.register_buffer(f"{key}_a", _t(a))
        self.register_buffer(f"{key}_b", _t(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, torch.Tensor] = {}
        for s in self.steps:
            args = [env[v] for v in s["inputs"]]
            if s["op"] == "input":
                env[s["output"]] = x
            elif s["op"] == "output":
                return args[0]
            else:
                env[s["output"]] = self._run(s, args)
        raise AssertionError("unreachable: the graph ends with its output")

    def _bn(self, key: str, y: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (y.dim() - 2)
        return y * getattr(self, f"{key}_a").reshape(shape) + getattr(self, f"{key}_b").reshape(
            shape)

    def _run(self, s: dict, args: list) -> torch.Tensor:
        op, key, x = s["op"], s["key"], args[0]
        if op in ("linear", "conv2d"):
            if op == "linear" and x.dim() > 2:
                x = torch.flatten(x, 1)
            y = self.layers[key](x)
            return self._bn(key, y) if s["bn"] else y
        if op == "quantize":
            if not self.grids:
                return torch.clamp(x, *s["range"])
            rank = torch.bucketize(x, getattr(self, f"{key}_thresholds"), right=True)
            return getattr(self, f"{key}_values")[rank]
        if op == "normalize":
            return (x - getattr(self, f"{key}_mean")) / getattr(self, f"{key}_std")
        if op == "batchnorm":
            return self._bn(key, x)
        if op == "add":
            return x + args[1]
        if op == "flatten":
            return torch.flatten(x, s["start"], s["end"])
        if op == "maxpool2d":
            return TF.max_pool2d(x, s["kernel"], s["stride"], s["padding"], s["dilation"])
        if op == "avgpool2d":
            return TF.avg_pool2d(x, s["kernel"], s["stride"], s["padding"],
                                 count_include_pad=s["include_pad"])
        if op == "adaptive_avgpool2d":
            return TF.adaptive_avg_pool2d(x, s["size"])
        return _activation(x, s)


def _attrs(node) -> dict:
    """The plain (non-tensor) attributes a step needs."""
    if node.op in ("maxpool2d", "avgpool2d"):
        out = {k: tuple(v) for k, v in node.pool.items()}
        if node.op == "avgpool2d":
            out["include_pad"] = node.include_pad
        return out
    if node.op == "adaptive_avgpool2d":
        return {"size": tuple(node.size)}
    if node.op == "flatten":
        return {"start": node.start, "end": node.end}
    if node.op in ("hardtanh", "leaky_relu"):
        return {k: node.rec[k] for k in ("min", "max", "slope") if k in node.rec}
    return {}


def _activation(x: torch.Tensor, s: dict) -> torch.Tensor:
    op = s["op"]
    if op in _SIMPLE:
        return _SIMPLE[op](x)
    if op == "relu6":
        return torch.clamp(x, 0.0, 6.0)
    if op == "hardtanh":
        return torch.clamp(x, float(s["min"]), float(s["max"]))
    if op == "leaky_relu":
        return TF.leaky_relu(x, float(s["slope"]))
    raise ValueError(f"unknown operator {op!r}")


def torch_net(model_or_path, grids: bool = False) -> GraphNet:
    """The :class:`GraphNet` of a ``.lowbit`` path or a loaded runtime ``Model``."""
    if not hasattr(model_or_path, "nodes"):
        import lowbit.runtime as rt

        model_or_path = rt.load(model_or_path)
    return GraphNet(model_or_path, grids=grids)
