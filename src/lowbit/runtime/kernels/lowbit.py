"""Low-bit weight GEMV / GEMM with float32 activations, for memory-bound batch sizes (issue 11):
2- to 5-bit weight codes unpacked in registers, and the ``lookup`` path's exact sums.

The kernels, their layout and error bound: :mod:`lowbit.runtime.kernels.nbit_gemv`.

**Lookup path** (table codebooks, coded integer input): ``S_j = sum_k a_k [code_k = j]`` are
GEMVs of the integer activations with 0/1 mask codes for ``j >= 1``; every partial sum is an
integer below ``K' max|a| < 2^24`` (checked at build), so the float32 sums are exact and equal
the reference's int64 ones; ``S_0 = sum_k a_k - sum_{j>0} S_j``; the epilogue is the
reference's own function: accumulators and outputs are bit for bit the reference's.

**T-MAC** (Wei et al., EuroSys 2025, arXiv 2407.00088) looks up precomputed sums of groups of
4 activations per bit-plane pattern instead of converting each weight. Exact (float32) tables
need ``vpermps``/``vpermi2ps`` (8 lookups an instruction; LLVM emits no variable in-register
permute from numba code, so only as a target-specific intrinsic): a shift, a permute and an add
per 8 rows x 4 columns x 1 bit-plane, i.e. 3 operations per 8 MACs at 4 bits -- the decode's
count -- and 1.5 at 2 bits. T-MAC's speed on x86 comes from int8 tables (``pshufb``, 32 lookups
an instruction), which rounds the activations like MatMulNBits. Not implemented.
"""

from __future__ import annotations

import numba
import numpy as np

from lowbit.runtime import layers as ref
from lowbit.runtime import ops
from lowbit.runtime.kernels.nbit_gemv import (  # noqa: F401 (the raw kernel API)
    _X_LIMIT,
    CHUNK,
    SLOTS,
    _gemv,
    _per_group,
    error_bound,
    gamma,
    gemv_nbit,
    pack_nbit,
    padded_k,
)
from lowbit.runtime.records import integers

# where the packed kernels pay (measured at 1 thread vs numpy's BLAS on a Zen 4, ratios
# BLAS time / packed time at M = 1, 4, 8, 16, 32: 1024^2 0.7 1.5 1.0 0.9 0.7; 2048^2 2.0 2.1
# 1.6 1.0 0.9; 4096^2 2.4 2.8 2.3 1.2 0.8): a smaller float32 matrix is read from cache, and
# more rows make the product compute-bound, where BLAS's fp32 FMA loop is the faster one
MAX_ROWS = 16                   # input rows per call at most, else the reference's product
MIN_WEIGHTS = 2**21             # weights at least (8 MiB as float32), else None from build
_F32_EXACT = 2**24


# -- the runtime's layers ----------------------------------------------------------------------
def _pow2_gcd(d: np.ndarray) -> int:
    """The largest power of two dividing every entry of ``d`` (1 if none is nonzero)."""
    g = int(np.gcd.reduce(d.reshape(-1))) if d.size else 0
    return g & -g if g else 1


class _Packed:
    """One convolution group's weight rows, packed: codes of ``bits`` bits with per-row (or
    per-group) scales and zero points."""

    def __init__(self, q: np.ndarray, scale: np.ndarray, group_size: int | None) -> None:
        n, k = q.shape
        self.k, self.group_size = k, group_size
        gs = group_size or k
        groups = -(-k // gs)
        lo = np.minimum.reduceat(q, np.arange(0, k, gs), axis=1)    # (N, G)
        d = q - np.repeat(lo, gs, axis=1)[:, :k]
        step = _pow2_gcd(d)                  # e.g. odd levels -7, -5, .., 7: step 2
        span = int(d.max(initial=0)) // step
        self.bits = next((b for b in sorted(SLOTS) if span < 1 << b and (
            group_size is None or group_size % CHUNK[b] == 0)), None)
        if self.bits is None:
            return
        self.codes = d // step
        self.zero = -lo / step                # q = step (c - zero), w = s q, both exact
        self.words = pack_nbit(self.codes, self.bits, group_size)
        self.scale = _per_group(scale, n, groups) * np.float32(step)
        self.off = -_per_group(self.zero, n, groups)
        self.gs = group_size or padded_k(k, self.bits)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return _gemv(rows, self.words, self.scale, self.off, self.bits, self.k, self.gs,
                     bool(self.off.any()))


def _float_parts(layer) -> list[_Packed] | None:
    cb = layer.weight.codebook
    if cb is None or cb.kind != "integer" or cb.bits > 4 or layer.weight.codes is None:
        return None
    q = integers(cb, layer.weight.codes)
    c, g = layer.weight.shape[0], layer.groups
    parts = []
    for i in range(g):
        rows = slice(i * c // g, (i + 1) * c // g)
        scale = cb.scale if cb.scale.ndim == 0 else cb.scale[rows]
        p = _Packed(ops.weight_columns(q[rows], layer.order), scale,
                    cb.group_size if cb.scale.ndim == 2 else None)
        if p.bits is None:
            return None
        parts.append(p)
    return parts


def _lookup_parts(layer) -> list[list[_Packed]] | None:
    """Per group: the 0/1 masks of table entries 1..J-1 as 2-bit codes (entry 0 is the rest)."""
    cb, grid = layer.weight.codebook, layer.grid
    c, g = layer.weight.shape[0], layer.groups
    k = int(np.prod(layer.weight.shape[1:]))
    if cb.num_codes < 2 or padded_k(k, 2) * max(grid.int_bound, 1) >= _F32_EXACT:
        return None  # the float32 sums would not be exact
    parts = []
    for i in range(g):
        codes = ops.weight_columns(layer.weight.codes[i * c // g:(i + 1) * c // g], layer.order)
        parts.append([_Packed((codes == j).astype(np.int64), np.float32(1), None)
                      for j in range(1, cb.num_codes)])
    return parts


def _fits(rows: np.ndarray) -> bool:
    return rows.shape[0] <= MAX_ROWS and float(np.abs(rows).max(initial=0.0)) * (
        rows.shape[1] + 256) < _X_LIMIT


def _run(layer, x, trace, parts, kernel: str):
    """Layer.__call__ with the packed kernels in place of the path's products."""
    n = x[0].shape[0] if isinstance(x, tuple) else x.shape[0]
    cin = layer.weight.shape[1] * (layer.groups if layer.kind == "conv2d" else 1)
    ys, accs = [], []
    for i, part in enumerate(layer.parts):
        rows, hw, pad = layer._rows(x, i, cin // layer.groups)
        rows = rows.astype(np.float32, copy=False)
        if not _fits(rows):  # compute-bound (or huge values): the reference's product
            y, acc = ref._RUN[layer.path](layer, part, rows, pad, n)
        elif layer.path == "float":
            y, acc = parts[i](rows), None
        else:
            acc = _lookup_sums(rows, parts[i])
            values = layer.weight.codebook.values
            values = values if values.ndim == 1 else values[ref._part_slice(layer, part)]
            y = ref._plane_sum(values, acc, layer.grid.scale)
        ys.append(y)
        accs.append(acc)
    y = np.concatenate(ys, axis=1) if len(ys) > 1 else ys[0]
    if trace is not None:
        trace[layer.name] = {"path": layer.path, "kernel": kernel, "acc": accs}
    y = layer._epilogue(y)
    return ops.rows_to_nchw(y, n, hw) if layer.kind == "conv2d" else y


def _lookup_sums(rows: np.ndarray, masks: list[_Packed]) -> list[np.ndarray]:
    """``S_j = sum_k a_k [code_k = j]`` (int64, exact: module doc); ``S_0`` by difference."""
    sums = [m(rows).astype(np.int64) for m in masks]
    total = rows.astype(np.int64).sum(axis=1, keepdims=True)
    return [total - sum(sums)] + sums


def build(layer):
    """A fast ``run(layer, x, trace)`` for a float-path layer with integer weights of at most
    4 bits, or a lookup-path layer, of at least ``MIN_WEIGHTS`` weights (a smaller weight
    matrix is read from cache and BLAS is faster); None for any other."""
    if int(np.prod(layer.weight.shape)) < MIN_WEIGHTS:
        return None
    if layer.path == "float":
        parts, kernel = _float_parts(layer), "lowbit-gemv"
        if parts is not None:
            kernel += f"-w{parts[0].bits}"
    elif layer.path == "lookup":
        parts, kernel = _lookup_parts(layer), "lowbit-lookup"
    else:
        return None
    if parts is None:
        return None

    def run(layer, x, trace=None):
        return _run(layer, x, trace, parts, kernel)

    run.kernel = kernel
    return run


# -- benchmark cases ---------------------------------------------------------------------------
def _ort_matmulnbits(m: int, n: int, k: int, rng, accuracy_level: int):
    """ONNX Runtime's com.microsoft MatMulNBits (4 bits, blocks of 32, zero point 8) on random
    packed weights, at numba's thread count; None without onnxruntime."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    block = 32
    kb = -(-k // block)
    blob = rng.integers(0, 256, (n, kb, block // 2), dtype=np.uint8)
    scales = (rng.random(n * kb, dtype=np.float32) + 0.5) * np.float32(0.01)
    node = helper.make_node("MatMulNBits", ["A", "B", "scales"], ["Y"], domain="com.microsoft",
                            K=k, N=n, bits=4, block_size=block, accuracy_level=accuracy_level)
    graph = helper.make_graph(
        [node], "matmulnbits", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])],
        initializer=[numpy_helper.from_array(blob, "B"), numpy_helper.from_array(scales,
                                                                                 "scales")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)])
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = numba.get_num_threads(), 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        sess = ort.InferenceSession(model.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
    except Exception:  # an ORT build without the contrib op
        return None
    x = {"A": rng.standard_normal((m, k), dtype=np.float32)}
    return lambda: sess.run(None, x)


def bench_cases(M: int, N: int, K: int, rng) -> dict:
    """name -> (callable running the kernel once on pre-packed random operands, MACs):
    ``gemv_w{4,3,2}_f32`` (per-row scale and zero point), ``gemv_w4g64_f32`` (groups of 64),
    ``ort_matmulnbits_w4`` (ORT's default fused kernel, accuracy level 4: int8 activations,
    not exact) and ``ort_matmulnbits_w4_fp32`` (accuracy level 0: float32)."""
    x = rng.standard_normal((M, K), dtype=np.float32)
    cases = {}
    for bits, gs in ((4, None), (3, None), (2, None), (4, 64)):
        codes = rng.integers(0, 2**bits, (N, K))
        groups = 1 if gs is None else -(-K // gs)
        words = pack_nbit(codes, bits, gs)
        scale = rng.random((N, groups), dtype=np.float32) + np.float32(0.5)
        zero = np.full((N, groups), 2 ** (bits - 1))
        name = f"gemv_w{bits}" + (f"g{gs}" if gs else "") + "_f32"
        cases[name] = ((lambda w=words, s=scale, z=zero, b=bits, g=gs:
                        gemv_nbit(x, w, s, z, b, K, g)), M * N * K)
    for name, level in (("ort_matmulnbits_w4", 4), ("ort_matmulnbits_w4_fp32", 0)):
        fn = _ort_matmulnbits(M, N, K, rng, level)
        if fn is not None:
            cases[name] = (fn, M * N * K)
    return cases
