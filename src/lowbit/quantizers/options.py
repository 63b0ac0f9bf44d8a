"""A quantizer's options beyond its bits (``LSQWeight(per_channel)``, ``TTQWeight(t,
scale_grad)``, ``HWGQAct(backward)``, ``UniformWeight(per_channel, symmetric)``, momenta...):
read off the constructor's signature, so that every method's options are reachable from a
:class:`~lowbit.recipe.Recipe`, a ``LayerRule`` and the command line, and survive ``model.pt``
(the recipe is saved with them).

Options are plain values: bool, int, float, str, or an Enum (given and saved by its name);
constructor arguments of other types (a ``torch.Generator``, level lists) are not options.
``normalize(cls, options)`` checks names and types once and returns a sorted tuple of pairs
(hashable: recipes are frozen dataclasses); ``current(q)`` reads a quantizer's options back.
Test: tests/quantizers/test_options.py.
"""

from __future__ import annotations

import enum
import inspect
import typing
from collections.abc import Mapping
from typing import Any

from lowbit.errors import LowbitError

PLAIN = (bool, int, float, str)
Options = tuple[tuple[str, Any], ...]


def _kind(annotation: Any) -> type | None:
    """The option type of a parameter annotation (``bool``, ``float``, an Enum...), or None."""
    if isinstance(annotation, str):  # postponed annotations (from __future__ import annotations)
        annotation = {"bool": bool, "int": int, "float": float, "str": str}.get(annotation,
                                                                                annotation)
    if isinstance(annotation, type) and (annotation in PLAIN or issubclass(annotation, enum.Enum)):
        return annotation
    return None


def signature_options(cls: type) -> dict[str, tuple[type, Any]]:
    """name -> (type, default) of ``cls``'s constructor options (everything but ``bits``)."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - unresolvable hints: fall back to the raw annotations
        hints = {}
    out = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name in ("self", "bits") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        kind = _kind(hints.get(name, p.annotation))
        if kind is not None and p.default is not inspect.Parameter.empty:
            out[name] = (kind, p.default)
    return out


def _coerce(cls: type, name: str, kind: type, value: Any) -> Any:
    if issubclass(kind, enum.Enum):
        if isinstance(value, kind):
            return value
        try:
            return kind[value] if isinstance(value, str) and value in kind.__members__ \
                else kind(value)
        except (ValueError, KeyError):
            names = ", ".join(kind.__members__)
            raise LowbitError(f"{cls.__name__} option {name}={value!r}: one of {names}") from None
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if isinstance(value, bool):
            return value
    elif kind is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    elif kind is int and not isinstance(value, bool):
        try:
            if float(value) == int(float(value)):
                return int(float(value))
        except (TypeError, ValueError):
            pass
    elif kind is str and isinstance(value, str):
        return value
    raise LowbitError(f"{cls.__name__} option {name}={value!r} is not a {kind.__name__}")


def normalize(cls: type, options: Mapping[str, Any] | Options | None) -> Options:
    """``options`` checked against ``cls``'s signature, coerced to their types, sorted."""
    if not options:
        return ()
    items = options.items() if isinstance(options, Mapping) else options
    known = signature_options(cls)
    out = {}
    for name, value in items:
        if name not in known:
            listed = ", ".join(sorted(known)) or "none"
            raise LowbitError(f"{cls.__name__} has no option {name!r}; its options: {listed}")
        out[name] = _coerce(cls, name, known[name][0], value)
    return tuple(sorted(out.items()))


def current(q: Any) -> dict[str, Any]:
    """The options ``q`` was built with, read back from its attributes (those it keeps)."""
    return {name: getattr(q, name) for name in signature_options(type(q)) if hasattr(q, name)}


def plain(options: Options) -> dict[str, Any]:
    """JSON-ready: Enum options by name."""
    return {k: (v.name if isinstance(v, enum.Enum) else v) for k, v in options}


def parse_assignments(items: list[str] | None) -> dict[str, str]:
    """``["per_channel=true", "momentum=0.05"]`` -> dict (values typed later by normalize)."""
    out = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise LowbitError(f"option {item!r}: expected NAME=VALUE")
        out[name.strip().replace("-", "_")] = value.strip()
    return out
