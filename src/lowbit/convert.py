"""quantize(model, recipe): the one module-swap walk.

Weight layers (``nn.Linear``, ``nn.Conv2d``) become :class:`QuantLinear` / :class:`QuantConv2d`
sharing the same parameters; activation modules (``nn.ReLU``) become :class:`QuantAct`. The swap
is in place (the model is returned for chaining); :func:`plan` tells what would be done without
changing anything. First/last layer means first/last in module registration order.

Shared modules (one module object registered under several names):
- a weight layer (``self.b = self.a``) gets one quantized layer, set at every name (its
  parameters are shared anyway); its :class:`LayerPlan` lists the other names in ``aliases``,
  and rules giving the names different methods or bits are an error;
- an activation module registered at two places (one ``nn.ReLU`` object in two attributes or
  two containers) gets a separate quantizer, with its own range, at each place: the two sites
  see different tensors. Names that reach the same place through a shared container are one
  place (one quantizer; ``aliases`` of its plan).
Limit: a module *called twice* under one name (``self.relu`` used twice in ``forward``) cannot be
seen from the module tree; it gets one quantizer (one running range) for both calls. Give each
call site its own module.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from lowbit.errors import LowbitError, NoQuantizableLayerError
from lowbit.functional.checks import FLOAT_BITS
from lowbit.nn.layers import QUANT_LAYERS, QuantAct, QuantConv2d, QuantLinear
from lowbit.quantizers.registry import (
    KEEP_FALLBACK,
    accepts,
    make_act_quantizer,
    make_grad_quantizer,
    make_weight_quantizer,
)
from lowbit.recipe import Recipe

WEIGHT_LAYERS: dict[type, type] = {nn.Linear: QuantLinear, nn.Conv2d: QuantConv2d}
ACTIVATIONS: tuple[type, ...] = (nn.ReLU,)
KINDS = ("weight", "activation", "gradient")


@dataclass(frozen=True)
class LayerPlan:
    """What quantize() does to one module: ``method`` at ``bits`` (32 = left in float).

    ``kind``: "weight" (the layer's weight quantizer), "activation" (a QuantAct in place of the
    module) or "gradient" (the ``grad_quant`` of a weight layer, listed right after it; only when
    the recipe's ``g_bits < 32``). ``aliases``: other names of the same module (see module doc).
    """

    name: str
    kind: str
    method: str
    bits: int
    why: str
    aliases: tuple[str, ...] = ()

    @property
    def quantized(self) -> bool:
        return self.bits != FLOAT_BITS

    @property
    def kept(self) -> bool:
        """True for a first/last layer kept by keep_first/keep_last (at keep_bits or float)."""
        return self.why.startswith("keep_")


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
    """The recipe's method and bits; a kept first/last layer gets no fewer than ``keep_bits``:
    ``keep_bits`` (with the recipe's method if it takes them, else KEEP_FALLBACK) when
    ``w_bits < keep_bits``, else the recipe's own method and bits (float for a float recipe or
    ``keep_bits=32``). A matching rule overrides keeping."""
    start = LayerPlan(name, "weight", recipe.weight, recipe.w_bits, "recipe")
    ruled = _apply_rules(start, recipe)
    which = "keep_first" if first and recipe.keep_first else (
        "keep_last" if last and recipe.keep_last else None)
    if ruled is not start or which is None:
        return ruled
    bits = recipe.keep_bits
    if bits == FLOAT_BITS or recipe.w_bits == FLOAT_BITS:
        return LayerPlan(name, "weight", recipe.weight, FLOAT_BITS, f"{which} (float)")
    if recipe.w_bits >= bits:  # already at keep_bits or more: as the other layers
        return LayerPlan(name, "weight", recipe.weight, recipe.w_bits,
                         f"{which} ({recipe.w_bits}-bit {recipe.weight}, >= keep_bits)")
    method = recipe.weight if accepts(recipe.weight, bits) else KEEP_FALLBACK
    return LayerPlan(name, "weight", method, bits, f"{which} ({bits}-bit {method})")


def _grad_plan(weight: LayerPlan, recipe: Recipe) -> LayerPlan:
    if weight.kept:
        return LayerPlan(weight.name, "gradient", recipe.grad, FLOAT_BITS,
                         weight.why.split(" ")[0], weight.aliases)
    return LayerPlan(weight.name, "gradient", recipe.grad, recipe.g_bits, "recipe",
                     weight.aliases)


def _places(model: nn.Module) -> list[tuple[nn.Module, list[str]]]:
    """Every (module, names) place of a weight layer or activation module, in module order.

    A place is one attribute slot (parent object, attribute name); the names are every
    qualified name reaching that slot (several when a container is shared).
    """
    places: dict[tuple, tuple[nn.Module, list[str]]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if type(m) not in WEIGHT_LAYERS and type(m) not in ACTIVATIONS:
            continue
        parent_name, _, child = name.rpartition(".")
        key = (id(model.get_submodule(parent_name)), child) if name else ("",)
        places.setdefault(key, (m, []))[1].append(name)
    return list(places.values())


def _weight_units(places) -> list[list[str]]:
    """The names of each distinct weight-layer object, in order of first appearance."""
    units: dict[int, list[str]] = {}
    for m, names in places:
        if type(m) in WEIGHT_LAYERS:
            units.setdefault(id(m), []).extend(names)
    return list(units.values())


def _one_plan(plans: list[LayerPlan]) -> LayerPlan:
    """The plans of all names of one module must agree; one plan with the others as aliases."""
    first = plans[0]
    for p in plans[1:]:
        if (p.method, p.bits) != (first.method, first.bits):
            raise LowbitError(
                f"one module is registered as {first.name!r} and {p.name!r}; the recipe gives "
                f"them different quantizers ({first.method} {first.bits} bits, {first.why}; "
                f"{p.method} {p.bits} bits, {p.why}); make the rules agree for both names"
            )
    return replace(first, aliases=tuple(p.name for p in plans[1:]))


def plan(model: nn.Module, recipe: Recipe) -> list[LayerPlan]:
    """The per-module decisions of :func:`quantize`, in module order, without side effects."""
    if any(isinstance(m, QUANT_LAYERS) for m in model.modules()):
        raise LowbitError("model is already quantized; quantize the float model once")
    places = _places(model)
    units = _weight_units(places)
    if not units:
        raise NoQuantizableLayerError(
            f"{type(model).__name__} has no nn.Linear or nn.Conv2d layer to quantize"
        )
    _check_rules(model, recipe, [n for _, names in places for n in names])
    first, last = units[0][0], units[-1][0]
    out, done = [], set()
    for m, names in places:
        if type(m) in ACTIVATIONS:
            out.append(_one_plan([_apply_rules(LayerPlan(n, "activation", recipe.act,
                                                         recipe.a_bits, "recipe"), recipe)
                                  for n in names]))
        elif id(m) not in done:
            done.add(id(m))
            unit = next(u for u in units if u[0] == names[0])
            p = _one_plan([_weight_plan(n, recipe, unit[0] == first, unit[0] == last)
                           for n in unit])
            out.append(p)
            if recipe.g_bits != FLOAT_BITS:
                out.append(_grad_plan(p, recipe))
    _check_plan(model, recipe, out)
    return out


def _check_rules(model: nn.Module, recipe: Recipe, names: list[str]) -> None:
    for rule in recipe.rules:
        if not any(rule.matches(n) for n in names):
            shown = ", ".join(repr(n) for n in names[:8]) + (", ..." if len(names) > 8 else "")
            raise NoQuantizableLayerError(
                f"LayerRule pattern {rule.pattern!r} matches no nn.Linear, nn.Conv2d or nn.ReLU "
                f"module of {type(model).__name__}; its {len(names)} such modules are: {shown}"
            )


def _check_plan(model: nn.Module, recipe: Recipe, layers: list[LayerPlan]) -> None:
    name = type(model).__name__
    weights = [p for p in layers if p.kind == "weight"]
    if recipe.w_bits != FLOAT_BITS and not any(p.quantized and not p.kept for p in weights):
        raise NoQuantizableLayerError(
            f"recipe asks for {recipe.w_bits}-bit weights but all {len(weights)} weight layers "
            f"of {name} are kept at keep_bits={recipe.keep_bits} (keep_first/keep_last) or "
            "left in float by rules; set keep_first=False/keep_last=False"
        )
    if recipe.a_bits != FLOAT_BITS and not any(p.kind == "activation" for p in layers):
        raise NoQuantizableLayerError(
            f"recipe asks for {recipe.a_bits}-bit activations but {name} has no nn.ReLU module "
            "to quantize (activations given by torch.nn.functional calls cannot be swapped)"
        )
    grads = [p for p in layers if p.kind == "gradient"]
    if recipe.g_bits != FLOAT_BITS and not any(p.quantized for p in grads):
        raise NoQuantizableLayerError(
            f"recipe asks for {recipe.g_bits}-bit gradients but all {len(grads)} weight layers "
            f"of {name} are kept (keep_first/keep_last); set keep_first=False/keep_last=False"
        )


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


def quantize(model: nn.Module, recipe: Recipe) -> nn.Module:
    """Swap ``model``'s layers in place as ``recipe`` says and return the model.

    With ``recipe.g_bits < 32`` every weight layer that is not kept also gets the recipe's
    gradient quantizer in its ``grad_quant`` slot (applied to the gradient w.r.t. the layer
    output); a layer whose weight stays in float becomes a QuantLinear/QuantConv2d with
    ``weight_quant=None`` to carry it. Each new layer's ``layer_name`` is its qualified name
    (named in errors, e.g. on non-finite input). Shared modules and the limit on modules called
    twice: see the module docstring.
    """
    plans = plan(model, recipe)
    grads = {p.name: p for p in plans if p.kind == "gradient" and p.quantized}
    for p in plans:
        if p.kind == "gradient" or not (p.quantized or p.name in grads):
            continue
        old = model.get_submodule(p.name)
        if p.kind == "weight":
            wq = make_weight_quantizer(p.method, p.bits) if p.quantized else None
            new = WEIGHT_LAYERS[type(old)].from_float(old, wq)
            if p.name in grads:
                new.grad_quant = make_grad_quantizer(recipe.grad, recipe.g_bits)
        else:
            new = QuantAct(make_act_quantizer(p.method, p.bits), old)
            new.train(old.training)
        new.layer_name = p.name + (f" (also {', '.join(p.aliases)})" if p.aliases else "")
        if not p.name:
            return new
        for name in (p.name, *p.aliases):
            _set(model, name, new)
    return model
