"""Packed 2- to 5-bit weight GEMV / GEMM with float32 activations: the kernels and their
layout, error bound and packing (the runtime's layers take them through
:mod:`lowbit.runtime.kernels.lowbit`).

**What it computes.** ``y[m, n] = sum_g s[n, g] * sum_{k in g} x[m, k] * (c[n, k] - z[n, g])``:
unsigned codes ``c``, a scale ``s`` and a zero point ``z`` per output row (``G = 1``) or per
group of ``group_size`` columns, the zero point folded out (``sum x c - z sum x``), as in
llama.cpp's Q4_1 blocks and ORT's MatMulNBits. :func:`build` re-codes a layer's integer weights
``q`` once: ``c = (q - min q) / step`` (``step``, a power of two dividing every difference, goes
into the scale: odd DoReFa levels need one bit less), so a b-bit grid whose range skips zero
(Ivan's +-1..+-8) takes 5-bit codes.

**Layout** (:func:`pack_nbit`). A row is cut into chunks of ``8P`` columns, ``P = 32 // bits``
codes per int32 word (16, 10, 8, 6 for 2..5 bits; 3- and 5-bit words leave 2 bits empty).
Word ``i`` of chunk ``c`` (lane ``i`` of 8) holds column ``8P c + 8s + i`` at bits
``[bits s, bits (s+1))``: the chunk's 8 words are one 256-bit vector and its slot ``s`` meets 8
consecutive activations, so a code comes out with one AND (or shift) and no shuffle --
llama.cpp's Q4_0 splits its 32-weight blocks the same way (low nibbles the first 16 weights).

**Inner loop** (numba, no fast-math flags). Slot ``s`` is masked *in place*,
``v & ((2^b - 1) << bs)``, converted to float32 (exactly ``c 2^(bs)``) and FMA'd into an
accumulator of its own; the accumulators are scaled by ``2^(-bs)`` (exact) once per row or group:
one AND, one convert, one FMA per 8 weights. (The top 4-bit slot is shifted down instead, 2-bit
slots 8..15 come from the upper half-word and share slots 0..7's accumulators, 5-bit codes are
shifted: LLVM vectorises the masked form only with 8 or 10 slots.) The 8 lanes are explicit
(``acc[8t + i]``), so the vectoriser needs no reassociation and the order of every sum is the
source's whatever vector width LLVM picks: Haswell (AVX2), Zen 4 and Sapphire Rapids code give
the same bits. The FMA is ``llvm.fma`` (IEEE, one rounding). With ``M >= 4`` rows, four rows
share each decoded slot (shift + AND), with the columns in blocks that keep four activation rows
in L1. A layer takes these kernels only where they pay: at least ``MIN_WEIGHTS`` weights (a
smaller float32 matrix is read from cache) and at most ``MAX_ROWS`` input rows per call (beyond,
the product is compute-bound and the layer keeps the reference's BLAS call). Groups cost a
fold per group: groups of 64 are several times slower than per-row scales, 512 and more are not.

**Error bound** (float path; :func:`error_bound`, tested against float64). With
``u = 2^-24``, ``gamma_n = n u / (1 - n u)``, ``K'`` the padded row length and
``A = sum_g |s_g| (sum_{k in g} |x_k| c_k + |z_g| sum_{k in g} |x_k|)``:
``|y - sum_k x_k w_k| <= gamma_n A`` with ``n = ceil(K'/8) + P + G + 8``, where
``w_k = fl32(s q_k)`` is the decoded weight the reference multiplies. Each product ``x c``
enters one accumulator chain (at most ``K'/8`` FMAs in either kernel), then the slot fold
(``P``), the group scales (``G``), the lane tree and the final adds; the zero-point sums are
float64 rounded once; ``w_k``'s own rounding is one more ``u`` (Higham, *Accuracy and
Stability of Numerical Algorithms*, lemma 3.1). (Normal-range values: a subnormal intermediate
adds at most ``2^-149`` per rounding; ``K' max|x| < 2^90`` is checked so that the scaled slots
cannot overflow.) BLAS's float32 product has the bound ``gamma_K sum |x_k w_k|``, at least as
loose; measured, both sit near ``3e-8 sum |x_k w_k|``. Neither is exact; ONNX Runtime's
MatMulNBits at accuracy level 4 (what its QDQ fusion makes) quantizes the activations to int8
per block and is about 20000 times further off (``6e-4 sum |x w|``, ``6e-3`` of ``max |y|`` at
4096^2), outside this bound; at level 0 it is float32 and slower than torch.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 8                       # one 256-bit vector of float32 / int32
SLOTS = {2: 16, 3: 10, 4: 8, 5: 6}  # codes per int32 word
CHUNK = {b: LANES * p for b, p in SLOTS.items()}  # columns per chunk: 128, 80, 64, 48
KB = 8                          # chunks per column block of the four-row kernel
_X_LIMIT = 2.0**90              # K' max|x| below this: the scaled slot sums cannot overflow

i32, u32, u64, f32 = np.int32, np.uint32, np.uint64, np.float32


# -- LLVM helpers ------------------------------------------------------------------------------
@intrinsic
def _stack(typingctx, n):
    """A float32 scratch array of literal size ``n`` on the stack (LLVM keeps it in registers)."""
    if not isinstance(n, types.IntegerLiteral):
        return None
    size = n.literal_value

    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(types.float32), size=size)

    return types.CPointer(types.float32)(n), codegen


@intrinsic
def _fma(typingctx, a, b, c):
    """``a * b + c`` with one rounding (``llvm.fma.f32``, vectorised to ``vfmadd``)."""
    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return types.float32(types.float32, types.float32, types.float32), codegen


@njit(inline="always")
def _code(v, s, b):
    """Code ``s`` of word ``v`` shifted down, ``c``, as float32."""
    return f32(i32((v >> i32(b * s)) & i32((1 << b) - 1)))


@njit(inline="always")
def _slots(f, bits, acc, a, b, c, d, e, g, h):
    """``f(acc, a..h, s, bits)`` for every slot ``s`` of a ``bits``-bit word, written out: LLVM
    neither unrolls a loop over 10 or 16 slots reliably nor vectorises it when it does not."""
    f(acc, a, b, c, d, e, g, h, 0, bits)
    f(acc, a, b, c, d, e, g, h, 1, bits)
    f(acc, a, b, c, d, e, g, h, 2, bits)
    f(acc, a, b, c, d, e, g, h, 3, bits)
    f(acc, a, b, c, d, e, g, h, 4, bits)
    f(acc, a, b, c, d, e, g, h, 5, bits)
    if bits <= 4:
        f(acc, a, b, c, d, e, g, h, 6, bits)
        f(acc, a, b, c, d, e, g, h, 7, bits)
    if bits <= 3:
        f(acc, a, b, c, d, e, g, h, 8, bits)
        f(acc, a, b, c, d, e, g, h, 9, bits)
    if bits == 2:
        f(acc, a, b, c, d, e, g, h, 10, bits)
        f(acc, a, b, c, d, e, g, h, 11, bits)
        f(acc, a, b, c, d, e, g, h, 12, bits)
        f(acc, a, b, c, d, e, g, h, 13, bits)
        f(acc, a, b, c, d, e, g, h, 14, bits)
        f(acc, a, b, c, d, e, g, h, 15, bits)


@njit(inline="always")
def _acc(s, b):
    """The accumulator of slot ``s``: its own, except that 2-bit slots 8..15 share those of
    slots 0..7 (the upper half-word, shifted down, has the same place values)."""
    return s - 8 if b == 2 and s >= 8 else s


@njit(inline="always")
def _in_place(v, s, b):
    """Code ``s`` of word ``v`` masked in place, ``c * 2^(b t)`` as float32 (exact) for its
    accumulator ``t``; the top 4-bit code and 5-bit codes shifted down instead, ``c``."""
    if b == 4 and s == 7:
        return f32(i32(u32(v) >> u32(28)))
    if b == 5:  # 6 slots: LLVM vectorises the masked form only with 8 or 10 of them
        return _code(v, s, b)
    if b == 2 and s >= 8:
        return f32(i32(i32(u32(v) >> u32(16)) & i32(3 << (2 * (s - 8)))))
    return f32(i32(v & i32(((1 << b) - 1) << (b * s))))


@njit(inline="always")
def _one(acc, x, xb, v, i, e, g, h, s, b):
    """One row: slot ``s`` of word ``v`` (lane ``i``) times ``x[xb + 8 s]`` into its own
    accumulator."""
    t = _acc(s, b) * LANES + i
    acc[t] = _fma(x[u64(xb + s * LANES)], _in_place(v, s, b), acc[t])


@njit(inline="always")
def _four(acc, x0, x1, x2, x3, xb, v, i, s, b):
    """Four rows: slot ``s`` decoded once, into row r's even or odd accumulator."""
    d = _code(v, s, b)
    j, k = (s & 1) * LANES + i, u64(xb + s * LANES)
    acc[j] = _fma(x0[k], d, acc[j])
    acc[2 * LANES + j] = _fma(x1[k], d, acc[2 * LANES + j])
    acc[4 * LANES + j] = _fma(x2[k], d, acc[4 * LANES + j])
    acc[6 * LANES + j] = _fma(x3[k], d, acc[6 * LANES + j])


@njit(inline="always")
def _fold(acc, r, i, c, d, e, g, h, s, bits):
    """Lane ``i`` of accumulator ``s`` times its place value ``2^(-bits s)`` (exact) into
    ``r[i]``."""
    if _acc(s, bits) == s:
        top = (bits == 4 and s == 7) or bits == 5
        sc = f32(1.0) if top else f32(1.0 / (1 << (bits * s)))
        r[i] = _fma(acc[s * LANES + i], sc, r[i])


@njit(inline="always")
def _tree(t, o):
    """``t[o..o+8]`` summed as a fixed tree."""
    return ((t[o] + t[o + 1]) + (t[o + 2] + t[o + 3])) + (
        (t[o + 4] + t[o + 5]) + (t[o + 6] + t[o + 7]))


@njit(inline="always")
def _row_body(xm, wn, sc, off, sxm, cpg, bits):
    """One activation row times one weight row (``bits`` a constant of the caller)."""
    p = 32 // bits
    ch, na = LANES * p, LANES * min(p, 10)
    acc = numba.carray(_stack(80), 80)
    r = numba.carray(_stack(LANES), LANES)
    tot = numba.carray(_stack(LANES), LANES)
    y = f32(0.0)  # the zero-point terms
    for i in range(LANES):
        tot[i] = 0.0
    for g in range(sc.shape[0]):
        for j in range(na):
            acc[j] = 0.0
        for c in range(g * cpg, (g + 1) * cpg):
            for i in range(LANES):
                _slots(_one, bits, acc, xm, c * ch + i, wn[u64(c * LANES + i)], i, 0, 0, 0)
        for i in range(LANES):
            r[i] = 0.0
            _slots(_fold, bits, acc, r, i, 0, 0, 0, 0, 0)
        for i in range(LANES):  # group scales lane by lane
            tot[i] = _fma(r[i], sc[g], tot[i])
        y += sc[g] * (off[g] * sxm[g])
    return _tree(tot, 0) + y


@njit(inline="always")
def _block_body(bn, x0, x1, x2, x3, wn, c0, nc, bits):
    """Four activation rows times one weight row over chunks ``c0 .. c0+nc``, the
    accumulators kept in ``bn`` between calls (the same sums in the same order as in one)."""
    ch = LANES * (32 // bits)
    acc = numba.carray(_stack(64), 64)
    for j in range(8 * LANES):
        acc[j] = bn[j]
    for c in range(nc):
        for i in range(LANES):
            _slots(_four, bits, acc, x0, x1, x2, x3, c * ch + i,
                   wn[u64((c0 + c) * LANES + i)], i)
    for j in range(8 * LANES):
        bn[j] = acc[j]


# one plain function per width (distinct names: closures of one factory would share a name,
# and numba's cache then links one width's code into another's caller); plain functions keep
# the parallel drivers below small, so that numba's parfor analysis (quadratic in the body)
# compiles fast. Indices are cast to uint64 where LLVM cannot prove them >= 0 (numba's
# wraparound select for a negative index stops the vectoriser).
@njit(cache=True)
def _row2(xm, wn, sc, off, sxm, cpg):
    return _row_body(xm, wn, sc, off, sxm, cpg, 2)


@njit(cache=True)
def _row3(xm, wn, sc, off, sxm, cpg):
    return _row_body(xm, wn, sc, off, sxm, cpg, 3)


@njit(cache=True)
def _row4(xm, wn, sc, off, sxm, cpg):
    return _row_body(xm, wn, sc, off, sxm, cpg, 4)


@njit(cache=True)
def _row5(xm, wn, sc, off, sxm, cpg):
    return _row_body(xm, wn, sc, off, sxm, cpg, 5)


@njit(cache=True)
def _block2(bn, x0, x1, x2, x3, wn, c0, nc):
    _block_body(bn, x0, x1, x2, x3, wn, c0, nc, 2)


@njit(cache=True)
def _block3(bn, x0, x1, x2, x3, wn, c0, nc):
    _block_body(bn, x0, x1, x2, x3, wn, c0, nc, 3)


@njit(cache=True)
def _block4(bn, x0, x1, x2, x3, wn, c0, nc):
    _block_body(bn, x0, x1, x2, x3, wn, c0, nc, 4)


@njit(cache=True)
def _block5(bn, x0, x1, x2, x3, wn, c0, nc):
    _block_body(bn, x0, x1, x2, x3, wn, c0, nc, 5)


@njit(inline="always")
def _row(bits, xm, wn, sc, off, sxm, cpg):
    if bits == 2:
        return _row2(xm, wn, sc, off, sxm, cpg)
    if bits == 3:
        return _row3(xm, wn, sc, off, sxm, cpg)
    if bits == 4:
        return _row4(xm, wn, sc, off, sxm, cpg)
    return _row5(xm, wn, sc, off, sxm, cpg)


@njit(inline="always")
def _block(bits, bn, x0, x1, x2, x3, wn, c0, nc):
    if bits == 2:
        _block2(bn, x0, x1, x2, x3, wn, c0, nc)
    elif bits == 3:
        _block3(bn, x0, x1, x2, x3, wn, c0, nc)
    elif bits == 4:
        _block4(bn, x0, x1, x2, x3, wn, c0, nc)
    else:
        _block5(bn, x0, x1, x2, x3, wn, c0, nc)


@njit(parallel=True, cache=True)
def _one_row(x, w, scale, off, sx, bits, cpg, m0, out):
    """Rows ``m0..`` of ``out``, one activation row at a time, in parallel over weight rows."""
    for n in prange(w.shape[0]):
        for m in range(m0, out.shape[0]):
            out[m, n] = _row(bits, x[m], w[n], scale[n], off[n], sx[m], cpg)


@njit(parallel=True, cache=True)
def _four_rows(x, w, scale, off, sx, bits, cpg, tile, out):
    """The first ``4*(M//4)`` rows of ``out``, four activation rows at a time, ``tile`` weight
    rows at a time (in parallel) and the columns in blocks of ``KB`` chunks, so that four
    activation rows of a block stay in L1 while the tile's weight rows pass."""
    n_rows, groups = scale.shape
    ch = LANES * (32 // bits)
    for t in prange((n_rows + tile - 1) // tile):
        n0, n1 = t * tile, min(n_rows, (t + 1) * tile)
        buf = np.empty((tile, 8 * LANES), np.float32)
        r = np.empty(LANES, np.float32)
        for m in range(0, out.shape[0] - 3, 4):
            out[m:m + 4, n0:n1] = 0.0
            for g in range(groups):
                buf[:] = 0.0
                for cb in range(0, cpg, KB):
                    o = (g * cpg + cb) * ch
                    x0, x1, x2, x3 = x[m, o:], x[m + 1, o:], x[m + 2, o:], x[m + 3, o:]
                    for n in range(n0, n1):
                        _block(bits, buf[n - n0], x0, x1, x2, x3, w[n], g * cpg + cb,
                               min(cpg - cb, KB))
                for n in range(n0, n1):
                    bn = buf[n - n0]
                    for k in range(4):
                        for i in range(LANES):
                            r[i] = bn[2 * k * LANES + i] + bn[(2 * k + 1) * LANES + i]
                        y = _tree(r, 0) + off[n, g] * sx[m + k, g]
                        out[m + k, n] += scale[n, g] * y


# -- packing and the raw kernel ----------------------------------------------------------------
def padded_k(k: int, bits: int, group_size: int | None = None) -> int:
    """The padded row length K' of :func:`pack_nbit`: whole chunks, or whole groups."""
    step = CHUNK[bits] if group_size is None else group_size
    if group_size is not None and group_size % CHUNK[bits]:
        raise ValueError(f"group_size {group_size} is not a multiple of the {bits}-bit chunk "
                         f"({CHUNK[bits]} columns)")
    return -(-k // step) * step


def pack_nbit(codes: np.ndarray, bits: int, group_size: int | None = None) -> np.ndarray:
    """Unsigned ``codes`` (N, K) in ``[0, 2^bits)`` -> int32 words (N, K'/P) in the layout of
    the module doc (columns past K are code 0)."""
    if bits not in SLOTS:
        raise ValueError(f"bits must be one of {sorted(SLOTS)}, got {bits}")
    codes = np.asarray(codes)
    if codes.size and (codes.min() < 0 or codes.max() >= 1 << bits):
        raise ValueError(f"{bits}-bit codes must lie in [0, {1 << bits})")
    n, k = codes.shape
    kp, p = padded_k(k, bits, group_size), SLOTS[bits]
    c = np.zeros((n, kp), np.uint32)
    c[:, :k] = codes
    c = c.reshape(n, kp // (LANES * p), p, LANES)
    words = np.zeros((n, kp // (LANES * p), LANES), np.uint32)
    for s in range(p):
        words |= c[:, :, s, :] << np.uint32(bits * s)
    return words.view(np.int32).reshape(n, -1)


def _per_group(a, n: int, groups: int | None = None) -> np.ndarray:
    """A scalar, (N,) or (N, G) value as a float32 (N, G) array."""
    a = np.asarray(a, np.float32)
    a = a.reshape(n, -1) if a.ndim else np.full((n, 1), a, np.float32)
    # a writable copy: a read-only array (a broadcast view, a file's buffer) is another numba
    # type, and would compile every kernel a second time
    return np.array(np.broadcast_to(a, (n, groups or a.shape[1])), np.float32, order="C")


def gemv_nbit(x: np.ndarray, packed: np.ndarray, scales, zeros, bits: int, K: int,
              group_size: int | None = None) -> np.ndarray:
    """``y = x @ (s * (c - z)).T`` of float32 ``x`` (M, K) and the packed codes
    (:func:`pack_nbit`), float32 (M, N); ``scales``/``zeros``: scalar, (N,) or (N, G) with
    ``group_size`` columns a group. Within :func:`error_bound` of the exact product."""
    x = np.asarray(x, np.float32)
    n = packed.shape[0]
    kp = padded_k(K, bits, group_size)
    scale = _per_group(scales, n)
    groups = scale.shape[1]
    gs = kp if group_size is None else group_size
    if groups != kp // gs or x.shape[1] != K or packed.shape[1] * SLOTS[bits] != kp:
        raise ValueError("x, packed, scales and group_size do not fit together")
    off = -_per_group(zeros, n, groups)
    return _gemv(x, packed, scale, off, bits, K, gs, bool(off.any()))


def _gemv(x, packed, scale, off, bits: int, k: int, gs: int, offsets: bool) -> np.ndarray:
    """gemv_nbit on checked arguments: ``scale`` and ``off = -zero`` float32 (N, G)."""
    m, (n, groups) = x.shape[0], scale.shape
    kp = groups * gs
    xp = np.zeros((m, kp), np.float32)
    xp[:, :k] = x
    if not max(float(xp.max()), -float(xp.min())) * kp < _X_LIMIT:
        raise ValueError("x is too large (or not finite) for the scaled slot sums")
    if offsets:  # float64 sums rounded once: error u (+ K 2^-53) of sum |x|
        sx = xp.reshape(m, groups, gs).sum(axis=2, dtype=np.float64).astype(np.float32)
    else:
        sx = np.zeros((m, groups), np.float32)
    out = np.empty((m, n), np.float32)
    m4 = m // 4 * 4
    if m4:  # tiles of weight rows: at least two per thread, at most 32 rows
        tile = max(1, min(32, n // (2 * numba.get_num_threads())))
        _four_rows(xp, packed, scale, off, sx, bits, gs // CHUNK[bits], tile, out[:m4])
    if m4 < m:
        _one_row(xp, packed, scale, off, sx, bits, gs // CHUNK[bits], m4, out)
    return out


def gamma(n: int) -> float:
    u = 2.0**-24
    return n * u / (1 - n * u)


def error_bound(x: np.ndarray, codes: np.ndarray, scales, zeros, bits: int,
                group_size: int | None = None) -> np.ndarray:
    """``gamma_{ceil(K'/8)+P+G+8} * A`` (module doc) per output, float64 (M, N): the largest
    distance of :func:`gemv_nbit` from ``x @ w.T`` with ``w = fl32(s * (c - z))``."""
    x, codes = np.abs(np.asarray(x, np.float64)), np.asarray(codes, np.float64)
    n, k = codes.shape
    kp = padded_k(k, bits, group_size)
    gs = kp if group_size is None else group_size
    scale = np.abs(_per_group(scales, n).astype(np.float64))
    zero = np.abs(_per_group(zeros, n, scale.shape[1]).astype(np.float64))
    a = np.zeros((x.shape[0], n))
    for g in range(scale.shape[1]):
        sl = slice(g * gs, min(k, (g + 1) * gs))
        part = x[:, sl] @ codes[:, sl].T + x[:, sl].sum(1, keepdims=True) * zero[:, g]
        a += part * scale[:, g]
    return gamma(-(-kp // LANES) + SLOTS[bits] + scale.shape[1] + 8) * a
