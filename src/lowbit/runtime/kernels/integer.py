"""Fast kernels for the ``integer`` path (:mod:`lowbit.runtime.layers`, ``_run_integer``):
integer activation codes x integer weight codes -> exact int32 accumulators, then the float
epilogue of the reference fused into one pass over the output.

Two GEMM micro-kernels (:mod:`~lowbit.runtime.kernels.int_gemm`; the passes around them in
:mod:`~lowbit.runtime.kernels.int_epilogue`), LLVM vector intrinsics inside numba
(``@intrinsic``; numba's loop vectoriser alone turns ``u8 * s8`` dot products into
``vpmaddwd`` on 16-bit widened operands, never ``vpdpbusd`` or ``vpmaddubsw``, and reached
0.25-0.45x torch fp32):

- ``u8s8``: activations as uint8 (``a - z``, ``z = min(0, min a)``; the shift is undone by
  ``z * sum_k w[n, k]``, exact), weights int8, in groups of 4 along K: AVX-512 VNNI / AVX-VNNI
  ``vpdpbusd`` (4 products into an int32, never saturates) where the CPU has it (the default
  there, ``LOWBIT_VNNI=0`` opts out; 1.94-2.20x the AVX2 kernels at 8 bits, 1.07-1.36x at
  2-4 bits on Sapphire Rapids: benchmarks/int8_vnni.py), else AVX2
  ``vpmaddubsw`` (pairs into int16, *saturating*) + ``vpmaddwd`` by ones into int32. The AVX2
  form is used only when ``4 max|a| max|w| <= 32767``: no pair can saturate, and the int16 pair
  sums of ``chunk = 32767 // (2 max|a| max|w|) >= 2`` steps are added in int16 (exact: every
  partial sum stays below 2^15) before one ``vpmaddwd``: 2 instructions per 32 MACs. (At
  chunk 1 it ran at 57 GMAC/s against s16's 72; at chunk 136 -- 4-bit codes -- at 142.)
- ``s16``: activations and weights as int16, in pairs along K: ``vpdpwssd`` (VNNI) or
  ``vpmaddwd`` + ``vpaddd`` (AVX2), exact for every int16 pair; the kernel of 8-bit x 8-bit
  layers on CPUs without VNNI (where ``u8s8`` could saturate) and of signed grids wider than
  8 bits.

A tile is 4 rows x 16 output channels (8 ymm int32 accumulators); weights are packed once, at
build, as panels of 16 channels x K in 4-byte groups (the layout the instruction multiplies).
Rows are addressed through a table of byte offsets per row and per K group, so a convolution
reads its windows straight from a padded NHWC uint8 copy of the input (no im2col); a linear
layer's rows are one uint8 matrix. Accumulators are int32: ``build`` refuses a layer whose
``K max|a| max|w|`` reaches 2^31 (it keeps the reference path).

Exactness: integer instructions only; the epilogue computes ``acc * (s_a * s_w)`` in float64,
rounds to float32, adds the bias and applies BatchNorm's ``x * a + b`` in float32 -- the
reference's operations in its order (no fast-math: no contraction into FMA), so outputs are
bit for bit the reference's (tests/runtime/kernels/test_integer.py).
"""

from __future__ import annotations

import numba
import numpy as np

from lowbit.runtime import ops
from lowbit.runtime.kernels.int_epilogue import (
    _epilogue,
    _epilogue_groups,
    _epilogue_rows,
    _nhwc,
    _rows,
)
from lowbit.runtime.kernels.int_gemm import (
    GEMM,
    HAS_VNNI,
    I16_MAX,
    ISA,
    MR,
    NR,
    VNNI,
    gemms,
    pack_weights,
    rows_tables,
)

#: layers of fewer MACs run on the calling thread: a parallel region costs ~10 us on a quiet
#: 2-vCPU machine and a scheduler slice (4-8 ms) when the other vCPU is busy
SERIAL_MACS = 4_000_000

# -- build ----------------------------------------------------------------------------------
def choose_kind(a_lo: int, a_hi: int, w_lo: int, w_hi: int, k: int,
                vnni: bool | None = None):
    """(kind, shift z, int16 chunk) for activation integers in [a_lo, a_hi] (0 included: a
    convolution's pad), weight integers in [w_lo, w_hi] and K = ``k``, for the VNNI kernels or
    the AVX2 ones (``vnni``; None: this process's :data:`VNNI`); None when no kernel is exact
    (module doc)."""
    vnni = VNNI if vnni is None else vnni
    a_lo, a_hi = min(a_lo, 0), max(a_hi, 0)
    span, w_max = max(a_hi - a_lo, 1), max(-w_lo, w_hi, 1)
    if span <= 255 and -128 <= w_lo and w_hi <= 127 and k * span * w_max < 2**31:
        if vnni:
            return "u8s8", a_lo, 0
        chunk = I16_MAX // (2 * span * w_max)  # AVX2: int16 pair sums must not saturate
        if chunk >= 2:  # flushing every step is slower than s16 (57 vs 72 GMAC/s)
            return "u8s8", a_lo, chunk
    a_max = max(-a_lo, a_hi)
    if a_max <= I16_MAX and w_max <= I16_MAX and k * a_max * w_max < 2**31:
        return "s16", 0, 0
    return None


class _Plan:
    """A layer's packed weights, activation tables and epilogue constants."""

    def __init__(self, layer, kind: str, z: int, chunk: int) -> None:
        cb, grid = layer.weight.codebook, layer.grid
        self.kind, self.z, self.chunk = kind, z, chunk
        self.e, self.dtype = (4, np.uint8) if kind == "u8s8" else (2, np.int16)
        lut = np.append(grid.ints, 0) - z  # the last entry: integer 0, a convolution's pad
        self.lut = lut.astype(self.dtype)
        consecutive = np.array_equal(lut[:-1], lut[0] + np.arange(len(lut) - 1))
        self.off = int(lut[0]) if consecutive else None  # code = rank + off
        self.grouped = cb.scale.ndim == 2
        self.gather = layer.kind == "conv2d" and not self.grouped
        self.cout = layer.weight.shape[0]
        ints = [p.ints for p in layer.parts]  # (Cout_g, K) per conv group, layer.order
        if self.gather:
            cg, kh, kw = layer.weight.shape[1:]
            self.cgp = -(-cg // self.e) * self.e
            ints = [np.pad(w.reshape(w.shape[0], kh, kw, cg),
                           ((0, 0), (0, 0), (0, 0), (0, self.cgp - cg))).reshape(w.shape[0], -1)
                    for w in ints]
        self.k = ints[0].shape[1]
        if self.grouped:
            gs = cb.group_size
            self.gsp = -(-gs // self.e) * self.e
            ng = -(-self.k // gs)
            self.colmap = (np.arange(self.k) // gs) * self.gsp + np.arange(self.k) % gs
            w = np.zeros((self.cout, ng * self.gsp), np.int64)
            w[:, self.colmap] = ints[0]
            self.packed = [pack_weights(w, kind)]
            self.ranges = [(q * self.gsp // self.e, (q + 1) * self.gsp // self.e)
                           for q in range(ng)]
            self.corr = z * w.reshape(self.cout, ng, self.gsp).sum(-1).T.copy()  # (G, Cout)
            self.corr_f = self.corr.astype(np.float64)
            self.sw = cb.scale.astype(np.float64)
        else:
            self.packed = [pack_weights(w, kind) for w in ints]
            self.corr = z * np.concatenate([w.sum(1) for w in ints])
            self.corr_f = self.corr.astype(np.float64)
            sw = cb.scale.astype(np.float64)
            self.mult = np.ascontiguousarray(np.broadcast_to(grid.scale * sw, (self.cout,)))
        self.kpad = self.packed[0].shape[1] * self.e
        zf = np.zeros(self.cout, np.float32)
        self.bias = zf if layer.bias is None else layer.bias.astype(np.float32)
        bn = layer.bn["affine"] if layer.bn is not None else (zf, zf)
        self.bn_a, self.bn_b = (np.ascontiguousarray(v, np.float32) for v in bn)
        self.flags = np.array([layer.bias is not None, layer.bn is not None])
        self._tables: dict = {}

    # -- the input, as the kernel reads it ----------------------------------------------------
    def rows_input(self, layer, ranks):
        """(buffer, rbase, [koff]) from explicit rows (linear; per-group scales' im2col)."""
        if layer.kind == "conv2d":
            k, geo = layer.weight.shape[2:], (layer.stride, layer.padding, layer.dilation)
            pad = len(self.lut) - 1
            src = ranks if pad < 2**15 else ranks.astype(np.int32)
            rows = ops.im2col(src, k, *geo, pad_value=pad, order="chw")[0]
        else:
            rows = ranks.reshape(ranks.shape[0], -1)
        r = rows.shape[0]
        buf = np.empty((r, self.kpad), self.dtype)
        _rows(np.ascontiguousarray(rows), self.lut, None if self.grouped else self.off,
              self.colmap if self.grouped else None, buf)
        rbase, koff = self._table(("rows", r), lambda: rows_tables(r, buf.strides[0]))
        return buf.reshape(-1), rbase, [koff] * len(self.packed), r

    def gather_input(self, layer, ranks):
        """(padded NHWC buffer, rbase, koff per group) of a convolution: row (n, oh, ow) of
        group g at ``rbase[row] + koff_g[s]``, the window read in place."""
        n, _, h, w = ranks.shape
        (ph, pw), (sh, sw), (dh, dw) = layer.padding, layer.stride, layer.dilation
        kh, kw = layer.weight.shape[2:]
        g = layer.groups
        hp, wp, ct = h + 2 * ph, w + 2 * pw, g * self.cgp
        buf = np.empty((n, hp, wp, ct), self.dtype)
        _nhwc(np.ascontiguousarray(ranks), self.lut, self.off, g, self.cgp, ph, pw, buf)

        def tables():
            oh, ow = ops.out_hw((h, w), (kh, kw), layer.stride, layer.padding, layer.dilation)
            esz = buf.itemsize
            pos = ((np.arange(n)[:, None, None] * hp + np.arange(oh)[:, None] * sh) * wp
                   + np.arange(ow) * sw).reshape(-1) * ct * esz
            rbase = np.zeros(-(-pos.size // MR) * MR, np.int64)
            rbase[:pos.size] = pos
            win = ((np.arange(kh)[:, None, None] * dh * wp + np.arange(kw)[:, None] * dw) * ct
                   + np.arange(0, self.cgp, self.e)).reshape(-1) * esz
            koffs = [np.ascontiguousarray(win + gi * self.cgp * esz, np.int64)
                     for gi in range(g)]
            return rbase, koffs, pos.size, (oh, ow)

        rbase, koffs, r, _ = self._table(("gather", n, h, w), tables)
        return buf.reshape(-1), rbase, koffs, r

    def _table(self, key, make):
        """The offset tables of one input size, made once (at most 16 sizes kept)."""
        if key not in self._tables:
            if len(self._tables) >= 16:
                self._tables.clear()
            self._tables[key] = make()
        return self._tables[key]

    # -- one call -----------------------------------------------------------------------------
    def __call__(self, layer, x, trace=None):
        if not isinstance(x, tuple) or x[1] is not layer.grid:
            return _reference(layer, x, trace)
        threads = numba.get_num_threads()
        macs = x[0].size // max(layer.weight.shape[1], 1) * self.cout * self.k  # about
        if threads > 1 and macs < SERIAL_MACS:
            numba.set_num_threads(1)
        try:
            return self._run(layer, x[0], trace)
        finally:
            numba.set_num_threads(threads)

    def _run(self, layer, ranks, trace):
        n = ranks.shape[0]
        if self.gather:
            buf, rbase, koffs, r = self.gather_input(layer, ranks)
            hw = self._tables[("gather", n, *ranks.shape[2:])][3]
        else:
            buf, rbase, koffs, r = self.rows_input(layer, ranks)
            hw = ops.out_hw(ranks.shape[2:], layer.weight.shape[2:], layer.stride,
                            layer.padding, layer.dilation) if layer.kind == "conv2d" else (1, 1)
        gemm, wp = GEMM[self.kind], self.packed
        if self.grouped:
            c = np.empty((len(self.ranges), rbase.size, wp[0].shape[0] * NR), np.int32)
            for q, (k0, k1) in enumerate(self.ranges):
                gemm(buf, rbase, koffs[0], wp[0], c[q], k0, k1, self.chunk)
        else:
            c = np.empty((len(wp), rbase.size, wp[0].shape[0] * NR), np.int32)
            for g, w in enumerate(wp):
                gemm(buf, rbase, koffs[g], w, c[g], 0, w.shape[1], self.chunk)
        out = np.empty((n, self.cout, hw[0] * hw[1]), np.float32)
        if self.grouped:
            _epilogue_groups(c, self.corr_f, self.sw, layer.grid.scale, self.bias, self.bn_a,
                             self.bn_b, self.flags, out)
        else:
            epi = _epilogue if out.shape[2] > 1 else _epilogue_rows
            epi(c, self.corr_f, self.mult, self.bias, self.bn_a, self.bn_b, self.flags, out)
        if trace is not None:
            trace[layer.name] = {"path": layer.path, "kernel": run_name(self),
                                 "acc": self.accumulators(c, r)}
        return out.reshape(n, self.cout, *hw) if layer.kind == "conv2d" else out[:, :, 0]

    def accumulators(self, c: np.ndarray, r: int) -> list:
        if self.grouped:
            return [[c[q, :r, :self.cout].astype(np.int64) + self.corr[q]
                     for q in range(c.shape[0])]]
        ng = self.cout // c.shape[0]
        return [c[g, :r, :ng].astype(np.int64) + self.corr[g * ng:(g + 1) * ng]
                for g in range(c.shape[0])]


def run_name(plan: _Plan) -> str:
    return f"{plan.kind}-{ISA}" + (f"-chunk{plan.chunk}" if plan.chunk else "")


def _reference(layer, x, trace):
    """The reference path (an input that is not coded on the layer's grid)."""
    fast, layer.fast = layer.fast, None
    try:
        return layer(x, trace)
    finally:
        layer.fast = fast


def build(layer):
    """``run(layer, x, trace)`` for a layer on the ``integer`` path (None for the others,
    on a CPU without AVX2, for per-group scales in a grouped convolution, and where no kernel
    is exact: module doc)."""
    cb, grid = layer.weight.codebook, layer.grid
    if ISA is None or layer.path != "integer" or grid is None or grid.ints is None:
        return None
    if cb.scale.ndim == 2 and layer.groups > 1:
        return None
    w_lo = min(int(p.ints.min(initial=0)) for p in layer.parts)
    w_hi = max(int(p.ints.max(initial=0)) for p in layer.parts)
    k = layer.parts[0].ints.shape[1]
    choice = choose_kind(int(grid.ints.min()), int(grid.ints.max()), w_lo, w_hi, k)
    if choice is None:
        return None
    plan = _Plan(layer, *choice)

    def run(layer, x, trace=None):
        return plan(layer, x, trace)

    run.kernel, run.plan = run_name(plan), plan
    return run


# -- plain matrices (tests, benchmarks) -----------------------------------------------------
class Matmul:
    """``Matmul(w, a_lo, a_hi)(a)``: the exact int64 ``a @ w.T`` of integer matrices through the
    kernel :func:`choose_kind` picks (weights packed once); activations in [a_lo, a_hi];
    ``vnni``: the VNNI or the AVX2 kernels (None: this process's :data:`VNNI`; True needs a
    VNNI CPU)."""

    def __init__(self, w: np.ndarray, a_lo: int, a_hi: int, vnni: bool | None = None) -> None:
        vnni = VNNI if vnni is None else vnni
        choice = choose_kind(a_lo, a_hi, int(w.min(initial=0)), int(w.max(initial=0)),
                             w.shape[1], vnni)
        if ISA is None or choice is None or (vnni and not HAS_VNNI):
            raise ValueError("no exact kernel for these ranges on this CPU")
        self.kind, self.z, self.chunk = choice
        self.gemm = gemms(vnni)[self.kind]
        self.n, self.e = w.shape[0], 4 if self.kind == "u8s8" else 2
        self.dtype = np.uint8 if self.kind == "u8s8" else np.int16
        self.packed = pack_weights(w, self.kind)
        self.corr = self.z * w.sum(1, dtype=np.int64)

    def pack(self, a: np.ndarray) -> tuple:
        buf = np.zeros((a.shape[0], self.packed.shape[1] * self.e), self.dtype)
        buf[:, :a.shape[1]] = a - self.z
        rbase, koff = rows_tables(a.shape[0], buf.strides[0])
        c = np.empty((rbase.size, self.packed.shape[0] * NR), np.int32)
        return buf.reshape(-1), rbase, koff, c

    def run(self, packed_a: tuple) -> np.ndarray:
        buf, rbase, koff, c = packed_a
        self.gemm(buf, rbase, koff, self.packed, c, 0, self.packed.shape[1], self.chunk)
        return c

    def __call__(self, a: np.ndarray) -> np.ndarray:
        c = self.run(self.pack(a))
        return c[:a.shape[0], :self.n].astype(np.int64) + self.corr


def _ort_matmulinteger(w: np.ndarray):
    """An onnxruntime session of one MatMulInteger (uint8 x int8 -> int32) holding ``w`` (K, N)
    as an initializer, at numba's thread count and without spinning; None without onnxruntime.
    Not exact everywhere: without VNNI its kernels saturate int16 pairs (``vpmaddubsw``)."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    k, n = w.shape
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [None, n])],
        [numpy_helper.from_array(w.astype(np.int8), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = numba.get_num_threads(), 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


def bench_cases(m: int, n: int, k: int, rng) -> dict:
    """``int8_gemm`` (uint8 x int8 codes, full range: ``u8s8`` with VNNI, else ``s16``),
    ``int8_gemm_w4a4`` (4-bit codes: ``u8s8``), ``ort_matmulinteger`` (onnxruntime, 8-bit codes)
    and the bit-serial kernels (:mod:`~lowbit.runtime.kernels.bitserial`): zero-argument
    callables on pre-packed random operands, and the MACs of one call."""
    from lowbit.runtime.kernels import bitserial

    if ISA is None:
        return {}
    macs = float(m * n * k)
    cases = {}
    for name, (lo, hi), (wlo, whi) in (("int8_gemm", (0, 255), (-128, 127)),
                                       ("int8_gemm_w4a4", (0, 15), (-8, 7))):
        w = rng.integers(wlo, whi + 1, (n, k))
        mm = Matmul(w, lo, hi)
        pa = mm.pack(rng.integers(lo, hi + 1, (m, k)))
        cases[name] = (lambda mm=mm, pa=pa: mm.run(pa), macs)
    sess = _ort_matmulinteger(rng.integers(-128, 128, (k, n)))
    if sess is not None:
        feed = {"a": rng.integers(0, 256, (m, k)).astype(np.uint8)}
        cases["ort_matmulinteger"] = (lambda: sess.run(None, feed), macs)
    cases.update(bitserial.bench_cases(m, n, k, rng))
    return cases
