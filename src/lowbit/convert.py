"""quantize(model, recipe): the one module-swap walk.

Weight layers (``nn.Linear``, ``nn.Conv2d``) become :class:`QuantLinear` / :class:`QuantConv2d`
sharing the same parameters; activation modules (``nn.ReLU``, ``nn.ReLU6``, ``nn.Hardtanh``,
``nn.GELU``, ``nn.SiLU``, ...: :data:`lowbit.nn.activations.ACTIVATIONS`) become
:class:`QuantAct` where the method can stand for them (the table and its reasons:
:mod:`lowbit.nn.activations`; elsewhere plan() refuses with the reason). The swap is in place
(the model is returned for chaining); :func:`plan` tells what would be done without changing
anything. First/last layer means first/last in module registration order.

Editing: :func:`add_input_quantizers` gives weight layers an ``input_quant`` (quantize() never
adds one); :func:`requantize` replaces the quantizers of the layers its rules name, leaving the
rest; BatchNorm folding is :func:`lowbit.fold.fold_batchnorm` (fold, then quantize).

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

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from lowbit.errors import LowbitError, NoQuantizableLayerError
from lowbit.functional.checks import FLOAT_BITS
from lowbit.nn.activations import ACTIVATIONS, refusal
from lowbit.nn.layers import QUANT_LAYERS, QuantAct, QuantConv2d, QuantLinear
from lowbit.quantizers.registry import (
    KEEP_FALLBACK,
    METHODS,
    accepts,
    get_method,
    make_act_quantizer,
    make_grad_quantizer,
    make_weight_quantizer,
    validate,
)
from lowbit.quantizers.spec import QuantSpec
from lowbit.recipe import LayerRule, Recipe

WEIGHT_LAYERS: dict[type, type] = {nn.Linear: QuantLinear, nn.Conv2d: QuantConv2d}
KINDS = ("weight", "activation", "gradient", "input")


@dataclass(frozen=True)
class LayerPlan:
    """What quantize() does to one module: ``method`` at ``bits`` (32 = left in float).

    ``kind``: "weight" (the layer's weight quantizer), "activation" (a QuantAct in place of the
    module), "gradient" (the ``output_grad_quant`` of a weight layer, listed right after it;
    only when the recipe's ``g_bits < 32``) or "input" (the ``input_quant`` of a weight layer, from
    :func:`add_input_quantizers` / :func:`requantize`). ``aliases``: other names of the same
    module (see module doc).
    """

    name: str
    kind: str
    method: str
    bits: int
    why: str
    aliases: tuple[str, ...] = ()
    options: tuple[tuple[str, object], ...] = ()  # the quantizer's constructor options

    @property
    def quantized(self) -> bool:
        return self.bits != FLOAT_BITS

    @property
    def spec(self) -> QuantSpec | None:
        """The quantizer this plan puts in its slot; None when the slot stays float."""
        if not self.quantized:
            return None
        role = {"weight": "weight", "gradient": "gradient"}.get(self.kind, "activation")
        return QuantSpec(self.method, role, self.bits, self.options)

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
        raise LowbitError("model is already quantized; quantize the float model once (to change "
                          "some layers of a quantized model use lowbit.convert.requantize)")
    places = _places(model)
    units = [names for _, names in _units(model, tuple(WEIGHT_LAYERS))]
    if not units:
        raise NoQuantizableLayerError(
            f"{type(model).__name__} has no nn.Linear or nn.Conv2d layer to quantize"
        )
    _check_rules(model, recipe.rules, [n for _, names in places for n in names],
                 "nn.Linear, nn.Conv2d or activation module")
    first, last = units[0][0], units[-1][0]
    out, done = [], set()
    for m, names in places:
        if type(m) in ACTIVATIONS:
            p = _one_plan([_apply_rules(LayerPlan(n, "activation", recipe.act, recipe.a_bits,
                                                  "recipe"), recipe) for n in names])
            _check_stands_for(p, m)
            out.append(p)
        elif id(m) not in done:
            done.add(id(m))
            unit = next(u for u in units if u[0] == names[0])
            p = _one_plan([_weight_plan(n, recipe, unit[0] == first, unit[0] == last)
                           for n in unit])
            out.append(p)
            if recipe.g_bits != FLOAT_BITS:
                out.append(_grad_plan(p, recipe))
    _check_plan(model, recipe, out)
    return [replace(p, options=recipe.options_for(p.kind, p.name, p.method)) if p.quantized
            and p.kind != "gradient" else p for p in out]


def _check_stands_for(p: LayerPlan, act: nn.Module) -> None:
    if p.quantized and (why := refusal(get_method(p.method).act, act)) is not None:
        raise LowbitError(f"activation {p.name!r} ({p.why}): method {p.method!r} cannot stand "
                          f"for it: {why}; or leave it in float with a LayerRule a_bits=32")


def _check_rules(model: nn.Module, rules, names: list[str], what: str) -> None:
    for rule in rules:
        if not isinstance(rule, LayerRule):
            raise TypeError(f"rules must hold LayerRule objects, got {rule!r}")
        if not any(rule.matches(n) for n in names):
            shown = ", ".join(repr(n) for n in names[:8]) + (", ..." if len(names) > 8 else "")
            raise NoQuantizableLayerError(
                f"LayerRule pattern {rule.pattern!r} matches no {what} of "
                f"{type(model).__name__}; its {len(names)} such modules are: {shown}")


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
            f"recipe asks for {recipe.a_bits}-bit activations but {name} has no nn.ReLU or other "
            "activation module to quantize (torch.nn.functional calls cannot be swapped)"
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
    gradient quantizer in its ``output_grad_quant`` slot (applied to the gradient w.r.t. the layer
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
            wq = make_weight_quantizer(p.method, p.bits, p.options) if p.quantized else None
            new = WEIGHT_LAYERS[type(old)].from_float(old, wq)
            if p.name in grads:
                new.output_grad_quant = make_grad_quantizer(recipe.grad, recipe.g_bits)
        else:
            new = QuantAct(make_act_quantizer(p.method, p.bits, p.options), old)
            new.train(old.training)
        new.layer_name = p.name + (f" (also {', '.join(p.aliases)})" if p.aliases else "")
        if not p.name:
            return new
        for name in (p.name, *p.aliases):
            _set(model, name, new)
    return model


def _units(model: nn.Module, types: tuple[type, ...]) -> list[tuple[nn.Module, list[str]]]:
    """Each distinct module of ``types`` (exact types) with all its names, in module order."""
    units: dict[int, tuple[nn.Module, list[str]]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if type(m) in types:
            units.setdefault(id(m), (m, []))[1].append(name)
    return list(units.values())


def _place(model: nn.Module, names: list[str], new: nn.Module) -> None:
    new.layer_name = names[0] + (f" (also {', '.join(names[1:])})" if names[1:] else "")
    for name in names:
        _set(model, name, new)


def add_input_quantizers(model: nn.Module, method: str, bits: int,
                         rules: Sequence[LayerRule] = (), skip_first: bool = True,
                         options=()) -> list[LayerPlan]:
    """Give every weight layer of ``model`` an input quantizer (``input_quant``): ``method``'s
    activation quantizer at ``bits``, in place; returns one LayerPlan of kind "input" per
    weight layer, in module order (bits 32: left without one).

    ``rules``: LayerRules matched against the weight layers' names; their ``act``/``a_bits``
    override ``method``/``bits`` (the last matching rule wins; ``a_bits=32`` leaves the layer
    without an input quantizer). ``skip_first``: the first weight layer (module order), whose
    input is usually the network's input, gets none unless a rule names it. Float
    ``nn.Linear``/``nn.Conv2d`` layers become QuantLinear/QuantConv2d with ``weight_quant=None``
    to carry the slot. A layer that already has one is an error (use :func:`requantize`). Any
    method may quantize an input (no activation table; a REPLACES_ACTIVATION one clips/signs).
    ``options``: constructor options of ``method``'s quantizer (e.g. ``{"observer": "mse"}``);
    a matching rule's ``act_options`` replace them for the layers it names.
    """
    validate(method, "activation", bits)
    units = _units(model, (*WEIGHT_LAYERS, *WEIGHT_LAYERS.values()))
    if not units:
        raise NoQuantizableLayerError(f"{type(model).__name__} has no weight layer")
    _check_rules(model, rules, [n for _, ns in units for n in ns], "weight layer")
    recipe = Recipe(rules=tuple(rules))  # only _apply_rules reads it: rules in order
    options = tuple(dict(options).items())
    plans = []
    for i, (m, names) in enumerate(units):
        per_name = []
        for n in names:
            start = LayerPlan(n, "input", method, bits, "add_input_quantizers")
            p = _apply_rules(start, recipe)
            if p is start and skip_first and i == 0:
                p = LayerPlan(n, "input", method, FLOAT_BITS, "skip_first")
            validate(p.method, "activation", p.bits)
            opts = options if p.method == method else ()
            for r in rules:
                if r.matches(n) and r.act_options:
                    opts = r.act_options
            per_name.append(replace(p, options=opts) if p.quantized else p)
        p = _one_plan(per_name)
        if p.quantized and getattr(m, "input_quant", None) is not None:
            raise LowbitError(f"layer {p.name!r} already has an input quantizer "
                              f"({type(m.input_quant).__name__}); replace it with requantize()")
        plans.append(p)
    for (m, names), p in zip(units, plans, strict=True):
        if p.quantized:
            if type(m) in WEIGHT_LAYERS:
                m = WEIGHT_LAYERS[type(m)].from_float(m, None)
                _place(model, names, m)
            m.input_quant = make_act_quantizer(p.method, p.bits, p.options).to(m.weight.device)
            m.input_quant.train(m.training)
    return plans


def _method_of(quant: nn.Module | None, role: str) -> str | None:
    """The registry name of a quantizer object (None for None or an unregistered class)."""
    for name, m in METHODS.items():
        if quant is not None and type(quant) is getattr(m, "weight" if role == "weight" else "act"):
            return name
    return None


def _rule_plan(old: nn.Module | None, name: str, rules, kind: str) -> LayerPlan | None:
    """The plan the rules matching ``name`` give the slot holding ``old`` (None: no rule).
    Fields a rule leaves None keep the slot's method/bits (or an earlier rule's)."""
    role = "weight" if kind == "weight" else "activation"
    method, bits, why = _method_of(old, role), getattr(old, "bits", None), None
    for r in rules:
        r_method, r_bits = (r.weight, r.w_bits) if role == "weight" else (r.act, r.a_bits)
        if r.matches(name) and (r_method, r_bits) != (None, None):
            method, bits, why = r_method or method, bits if r_bits is None else r_bits, r.pattern
    if why is None:
        return None
    if bits != FLOAT_BITS and (method is None or bits is None):
        raise LowbitError(f"rule {why!r} for the {kind} of {name!r}: give both the method and "
                          f"the bits (the slot holds {type(old).__name__})")
    if bits != FLOAT_BITS:
        validate(method, role, bits)
    return LayerPlan(name, kind, method or "none", bits, f"rule {why!r}")


def _requantize_one(m: nn.Module, names: list[str], rules) -> list[LayerPlan]:
    slots = ([("weight", "weight_quant"), ("input", "input_quant")]
             if not isinstance(m, QuantAct) else [("activation", "quant")])
    out = []
    for kind, attr in slots:
        got = [p for n in names if (p := _rule_plan(getattr(m, attr), n, rules, kind))]
        if not got:
            continue
        p = replace(_one_plan(got), aliases=tuple(n for n in names if n != got[0].name))
        if kind == "activation" and p.quantized:
            _check_stands_for(p, m.float_act)
        out.append(p)
    return out


def requantize(model: nn.Module, rules: Sequence[LayerRule]) -> list[LayerPlan]:
    """Replace, in place, the quantizers of the already-quantized layers ``rules`` name; every
    other layer keeps its quantizer objects and state. Returns a LayerPlan per slot changed.

    A rule's ``weight``/``w_bits`` set a QuantLinear/QuantConv2d's weight quantizer (a fresh one
    from the registry, ``init_from`` the layer's weight), its ``act``/``a_bits`` set the layer's
    input quantizer or a QuantAct's quantizer (same activation table as :func:`quantize`).
    ``None`` keeps the slot's current method or bits; 32 bits removes the quantizer (a QuantAct
    goes back to its float activation). Later rules win. A rule naming one name of a shared
    module changes it at every name (``aliases``); rules naming no quantized layer, or giving
    two names of one shared module different quantizers, are errors.
    """
    units = _units(model, QUANT_LAYERS)
    if not units:
        raise NoQuantizableLayerError(f"{type(model).__name__} has no quantized layer; "
                                      "quantize it first")
    _check_rules(model, rules, [n for _, ns in units for n in ns], "quantized layer")
    edits = [(m, names, _requantize_one(m, names, rules)) for m, names in units]
    for m, names, plans in edits:
        for p in plans:
            if p.kind == "activation" and not p.quantized:
                _place(model, names, m.float_act)
            elif p.kind == "activation":
                device = next(m.quant.buffers(), torch.zeros(())).device
                m.quant = make_act_quantizer(p.method, p.bits).to(device).train(m.quant.training)
            elif p.kind == "weight":
                wq = make_weight_quantizer(p.method, p.bits) if p.quantized else None
                if wq is not None:
                    wq.init_from(m.weight)
                    wq.to(m.weight.device).train(m.training)
                m.weight_quant = wq
            else:
                iq = make_act_quantizer(p.method, p.bits) if p.quantized else None
                m.input_quant = iq if iq is None else iq.to(m.weight.device).train(m.training)
    return [p for _, _, plans in edits for p in plans]
