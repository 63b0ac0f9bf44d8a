"""quantize(model, recipe): the one module-swap walk.

Weight layers (``nn.Linear``, ``nn.Conv2d``) become :class:`QuantLinear` / :class:`QuantConv2d`
sharing the same parameters; activation modules (``nn.ReLU``) become :class:`QuantAct`. The swap
is in place (the model is returned for chaining); :func:`plan` tells what would be done without
changing anything. First/last layer means first/last in module registration order.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lowbit.errors import LowbitError, NoQuantizableLayerError
from lowbit.functional.checks import FLOAT_BITS
from lowbit.nn.layers import QUANT_LAYERS, QuantAct, QuantConv2d, QuantLinear
from lowbit.quantizers.registry import (
    make_act_quantizer,
    make_grad_quantizer,
    make_weight_quantizer,
)
from lowbit.recipe import Recipe

WEIGHT_LAYERS: dict[type, type] = {nn.Linear: QuantLinear, nn.Conv2d: QuantConv2d}
ACTIVATIONS: tuple[type, ...] = (nn.ReLU,)


@dataclass(frozen=True)
class LayerPlan:
    """What quantize() does to one module: ``method`` at ``bits`` (32 = left in float)."""

    name: str
    kind: str  # "weight" or "activation"
    method: str
    bits: int
    why: str

    @property
    def quantized(self) -> bool:
        return self.bits != FLOAT_BITS


def _apply_rules(start: LayerPlan, recipe: Recipe) -> LayerPlan:
    """``start`` with every matching rule applied in order (the last one wins)."""
    p, weight = start, start.kind == "weight"
    for rule in recipe.rules:
        if rule.matches(p.name):
            method = (rule.weight if weight else rule.act) or p.method
            bits = rule.w_bits if weight else rule.a_bits
            p = LayerPlan(p.name, p.kind, method, p.bits if bits is None else bits,
                          f"rule {rule.pattern!r}")
    return p


def _weight_plan(name: str, recipe: Recipe, first: bool, last: bool) -> LayerPlan:
    bits, why = recipe.w_bits, "recipe"
    if first and recipe.keep_first:
        bits, why = FLOAT_BITS, "keep_first"
    elif last and recipe.keep_last:
        bits, why = FLOAT_BITS, "keep_last"
    return _apply_rules(LayerPlan(name, "weight", recipe.weight, bits, why), recipe)


def _act_plan(name: str, recipe: Recipe) -> LayerPlan:
    return _apply_rules(LayerPlan(name, "activation", recipe.act, recipe.a_bits, "recipe"), recipe)


def plan(model: nn.Module, recipe: Recipe) -> list[LayerPlan]:
    """The per-module decisions of :func:`quantize`, in module order, without side effects."""
    mods = list(model.named_modules())
    if any(isinstance(m, QUANT_LAYERS) for _, m in mods):
        raise LowbitError("model is already quantized; quantize the float model once")
    weights = [n for n, m in mods if type(m) in WEIGHT_LAYERS]
    if not weights:
        raise NoQuantizableLayerError(
            f"{type(model).__name__} has no nn.Linear or nn.Conv2d layer to quantize"
        )
    out = []
    for name, m in mods:
        if type(m) in WEIGHT_LAYERS:
            out.append(_weight_plan(name, recipe, name == weights[0], name == weights[-1]))
        elif type(m) in ACTIVATIONS:
            out.append(_act_plan(name, recipe))
    _check_plan(model, recipe, out)
    return out


def _check_plan(model: nn.Module, recipe: Recipe, layers: list[LayerPlan]) -> None:
    name = type(model).__name__
    n_w = sum(p.kind == "weight" for p in layers)
    if recipe.w_bits != FLOAT_BITS and not any(p.kind == "weight" and p.quantized for p in layers):
        raise NoQuantizableLayerError(
            f"recipe asks for {recipe.w_bits}-bit weights but all {n_w} weight layers of {name} "
            "stay in float (keep_first/keep_last or rules); set keep_first=False/keep_last=False"
        )
    if recipe.a_bits != FLOAT_BITS and not any(p.kind == "activation" for p in layers):
        raise NoQuantizableLayerError(
            f"recipe asks for {recipe.a_bits}-bit activations but {name} has no nn.ReLU module "
            "to quantize (activations given by torch.nn.functional calls cannot be swapped)"
        )


def quantize(model: nn.Module, recipe: Recipe) -> nn.Module:
    """Swap ``model``'s layers in place as ``recipe`` says and return the model.

    With ``recipe.g_bits < 32`` every quantized weight layer also gets the recipe's gradient
    quantizer in its ``grad_quant`` slot (applied to the gradient w.r.t. the layer output).
    """
    for p in plan(model, recipe):
        if not p.quantized:
            continue
        old = model.get_submodule(p.name)
        if p.kind == "weight":
            new = WEIGHT_LAYERS[type(old)].from_float(old, make_weight_quantizer(p.method, p.bits))
            if recipe.g_bits != FLOAT_BITS:
                new.grad_quant = make_grad_quantizer(recipe.grad, recipe.g_bits)
        else:
            new = QuantAct(make_act_quantizer(p.method, p.bits), old)
            new.train(old.training)
        if not p.name:
            return new
        parent_name, _, child = p.name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
    return model
