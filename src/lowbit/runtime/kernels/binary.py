"""Fast kernels for the binary paths of :mod:`lowbit.runtime.layers` (``xnor``, ``binary01``,
``ternary``; ABC-Net's ``bitplanes`` and ``bitplanes2`` in :mod:`.binary_planes`): the
layer's coded input packed to bits in numba, a register-tiled XOR/AND-popcount GEMM
(:mod:`.binary_gemm`) or direct binary convolution (:mod:`.binary_conv`), and the float
epilogue fused into the same pass.

Accumulators, as the reference computes them (``layers._run_bits``), from popcounts ``c``:
- xnor (±1 x ±1, XNOR-Net / BNN): ``acc = K - 2 popcount(a XOR w)``;
- binary01 ({0,1} x ±1): ``acc = 2 popcount(a AND w+) - popcount(a)``;
- ternary (w = p - n): ``d = popcount(a AND p) - popcount(a AND n)``; ``acc = d`` for {0,1}
  activations, ``2 d - sum(w)`` for ±1 ones (a = 2b - 1);
plus, on a padded convolution's ±1 paths, the pad correction (:mod:`.binary_conv`). Every
accumulator equals the reference's exactly, and so does the output: ``acc * (s_a * s_w)`` in
float64 rounded to float32, ``+ bias`` and BatchNorm's ``x * a + b`` in float32, no FMA.
The contract: :mod:`lowbit.runtime.fast`. Tests: tests/runtime/kernels/test_binary.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lowbit.runtime import ops
from lowbit.runtime.kernels import binary_conv as bc
from lowbit.runtime.kernels import binary_gemm as bg
from lowbit.runtime.kernels.binary_gemm import (
    and_gemm,
    block_words,
    pack_signs,
    ternary_gemm,
    xnor_gemm,
)
from lowbit.runtime.kernels.binary_planes import build_planes
from lowbit.runtime.layers import _is_subset, pack_rows
from lowbit.runtime.records import integers

__all__ = ["and_gemm", "bench_cases", "block_words", "build", "pack_signs", "ternary_gemm",
           "xnor_gemm"]

PATHS = ("xnor", "binary01", "ternary")
_BITS = np.array([0, 1], np.uint8)  # table of a uint8 view of a boolean array
_NO_ACC = np.zeros((0, 0), np.int64)
_NO_CORR = np.zeros((1, 1), np.int64)


@dataclass(eq=False)
class _Group:
    """One convolution group's (or the linear layer's) packed weights and epilogue."""

    pos: np.ndarray                 # bits of w > 0 (linear: blocked; conv: rows)
    neg: np.ndarray                 # bits of w < 0 (ternary; else ``pos`` again)
    ints: np.ndarray                # integer weights (conv: (Cout_g, C_g, kh, kw))
    ep: tuple                       # (alpha, gamma, has_bias, has_bn[, has_corr])
    cols: tuple                     # (beta, scale, bias, bn_a, bn_b) per output channel
    corr: dict = field(default_factory=dict)  # input (H, W) -> pad correction table


def _mode(layer, ints2d: np.ndarray) -> tuple[str, int, np.ndarray, int, bool]:
    """(kernel op, alpha, beta per channel, gamma, pad correction?) of the layer's path:
    ``acc = alpha * count + beta + gamma * popcount(a) (+ corr)``."""
    c, k = ints2d.shape
    zeros = np.zeros(c, np.int64)
    if layer.path == "xnor":
        return "xor", -2, np.full(c, k, np.int64), 0, True
    if layer.path == "binary01":
        return "and", 2, zeros, -1, False
    if _is_subset(layer.grid.ints, (-1, 1)):  # ternary, a = 2b - 1
        return "and2", 2, -ints2d.sum(axis=1).astype(np.int64), 0, True
    return "and2", 1, zeros, 0, False


def _group(layer, ints: np.ndarray, sl: slice, blocked: bool) -> tuple[_Group, str]:
    rows = ops.weight_columns(ints, "hwc")  # (Cout_g, K): hwc bit order for convolutions
    op, alpha, beta, gamma, corr = _mode(layer, rows)
    n = rows.shape[0]
    pos, neg = pack_rows(rows > 0), pack_rows(rows < 0) if op == "and2" else None
    if blocked:
        pos, neg = block_words(pos), None if neg is None else block_words(neg)
    neg = pos if neg is None else neg
    cb = layer.weight.codebook
    sw = cb.scale.astype(np.float64)
    scale = layer.grid.scale * (sw if sw.ndim == 0 else sw[sl])
    bias = 0.0 if layer.bias is None else layer.bias[sl]
    bn_a, bn_b = (0.0, 0.0) if layer.bn is None else (a[sl] for a in layer.bn["affine"])
    cols = (bg.padded(beta, n, np.int64), bg.padded(scale, n, np.float64),
            bg.padded(bias, n, np.float32), bg.padded(bn_a, n, np.float32),
            bg.padded(bn_b, n, np.float32))
    ep = (np.int64(alpha), np.int64(gamma), layer.bias is not None, layer.bn is not None)
    if not blocked:
        ep = (*ep, corr and any(layer.padding))
    return _Group(pos, neg, ints, ep, cols), op


def _serves(layer) -> bool:
    cb = layer.weight.codebook
    return (layer.path in PATHS and cb is not None and cb.kind == "integer"
            and cb.scale.ndim <= 1 and layer.grid is not None and layer.grid.scale is not None
            and (layer.bias is None or layer.bias.dtype == np.float32))


def build(layer):
    """``run(layer, x, trace)`` for a layer on a binary path, else None."""
    if layer.path in ("bitplanes", "bitplanes2"):
        return build_planes(layer)
    if not _serves(layer):
        return None
    ints = integers(layer.weight.codebook, layer.weight.codes)
    c, g = layer.weight.shape[0], layer.groups
    groups, op = [], None
    for i in range(g if layer.kind == "conv2d" else 1):
        sl = slice(i * c // g, (i + 1) * c // g)
        grp, op = _group(layer, ints[sl], sl, blocked=layer.kind == "linear")
        groups.append(grp)
    if layer.kind == "linear":
        run = _linear_runner(groups[0], {"xor": bg.layer_xor, "and": bg.layer_and,
                                         "and2": bg.layer_and2}[op], op == "and2")
    else:
        run = _conv_runner(groups, {"xor": bc.conv_xor, "and": bc.conv_and,
                                    "and2": bc.conv_and2}[op])
    run.kernel = f"numba-{layer.path}-{'gemm' if layer.kind == 'linear' else 'conv'}"
    return run


def _table(grid) -> np.ndarray:
    """uint8 per rank: 1 where the grid's integer is > 0 (the reference's ``rows > 0``)."""
    return (grid.ints > 0).astype(np.uint8)


def _record(layer, trace, run, accs) -> None:
    if trace is not None:
        trace[layer.name] = {"path": layer.path, "kernel": run.kernel, "acc": accs}


def _linear_runner(g: _Group, kernel, dual: bool):
    def run(layer, x, trace=None):
        if isinstance(x, tuple):
            ranks, grid = x
            a = bg.pack_ranks(ranks.reshape(ranks.shape[0], -1), _table(grid))
        else:
            a = pack_signs(x.reshape(x.shape[0], -1))
        if a.shape[1] != g.pos.shape[1]:
            raise ValueError(f"{layer.name}: input of {a.shape[1]} words, weight rows of "
                             f"{g.pos.shape[1]}")
        n, cout = a.shape[0], layer.weight.shape[0]
        y = np.empty((n, cout), np.float32)
        acc = np.empty((n, cout), np.int64) if trace is not None else _NO_ACC
        mb, nbb = bg.work_split(n, g.pos.shape[0], a.shape[1])
        planes = (g.pos, g.neg) if dual else (g.pos,)
        kernel(a, *planes, cout, mb, nbb, y, acc, trace is not None, g.ep, *g.cols, bg.NO_RAW)
        _record(layer, trace, run, [acc])
        return y

    return run


def _conv_runner(groups: list[_Group], kernel):
    def run(layer, x, trace=None):
        if isinstance(x, tuple):
            ranks, grid = x
            img = bc.pack_nchw(ranks, _table(grid), layer.groups, layer.padding)
        else:
            img = bc.pack_nchw((x > 0).view(np.uint8), _BITS, layer.groups, layer.padding)
        n, hw_in = img.shape[1], x[0].shape[2:] if isinstance(x, tuple) else x.shape[2:]
        geo = (layer.stride, layer.padding, layer.dilation)
        oh, ow = ops.out_hw(hw_in, layer.weight.shape[2:], *geo)
        cout = layer.weight.shape[0]
        y = np.empty((n, cout, oh, ow), np.float32)
        accs = []
        for i, g in enumerate(groups):
            yb, pa = bc.gather(img[i], layer, (oh, ow))
            corr = _NO_CORR
            if g.ep[4]:
                if hw_in not in g.corr:
                    g.corr[hw_in] = bc.pad_corr(layer, g.ints, hw_in)
                corr = g.corr[hw_in]
            cg = g.pos.shape[0]
            acc = np.empty((n * oh * ow, cg), np.int64) if trace is not None else _NO_ACC
            kernel(g.pos, g.neg, yb, yb.shape[0] // n, oh * ow, y.reshape(n, cout, oh * ow),
                   i * cg, acc, trace is not None, g.ep, *g.cols, pa, corr)
            accs.append(acc)
        _record(layer, trace, run, accs)
        return y

    return run


def bench_cases(m: int, n: int, k: int, rng) -> dict:
    """name -> (zero-argument call of the kernel on pre-packed random operands of the GEMM
    (M, N, K), its MACs): ``lowbit bench --kernels``."""
    words = -(-k // 64)
    mask = np.full(words, np.uint64(2**64 - 1), np.uint64)
    if k % 64:
        mask[-1] = np.uint64((1 << (k % 64)) - 1)

    def bits(rows):
        return rng.integers(0, 2**64, (rows, words), dtype=np.uint64, endpoint=False) & mask

    a, w, w2 = bits(m), bits(n), bits(n)
    wb, pb, nb = (block_words(w), n), (block_words(w & ~w2), n), (block_words(w2 & ~w), n)
    out = np.empty((m, n), np.int32)
    macs = float(m) * n * k
    return {"xnor_gemm": (lambda: xnor_gemm(a, wb, k, out), macs),
            "and_gemm": (lambda: and_gemm(a, wb, out), macs),
            "ternary_gemm": (lambda: ternary_gemm(a, pb, nb, out), macs)}
