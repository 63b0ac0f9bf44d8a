"""The one registry: method name (the CLI's ``--method``, a recipe's ``weight``/``act``) ->
its weight and activation quantizer classes. A literal dict, no registration side effects."""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.errors import BitsError, MethodError
from lowbit.functional.checks import FLOAT_BITS, check_bits
from lowbit.quantizers.base import ActQuantizer, WeightQuantizer
from lowbit.quantizers.ivan import IvanAct, IvanWeight
from lowbit.quantizers.uniform import UniformAct, UniformWeight


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    weight: type[WeightQuantizer] | None = None
    act: type[ActQuantizer] | None = None


METHODS: dict[str, Method] = {
    "ivan": Method(
        "ivan",
        "Ivan: weights |alpha| Q_b(w/max|w|) with trainable alpha (eq. 3-4), activations A_b "
        "(eq. 5); 1..31 bits",
        IvanWeight,
        IvanAct,
    ),
    "uniform": Method(
        "uniform",
        "Uniform affine, min-max observer: per-channel symmetric weights, moving-average "
        "activations (Jacob et al. 2018); 2..16 bits",
        UniformWeight,
        UniformAct,
    ),
    # zoo methods are added here (issue 3)
}


def get_method(name: str) -> Method:
    """The registered method called ``name``; :class:`MethodError` lists the known ones."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(METHODS))
        raise MethodError(f"unknown quantization method {name!r}; known methods: {known}") from None


def _check(cls: type | None, name: str, role: str, bits: int) -> type:
    if cls is None:
        raise MethodError(f"method {name!r} has no {role} quantizer")
    if bits not in cls.BITS:
        raise BitsError(f"method {name!r} cannot quantize {role}s to {bits} bits")
    return cls


def validate(name: str, role: str, bits: int) -> None:
    """Raise if ``name`` cannot quantize ``role`` ("weight" or "activation") to ``bits``."""
    check_bits(bits, what=f"{role} bits")
    if bits == FLOAT_BITS:
        return
    m = get_method(name)
    _check(m.weight if role == "weight" else m.act, name, role, bits)


def make_weight_quantizer(name: str, bits: int) -> WeightQuantizer:
    validate(name, "weight", bits)
    return get_method(name).weight(bits)


def make_act_quantizer(name: str, bits: int) -> ActQuantizer:
    validate(name, "activation", bits)
    return get_method(name).act(bits)
