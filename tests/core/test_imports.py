"""Imports point downward only (GUIDE.md, "Layout"): kernels <- functional <- quantizers <- nn
<- convert <- train/ptq <- cli. Parsed with ``ast``; nothing is imported. ``lowbit.errors`` is
importable from anywhere."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "lowbit"

# package (or module) -> lowbit subpackages/modules it must not import. Higher layers are
# listed for every lower one; orchestration modules above convert (experiment, demo, report)
# count with train/cli.
ABOVE_CONVERT = ("train", "ptq", "cli", "experiment", "demo")
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "errors": ("functional", "quantizers", "nn", "recipe", "convert", "size") + ABOVE_CONVERT,
    "kernels": ("functional", "quantizers", "nn", "recipe", "convert", "size") + ABOVE_CONVERT,
    "functional": ("quantizers", "nn", "recipe", "convert", "size") + ABOVE_CONVERT,
    "quantizers": ("nn", "recipe", "convert", "size") + ABOVE_CONVERT,
    "nn": ("convert", "recipe") + ABOVE_CONVERT,
    "recipe": ("nn", "convert", "size") + ABOVE_CONVERT,
    "convert": ABOVE_CONVERT,
    "size": ("convert",) + ABOVE_CONVERT,
    "train": ("cli",),
    # the deployment runtime: numpy and its own modules only (a device has no torch)
    "runtime": ("functional", "quantizers", "nn", "recipe", "convert", "size", "kernels",
                "exporter", "calibration", "fold", "slots", "models", "data") + ABOVE_CONVERT,
    "exporter": ABOVE_CONVERT,
}
# `import lowbit` / `from lowbit import x` from inside a layered package loads lowbit/__init__,
# i.e. everything: forbidden for the layered packages.


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, name: str, is_package: bool) -> list[str]:
    """Absolute dotted names of every lowbit module ``source`` imports (incl. inside functions
    and TYPE_CHECKING blocks); ``from lowbit import nn`` yields ``lowbit.nn``."""
    package = name if is_package else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append(mod)
            out += [f"{mod}.{a.name}" for a in node.names]  # `from lowbit import nn`
    return [m for m in out if m == "lowbit" or m.startswith("lowbit.")]


def layer_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def violations(name: str, imports: list[str]) -> list[str]:
    layer = layer_of(name)
    if layer not in FORBIDDEN:
        return []
    bad = []
    for imp in imports:
        target = layer_of(imp)
        if imp == "lowbit":
            bad.append(f"{name} imports the top-level package lowbit")
        elif target in FORBIDDEN[layer]:
            bad.append(f"{name} imports {imp} ({layer} must not import {target})")
    return bad


def all_modules():
    return sorted(SRC.rglob("*.py"))


def test_source_tree_found():
    names = {module_name(p) for p in all_modules()}
    assert {"lowbit.functional.ivan", "lowbit.quantizers.registry", "lowbit.nn.layers",
            "lowbit.convert", "lowbit.errors"} <= names


@pytest.mark.parametrize("path", all_modules(), ids=lambda p: module_name(p))
def test_imports_point_downward(path):
    name = module_name(path)
    imports = imported_modules(path.read_text(encoding="utf-8"), name,
                               path.name == "__init__.py")
    assert violations(name, imports) == []


def test_checker_catches_upward_imports():
    bad = [
        ("lowbit.functional.ivan", False, "from lowbit.quantizers.base import WeightQuantizer"),
        ("lowbit.functional.ivan", False, "from ..nn import layers"),
        ("lowbit.quantizers", True, "from .. import convert"),
        ("lowbit.nn.layers", False, "def f():\n    import lowbit.train.loop\n"),
        ("lowbit.convert", False, "from lowbit import cli"),
        ("lowbit.quantizers.base", False, "import lowbit"),
    ]
    for name, pkg, src in bad:
        assert violations(name, imported_modules(src, name, pkg)), src
    ok = [
        ("lowbit.functional.ivan", False,
         "from lowbit.errors import BitsError\nfrom .checks import check_bits"),
        ("lowbit.convert", False,
         "from lowbit.nn.layers import QuantLinear\nfrom lowbit.recipe import Recipe"),
        ("lowbit.train.loop", False, "from lowbit.convert import quantize"),
    ]
    for name, pkg, src in ok:
        assert violations(name, imported_modules(src, name, pkg)) == [], src


def test_relative_import_resolution():
    assert imported_modules("from ..errors import BitsError", "lowbit.functional.ivan",
                            False)[0] == "lowbit.errors"
    assert imported_modules("from .ivan import IvanWeight", "lowbit.quantizers",
                            True)[0] == "lowbit.quantizers.ivan"
