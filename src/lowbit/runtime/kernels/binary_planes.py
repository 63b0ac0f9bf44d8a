"""ABC-Net's bit-plane paths (Lin et al. 2017, "Towards Accurate Binary Convolutional Neural
Network", NeurIPS, arXiv:1711.11294, eq. 3 and sec. 3.2) on the binary kernels:

- ``bitplanes``: weights ``sum_m alpha_m B_m`` (±1 planes) x integer activations ``a``. Each
  plane's accumulator ``sum_k a_k B_mk`` is computed bit-serially: with ``a`` in two's
  complement over ``nb`` bits (``u_i`` its bit planes; a pad is 0, all bits 0),
  ``sum_k a_k B_mk = sum_i w_i (2 popcount(u_i AND B_m+) - popcount(u_i))`` with
  ``w_i = 2^i`` (``-2^(nb-1)`` for the sign bit): ``nb * M`` binary01 GEMMs.
- ``bitplanes2``: activations ``sum_n beta_n A_n`` too: ``N * M`` XNOR GEMMs
  ``K - 2 popcount(A_n XOR B_m)``, with the pad correction on a padded convolution.

The accumulators equal the reference's exactly; the float plane sums are then the reference's
own (:func:`lowbit.runtime.layers._plane_sum`, same operations in the same order), so the
outputs are equal bit for bit. A float (not coded) input takes the reference path.
"""

from __future__ import annotations

import numpy as np

from lowbit.runtime import ops
from lowbit.runtime.kernels import binary_conv as bc
from lowbit.runtime.kernels import binary_gemm as bg
from lowbit.runtime.layers import _alphas, _plane_sum, pack_rows

_NO_CORR = np.zeros((1, 1), np.int64)


def _serial_bits(ints: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """[(weight w_i, uint8 table of bit i per rank)] of the two's complement of ``ints``."""
    lo, hi = int(ints.min()), int(ints.max())
    nb = max(1, hi.bit_length()) if lo >= 0 else max(hi.bit_length(), (-lo - 1).bit_length()) + 1
    out = []
    for i in range(nb):
        w = -(1 << i) if lo < 0 and i == nb - 1 else 1 << i
        out.append((w, ((ints >> i) & 1).astype(np.uint8)))
    return out


class _Plane:
    """One weight plane of one group: its packed bits, its ±1 integers and its epilogue."""

    def __init__(self, signs: np.ndarray, op: str, blocked: bool) -> None:
        rows = ops.weight_columns(signs, "hwc")
        n, k = rows.shape
        self.ints = signs
        self.pos = pack_rows(rows > 0)
        if blocked:
            self.pos = bg.block_words(self.pos)
        alpha, beta, gamma = (-2, k, 0) if op == "xor" else (2, 0, -1)
        self.ep = (np.int64(alpha), np.int64(gamma), False, False)
        self.cols = (bg.padded(beta, n, np.int64), bg.padded(1.0, n, np.float64),
                     *(bg.padded(0.0, n, np.float32) for _ in range(3)))
        self.corr: dict = {}


def build_planes(layer):
    """``run(layer, x, trace)`` for the bitplanes / bitplanes2 paths, else None."""
    if layer.path not in ("bitplanes", "bitplanes2") or layer.weight.codebook.kind != \
            "bitplanes" or (layer.bias is not None and layer.bias.dtype != np.float32):
        return None
    op = "and" if layer.path == "bitplanes" else "xor"
    codes, g, c = layer.weight.codes, layer.groups, layer.weight.shape[0]
    linear = layer.kind == "linear"
    groups = []
    for i in range(1 if linear else g):
        sl = slice(i * c // g, (i + 1) * c // g)
        groups.append([_Plane(((codes[sl] >> m) & 1) * 2 - 1, op, linear)
                       for m in range(layer.weight.codebook.bits)])
    kernel = {("and", True): bg.layer_and, ("xor", True): bg.layer_xor,
              ("and", False): bc.conv_and, ("xor", False): bc.conv_xor}[op, linear]

    def run(layer, x, trace=None):
        if not isinstance(x, tuple):  # float values: the reference computes with them
            fast, layer.fast = layer.fast, None
            try:
                return layer(x, trace)
            finally:
                layer.fast = fast
        ranks, grid = x
        if layer.path == "bitplanes":
            tables = _serial_bits(grid.ints)
        else:
            tables = [(1, ((grid.codes >> n) & 1).astype(np.uint8))
                      for n in range(grid.codebook.bits)]
        accs = _accumulators(layer, groups, kernel, ranks, tables, linear)
        ys = []
        for i, per_table in enumerate(accs):
            al = _alphas(layer, layer.parts[i])
            if layer.path == "bitplanes":  # acc_m = sum_i w_i c_im
                planes = [sum(w * c[m] for (w, _), c in zip(tables, per_table, strict=True))
                          for m in range(len(groups[i]))]
                accs[i] = planes
                ys.append(_plane_sum(al, planes, layer.grid.scale))
            else:
                beta = layer.grid.codebook.alphas.astype(np.float64)
                y = 0.0
                for n, acc_n in enumerate(per_table):
                    y = y + beta[n] * _plane_sum(al.astype(np.float64), acc_n, 1.0, np.float64)
                ys.append(np.asarray(y, np.float32))
        if trace is not None:
            trace[layer.name] = {"path": layer.path, "kernel": run.kernel, "acc": accs}
        y = layer._epilogue(np.concatenate(ys, axis=1) if len(ys) > 1 else ys[0])
        if linear:
            return y
        n = ranks.shape[0]
        return ops.rows_to_nchw(y, n, ops.out_hw(ranks.shape[2:], layer.weight.shape[2:],
                                                 layer.stride, layer.padding, layer.dilation))

    run.kernel = f"numba-{layer.path}-{'gemm' if linear else 'conv'}"
    return run


def _accumulators(layer, groups, kernel, ranks, tables, linear: bool) -> list:
    """[group][table][plane] int64 accumulators (rows, Cout_g) of the packed input bits of
    each table against each weight plane."""
    n = ranks.shape[0]
    out = []
    if linear:
        flat = ranks.reshape(n, -1)
        per_table = []
        for _, table in tables:
            a = bg.pack_ranks(flat, table)
            per_table.append([_run_linear(kernel, a, p) for p in groups[0]])
        return [per_table]
    geo = (layer.stride, layer.padding, layer.dilation)
    hw_in = ranks.shape[2:]
    oh, ow = ops.out_hw(hw_in, layer.weight.shape[2:], *geo)
    imgs = [bc.pack_nchw(ranks, table, layer.groups, layer.padding) for _, table in tables]
    for i, planes in enumerate(groups):
        per_table = []
        for img in imgs:
            yb, pa = bc.gather(img[i], layer, (oh, ow))
            per_table.append([_run_conv(layer, kernel, yb, pa, p, n, (oh, ow), hw_in)
                              for p in planes])
        out.append(per_table)
    return out


def _run_linear(kernel, a, p: _Plane) -> np.ndarray:
    n, cout = a.shape[0], p.ints.shape[0]
    y = np.empty((n, cout), np.float32)
    acc = np.empty((n, cout), np.int64)
    mb, nbb = bg.work_split(n, p.pos.shape[0], a.shape[1])
    kernel(a, p.pos, cout, mb, nbb, y, acc, True, p.ep, *p.cols, bg.NO_RAW)
    return acc


def _run_conv(layer, kernel, yb, pa, p: _Plane, n: int, hw, hw_in) -> np.ndarray:
    cout, ohw = p.ints.shape[0], hw[0] * hw[1]
    corr = _NO_CORR
    has_corr = kernel is bc.conv_xor and any(layer.padding)
    if has_corr:
        if hw_in not in p.corr:
            p.corr[hw_in] = bc.pad_corr(layer, p.ints, hw_in)
        corr = p.corr[hw_in]
    y = np.empty((n, cout, ohw), np.float32)
    acc = np.empty((n * ohw, cout), np.int64)
    kernel(p.pos, p.pos, yb, yb.shape[0] // n, ohw, y, 0, acc, True, (*p.ep, has_corr),
           *p.cols, pa, corr)
    return acc
