"""Fast kernels for the ``integer`` path (:mod:`lowbit.runtime.layers`, ``_run_integer``):
integer activation codes x integer weight codes -> exact int32 accumulators, then the float
epilogue of the reference fused into one pass over the output.

Two GEMM micro-kernels, written as LLVM vector intrinsics inside numba (``@intrinsic``; numba's
loop vectoriser alone turns ``u8 * s8`` dot products into ``vpmaddwd`` on 16-bit widened
operands, never ``vpdpbusd`` or ``vpmaddubsw``, and reached 0.25-0.45x torch fp32):

- ``u8s8``: activations as uint8 (``a - z``, ``z = min(0, min a)``; the shift is undone by
  ``z * sum_k w[n, k]``, exact), weights int8, in groups of 4 along K: AVX-512 VNNI / AVX-VNNI
  ``vpdpbusd`` (4 products into an int32, never saturates) where the CPU has it, else AVX2
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

import os

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils, config
from numba.core.codegen import get_host_cpu_features
from numba.extending import intrinsic

from lowbit.runtime import ops

MR, NR = 4, 16          # tile rows, panel width (output channels)
ROW_BLOCK, PANELS = 64, 4  # a parallel task: 64 rows x 4 panels
I16_MAX = 32767
#: layers of fewer MACs run on the calling thread: a parallel region costs ~10 us on a quiet
#: 2-vCPU machine and a scheduler slice (4-8 ms) when the other vCPU is busy
SERIAL_MACS = 4_000_000


def _features() -> set[str]:
    """The CPU features numba compiles for (NUMBA_CPU_FEATURES, else the host's)."""
    flat = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return {f[1:] for f in flat.split(",") if f.startswith("+")}


_FEATURES = _features()
AVX2 = "avx2" in _FEATURES
#: VNNI (``vpdpbusd`` / ``vpdpwssd``) is opt-in, ``LOWBIT_VNNI=1``: its code compiles (the
#: assembly was checked with NUMBA_CPU_NAME=znver4 / sapphirerapids) but it has not yet run on
#: a VNNI machine, so by default every CPU takes the AVX2 kernels that the tests ran
VNNI = AVX2 and os.environ.get("LOWBIT_VNNI") == "1" and (
    "avxvnni" in _FEATURES or {"avx512vnni", "avx512vl"} <= _FEATURES)
ISA = "vnni" if VNNI else "avx2" if AVX2 else None

# -- the micro-kernel (LLVM IR) --------------------------------------------------------------
_I8, _I16, _I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
_V8, _V16, _V32 = ir.VectorType(_I8, 32), ir.VectorType(_I16, 16), ir.VectorType(_I32, 8)


def _call(builder, name: str, ret, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
        ret, [a.type for a in args]), name)
    return builder.call(fn, args)


def _make_tile(kind: str):
    """The intrinsic ``tile(a, rbase, koff, w, c, i0, p, k0, k1, chunk)``: ``c[i0:i0+4,
    16p:16p+16] = sum over K groups k0 <= s < k1`` of row ``i0 + r`` (the 4 bytes at
    ``a + rbase[i0 + r] + koff[s]``) times panel ``p`` group ``s`` (64 bytes of ``w``)."""
    wvec = _V8 if kind == "u8s8" else _V16

    def step(b, acc, av, wv):
        if kind == "u8s8" and VNNI:
            return _call(b, "llvm.x86.avx512.vpdpbusd.256", _V32, [acc, av, wv])
        if kind == "s16" and VNNI:
            return _call(b, "llvm.x86.avx512.vpdpwssd.256", _V32, [acc, av, wv])
        if kind == "s16":
            return b.add(acc, _call(b, "llvm.x86.avx2.pmadd.wd", _V32, [av, wv]))
        return b.add(acc, _call(b, "llvm.x86.avx2.pmadd.ub.sw", _V16, [av, wv]))  # int16

    chunked = kind == "u8s8" and not VNNI  # int16 pair sums, flushed every `chunk` steps

    @intrinsic
    def tile(typingctx, a, rbase, koff, w, c, i0, p, k0, k1, chunk):
        sig = types.void(a, rbase, koff, w, c, types.intp, types.intp, types.intp,
                         types.intp, types.intp)

        def codegen(context, b, signature, args):
            arr = [context.make_array(t)(context, b, v) for t, v in zip(signature.args[:5],
                                                                       args[:5], strict=True)]
            a_, rb_, ko_, w_, c_ = arr
            i0v, pv, k0v, k1v, chv = args[5:]
            ip = i0v.type
            byte = lambda x: b.bitcast(x.data, _I8.as_pointer())  # noqa: E731
            abase, wbase = byte(a_), byte(w_)
            steps = cgutils.unpack_tuple(b, w_.shape)[1]
            ldc = cgutils.unpack_tuple(b, c_.shape)[1]
            rows = [b.load(b.gep(rb_.data, [b.add(i0v, ip(r))])) for r in range(MR)]
            zero = ir.Constant(_V32, [0] * 8)
            acc = [[cgutils.alloca_once_value(b, zero) for _ in range(2)] for _ in range(MR)]
            wpan = b.mul(b.mul(pv, steps), ip(64))

            def body(s, dst, op):
                wo = b.add(wpan, b.mul(s, ip(64)))
                wv = [b.bitcast(b.load(b.bitcast(b.gep(wbase, [b.add(wo, ip(32 * h))]),
                                                 _V8.as_pointer()), align=1), wvec)
                      for h in range(2)]
                ko = b.load(b.gep(ko_.data, [s]))
                for r in range(MR):
                    ptr = b.bitcast(b.gep(abase, [b.add(rows[r], ko)]), _I32.as_pointer())
                    one = b.insert_element(ir.Constant(_V32, ir.Undefined), b.load(ptr, align=1),
                                           _I32(0))
                    av = b.bitcast(b.shuffle_vector(one, ir.Constant(_V32, ir.Undefined),
                                                    ir.Constant(_V32, [0] * 8)), wvec)
                    for h in range(2):
                        b.store(op(b, b.load(dst[r][h]), av, wv[h]), dst[r][h])

            if not chunked:
                with cgutils.for_range(b, k1v, start=k0v) as loop:
                    body(loop.index, acc, step)
            else:
                z16 = ir.Constant(_V16, [0] * 16)
                acc16 = [[cgutils.alloca_once_value(b, z16) for _ in range(2)] for _ in range(MR)]
                n = b.sdiv(b.add(b.sub(k1v, k0v), b.sub(chv, ip(1))), chv)
                with cgutils.for_range(b, n) as outer:
                    s0 = b.add(k0v, b.mul(outer.index, chv))
                    s1 = b.select(b.icmp_signed("<", b.add(s0, chv), k1v), b.add(s0, chv), k1v)
                    for r in range(MR):
                        for h in range(2):
                            b.store(z16, acc16[r][h])
                    with cgutils.for_range(b, s1, start=s0) as loop:
                        body(loop.index, acc16, step)
                    ones = ir.Constant(_V16, [1] * 16)
                    for r in range(MR):
                        for h in range(2):
                            wide = _call(b, "llvm.x86.avx2.pmadd.wd", _V32,
                                         [b.load(acc16[r][h]), ones])
                            b.store(b.add(b.load(acc[r][h]), wide), acc[r][h])
            cbase = b.bitcast(c_.data, _I32.as_pointer())
            for r in range(MR):
                roff = b.mul(b.add(i0v, ip(r)), ldc)
                for h in range(2):
                    off = b.add(roff, b.add(b.mul(pv, ip(NR)), ip(8 * h)))
                    b.store(b.load(acc[r][h]), b.bitcast(b.gep(cbase, [off]),
                                                         _V32.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_tile_u8s8 = _make_tile("u8s8")
_tile_s16 = _make_tile("s16")


@njit(parallel=True, cache=True)
def gemm_u8s8(a, rbase, koff, w, c, k0, k1, chunk):
    """``c[i, n] = sum_{k0 <= s < k1}`` row i's group s times panel n's (module doc), int32.
    ``rbase`` has one entry per row of ``c`` (a multiple of 4 rows)."""
    nrb = -(-rbase.shape[0] // ROW_BLOCK)
    npg = -(-w.shape[0] // PANELS)
    for t in prange(nrb * npg):
        rb, pg = t // npg, t % npg
        for p in range(pg * PANELS, min(w.shape[0], (pg + 1) * PANELS)):
            for i0 in range(rb * ROW_BLOCK, min(rbase.shape[0], (rb + 1) * ROW_BLOCK), MR):
                _tile_u8s8(a, rbase, koff, w, c, i0, p, k0, k1, chunk)


@njit(parallel=True, cache=True)
def gemm_s16(a, rbase, koff, w, c, k0, k1, chunk):
    """:func:`gemm_u8s8` with int16 pairs (``chunk`` unused)."""
    nrb = -(-rbase.shape[0] // ROW_BLOCK)
    npg = -(-w.shape[0] // PANELS)
    for t in prange(nrb * npg):
        rb, pg = t // npg, t % npg
        for p in range(pg * PANELS, min(w.shape[0], (pg + 1) * PANELS)):
            for i0 in range(rb * ROW_BLOCK, min(rbase.shape[0], (rb + 1) * ROW_BLOCK), MR):
                _tile_s16(a, rbase, koff, w, c, i0, p, k0, k1, chunk)


GEMM = {"u8s8": gemm_u8s8, "s16": gemm_s16}


# -- packing --------------------------------------------------------------------------------
def pack_weights(w: np.ndarray, kind: str) -> np.ndarray:
    """Integer weight rows (N, K) in the kernel's K order -> panels (ceil(N/16), K/e, 16 e) of
    int8 (``u8s8``, e = 4) or int16 (``s16``, e = 2): ``[p, s, e j + t] = w[16 p + j, e s + t]``
    (K padded with zeros to a multiple of e, N to a multiple of 16)."""
    e, dt = (4, np.int8) if kind == "u8s8" else (2, np.int16)
    n, k = w.shape
    npn, s = -(-n // NR), -(-k // e)
    full = np.zeros((npn * NR, s * e), dt)
    full[:n, :k] = w
    return np.ascontiguousarray(full.reshape(npn, NR, s, e).transpose(0, 2, 1, 3)).reshape(
        npn, s, NR * e)


def rows_tables(r: int, row_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """(rbase, koff) of a plain row-major matrix of ``r`` rows: row offsets padded to a multiple
    of 4 rows (the padding rows read row 0), and one 4-byte group per step."""
    rbase = np.zeros(-(-r // MR) * MR, np.int64)
    rbase[:r] = np.arange(r, dtype=np.int64) * row_bytes
    return rbase, np.arange(row_bytes // 4, dtype=np.int64) * 4


@njit(parallel=True, cache=True)
def _rows(ranks, lut, off, colmap, out):
    """``out[r, colmap[k]] = code(ranks[r, k])`` (``colmap`` None: ``k``), the other columns
    ``lut[-1]`` (the pad). ``code(q) = q + off`` where the table is that (``off`` not None), else
    ``lut[q]``."""
    pad = lut[lut.shape[0] - 1]
    k = ranks.shape[1]
    for r in prange(ranks.shape[0]):
        if colmap is None:
            if off is None:
                for j in range(k):
                    out[r, j] = lut[ranks[r, j]]
            else:
                for j in range(k):
                    out[r, j] = ranks[r, j] + off
            for j in range(k, out.shape[1]):
                out[r, j] = pad
        else:
            for j in range(out.shape[1]):
                out[r, j] = pad
            for j in range(k):
                out[r, colmap[j]] = lut[ranks[r, j]]


@njit(parallel=True, cache=True)
def _nhwc(ranks, lut, off, groups, cgp, ph, pw, out):
    """(N, C, H, W) ranks -> padded (N, H + 2ph, W + 2pw, groups * cgp) codes (:func:`_rows`):
    each group's channels padded to ``cgp``; borders and padding channels ``lut[-1]``."""
    n, c, h, w = ranks.shape
    hp = out.shape[1]
    cg = c // groups
    pad = lut[lut.shape[0] - 1]
    for t in prange(n * hp):
        i, y = t // hp, t % hp
        out[i, y] = pad
        if y < ph or y >= ph + h:
            continue
        for g in range(groups):
            for ch in range(cg):
                d = g * cgp + ch
                if off is None:
                    for x in range(w):
                        out[i, y, pw + x, d] = lut[ranks[i, g * cg + ch, y - ph, x]]
                else:
                    for x in range(w):
                        out[i, y, pw + x, d] = ranks[i, g * cg + ch, y - ph, x] + off


@njit(parallel=True, cache=True)
def _epilogue(c, corr, mult, bias, bn_a, bn_b, flags, out):
    """``out[n, ch, pos]`` (float32) of row ``r = n P + pos``: ``float32(float64(acc) *
    mult[ch])``, ``+ bias[ch]``, ``* bn_a[ch] + bn_b[ch]`` (float32), with ``acc = c[g, r, j]
    + corr[ch]`` (float64, exact) and ``ch = g Ng + j``: the reference's operations in its
    order. Blocks of 64 positions of one image, written along positions (NCHW)."""
    ng = out.shape[1] // c.shape[0]
    npos = out.shape[2]
    nb = -(-npos // 64)
    has_bias, has_bn = flags[0], flags[1]
    for t in prange(out.shape[0] * nb):
        i, b = t // nb, t % nb
        p0, p1 = b * 64, min(npos, b * 64 + 64)
        for g in range(c.shape[0]):
            for j in range(ng):
                ch = g * ng + j
                m, cr, bi, ba, bb = mult[ch], corr[ch], bias[ch], bn_a[ch], bn_b[ch]
                for pos in range(p0, p1):
                    y = np.float32((np.float64(c[g, i * npos + pos, j]) + cr) * m)
                    if has_bias:
                        y = y + bi
                    if has_bn:
                        y = y * ba + bb
                    out[i, ch, pos] = y


@njit(parallel=True, cache=True)
def _epilogue_rows(c, corr, mult, bias, bn_a, bn_b, flags, out):
    """:func:`_epilogue` for one position per image (a linear layer): along channels."""
    ng = out.shape[1] // c.shape[0]
    has_bias, has_bn = flags[0], flags[1]
    for r in prange(out.shape[0]):
        for g in range(c.shape[0]):
            for j in range(ng):
                ch = g * ng + j
                y = np.float32((np.float64(c[g, r, j]) + corr[ch]) * mult[ch])
                if has_bias:
                    y = y + bias[ch]
                if has_bn:
                    y = y * bn_a[ch] + bn_b[ch]
                out[r, ch, 0] = y


@njit(parallel=True, cache=True)
def _epilogue_groups(c, corr, sw, scale, bias, bn_a, bn_b, flags, out):
    """Per-group weight scales: ``float32((sum_q float64(acc_q) * sw[ch, q]) * scale)`` summed
    in q order from 0 (``acc_q = c[q, r, ch] + corr[q, ch]``), then bias and BatchNorm."""
    npos = out.shape[2]
    for r in prange(out.shape[0] * npos):
        i, pos = r // npos, r % npos
        for ch in range(out.shape[1]):
            s = 0.0
            for q in range(c.shape[0]):
                s += (np.float64(c[q, r, ch]) + corr[q, ch]) * sw[ch, q]
            y = np.float32(s * scale)
            if flags[0]:
                y = y + bias[ch]
            if flags[1]:
                y = y * bn_a[ch] + bn_b[ch]
            out[i, ch, pos] = y


# -- build ----------------------------------------------------------------------------------
def choose_kind(a_lo: int, a_hi: int, w_lo: int, w_hi: int, k: int):
    """(kind, shift z, int16 chunk) for activation integers in [a_lo, a_hi] (0 included: a
    convolution's pad), weight integers in [w_lo, w_hi] and K = ``k``; None when no kernel is
    exact (module doc)."""
    a_lo, a_hi = min(a_lo, 0), max(a_hi, 0)
    span, w_max = max(a_hi - a_lo, 1), max(-w_lo, w_hi, 1)
    if span <= 255 and -128 <= w_lo and w_hi <= 127 and k * span * w_max < 2**31:
        if VNNI:
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
    kernel :func:`choose_kind` picks (weights packed once); activations in [a_lo, a_hi]."""

    def __init__(self, w: np.ndarray, a_lo: int, a_hi: int) -> None:
        choice = choose_kind(a_lo, a_hi, int(w.min(initial=0)), int(w.max(initial=0)),
                             w.shape[1])
        if ISA is None or choice is None:
            raise ValueError("no exact kernel for these ranges on this CPU")
        self.kind, self.z, self.chunk = choice
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
        GEMM[self.kind](buf, rbase, koff, self.packed, c, 0, self.packed.shape[1], self.chunk)
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
