"""Binary GEMM on bit-packed rows (numba): ``popcount(x XOR w)`` / ``popcount(x AND w)`` of
every row pair, with a register-tiled micro-kernel and the fused float epilogue of a layer.

Packing (as :func:`lowbit.runtime.layers.pack_rows`): bit k of a row at bit k % 64 of word
k // 64, the bits past K zero (so they add nothing to either popcount). The right operand is
*blocked* once (:func:`block_words`): (ceil(N/16), W, 16) uint64, block b holding rows
16b..16b+15 with word k of the 16 rows contiguous.

Micro-kernel (:func:`_tile4`): 4 left rows x one block of 16 right rows, 8 vector
accumulators of 8 uint64 lanes (:mod:`lowbit.runtime.kernels.simd`); per word k it loads two
vectors of the block, broadcasts the 4 words ``x[r, k]`` and does 8 x (XOR/AND, ``vpopcntq``,
add). Outputs sit in the lanes: no horizontal sums, and the epilogue is vectorized too.
Blocking: a work item (one ``prange`` index) is a block of up to 64 left rows x as many right
blocks as fit ~128 KiB (L2); inside, each 4-row tile runs against every right block of the item.

Exact: integer popcounts and adds; the epilogue is ``acc * scale`` in float64, rounded once to
float32, ``+ bias``, ``* a + b`` in float32 without FMA, the operations of the reference
(:func:`lowbit.runtime.layers._scale_rows`, ``Layer._epilogue``, ``ops.batchnorm``).
Tests: tests/runtime/kernels/test_binary.py.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from lowbit.runtime.kernels.popcount import popcount
from lowbit.runtime.kernels.simd import (
    vadd,
    vand,
    vconvert,
    vget,
    vload,
    vmul,
    vpopcnt,
    vsplat,
    vstore,
    vsub,
    vxor,
)

BLOCK = 16  # right rows per block: two 8-lane vectors
_L2_BYTES = 1 << 17  # the right-hand bytes one work item keeps hot
_ROWS = 64  # left rows per work item
_U0 = np.uint64(0)
_F64 = np.float64(0)
_F32 = np.float32(0)
_I64 = np.int64(0)
_I32 = np.int32(0)


def aligned_zeros(shape, dtype, align: int = 64) -> np.ndarray:
    """Zeros whose data starts on an ``align``-byte boundary (whole cache lines per block)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    raw = np.zeros(n + align, np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start:start + n].view(dtype).reshape(shape)


def block_words(w: np.ndarray) -> np.ndarray:
    """(N, W) uint64 rows -> (ceil(N/16), W, 16) blocks (rows past N zero)."""
    n, words = w.shape
    nb = -(-n // BLOCK)
    out = aligned_zeros((nb * BLOCK, words), np.uint64)
    out[:n] = w
    blocked = aligned_zeros((nb, words, BLOCK), np.uint64)
    blocked[...] = out.reshape(nb, BLOCK, words).transpose(0, 2, 1)
    return blocked


def padded(v, n: int, dtype) -> np.ndarray:
    """``v`` (scalar or (n,)) as a 1-d array of ``dtype`` padded with zeros to whole blocks."""
    out = np.zeros(-(-n // BLOCK) * BLOCK, dtype)
    out[:n] = np.broadcast_to(np.asarray(v), (n,))
    return out


def work_split(m: int, nb: int, words: int) -> tuple[int, int]:
    """(left rows, right blocks) per work item."""
    return _ROWS, max(1, _L2_BYTES // (max(words, 1) * BLOCK * 8) if nb > 1 else 1)


# -- packing ----------------------------------------------------------------------------
@njit(cache=True, parallel=True)
def _pack_signs(x, out):  # pragma: no cover - compiled
    m, k = x.shape
    words = out.shape[1]
    for t in prange(m * words):
        r, u = t // words, t % words
        acc = _U0
        for j in range(min(64, k - u * 64)):
            if x[r, u * 64 + j] > 0:
                acc |= np.uint64(1) << np.uint64(j)
        out[r, u] = acc


@njit(cache=True, parallel=True)
def _pack_ranks(ranks, table, out):  # pragma: no cover - compiled
    m, k = ranks.shape
    words = out.shape[1]
    for t in prange(m * words):
        r, u = t // words, t % words
        acc = _U0
        for j in range(min(64, k - u * 64)):
            acc |= np.uint64(table[ranks[r, u * 64 + j]]) << np.uint64(j)
        out[r, u] = acc


def pack_signs(x: np.ndarray) -> np.ndarray:
    """(M, K) array -> (M, ceil(K/64)) uint64 words of ``x > 0`` (layers.pack_rows's layout)."""
    x = np.ascontiguousarray(x)
    out = np.empty((x.shape[0], -(-x.shape[1] // 64)), np.uint64)
    _pack_signs(x, out)
    return out


def pack_ranks(ranks: np.ndarray, table: np.ndarray) -> np.ndarray:
    """(M, K) ranks of a grid -> words of ``table[ranks]`` (``table``: uint8, 1 = bit set)."""
    ranks = np.ascontiguousarray(ranks)
    out = np.empty((ranks.shape[0], -(-ranks.shape[1] // 64)), np.uint64)
    _pack_ranks(ranks, table, out)
    return out


# -- micro-kernels ----------------------------------------------------------------------
@njit(inline="always")
def _pop(acc, x, y, xor):  # pragma: no cover - compiled
    return vadd(acc, vpopcnt(vxor(x, y) if xor else vand(x, y)))


@njit(inline="always")
def _tile4(x, r0, r1, r2, r3, yb, b, words, xor):  # pragma: no cover - compiled
    """popcount(x[r] op yb[b]) for 4 rows r of ``x``: 8 vectors (row-major, 2 per row)."""
    z = vsplat(_U0)
    s00 = s01 = s10 = s11 = s20 = s21 = s30 = s31 = z
    base = b * words * BLOCK
    for k in range(words):
        y0 = vload(yb, base + k * BLOCK)
        y1 = vload(yb, base + k * BLOCK + 8)
        v = vsplat(x[r0, k])
        s00 = _pop(s00, v, y0, xor)
        s01 = _pop(s01, v, y1, xor)
        v = vsplat(x[r1, k])
        s10 = _pop(s10, v, y0, xor)
        s11 = _pop(s11, v, y1, xor)
        v = vsplat(x[r2, k])
        s20 = _pop(s20, v, y0, xor)
        s21 = _pop(s21, v, y1, xor)
        v = vsplat(x[r3, k])
        s30 = _pop(s30, v, y0, xor)
        s31 = _pop(s31, v, y1, xor)
    return s00, s01, s10, s11, s20, s21, s30, s31


@njit(inline="always")
def _tile1(x, r, yb, b, words, xor):  # pragma: no cover - compiled
    s0 = s1 = vsplat(_U0)
    base = b * words * BLOCK
    for k in range(words):
        v = vsplat(x[r, k])
        s0 = _pop(s0, v, vload(yb, base + k * BLOCK), xor)
        s1 = _pop(s1, v, vload(yb, base + k * BLOCK + 8), xor)
    return s0, s1


@njit(inline="always")
def counts4(x, r0, r1, r2, r3, yb, yn, b, words, xor, dual):  # pragma: no cover - compiled
    """Tile counts as int64 vectors; ``dual``: ``popcount(x & yb) - popcount(x & yn)``."""
    s = _tile4(x, r0, r1, r2, r3, yb, b, words, xor)
    c = (vconvert(s[0], _I64), vconvert(s[1], _I64), vconvert(s[2], _I64),
         vconvert(s[3], _I64), vconvert(s[4], _I64), vconvert(s[5], _I64),
         vconvert(s[6], _I64), vconvert(s[7], _I64))
    if dual:
        t = _tile4(x, r0, r1, r2, r3, yn, b, words, xor)
        c = (vsub(c[0], vconvert(t[0], _I64)), vsub(c[1], vconvert(t[1], _I64)),
             vsub(c[2], vconvert(t[2], _I64)), vsub(c[3], vconvert(t[3], _I64)),
             vsub(c[4], vconvert(t[4], _I64)), vsub(c[5], vconvert(t[5], _I64)),
             vsub(c[6], vconvert(t[6], _I64)), vsub(c[7], vconvert(t[7], _I64)))
    return c


@njit(inline="always")
def counts_left(x, xn, r0, r1, r2, r3, yb, b, words, xor, dual):  # pragma: no cover
    """As :func:`counts4` with the two planes on the left: ``x`` and ``xn`` rows."""
    c = counts4(x, r0, r1, r2, r3, yb, yb, b, words, xor, False)
    if dual:
        t = counts4(xn, r0, r1, r2, r3, yb, yb, b, words, xor, False)
        c = (vsub(c[0], t[0]), vsub(c[1], t[1]), vsub(c[2], t[2]), vsub(c[3], t[3]),
             vsub(c[4], t[4]), vsub(c[5], t[5]), vsub(c[6], t[6]), vsub(c[7], t[7]))
    return c


@njit(inline="always")
def _counts1(x, r, yb, yn, b, words, xor, dual):  # pragma: no cover - compiled
    s = _tile1(x, r, yb, b, words, xor)
    c0, c1 = vconvert(s[0], _I64), vconvert(s[1], _I64)
    if dual:
        t = _tile1(x, r, yn, b, words, xor)
        c0, c1 = vsub(c0, vconvert(t[0], _I64)), vsub(c1, vconvert(t[1], _I64))
    return c0, c1


# -- GEMMs: rows of x against the blocked rows of y -------------------------------------
@njit(inline="always")
def times(v, alpha):  # pragma: no cover - compiled
    """``alpha * v`` of an int64 vector, by adds for the paths' alphas (1, 2, -2)."""
    if alpha == 1:
        return v
    if alpha == 2:
        return vadd(v, v)
    if alpha == -2:
        return vsub(vsplat(np.int64(0)), vadd(v, v))
    return vmul(v, vsplat(alpha))


@njit(inline="always")
def _put_raw(out, r, col, n, c, alpha, base):  # pragma: no cover - compiled
    v = vconvert(vadd(times(c, alpha), vsplat(base)), _I32)
    if col + 8 <= n:
        vstore(out, r * n + col, v)
    else:
        for lane in range(n - col):
            out[r, col + lane] = vget(v, lane)


@njit(inline="always")
def _put_layer(y, acc_out, trace, r, col, n, c, pa_r, alpha, beta, gamma, sc, bias, bn_a, bn_b,
               has_bias, has_bn):  # pragma: no cover - compiled
    """One output vector of a linear layer: ``acc = alpha c + beta + gamma pa``, then the
    float epilogue (scale, bias, BatchNorm's ``x * a + b``)."""
    acc = vadd(times(c, alpha), vload(beta, col))
    if gamma != 0:
        acc = vadd(acc, vsplat(gamma * pa_r))
    v = vconvert(vmul(vconvert(acc, _F64), vload(sc, col)), _F32)
    if has_bias:
        v = vadd(v, vload(bias, col))
    if has_bn:
        v = vadd(vmul(v, vload(bn_a, col)), vload(bn_b, col))
    if col + 8 <= n:
        vstore(y, r * n + col, v)
        if trace:
            vstore(acc_out, r * n + col, acc)
    else:
        for lane in range(n - col):
            y[r, col + lane] = vget(v, lane)
            if trace:
                acc_out[r, col + lane] = vget(acc, lane)


@njit(inline="always")
def row_pop(x, r, words):  # pragma: no cover - compiled
    s = _U0
    for k in range(words):
        s += popcount(x[r, k])
    return np.int64(s)


@njit(inline="always")
def _put2(raw, out, alpha, base, y, acc, trace, ep, arrays, r, col, n, c0, c1,
          pa_r):  # pragma: no cover - compiled
    """Store the two vectors of row r at columns col..col+15 (those below n)."""
    e_alpha, gamma, has_bias, has_bn = ep
    beta, sc, bias, bn_a, bn_b = arrays
    for h in range(2):
        if col + 8 * h < n:
            c = c0 if h == 0 else c1
            if raw:
                _put_raw(out, r, col + 8 * h, n, c, alpha, base)
            else:
                _put_layer(y, acc, trace, r, col + 8 * h, n, c, pa_r, e_alpha, beta, gamma, sc,
                           bias, bn_a, bn_b, has_bias, has_bn)


@njit(inline="always")
def _gemm(x, yb, yn, n, mb, nbb, xor, dual, raw, out, alpha, base, y, acc, trace, ep, beta, sc,
          bias, bn_a, bn_b):  # pragma: no cover - compiled
    """Rows of x against the n rows of blocked yb: ``raw`` -> int32 ``out = alpha * count +
    base``; else the layer epilogue into float32 ``y`` (and int64 ``acc`` when ``trace``),
    ``ep = (alpha, gamma, has_bias, has_bn)`` with the per-column arrays beta .. bn_b."""
    m, words = x.shape
    nb = yb.shape[0]
    gamma = ep[1]
    items_c = (nb + nbb - 1) // nbb
    for t in prange(((m + mb - 1) // mb) * items_c):
        i0, j0 = (t // items_c) * mb, (t % items_c) * nbb
        i1, j1 = min(m, i0 + mb), min(nb, j0 + nbb)
        arrays = (beta, sc, bias, bn_a, bn_b)
        i = i0
        while i + 4 <= i1:
            pa0 = pa1 = pa2 = pa3 = _I64
            if not raw and gamma != 0:
                pa0, pa1 = row_pop(x, i, words), row_pop(x, i + 1, words)
                pa2, pa3 = row_pop(x, i + 2, words), row_pop(x, i + 3, words)
            for b in range(j0, j1):
                c = counts4(x, i, i + 1, i + 2, i + 3, yb, yn, b, words, xor, dual)
                col = b * BLOCK
                _put2(raw, out, alpha, base, y, acc, trace, ep, arrays, i, col, n, c[0], c[1], pa0)
                _put2(raw, out, alpha, base, y, acc, trace, ep, arrays, i + 1, col, n, c[2], c[3],
                      pa1)
                _put2(raw, out, alpha, base, y, acc, trace, ep, arrays, i + 2, col, n, c[4], c[5],
                      pa2)
                _put2(raw, out, alpha, base, y, acc, trace, ep, arrays, i + 3, col, n, c[6], c[7],
                      pa3)
            i += 4
        while i < i1:  # the last rows one by one
            pa0 = row_pop(x, i, words) if not raw and gamma != 0 else _I64
            for b in range(j0, j1):
                c0, c1 = _counts1(x, i, yb, yn, b, words, xor, dual)
                _put2(raw, out, alpha, base, y, acc, trace, ep, arrays, i, b * BLOCK, n, c0, c1,
                      pa0)
            i += 1


NO_RAW = np.zeros((0, 0), np.int32)  # the int32 output a layer kernel does not write
_NO = (np.zeros((0, 0), np.float32), np.zeros((0, 0), np.int64), np.zeros(0, np.int64),
       np.zeros(0), np.zeros(0, np.float32))  # the layer arrays a raw kernel does not use


@njit(cache=True, parallel=True)
def _raw_xor(x, yb, n, mb, nbb, out, alpha, base, y, acc, i64, f64, f32):  # pragma: no cover
    _gemm(x, yb, yb, n, mb, nbb, True, False, True, out, alpha, base, y, acc, False,
          (alpha, alpha, False, False), i64, f64, f32, f32, f32)


@njit(cache=True, parallel=True)
def _raw_and(x, yb, n, mb, nbb, out, alpha, base, y, acc, i64, f64, f32):  # pragma: no cover
    _gemm(x, yb, yb, n, mb, nbb, False, False, True, out, alpha, base, y, acc, False,
          (alpha, alpha, False, False), i64, f64, f32, f32, f32)


@njit(cache=True, parallel=True)
def _raw_and2(x, yb, yn, n, mb, nbb, out, alpha, base, y, acc, i64, f64,
              f32):  # pragma: no cover - compiled
    _gemm(x, yb, yn, n, mb, nbb, False, True, True, out, alpha, base, y, acc, False,
          (alpha, alpha, False, False), i64, f64, f32, f32, f32)


@njit(cache=True, parallel=True)
def layer_xor(x, yb, n, mb, nbb, y, acc, trace, ep, beta, sc, bias, bn_a, bn_b,
              raw0):  # pragma: no cover - compiled
    _gemm(x, yb, yb, n, mb, nbb, True, False, False, raw0, ep[0], ep[0], y, acc, trace, ep,
          beta, sc, bias, bn_a, bn_b)


@njit(cache=True, parallel=True)
def layer_and(x, yb, n, mb, nbb, y, acc, trace, ep, beta, sc, bias, bn_a, bn_b,
              raw0):  # pragma: no cover - compiled
    _gemm(x, yb, yb, n, mb, nbb, False, False, False, raw0, ep[0], ep[0], y, acc, trace, ep,
          beta, sc, bias, bn_a, bn_b)


@njit(cache=True, parallel=True)
def layer_and2(x, yb, yn, n, mb, nbb, y, acc, trace, ep, beta, sc, bias, bn_a, bn_b,
               raw0):  # pragma: no cover - compiled
    _gemm(x, yb, yn, n, mb, nbb, False, True, False, raw0, ep[0], ep[0], y, acc, trace, ep,
          beta, sc, bias, bn_a, bn_b)


def _blocked(w) -> tuple[np.ndarray, int]:
    if isinstance(w, tuple):  # (block_words(w), N)
        return w
    return block_words(np.ascontiguousarray(w, dtype=np.uint64)), w.shape[0]


def _raw(kernel, a, planes, alpha: int, base: int, out):
    a = np.ascontiguousarray(a, dtype=np.uint64)
    blocks = [_blocked(w) for w in planes]
    n = blocks[0][1]
    if out is None:
        out = np.empty((a.shape[0], n), np.int32)
    mb, nbb = work_split(a.shape[0], blocks[0][0].shape[0], a.shape[1])
    kernel(a, *[b for b, _ in blocks], n, mb, nbb, out, np.int64(alpha), np.int64(base), *_NO)
    return out


def xnor_gemm(a: np.ndarray, w, k: int, out: np.ndarray | None = None) -> np.ndarray:
    """±1 x ±1 dot products of packed rows: int32 (M, N) of ``k - 2 popcount(a XOR w)``
    (XNOR-Net, Rastegari et al. 2016, sec. 3.2). ``a``: (M, W) words; ``w``: (N, W) words or
    ``(block_words(w), N)``, packed once; ``out``: an int32 (M, N) array to fill."""
    return _raw(_raw_xor, a, [w], -2, k, out)


def and_gemm(a: np.ndarray, w, out: np.ndarray | None = None) -> np.ndarray:
    """int32 (M, N) of ``popcount(a AND w)`` ({0,1} x ±1: dot = 2 and_gemm - popcount(a))."""
    return _raw(_raw_and, a, [w], 1, 0, out)


def ternary_gemm(a: np.ndarray, wp, wn, out: np.ndarray | None = None) -> np.ndarray:
    """int32 (M, N) of ``popcount(a AND p) - popcount(a AND n)``: {0,1} activations x ternary
    weights ``w = p - n`` (two bit-planes)."""
    return _raw(_raw_and2, a, [wp, wn], 1, 0, out)
