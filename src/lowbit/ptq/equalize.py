"""Cross-layer equalization (Nagel, van Baalen, Blankevoort, Welling, "Data-Free Quantization
Through Weight Equalization and Bias Correction", ICCV 2019, arXiv:1906.04721, sec. 4.1,
eq. 4-8).

For two weight layers connected through a positively homogeneous function f (f(s x) = s f(x)
for s > 0: ReLU, LeakyReLU, identity, max/average pooling, flatten), per channel i of the
connection, with S = diag(s):
    W1 <- S^-1 W1,   b1 <- S^-1 b1,   W2 <- W2 S                      (eq. 4-6)
leaves the network function unchanged, and
    s_i = (1 / r2_i) sqrt(r1_i r2_i)                                  (eq. 8)
makes the two ranges equal: r1_i / s_i = r2_i s_i = sqrt(r1_i r2_i). Here r1_i is the range of
output channel i of W1 and r2_i the range of input channel i of W2, both taken as max |w| (the
symmetric range, as AIMET computes it). A channel with r1_i = 0 or r2_i = 0 keeps s_i = 1.
Grouped and depthwise convs as layer 2 are handled (input channel i of a grouped conv is
column i mod C/g of the output channels of group i div C/g); a Linear after a Flatten of a
conv's C channels groups its in_features into C blocks of k = in_features / C columns.

Iteration: pairs sharing a layer (L1->L2->L3) interact, so all pairs are equalized in sweeps
until max_i |s_i - 1| < tol over a whole sweep, or max_iter sweeps.

Which pairs: the model is traced with torch.fx (the tracer of :mod:`lowbit.fold`). A pair is a
float ``nn.Conv2d``/``nn.Linear`` called once, whose output reaches exactly one other such
layer through single-user steps that are positively homogeneous per channel. Skipped, with the
reason in the report: a layer whose output (or a step's) has several users (a residual add, two
consumers: scaling would change the other consumer), a step that is not positively homogeneous
(ReLU6, Hardtanh, GELU, an add, ...: f(s x) != s f(x)), a BatchNorm after an activation (not
foldable), a layer called twice, an already quantized layer (equalize the float model first).
Refused (LowbitError): a BatchNorm that :func:`lowbit.fold.fold_batchnorm` would fold (BN is
not positively homogeneous: fold it first), and a model torch.fx cannot trace.
Tests: tests/ptq/test_equalize.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as TF
from torch import fx, nn

from lowbit.errors import LowbitError
from lowbit.fold import _Tracer, batchnorm_pairs
from lowbit.nn.layers import QuantConv2d, QuantLinear

_HOMOGENEOUS_MODULES = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Dropout, nn.MaxPool2d,
                        nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten)
_HOMOGENEOUS_FUNCTIONS = (torch.relu, TF.relu, TF.leaky_relu, torch.flatten, TF.max_pool2d,
                          TF.avg_pool2d, TF.adaptive_avg_pool2d)
_HOMOGENEOUS_METHODS = ("relu", "flatten")


@dataclass(frozen=True)
class EqualizedPair:
    first: str
    second: str
    via: tuple[str, ...]  # the steps between them (module names or function names)


@dataclass(frozen=True)
class SkippedLayer:
    first: str  # the layer that could not be a layer 1
    reason: str


@dataclass(frozen=True)
class EqualizeReport:
    pairs: tuple[EqualizedPair, ...]
    skipped: tuple[SkippedLayer, ...]
    sweeps: int
    converged: bool
    max_change: float  # max |s_i - 1| of the last sweep


def _is_weight(m: nn.Module) -> bool:
    return isinstance(m, (nn.Conv2d, nn.Linear))


def _step_name(node: fx.Node) -> str:
    return node.target if node.op == "call_module" else getattr(
        node.target, "__name__", str(node.target))


def _homogeneous(model: nn.Module, node: fx.Node) -> str | None:
    """None if ``node`` is positively homogeneous per channel, else why not."""
    if node.op == "call_module":
        m = model.get_submodule(node.target)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return f"BatchNorm {node.target!r} after the activation is not foldable"
        if isinstance(m, nn.Flatten) and m.start_dim != 1:
            return f"{node.target!r} flattens from dim {m.start_dim}, not 1"
        if isinstance(m, _HOMOGENEOUS_MODULES):
            return None
        return f"{node.target!r} ({type(m).__name__}) is not positively homogeneous"
    if node.op == "call_function" and node.target in _HOMOGENEOUS_FUNCTIONS:
        return None
    if node.op == "call_method" and node.target in _HOMOGENEOUS_METHODS:
        return None
    return f"{_step_name(node)!r} ({node.op}) is not positively homogeneous"


def _follow(model: nn.Module, start: fx.Node, calls: dict[str, int]):
    """(second layer name, steps) reached from ``start``, or (None, reason)."""
    node, steps = start, []
    while True:
        users = list(node.users)
        where = repr(node.target) if node is start else repr(_step_name(node))
        if len(users) != 1:
            what = ", ".join(_step_name(u) for u in users) or "nothing (the model output)"
            return None, f"output of {where} has {len(users)} users ({what})"
        nxt = users[0]
        if nxt.op == "output":
            return None, f"{where} feeds the model output"
        if nxt.op == "call_module" and _is_weight(model.get_submodule(nxt.target)):
            second = model.get_submodule(nxt.target)
            if isinstance(second, (QuantConv2d, QuantLinear)):
                return None, f"{nxt.target!r} is quantized: equalize before quantizing"
            if calls[nxt.target] != 1:
                return None, f"{nxt.target!r} is called {calls[nxt.target]} times"
            return nxt.target, tuple(steps)
        if len(nxt.all_input_nodes) != 1:
            return None, (f"{where} reaches {_step_name(nxt)!r}, which joins "
                          f"{len(nxt.all_input_nodes)} tensors (a residual add?): scaling one "
                          "input would change the result")
        why = _homogeneous(model, nxt)
        if why is not None:
            return None, why
        steps.append(_step_name(nxt))
        node = nxt


def find_pairs(model: nn.Module) -> tuple[list[EqualizedPair], list[SkippedLayer]]:
    """The pairs :func:`equalize` would equalize and the weight layers it would skip, with
    reasons (module doc). Raises LowbitError for foldable BatchNorms or an untraceable model."""
    folds = batchnorm_pairs(model)
    if folds:
        shown = ", ".join(f"{a} -> {b}" for a, b in folds[:4]) + (" ..." if len(folds) > 4 else "")
        raise LowbitError(f"equalize: {len(folds)} BatchNorm(s) directly follow weight layers "
                          f"({shown}); call lowbit.fold.fold_batchnorm(model) first (BN is not "
                          "positively homogeneous, so scaling channels through it changes "
                          "the network)")
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure
        raise LowbitError(f"equalize: torch.fx cannot trace the model ({e}); the graph is "
                          "needed to know what consumes each layer's output") from e
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs, skipped = [], []
    for node in graph.nodes:
        if node.op != "call_module" or not _is_weight(model.get_submodule(node.target)):
            continue
        layer = model.get_submodule(node.target)
        if isinstance(layer, (QuantConv2d, QuantLinear)):
            skipped.append(SkippedLayer(node.target, "quantized: equalize before quantizing"))
        elif calls[node.target] != 1:
            skipped.append(SkippedLayer(node.target, f"called {calls[node.target]} times"))
        else:
            second, info = _follow(model, node, calls)
            if second is None:
                skipped.append(SkippedLayer(node.target, info))
            else:
                pairs.append(EqualizedPair(node.target, second, info))
    return pairs, skipped


def output_ranges(layer: nn.Module) -> torch.Tensor:
    """r1: max |w| of each output channel (dim 0), shape (C_out,)."""
    return layer.weight.detach().abs().reshape(layer.weight.shape[0], -1).amax(dim=1)


def _blocks(layer: nn.Module, channels: int) -> torch.Tensor:
    """Layer 2's weight viewed (groups, outputs per group, input channels per group, k): input
    channel i = g * (C / groups) + j is the slice [g, :, j, :]. A conv's k is its kernel size;
    a Linear after a Flatten of C channels has k = in_features / C (1 after a Linear)."""
    w = layer.weight.detach()
    if isinstance(layer, nn.Conv2d):
        g = layer.groups
        return w.reshape(g, w.shape[0] // g, channels // g, -1)
    return w.reshape(1, w.shape[0], channels, w.shape[1] // channels)


def input_ranges(layer: nn.Module, channels: int) -> torch.Tensor:
    """r2: max |w| over everything that multiplies input channel i, shape (channels,)."""
    return _blocks(layer, channels).abs().amax(dim=(1, 3)).reshape(channels)


def _scale_input(layer: nn.Module, s: torch.Tensor) -> None:
    blocks = _blocks(layer, s.numel())
    g, _, per, _ = blocks.shape
    factor = s.to(blocks.dtype).reshape(g, 1, per, 1)
    layer.weight.copy_((blocks * factor).reshape(layer.weight.shape))


@torch.no_grad()
def equalize_pair(first: nn.Module, second: nn.Module) -> float:
    """Equalize one pair in place (eq. 4-8); returns max |s_i - 1|."""
    c = first.weight.shape[0]
    r1, r2 = output_ranges(first).double(), input_ranges(second, c).double()
    ok = (r1 > 0) & (r2 > 0)
    s = torch.where(ok, torch.sqrt(r1 / torch.where(ok, r2, 1.0)), torch.ones_like(r1))
    inv = (1.0 / s).to(first.weight.dtype)
    first.weight.mul_(inv.reshape(-1, *([1] * (first.weight.dim() - 1))))
    if first.bias is not None:
        first.bias.mul_(inv)
    _scale_input(second, s)
    return float((s - 1).abs().max())


def _check_shapes(model: nn.Module, pair: EqualizedPair) -> None:
    first, second = model.get_submodule(pair.first), model.get_submodule(pair.second)
    c = first.weight.shape[0]
    cols = second.weight.shape[1] * (second.groups if isinstance(second, nn.Conv2d) else 1)
    if cols % c or (isinstance(second, nn.Conv2d) and cols != c):
        raise LowbitError(f"equalize: {pair.first!r} has {c} outputs but {pair.second!r} "
                          f"takes {cols} input columns")


def equalize(model: nn.Module, max_iter: int = 20, tol: float = 1e-4) -> EqualizeReport:
    """Cross-layer equalization of every safe pair of ``model``, in place (module doc).

    Sweeps over all pairs until max |s_i - 1| < ``tol`` in a sweep or ``max_iter`` sweeps.
    Returns the pairs equalized, the weight layers skipped with reasons, and convergence.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    pairs, skipped = find_pairs(model)
    for pair in pairs:
        _check_shapes(model, pair)
    sweeps, change = 0, 0.0
    while pairs and sweeps < max_iter:
        sweeps += 1
        change = max(equalize_pair(model.get_submodule(p.first), model.get_submodule(p.second))
                     for p in pairs)
        if change < tol:
            break
    return EqualizeReport(tuple(pairs), tuple(skipped), sweeps, change < tol, change)
