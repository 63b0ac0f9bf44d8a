"""The integer-only path of Jacob et al. 2018 ("Quantization and Training of Neural Networks
for Efficient Integer-Arithmetic-Only Inference", CVPR 2018, arXiv:1712.05877, sec. 2.2-2.4)
for ``uniform`` int8 layers: ``lowbit.runtime.load(path, integer_only="half_even")``.

A chain ``linear/conv -> [relu] -> quantize`` whose input is a per-tensor uint8/int8 affine
grid (codes with a zero point), whose weight is a symmetric int8 grid (per tensor or per
output channel, zero point 0), without an unfolded BatchNorm, and whose output quantizer is
a per-tensor affine grid of consecutive levels, is computed in integers only: the int32
accumulator ``sum (x_q - z_x) w_q + bias_q`` (``bias_q = round(bias / (s_x s_w))``), then
requantization by the multiplier ``M = s_x s_w / s_y`` to the output's codes, saturated to
its range (a ReLU before it raises the lower bound to the output zero point). The rounding
convention is the parameter of :mod:`lowbit.runtime.requant`: ``half_even`` (ONNX Runtime's
QLinearConv / QLinearMatMul and torch fbgemm bit for bit), ``single`` (TFLite), ``gemmlowp``
(Jacob's double rounding). Every other layer runs the reference path; the first quantizer and
the logits stay float. Integer-only codes differ from the float-epilogue codes where
``acc * M`` rounds differently -- benchmarks/runtime_equivalence.py counts the argmax effect.
"""

from __future__ import annotations

import numpy as np

from lowbit.runtime import ops
from lowbit.runtime.requant import Rounding, qlinear, quantize_bias


def _affine(grid) -> bool:
    """A per-tensor integer grid of consecutive integer levels (an affine uint8/int8 grid),
    monotone: requantization saturates to its range and ranks its integers in order."""
    return (grid is not None and grid.monotone and grid.ints is not None
            and grid.scale is not None and grid.scale > 0
            and len(grid.ints) > 1 and bool(np.all(np.diff(grid.ints) == 1))
            and grid.codebook.levels.max() - grid.codebook.levels.min() < 256)


def eligible(node) -> bool:
    layer = node.layer
    cb = layer.weight.codebook
    return (layer.path == "integer" and layer.bn is None and _affine(layer.grid)
            and cb.kind == "integer" and cb.scale.ndim <= 1 and np.ndim(cb.zero_point) == 0
            and cb.zero_point == 0 and cb.bits <= 8)


def find_chains(nodes) -> dict[int, tuple[int, bool]]:
    """{index of an eligible layer: (index of its output quantize node, relu between)}."""
    users: dict[str, int] = {}
    for n in nodes:
        for v in n.inputs:
            users[v] = users.get(v, 0) + 1
    chains = {}
    for i, n in enumerate(nodes):
        if n.layer is None or not eligible(n) or i + 1 >= len(nodes):
            continue
        j, relu = i + 1, False
        if nodes[j].op == "relu" and nodes[j].inputs == [n.output] and users[n.output] == 1:
            j, relu = j + 1, True
        prev = nodes[j - 1].output
        if (j < len(nodes) and nodes[j].op == "quantize" and nodes[j].inputs == [prev]
                and users[prev] == 1 and _affine(nodes[j].grid)):
            chains[i] = (j, relu)
    return chains


def run_chain(layer, x: tuple, qgrid, relu: bool, rounding: Rounding):
    """The chain on coded input ``x = (ranks, grid)``: returns ``(ranks, qgrid)``."""
    ranks, grid = x
    zx = int(grid.codebook.zero_point)
    x_q = grid.ints[ranks] + zx  # the stored codes' integers (levels)
    cb = layer.weight.codebook
    w_int = layer.parts[0].ints if layer.groups == 1 else None
    if w_int is None:
        raise ValueError("integer-only grouped convolutions are not supported")
    n = x_q.shape[0]
    if layer.kind == "conv2d":
        rows, hw = ops.im2col(x_q, layer.weight.shape[2:], layer.stride, layer.padding,
                              layer.dilation, pad_value=zx, order=layer.order)
    else:
        rows = x_q.reshape(n, -1)
    w_scale = cb.scale.astype(np.float32)
    bias_q = None if layer.bias is None else quantize_bias(layer.bias, grid.scale, w_scale)
    zy = int(qgrid.codebook.zero_point)
    lo, hi = int(qgrid.codebook.levels.min()), int(qgrid.codebook.levels.max())
    if relu:
        lo = max(lo, zy)
    y = qlinear(rows, grid.scale, zx, w_int, w_scale, 0, bias_q, qgrid.scale, zy, lo, hi,
                rounding)
    out_ranks = np.searchsorted(qgrid.ints, y - zy).astype(np.int16)
    if layer.kind == "conv2d":
        out_ranks = ops.rows_to_nchw(out_ranks, n, hw)
    return out_ranks, qgrid
