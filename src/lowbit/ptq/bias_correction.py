"""Empirical bias correction (Nagel, van Baalen, Blankevoort, Welling, "Data-Free Quantization
Through Weight Equalization and Bias Correction", ICCV 2019, arXiv:1906.04721, sec. 4.2, the
empirical variant; Finkelstein, Almog, Grobman, "Fighting Quantization Bias With Bias",
arXiv:1906.03193, 2019).

Quantization error in the weights (and upstream activations) shifts the mean of a layer's
output. Per output channel c of each quantized layer, on calibration batches:
    shift_c = E[y_q]_c - E[y_float]_c,      b_q <- b_q - shift_c
with the mean over the batch and, for a conv, every spatial position. Inputs: ``y_q`` is the
quantized layer's output in the quantized model whose earlier layers are *already corrected*
(layers are corrected one by one in module order, which is execution order for lowbit's
models), and ``y_float`` the float layer's output in the float model on the float model's own
inputs: the two networks are compared at the same layer, as Nagel's empirical variant does, so
the correction also absorbs the mean error that reaches the layer from upstream.
A quantized layer without bias gets a zero bias Parameter first (``bias_created`` in the
report). Both models run in eval mode (BatchNorm statistics and observers untouched) under
no_grad; their training flags are restored afterwards. The float model is not modified; a
quantized layer sharing its bias tensor with the float layer (``lowbit.quantize`` on the float
model itself instead of a copy) is refused.
Tests: tests/ptq/test_bias_correction.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.nn.layers import QuantConv2d, QuantLinear


@dataclass(frozen=True)
class LayerBias:
    """Mean over channels of |E[y_q]_c - E[y_float]_c| at one layer, on the calibration data:
    ``uncorrected`` in the quantized model as given, ``before`` with the earlier layers
    already corrected (the shift subtracted from this layer's bias), ``after`` once all
    layers are corrected."""

    name: str
    channels: int
    uncorrected: float
    before: float
    after: float
    bias_created: bool


@dataclass(frozen=True)
class BiasReport:
    layers: tuple[LayerBias, ...]


def batch_input(batch) -> torch.Tensor:
    """A calibration batch's input: the tensor itself, or the first element of (x, y, ...)."""
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"a calibration batch must be a tensor or (x, ...), got {type(x)}")
    return x


def channel_dims(layer: nn.Module, y: torch.Tensor) -> tuple[int, ...]:
    """Every dim of ``y`` but the channel one (a conv's dim 1, a Linear's last dim)."""
    channel = 1 if isinstance(layer, nn.Conv2d) else y.dim() - 1
    return tuple(d for d in range(y.dim()) if d != channel)


@contextmanager
def evaluating(*models: nn.Module):
    """Every module of ``models`` in eval mode, under no_grad; training flags restored."""
    flags = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            model.eval()
        with torch.no_grad():
            yield
    finally:
        for m, flag in flags:
            m.training = flag


class _Stop(Exception):
    """Raised by the hook of the last layer wanted: the rest of the forward is not needed."""


def output_means(model: nn.Module, names: list[str],
                 batches: list[torch.Tensor], stop: bool = False) -> dict[str, torch.Tensor]:
    """Per-channel mean output (float64) of each named layer of ``model`` over ``batches``.
    ``stop``: abandon each forward once the one layer of ``names`` has run (halves the cost of
    correcting layer by layer)."""
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(names, 0)

    def hook(name, layer):
        def record(_module, _inputs, y):
            dims = channel_dims(layer, y)
            s = y.detach().double().sum(dim=dims)
            sums[name] = sums[name] + s if name in sums else s
            counts[name] += y.numel() // s.numel()
            if stop and len(names) == 1:
                raise _Stop
        return record

    handles = [model.get_submodule(n).register_forward_hook(hook(n, model.get_submodule(n)))
               for n in names]
    try:
        for x in batches:
            try:
                model(x)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in sums]
    if missing:
        raise LowbitError(f"layers {missing} were not called by the model's forward")
    return {n: sums[n] / counts[n] for n in names}


def paired_layers(float_model: nn.Module, quant_model: nn.Module) -> list[str]:
    """Names of quant_model's QuantLinear/QuantConv2d (module order), each checked to have a
    float Linear/Conv2d of the same name and shape in float_model."""
    names = []
    for name, q in quant_model.named_modules():
        if not isinstance(q, (QuantLinear, QuantConv2d)):
            continue
        try:
            f = float_model.get_submodule(name)
        except AttributeError:
            raise LowbitError(f"float model has no layer {name!r} to compare with") from None
        if type(f) not in (nn.Linear, nn.Conv2d) or f.weight.shape != q.weight.shape:
            raise LowbitError(f"{name!r}: the float model's layer is {type(f).__name__} "
                              f"{tuple(getattr(f, 'weight', torch.empty(0)).shape)}, the "
                              f"quantized one {type(q).__name__} {tuple(q.weight.shape)}")
        for qp in q.parameters(recurse=False):
            if any(qp.data_ptr() == fp.data_ptr() for fp in f.parameters(recurse=False)):
                raise LowbitError(f"{name!r} shares a parameter tensor with the float model "
                                  "(quantize a copy.deepcopy of the float model): changing it "
                                  "would change the float model")
        names.append(name)
    if not names:
        raise LowbitError("quant_model has no QuantLinear/QuantConv2d layer")
    return names


def _subtract(layer: nn.Module, shift: torch.Tensor) -> bool:
    created = layer.bias is None
    if created:
        layer.bias = nn.Parameter(torch.zeros(shift.numel(), dtype=layer.weight.dtype,
                                              device=layer.weight.device))
    layer.bias.sub_(shift.to(layer.bias.dtype))
    return created


def correct_bias(float_model: nn.Module, quant_model: nn.Module,
                 batches: Iterable) -> BiasReport:
    """Empirical bias correction of every QuantLinear/QuantConv2d of ``quant_model``, in place,
    against the same-named float layers of ``float_model`` (module doc). ``batches``: tensors
    or (x, ...) tuples; they are kept in a list and run 2 + (number of layers) times."""
    xs = [batch_input(b) for b in batches]
    if not xs:
        raise ValueError("correct_bias needs at least one calibration batch")
    names = paired_layers(float_model, quant_model)
    out = []
    with evaluating(float_model, quant_model):
        ref = output_means(float_model, names, xs)
        start = output_means(quant_model, names, xs)
        shifts = {}
        for i, name in enumerate(names):
            cur = start[name] if i == 0 else output_means(quant_model, [name], xs, stop=True)[name]
            shifts[name] = cur - ref[name]
            created = _subtract(quant_model.get_submodule(name), shifts[name])
            out.append((name, created))
        end = output_means(quant_model, names, xs)
    return BiasReport(tuple(
        LayerBias(n, ref[n].numel(), float((start[n] - ref[n]).abs().mean()),
                  float(shifts[n].abs().mean()), float((end[n] - ref[n]).abs().mean()), c)
        for n, c in out))
