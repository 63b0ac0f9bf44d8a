"""Recipes: what to quantize, how, and at how many bits. Frozen dataclasses of plain values,
validated once at construction (GUIDE.md principle 3).

A method name is resolved through the one registry (:mod:`lowbit.quantizers.registry`);
32 bits means "leave in float". Rules are applied in order after the defaults, the last
matching rule wins, a rule naming a first or last layer overrides ``keep_first``/``keep_last``,
and a rule that matches no module is an error (:func:`lowbit.convert.plan`).
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field

from lowbit.errors import BitsError
from lowbit.functional.checks import FLOAT_BITS, check_bits
from lowbit.quantizers import options
from lowbit.quantizers.options import Options
from lowbit.quantizers.registry import (
    KEEP_FALLBACK,
    accepts,
    allowed_bits,
    get_method,
    validate,
)


def _pairs(value) -> Options:
    if isinstance(value, dict):
        value = value.items()
    return tuple(sorted((str(k), v) for k, v in (value or ())))


def _checked(method: str, role: str, value) -> Options:
    """``value`` as options of ``method``'s ``role`` quantizer (none allowed without one)."""
    pairs = _pairs(value)
    cls = getattr(get_method(method), "weight" if role == "weight" else "act")
    if cls is None:
        if pairs:
            raise ValueError(f"{method!r} has no {role} quantizer to take options {dict(pairs)}")
        return ()
    return options.normalize(cls, pairs)


@dataclass(frozen=True)
class LayerRule:
    """Override for the modules whose qualified name matches ``pattern`` (fnmatch syntax).

    Weight layers (Linear/Conv2d) take ``weight``/``w_bits``; activation modules take
    ``act``/``a_bits``; ``None`` keeps the recipe's value. ``w_bits=32`` keeps a layer in float.
    """

    pattern: str
    weight: str | None = None
    w_bits: int | None = None
    act: str | None = None
    a_bits: int | None = None
    weight_options: Options = ()
    act_options: Options = ()

    def __post_init__(self) -> None:
        for name in ("weight_options", "act_options"):  # checked by the Recipe (the method)
            object.__setattr__(self, name, _pairs(getattr(self, name)))
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ValueError("LayerRule.pattern must be a non-empty string")
        for bits, what in ((self.w_bits, "w_bits"), (self.a_bits, "a_bits")):
            if bits is not None:
                object.__setattr__(self, what,  # a plain int (numpy integers accepted)
                                   check_bits(bits, what=f"LayerRule({self.pattern!r}).{what}"))

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)


@dataclass(frozen=True)
class Recipe:
    """Weight method and bits, activation method and bits, per-layer rules.

    ``keep_first``/``keep_last``: the first and last weight layers (in module registration
    order) are kept at ``keep_bits`` (default 8, the common practice of the LSQ and PACT papers,
    Esser et al. 2020, Choi et al. 2018) instead of ``w_bits``; ``keep_bits=32`` keeps them in
    float, XNOR-Net's practice (Rastegari et al. 2016, sec. 4). A kept layer uses the recipe's
    weight method when it takes ``keep_bits``, else the fallback ``registry.KEEP_FALLBACK``
    (``uniform``: per-channel symmetric min-max, 2..16 bits). A kept layer never gets fewer
    bits than the others: when ``w_bits >= keep_bits`` (e.g. W8) it is quantized like them, in
    a float recipe it stays float. Set keep_first/keep_last to False to quantize those layers
    like the others, as Ivan's experiments do. ``grad``/``g_bits``: quantize the gradient
    flowing back into every weight layer that is not kept (DoReFa-Net eq. 12; 32 = float).

    ``weight_options``/``act_options``: the method's constructor options beyond bits (e.g.
    ``{"per_channel": True}`` for lsq, ``{"momentum": 0.05}`` for uniform activations:
    :mod:`lowbit.quantizers.options`), for the layers quantized with the recipe's own method;
    a LayerRule's options apply to the layers it matches. Given as dicts, kept as sorted
    tuples of pairs (checked against the method's signature), saved as dicts by :meth:`to_dict`.

    :meth:`from_dict` of a dict without ``keep_bits`` (written before it existed) gives
    ``keep_bits=32``, the meaning those files were written with.
    """

    weight: str = "ivan"
    w_bits: int = FLOAT_BITS
    act: str = "ivan"
    a_bits: int = FLOAT_BITS
    rules: tuple[LayerRule, ...] = field(default_factory=tuple)
    keep_first: bool = True
    keep_last: bool = True
    grad: str = "dorefa"
    g_bits: int = FLOAT_BITS
    keep_bits: int = 8
    weight_options: Options = ()
    act_options: Options = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        object.__setattr__(self, "weight_options",
                           _checked(self.weight, "weight", self.weight_options))
        object.__setattr__(self, "act_options", _checked(self.act, "activation", self.act_options))
        for name in ("w_bits", "a_bits", "g_bits", "keep_bits"):  # plain ints from here on
            object.__setattr__(self, name, check_bits(getattr(self, name), what=name))
        validate(self.weight, "weight", self.w_bits)
        if self.keep_bits != FLOAT_BITS and not (accepts(self.weight, self.keep_bits)
                                                 or accepts(KEEP_FALLBACK, self.keep_bits)):
            raise BitsError(
                f"keep_bits={self.keep_bits}: neither {self.weight!r} (takes "
                f"{allowed_bits(self.weight, 'weight')}) nor the fallback {KEEP_FALLBACK!r} "
                f"(takes {allowed_bits(KEEP_FALLBACK, 'weight')}) can quantize kept layers to "
                f"{self.keep_bits} bits"
            )
        validate(self.act, "activation", self.a_bits)
        validate(self.grad, "gradient", self.g_bits)
        for rule in self.rules:
            if not isinstance(rule, LayerRule):
                raise TypeError(f"Recipe.rules must hold LayerRule objects, got {rule!r}")
            w = rule.weight or self.weight
            a = rule.act or self.act
            validate(w, "weight", rule.w_bits if rule.w_bits is not None else self.w_bits)
            validate(a, "activation", rule.a_bits if rule.a_bits is not None else self.a_bits)
            object.__setattr__(rule, "weight_options", _checked(w, "weight", rule.weight_options))
            object.__setattr__(rule, "act_options", _checked(a, "activation", rule.act_options))

    def options_for(self, kind: str, name: str, method: str) -> Options:
        """The options of the ``kind`` ("weight"/"activation"/"input") quantizer of module
        ``name`` using ``method``: the recipe's for its own method, then each matching rule's
        (the last wins) when given for that method."""
        weight = kind == "weight"
        own = self.weight if weight else self.act
        out = (self.weight_options if weight else self.act_options) if method == own else ()
        for rule in self.rules:
            given = rule.weight_options if weight else rule.act_options
            ruled = (rule.weight if weight else rule.act) or own
            if given and rule.matches(name) and ruled == method:
                out = given
        return out

    @property
    def is_float(self) -> bool:
        bits = (self.w_bits, self.a_bits, self.g_bits)
        return all(b == FLOAT_BITS for b in bits) and not self.rules

    def to_dict(self) -> dict:
        d = asdict(self)
        for holder in (d, *d["rules"]):
            for name in ("weight_options", "act_options"):
                holder[name] = options.plain(holder[name])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        d = dict(d)
        d.setdefault("keep_bits", FLOAT_BITS)  # files written before keep_bits: kept = float
        d["rules"] = tuple(LayerRule(**r) for r in d.get("rules", ()))
        return cls(**d)
