"""Capture a (frozen, eval-mode) lowbit model as the runtime's operator graph.

``torch.fx`` traces the model with lowbit's quantized layers, quantizers, ``Normalize`` and
torch's own layers as leaves; each graph node becomes one operator of a small closed set
(docs/format.md, "The operator graph"): ``input``, ``normalize``, ``linear``, ``conv2d``,
``batchnorm``, the activations ``relu``/``relu6``/``hardtanh``/``sigmoid``/``tanh``/
``leaky_relu``, ``quantize`` (an activation quantizer: its thresholds and grid), ``maxpool2d``,
``avgpool2d``, ``adaptive_avgpool2d``, ``flatten``, ``add`` and ``output``. Dropout and
identities disappear. Anything else is refused with an :class:`ExportError` naming the node,
its target and the supported set. A BatchNorm that follows a linear/conv whose output has no
other user is folded into that layer's epilogue (``"bn"``).

Grids: after capture, :func:`mark_grids` says for each weight layer whether its input is on an
activation quantizer's grid (``"input": {"grid": "<quantize node>"}``, reached only through
grid-preserving ops: flatten, max pooling, dropout) or float (``{"grid": null}``, and
``"leaves_grid"`` names the op that left it -- average pooling, a residual add, BatchNorm --
when a quantizer lies upstream): the runtime computes that edge in float, as training did.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as TF
from torch import fx, nn

from lowbit.errors import LowbitError
from lowbit.models.normalize import Normalize
from lowbit.nn.layers import QuantAct, QuantConv2d, QuantLinear
from lowbit.quantizers.base import ActQuantizer


class ExportError(LowbitError):
    """The model holds something the runtime cannot run (the message names it)."""


ACTIVATIONS = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardtanh: "hardtanh",
               nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.LeakyReLU: "leaky_relu"}
IDENTITY = (nn.Identity, nn.Dropout, nn.Dropout2d)
FUNCTIONS = {operator.add: "add", torch.add: "add", torch.flatten: "flatten",
             TF.relu: "relu", torch.relu: "relu"}
GRID_KEEPING = {"flatten", "maxpool2d"}  # ops whose output values are input values
SUPPORTED = ("Linear, Conv2d (zero padding), BatchNorm1d/2d, ReLU, ReLU6, Hardtanh, Sigmoid, "
             "Tanh, LeakyReLU, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Flatten, Dropout, "
             "Identity, lowbit's Normalize, QuantLinear, QuantConv2d, QuantAct, activation "
             "quantizers, +, torch.flatten, relu")


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (QuantLinear, QuantConv2d, QuantAct, Normalize, ActQuantizer)):
            return True
        return super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.Graph:
    try:
        return _Tracer().trace(model)
    except Exception as e:  # torch.fx raises many kinds for untraceable Python
        raise ExportError(f"torch.fx cannot trace {type(model).__name__}: {e}") from e


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(x) for x in v]


def _module_op(name: str, m: nn.Module) -> dict:
    """The operator of a leaf module (its tensors stay on the node as ``_module``)."""
    if type(m) in ACTIVATIONS:
        op = {"op": ACTIVATIONS[type(m)]}
        if isinstance(m, nn.Hardtanh) and type(m) is not nn.ReLU6:
            op.update(min=float(m.min_val), max=float(m.max_val))
        if isinstance(m, nn.LeakyReLU):
            op.update(slope=float(m.negative_slope))
        return op
    if isinstance(m, (nn.Linear, QuantLinear)):
        return {"op": "linear"}
    if isinstance(m, (nn.Conv2d, QuantConv2d)):
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise ExportError(f"{name}: Conv2d padding {m.padding!r}/{m.padding_mode!r}; the "
                              "runtime takes explicit zero padding")
        return {"op": "conv2d", "stride": _pair(m.stride), "padding": _pair(m.padding),
                "dilation": _pair(m.dilation), "groups": int(m.groups)}
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if not m.track_running_stats or m.running_mean is None:
            raise ExportError(f"{name}: BatchNorm without running statistics")
        return {"op": "batchnorm", "eps": float(m.eps)}
    if isinstance(m, nn.MaxPool2d):
        if m.return_indices:
            raise ExportError(f"{name}: MaxPool2d(return_indices=True)")
        return {"op": "maxpool2d", "kernel": _pair(m.kernel_size),
                "stride": _pair(m.stride or m.kernel_size), "padding": _pair(m.padding),
                "dilation": _pair(m.dilation), "ceil_mode": bool(m.ceil_mode)}
    if isinstance(m, nn.AvgPool2d):
        if m.divisor_override is not None:
            raise ExportError(f"{name}: AvgPool2d(divisor_override=...)")
        return {"op": "avgpool2d", "kernel": _pair(m.kernel_size),
                "stride": _pair(m.stride or m.kernel_size), "padding": _pair(m.padding),
                "ceil_mode": bool(m.ceil_mode), "count_include_pad": bool(m.count_include_pad)}
    if isinstance(m, nn.AdaptiveAvgPool2d):
        size = m.output_size
        size = [size, size] if isinstance(size, int) else list(size)
        if None in size:
            raise ExportError(f"{name}: AdaptiveAvgPool2d with a None output size")
        return {"op": "adaptive_avgpool2d", "size": size}
    if isinstance(m, nn.Flatten):
        return {"op": "flatten", "start": int(m.start_dim), "end": int(m.end_dim)}
    if isinstance(m, Normalize):
        return {"op": "normalize"}
    if isinstance(m, (QuantAct, ActQuantizer)):
        return {"op": "quantact"}
    raise ExportError(f"the runtime cannot run module {name!r} ({type(m).__name__}); "
                      f"supported: {SUPPORTED}")


def _function_op(node: fx.Node) -> dict:
    op = FUNCTIONS.get(node.target)
    if node.op == "call_method" and node.target in ("flatten", "relu"):
        op = node.target
    if op is None:
        raise ExportError(f"the runtime cannot run {node.op} {node.target!r} at node "
                          f"{node.name!r}; supported: {SUPPORTED}")
    tensors = [a for a in node.args if isinstance(a, fx.Node)]
    consts = [a for a in node.args if not isinstance(a, fx.Node)]
    if op == "add" and (len(tensors) != 2 or consts or node.kwargs):
        raise ExportError(f"node {node.name!r}: only the sum of two tensors is supported")
    if op == "flatten":
        start = consts[0] if consts else node.kwargs.get("start_dim", 0)
        end = consts[1] if len(consts) > 1 else node.kwargs.get("end_dim", -1)
        return {"op": "flatten", "start": int(start), "end": int(end)}
    return {"op": op}


def capture(model: nn.Module) -> list[dict]:
    """The operator list of ``model``: dicts with ``op``, ``name``, ``inputs`` (value names),
    ``output`` and the op's attributes; layer nodes keep their module under ``_module``."""
    graph = trace(model)
    modules = dict(model.named_modules())
    ops, alias = [], {}

    def value(a) -> str:
        return alias.get(a.name, a.name)

    for node in graph.nodes:
        if node.op == "placeholder":
            if ops:
                raise ExportError("the runtime takes models with a single input")
            ops.append({"op": "input", "name": node.name, "inputs": [], "output": node.name})
            continue
        if node.op == "output":
            out = node.args[0]
            if not isinstance(out, fx.Node):
                raise ExportError("the model must return a single tensor")
            ops.append({"op": "output", "name": "output", "inputs": [value(out)],
                        "output": ""})
            continue
        if node.op == "get_attr":
            raise ExportError(f"node {node.name!r} reads a tensor attribute "
                              f"{node.target!r} directly; use a module")
        inputs = [value(a) for a in node.args if isinstance(a, fx.Node)]
        if node.op == "call_module":
            m = modules[node.target]
            if isinstance(m, IDENTITY):
                alias[node.name] = inputs[0]
                continue
            ops.extend(_module_ops(node, m, inputs[:1]))
            continue
        else:
            op = _function_op(node)
            op["name"] = node.name
        op.update(inputs=inputs[:2] if op["op"] == "add" else inputs[:1], output=node.name)
        ops.append(op)
    return _fold_bn(ops)


def _quantize(name: str, quant: ActQuantizer, inputs: list[str], output: str) -> dict:
    return {"op": "quantize", "name": name, "_quant": quant, "inputs": inputs,
            "output": output}


def _module_ops(node: fx.Node, m: nn.Module, inputs: list[str]) -> list[dict]:
    """The operators of one leaf module call: a quantized layer with an input quantizer is two
    (``quantize`` then the layer), a QuantAct that follows its float activation is two."""
    name, out = node.target, node.name
    if isinstance(m, ActQuantizer):
        return [_quantize(name, m, inputs, out)]
    if isinstance(m, QuantAct):
        if not m.quant_enabled:
            return [{**_module_op(f"{name}.float_act", m.float_act), "name": name,
                     "inputs": inputs, "output": out}]
        if m.quant.REPLACES_ACTIVATION:
            return [_quantize(name, m.quant, inputs, out)]
        act = {**_module_op(f"{name}.float_act", m.float_act), "name": f"{name}.float_act",
               "inputs": inputs, "output": f"{out}__act"}
        return [act, _quantize(name, m.quant, [act["output"]], out)]
    op = {**_module_op(name, m), "name": name, "_module": m, "output": out}
    pre = []
    if isinstance(m, (QuantLinear, QuantConv2d)) and m.quant_enabled and m.input_quant:
        pre = [_quantize(f"{name}.input_quant", m.input_quant, inputs, f"{out}__in")]
        inputs = [pre[0]["output"]]
    op["inputs"] = inputs
    return [*pre, op]


def _users(ops: list[dict]) -> dict[str, int]:
    count: dict[str, int] = {}
    for op in ops:
        for v in op["inputs"]:
            count[v] = count.get(v, 0) + 1
    return count


def _fold_bn(ops: list[dict]) -> list[dict]:
    """A BatchNorm whose input comes from a linear/conv with no other user moves into that
    layer's node as ``_bn`` (the runtime applies it in the layer's epilogue)."""
    users, producer = _users(ops), {op["output"]: op for op in ops}
    out, alias = [], {}
    for op in ops:
        op["inputs"] = [alias.get(v, v) for v in op["inputs"]]
        src = producer.get(op["inputs"][0]) if op["inputs"] else None
        if (op["op"] == "batchnorm" and src is not None and src["op"] in ("linear", "conv2d")
                and "_bn" not in src and users[op["inputs"][0]] == 1):
            src["_bn"] = op
            alias[op["output"]] = src["output"]
            continue
        out.append(op)
    return out


def mark_grids(ops: list[dict]) -> None:
    """Set ``input`` on every linear/conv node: the quantize node whose grid its input is on
    (through grid-keeping ops only), or null and the op that left a grid upstream."""
    grid: dict[str, str | None] = {}
    left: dict[str, str | None] = {}
    for op in ops:
        src = op["inputs"]
        if op["op"] == "quantize":
            grid[op["output"]], left[op["output"]] = op["name"], None
        elif op["op"] in GRID_KEEPING:
            grid[op["output"]], left[op["output"]] = grid.get(src[0]), left.get(src[0])
        else:  # a weight layer's output is new float data; other ops leave a grid
            upstream = op["op"] not in ("linear", "conv2d") and any(
                grid.get(v) or left.get(v) for v in src)
            grid[op["output"]] = None
            left[op["output"]] = f"{op['op']} {op['name']}" if upstream else None
        if op["op"] in ("linear", "conv2d"):
            v = src[0]
            op["input"] = {"grid": grid.get(v)}
            if grid.get(v) is None and left.get(v):
                op["input"]["leaves_grid"] = left[v]
