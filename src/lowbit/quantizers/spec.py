"""Quantizer specs: the frozen, plain-value description that builds one quantizer.

A :class:`QuantSpec` is ``(method, role, bits, options)``: the registry name, the role
("weight", "activation" or "gradient"), the bit width and the constructor options beyond the
bits (:mod:`lowbit.quantizers.options`, checked against the class's signature). It is what the
plan of :func:`lowbit.quantize` gives each slot, what ``model.pt`` stores per quantizer slot
(:func:`lowbit.convert.quantizer_slots` / :func:`lowbit.convert.apply_specs`) and what the
export header names. A slot left in float has **no** spec (``None``): 32 bits stays CLI and
recipe sugar for "float" and never reaches a spec (``QuantSpec(..., bits=32)`` is an error).

``spec.build()`` makes the quantizer; ``QuantSpec.of(q)`` (also ``q.spec``) reads a quantizer's
spec back from its class, bits and option attributes, so ``QuantSpec.of(spec.build()) == spec``
for every registered method and option (tests/quantizers/test_contract.py). Method names become
specs only at the edges: the CLI's ``--method/--w-bits``, recipe files, ``to_dict``/``from_dict``.
Test: tests/quantizers/test_spec.py.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from lowbit.errors import LowbitError, MethodError
from lowbit.functional.checks import FLOAT_BITS, check_bits
from lowbit.quantizers import options as opts
from lowbit.quantizers.options import Options

ROLES = ("weight", "activation", "gradient")
_ATTR = {"weight": "weight", "activation": "act", "gradient": "grad"}


def _registry():
    from lowbit.quantizers import registry  # registry imports every quantizer module

    return registry


@dataclass(frozen=True)
class QuantSpec:
    """One quantizer: ``method``'s ``role`` quantizer at ``bits`` with ``options``."""

    method: str
    role: str
    bits: int
    options: Options = ()

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"QuantSpec role must be one of {', '.join(ROLES)}, "
                             f"got {self.role!r}")
        bits = check_bits(self.bits, what=f"{self.method} {self.role} bits")
        if bits == FLOAT_BITS:
            raise LowbitError(f"QuantSpec({self.method!r}, {self.role!r}): {FLOAT_BITS} bits "
                              "means float, which has no spec (use None for a float slot)")
        _registry().validate(self.method, self.role, bits)
        object.__setattr__(self, "bits", bits)
        given = dict(self.options.items() if isinstance(self.options, dict) else self.options)
        object.__setattr__(self, "options", opts.normalize(self.cls, given))

    @property
    def cls(self) -> type:
        """The quantizer class the registry gives ``method`` for ``role``."""
        return getattr(_registry().get_method(self.method), _ATTR[self.role])

    def build(self):
        """A new quantizer: ``cls(bits, **options)``."""
        return self.cls(self.bits, **dict(self.options))

    @classmethod
    def of(cls, quantizer: Any) -> QuantSpec:
        """The spec of an existing quantizer (its class in the registry, bits, options)."""
        for name, m in _registry().METHODS.items():
            for role, attr in _ATTR.items():
                if getattr(m, attr) is type(quantizer):
                    return cls(name, role, quantizer.bits, tuple(opts.current(quantizer).items()))
        raise MethodError(f"{type(quantizer).__name__} is not a registered quantizer class")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (Enum options by name)."""
        return {"method": self.method, "role": self.role, "bits": self.bits,
                "options": opts.plain(self.options)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantSpec:
        try:
            return cls(d["method"], d["role"], d["bits"], tuple(dict(d.get("options") or {})
                                                                .items()))
        except (KeyError, TypeError) as exc:
            raise LowbitError(f"not a quantizer spec: {d!r} ({exc})") from None

    def __str__(self) -> str:
        shown = ", ".join(f"{k}={v.name if isinstance(v, enum.Enum) else v}"
                          for k, v in self.options)
        return f"{self.method} {self.role} {self.bits}-bit" + (f" ({shown})" if shown else "")


def spec_or_none(method: str, role: str, bits: int, options: Options = ()) -> QuantSpec | None:
    """The CLI/recipe sugar: ``bits == 32`` is float (None), else the spec."""
    return None if bits == FLOAT_BITS else QuantSpec(method, role, bits, options)
