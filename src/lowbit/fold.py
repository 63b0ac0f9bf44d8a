"""fold_batchnorm(model): fold every eval-mode BatchNorm that directly follows a Linear/Conv2d
into that layer (Jacob et al. 2018, "Quantization and training of neural networks for
efficient integer-arithmetic-only inference", CVPR, arXiv:1712.05877, sec. 3.2 / eq. 14 with
the running statistics).

Per output channel c, with s_c = gamma_c / sqrt(running_var_c + eps):
    W'_c = W_c * s_c,    b'_c = (b_c - running_mean_c) * s_c + beta_c    (b = 0 without bias)
and the BatchNorm becomes ``nn.Identity``: in eval mode ``bn(layer(x)) == layer'(x)`` up to
float rounding (the product is reassociated; tested within 1e-5 relative to the output scale).
``affine=False`` means gamma = 1, beta = 0.

Which pairs: the model is traced with torch.fx (quantized layers and torch.nn modules as
leaves); a BatchNorm whose only input is the output of a Linear/Conv2d module that is used
nowhere else (one call site, one user: the BN) is a pair. If tracing fails (data-dependent
control flow), only adjacent children of ``nn.Sequential`` containers are paired (there the
layer's output can only reach the BN). Linear pairs with BatchNorm1d, Conv2d with BatchNorm2d,
and ``bn.num_features`` must equal the layer's output channels.

Refused (LowbitError): a paired BatchNorm in training mode (its batch statistics cannot be
folded; call ``model.eval()``), one without running statistics (``track_running_stats=False``),
and a quantized layer whose weight quantizer is frozen.

Order: fold, then quantize. Folding changes the weight in place (the Parameter object is kept,
so a float model and a quantized model sharing it both change); a quantized layer's weight
quantizer is re-initialised from the folded weight (``init_from``), which is right only before
its weights are trained or calibrated.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from lowbit.errors import LowbitError
from lowbit.nn.layers import QuantAct, QuantConv2d, QuantLinear

_PAIRS: dict[type, tuple[type, ...]] = {
    nn.Linear: (nn.BatchNorm1d,), QuantLinear: (nn.BatchNorm1d,),
    nn.Conv2d: (nn.BatchNorm2d,), QuantConv2d: (nn.BatchNorm2d,),
}


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (QuantLinear, QuantConv2d, QuantAct)) or super().is_leaf_module(
            m, qualname)


def _pairs_traced(model: nn.Module) -> list[tuple[str, str]]:
    graph = _Tracer().trace(model)
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        layer, bn = model.get_submodule(src.target), model.get_submodule(node.target)
        if (type(bn) in _PAIRS.get(type(layer), ()) and calls[src.target] == 1
                and calls[node.target] == 1):
            pairs.append((src.target, node.target))
    return pairs


def _pairs_sequential(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, m in model.named_modules():
        if type(m) is not nn.Sequential:
            continue
        children = list(m.named_children())
        for (a, layer), (b, bn) in zip(children, children[1:], strict=False):
            if type(bn) in _PAIRS.get(type(layer), ()):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + a, prefix + b))
    return pairs


def batchnorm_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """The (layer name, BatchNorm name) pairs :func:`fold_batchnorm` folds (module doc)."""
    try:
        return _pairs_traced(model)
    except Exception:  # noqa: BLE001 - any tracing failure: fall back to Sequential adjacency
        return _pairs_sequential(model)


def _check(model: nn.Module, layer_name: str, bn_name: str) -> None:
    layer, bn = model.get_submodule(layer_name), model.get_submodule(bn_name)
    where = f"BatchNorm {bn_name!r} after {layer_name!r}"
    if bn.training:
        raise LowbitError(f"{where} is in training mode: it normalises by batch statistics, "
                          "which cannot be folded; call model.eval() before fold_batchnorm")
    if bn.running_mean is None or bn.running_var is None:
        raise LowbitError(f"{where} has no running statistics (track_running_stats=False)")
    out = layer.weight.shape[0]
    if bn.num_features != out:
        raise LowbitError(f"{where}: {bn.num_features} features, the layer has {out} outputs")
    wq = getattr(layer, "weight_quant", None)
    if wq is not None and wq.is_frozen:
        raise LowbitError(f"{where}: the weight quantizer of {layer_name!r} is frozen; fold "
                          "before quantizing (fold, then quantize)")


@torch.no_grad()
def _fold(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    w = layer.weight
    var, mean = bn.running_var.to(w.dtype), bn.running_mean.to(w.dtype)
    gamma = bn.weight.to(w.dtype) if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.to(w.dtype) if bn.bias is not None else torch.zeros_like(var)
    s = gamma / torch.sqrt(var + bn.eps)
    bias = layer.bias if layer.bias is not None else torch.zeros_like(mean)
    new_bias = (bias - mean) * s + beta
    w.mul_(s.reshape(-1, *([1] * (w.dim() - 1))))
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias)
    else:
        layer.bias.copy_(new_bias)
    wq = getattr(layer, "weight_quant", None)
    if wq is not None:
        wq.init_from(w)


def fold_batchnorm(model: nn.Module) -> list[tuple[str, str]]:
    """Fold every eval-mode BatchNorm directly after a Linear/Conv2d into it, in place, and
    replace the BN by ``nn.Identity`` (formula, pairing and refusals: module doc). Returns the
    (layer, BatchNorm) name pairs folded; BatchNorms not in a pair are left as they are."""
    pairs = batchnorm_pairs(model)
    for layer_name, bn_name in pairs:  # check all before changing anything
        _check(model, layer_name, bn_name)
    for layer_name, bn_name in pairs:
        _fold(model.get_submodule(layer_name), model.get_submodule(bn_name))
        parent, _, child = bn_name.rpartition(".")
        setattr(model.get_submodule(parent), child, nn.Identity())
    return pairs
