"""Quantized layers: nn.Linear / nn.Conv2d whose weight passes through a weight quantizer, and
QuantAct, an activation quantizer standing where a float activation module stood.

``quant_enabled = False`` makes each layer compute exactly what the float layer computes (same
kernel, same float weight: bit-for-bit equal; the input quantizer is skipped too).

``input_quant``: an optional :class:`ActQuantizer` applied to the layer's *input* while
quantization is enabled, so the layer carries the grid of what it consumes (static/dynamic
activation quantization, an XNOR layer's binarized input). It is applied as it is: a quantizer
with ``REPLACES_ACTIVATION = True`` applies its own clip or sign to the input. Under bf16/fp16
autocast it computes in float32 and its output is cast back (as :class:`QuantAct`). It is a
registered submodule (saved in the state dict, reached by ``model.modules()``), and the
non-finite check below runs before it. :class:`QuantAct` remains the place of quantizers that
*are* the non-linearity. ``to_float`` returns a plain float layer: it has no input slot, so the
input quantizer is not carried (a caller that needs it keeps the quantized layer).

``output_grad_quant`` is an optional module applied to the layer output whose backward
quantizes the gradient flowing into the layer: an *activation* gradient (DoReFa-Net eq. 12),
not the parameter-gradient compression of distributed training (it holds no state: renaming
it from ``grad_quant`` changed no saved file).

Non-finite input: while quantizing, every layer checks its input once and raises
:class:`~lowbit.errors.NonFiniteError` naming the layer (``layer_name``, the qualified name
:func:`lowbit.quantize` gives it) *before* any quantizer sees the tensor, so no running range,
observer or learned-step initialisation is ever poisoned by NaN/Inf. The check is
``isfinite(x.sum())`` (one vectorised reduction: NaN and Inf always reach the sum, +Inf with
-Inf as NaN), confirmed by the exact ``isfinite(x).all()`` only when it fires (a sum of finite
values can overflow); ``isfinite(x).all()`` alone costs 13-20x more on CPU. ``check_finite =
False`` on a layer (or :func:`set_finite_check`) switches the check off; it is also skipped while
``torch.compile`` traces (a data-dependent branch would break the graph). With quantization off
the layer is the float layer exactly and does not check.
"""

from __future__ import annotations

import torch
import torch.nn.functional as TF
from torch import nn

from lowbit.errors import NonFiniteError
from lowbit.quantizers.base import ActQuantizer, WeightQuantizer


class _FiniteInput:
    """The non-finite input check shared by every quantized layer (module doc)."""

    layer_name: str = ""  # set by lowbit.quantize(); class defaults serve layers built directly
    check_finite: bool = True

    def _check_input(self, x: torch.Tensor) -> None:
        if not self.check_finite or torch.compiler.is_compiling():
            return
        if bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all()):
            return
        n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        where = repr(self.layer_name) if self.layer_name else "(unnamed)"
        raise NonFiniteError(
            f"input of quantized layer {where} ({type(self).__name__}) holds {n_nan} NaN "
            f"and {n_inf} Inf values; refusing to quantize it (no statistic was updated)"
        )


class _QuantWeightMixin(_FiniteInput):
    weight_quant: WeightQuantizer | None
    input_quant: ActQuantizer | None
    output_grad_quant: nn.Module | None
    quant_enabled: bool

    def _setup(self, weight_quant: WeightQuantizer | None,
               input_quant: ActQuantizer | None = None) -> None:
        self.register_module("weight_quant", weight_quant)
        self.register_module("input_quant", input_quant)
        self.register_module("output_grad_quant", None)
        self.quant_enabled = True

    def _in(self, x: torch.Tensor) -> torch.Tensor:
        """The checked and (with ``input_quant``) quantized input; ``x`` itself when disabled."""
        if not self.quant_enabled:
            return x
        self._check_input(x)
        return x if self.input_quant is None else _in_fp32(self.input_quant, x)

    def quantized_weight(self) -> torch.Tensor:
        if self.weight_quant is None or not self.quant_enabled:
            return self.weight
        return self.weight_quant(self.weight)

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        if self.output_grad_quant is not None and self.quant_enabled:
            return self.output_grad_quant(y)
        return y


def _in_fp32(quant: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``quant(x)`` computed in float32 for bf16/fp16 inputs, cast back to the input's dtype."""
    dtype = x.dtype
    if dtype in (torch.bfloat16, torch.float16):
        return quant(x.float()).to(dtype)
    return quant(x)


def _adopt(q, mod: nn.Module, weight_quant: WeightQuantizer | None):
    """Give the new quantized layer ``q`` (built through ``__init__`` on the meta device, so no
    memory is allocated and no random number drawn) the float layer ``mod``'s Parameters and
    buffers (the same tensor objects), training flag and hooks.

    Hooks: every hook dictionary of ``mod`` is *copied* into a new dictionary of ``q``, so the
    hooks registered on the float layer before the swap keep firing on the quantized layer, and
    a hook registered (or removed through its handle) on one of them afterwards does not reach
    the other. Public attributes a user set on ``mod`` that the new layer lacks are copied.
    """
    for name, p in mod._parameters.items():
        q.register_parameter(name, p)
    for name, b in mod._buffers.items():
        q.register_buffer(name, b, persistent=name not in mod._non_persistent_buffers_set)
    for name, value in mod.__dict__.items():
        if "hook" in name and isinstance(value, dict):
            setattr(q, name, type(value)(value))
        elif name == "_is_full_backward_hook":
            q._is_full_backward_hook = value
        elif not name.startswith("_") and name not in q.__dict__:
            setattr(q, name, value)
    q.training = mod.training  # not train(): the quantizers keep their own mode
    if weight_quant is not None:
        weight_quant.init_from(mod.weight)
        weight_quant.to(mod.weight.device)
    q.register_module("weight_quant", weight_quant)
    return q


class QuantLinear(_QuantWeightMixin, nn.Linear):
    def __init__(self, in_features, out_features, bias=True, weight_quant=None, device=None,
                 dtype=None, input_quant=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._setup(weight_quant, input_quant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._out(TF.linear(self._in(x), self.quantized_weight(), self.bias))

    @classmethod
    def from_float(cls, mod: nn.Linear, weight_quant: WeightQuantizer | None) -> QuantLinear:
        """A QuantLinear sharing ``mod``'s weight and bias tensors (the same Parameters), built
        through ``__init__`` with ``mod``'s hyper-parameters and dtype; hooks: see ``_adopt``."""
        q = cls(mod.in_features, mod.out_features, bias=mod.bias is not None, device="meta",
                dtype=mod.weight.dtype)
        return _adopt(q, mod, weight_quant)

    def to_float(self, bake: bool = False) -> nn.Linear:
        """A plain nn.Linear with the float weight, or the quantized one when ``bake``."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.quantized_weight() if bake else self.weight)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin


class QuantConv2d(_QuantWeightMixin, nn.Conv2d):
    def __init__(self, *args, weight_quant: WeightQuantizer | None = None,
                 input_quant: ActQuantizer | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)  # nn.Conv2d's own arguments
        self._setup(weight_quant, input_quant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._out(self._conv_forward(self._in(x), self.quantized_weight(), self.bias))

    @classmethod
    def from_float(cls, mod: nn.Conv2d, weight_quant: WeightQuantizer | None) -> QuantConv2d:
        """A QuantConv2d sharing ``mod``'s Parameters, built through ``__init__`` with its
        hyper-parameters and dtype; hooks: see ``_adopt``."""
        q = cls(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                mod.dilation, mod.groups, mod.bias is not None, mod.padding_mode,
                device="meta", dtype=mod.weight.dtype)
        return _adopt(q, mod, weight_quant)

    def to_float(self, bake: bool = False) -> nn.Conv2d:
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                         self.padding, self.dilation, self.groups, self.bias is not None,
                         self.padding_mode, device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.quantized_weight() if bake else self.weight)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv


class QuantAct(_FiniteInput, nn.Module):
    """An activation quantizer in place of a float activation module (``float_act``).

    If the quantizer replaces the activation (ivan's A_b contains the ReLU) it gets the input
    directly; otherwise it quantizes ``float_act(x)``. Disabled, it is ``float_act`` exactly.
    Under bf16/fp16 autocast the quantizer computes in float32 (its observers, learned ranges and
    kernels are float32) and its output is cast back to the input's dtype.
    """

    def __init__(self, quant: ActQuantizer, float_act: nn.Module) -> None:
        super().__init__()
        self.quant = quant
        self.float_act = float_act
        self.quant_enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.quant_enabled:
            return self.float_act(x)
        self._check_input(x)
        dtype = x.dtype
        if dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        out = self.quant(x) if self.quant.REPLACES_ACTIVATION else self.quant(self.float_act(x))
        return out.to(dtype)


QUANT_LAYERS = (QuantLinear, QuantConv2d, QuantAct)


def set_finite_check(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch the non-finite input check of every quantized layer of ``model`` on or off."""
    for m in model.modules():
        if isinstance(m, QUANT_LAYERS):
            m.check_finite = bool(enabled)
    return model


def set_quantization(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch every quantized layer of ``model`` on or off (off = the float computation)."""
    for m in model.modules():
        if isinstance(m, QUANT_LAYERS):
            m.quant_enabled = bool(enabled)
    return model
