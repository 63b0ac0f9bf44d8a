"""The fast runtime: the reference model with numba kernels in place of its weight layers'
numpy paths (``lowbit.runtime.load(path, fast=True)``).

Contract of a kernel module (``lowbit.runtime.kernels.<name>``): ``build(layer)`` returns
``None`` when it does not serve the layer, else a callable ``run(layer, x, trace)`` with the
signature and result of :meth:`lowbit.runtime.layers.Layer.__call__`: the same float32 output
and, when ``trace`` is a dict, ``trace[layer.name] = {"path": ..., "kernel": ..., "acc": [...]}``
with the accumulators in the reference's layout (one int64 array (rows, Cout_g) per group), so
that tests compare them exactly. Weights are re-packed once, in ``build``.

The first module that serves a layer takes it; a layer none serves keeps its reference path.
"""

from __future__ import annotations

import importlib

#: kernel modules, tried in order
KERNELS = ("binary", "integer", "lowbit")


def _modules():
    for name in KERNELS:
        try:
            yield importlib.import_module(f"lowbit.runtime.kernels.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"lowbit.runtime.kernels.{name}":
                raise


def accelerate(model):
    """Give each weight layer of ``model`` the first fast kernel that serves it, each
    activation quantizer the numba rank (:mod:`lowbit.runtime.kernels.rank`) and each
    residual add the coded add (:mod:`lowbit.runtime.kernels.nodes`); returns
    ``model``. ``kernels(model)`` tells which each layer got."""
    from lowbit.runtime.kernels import nodes
    from lowbit.runtime.kernels.rank import ranker

    for node in model.nodes:
        if node.op == "quantize":  # an instance attribute in place of Grid.rank
            node.grid.rank = ranker(node.grid.thresholds)
        elif node.op == "add":
            node.fast = nodes.add
    mods = list(_modules())
    for layer in model.layers:
        layer.fast = None
        for mod in mods:
            run = mod.build(layer)
            if run is not None:
                layer.fast = run
                break
    return model


def kernels(model) -> dict[str, str]:
    """Layer name -> the kernel that runs it ("reference" where none does)."""
    return {ly.name: getattr(ly.fast, "kernel", "reference") if ly.fast else "reference"
            for ly in model.layers}
