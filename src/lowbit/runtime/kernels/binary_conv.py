"""Binary convolution (numba) without a float im2col: the coded input is packed once,
channels last (each pixel's C_g channel bits in ceil(C_g/64) words per group), then every
output pixel's window is gathered as bits into the blocked layout of
:mod:`lowbit.runtime.kernels.binary_gemm` (16 pixels per block, row bit ``t * C_g + c`` for
kernel tap t and channel c), and the weights' rows are the broadcast operand of its
micro-kernel: the lanes hold 8 consecutive output pixels of one channel, so the fused epilogue
stores NCHW vectors directly.

Padding: a tap outside the input gathers 0 bits, which the ±1 paths (xnor; ternary with ±1
activations) read as -1; the layer adds ``sum over those taps of w`` back (``corr``, computed
once per input size), so the accumulator is the training sum over valid taps only (0 * w for
a pad), the reference's pad correction. The {0,1} paths need none (a 0 bit adds 0).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from lowbit.runtime import ops
from lowbit.runtime.kernels.binary_gemm import BLOCK, counts_left, times
from lowbit.runtime.kernels.popcount import popcount
from lowbit.runtime.kernels.simd import (
    vadd,
    vconvert,
    veven,
    vget,
    vload,
    vmul,
    vor,
    vpopcnt,
    vshl,
    vshr,
    vsplat,
    vstore,
    vsub,
)

_F64 = np.float64(0)
_F32 = np.float32(0)


@njit(inline="always")
def _pack_rows(idx, table, r0, cg, ph, pw, out, t):  # pragma: no cover - compiled
    """Input row t = (n, y) of every channel into the zero-padded planes ``out``; the bit of
    a rank is ``rank >= r0`` (r0 >= 0: a monotone table; 8 pixels a vector) else
    ``table[rank]``."""
    c_all, h, w = idx.shape[1], idx.shape[2], idx.shape[3]
    n, y = t // h, t % h
    wide = w - w % 8 if r0 >= 0 else 0
    below = vsplat(np.int64(r0 - 1))
    for c in range(c_all):
        g, cc = c // cg, c % cg
        sh = np.uint64(cc & 63)
        row = out[g, n, y + ph, cc >> 6]
        src = ((n * c_all + c) * h + y) * w
        for x in range(0, wide, 8):  # r0 - 1 - rank < 0 <=> rank >= r0: the sign bit
            ranks = vconvert(vload(idx, src + x), np.int64(0))
            bits = vshr(vconvert(vsub(below, ranks), np.uint64(0)), vsplat(np.uint64(63)))
            p = x + pw
            vstore(row, p, vor(vload(row, p), vshl(bits, vsplat(sh))))
        for x in range(wide, w):
            b = idx[n, c, y, x] >= r0 if r0 >= 0 else table[idx[n, c, y, x]] != 0
            row[x + pw] |= np.uint64(b) << sh


@njit(cache=True, parallel=True)
def _pack_nchw(idx, table, r0, cg, ph, pw, out):  # pragma: no cover - compiled
    for t in prange(idx.shape[0] * idx.shape[2]):
        _pack_rows(idx, table, r0, cg, ph, pw, out, t)


def pack_nchw(idx: np.ndarray, table: np.ndarray, groups: int, padding=(0, 0)) -> np.ndarray:
    """(N, C, H, W) ranks (or uint8 bits with ``table = [0, 1]``) -> (G, N, H + 2 ph,
    ceil(C_g/64), W + 2 pw + 8) words of ``table[idx]``: per group, each pixel's channel bits
    (word u of pixel (y, x) at ``[g, n, y + ph, u, x + pw]``), 0 in the padding (and in 8
    spare columns, so that a vector load never leaves the array)."""
    n, c, h, w = idx.shape
    cg = c // groups
    ph, pw = padding
    out = np.zeros((groups, n, h + 2 * ph, -(-cg // 64), w + 2 * pw + 8), np.uint64)
    step = np.flatnonzero(table)
    r0 = int(step[0]) if step.size and np.all(table[step[0]:] == 1) else -1
    if not step.size:
        return out
    _pack_nchw(np.ascontiguousarray(idx), table, r0, cg, ph, pw, out)
    return out


@njit(inline="always")
def _window_vec(img, n, oy, ox, kh, kw, sh, sw, dh, dw, cg, blk, h0):  # pragma: no cover
    """The windows of 8 output pixels (oy, ox..ox+7) of one output row, stride 1 or 2 along
    the row: per tap and channel word one vector load of the padded planes (stride 2: two,
    and their even lanes)."""
    wc, words = img.shape[2], blk.shape[0]
    cnt = vsplat(np.uint64(0))
    for i in range(kh):
        for u in range(wc):
            base = ((n * img.shape[1] + oy * sh + i * dh) * wc + u) * img.shape[3] + ox * sw
            for j in range(kw):
                v = vload(img, base + j * dw)
                if sw == 2:
                    v = veven(v, vload(img, base + j * dw + 8))
                cnt = vadd(cnt, vpopcnt(v))
                bit = (i * kw + j) * cg + 64 * u
                wd, s = bit >> 6, np.uint64(bit & 63)
                off = wd * BLOCK + h0
                vstore(blk, off, vor(vload(blk, off), vshl(v, vsplat(s))))
                if s > 0 and wd + 1 < words:
                    r = vshr(v, vsplat(np.uint64(64) - s))
                    vstore(blk, off + BLOCK, vor(vload(blk, off + BLOCK), r))
    return cnt


@njit(inline="always")
def _window(img, n, oy, ox, kh, kw, sh, sw, dh, dw, cg, blk, lane):  # pragma: no cover
    """The window of one output pixel into column ``lane`` of ``blk``; its popcount."""
    wc, words = img.shape[2], blk.shape[0]
    cnt = np.uint64(0)
    for i in range(kh):
        for j in range(kw):
            bit0 = (i * kw + j) * cg
            for u in range(wc):
                v = img[n, oy * sh + i * dh, u, ox * sw + j * dw]
                cnt += popcount(v)
                bit = bit0 + 64 * u
                wd, s = bit >> 6, np.uint64(bit & 63)
                blk[wd, lane] |= v << s
                if s > 0 and wd + 1 < words:
                    blk[wd + 1, lane] |= v >> (np.uint64(64) - s)
    return np.int64(cnt)


@njit(cache=True, parallel=True)
def _gather(img, cg, kh, kw, sh, sw, dh, dw, ow, ohw, out, pa):  # pragma: no cover
    """Window bits of every output pixel into blocks ``out`` (N*PB, words, 16) from the
    padded planes ``img`` (N, Hp, wc, Wp); ``pa``: each window's popcount (N, PB*16)."""
    nblk, words = out.shape[0], out.shape[1]
    ppb = nblk // img.shape[0]
    for b in prange(nblk):
        n = b // ppb
        p0 = (b - n * ppb) * BLOCK
        blk = out[b]
        for k in range(words):
            for lane in range(BLOCK):
                blk[k, lane] = 0
        for h0 in range(0, BLOCK, 8):
            p = p0 + h0
            oy = p // ow
            ox = p - oy * ow
            if sw <= 2 and p + 8 <= ohw and ox + 8 <= ow:  # 8 pixels of one row
                cnt = vconvert(_window_vec(img, n, oy, ox, kh, kw, sh, sw, dh, dw, cg, blk,
                                           h0), np.int64(0))
                vstore(pa, n * pa.shape[1] + p, cnt)
                continue
            for lane in range(h0, h0 + 8):
                if p0 + lane < ohw:
                    pa[n, p0 + lane] = _window(img, n, oy, ox, kh, kw, sh, sw, dh, dw, cg,
                                               blk, lane)
                    ox += 1
                    if ox == ow:
                        ox, oy = 0, oy + 1
                else:
                    pa[n, p0 + lane] = 0


def gather(img: np.ndarray, layer, hw_out) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of the window bits of one group's padded planes (N, Hp, wc, Wp), and their
    popcounts."""
    n = img.shape[0]
    kh, kw = layer.weight.shape[2:]
    cg = layer.weight.shape[1]
    ohw = hw_out[0] * hw_out[1]
    ppb = -(-ohw // BLOCK)
    words = -(-kh * kw * cg // 64)
    out = np.empty((n * ppb, words, BLOCK), np.uint64)
    pa = np.empty((n, ppb * BLOCK), np.int64)
    (sh, sw), (dh, dw) = layer.stride, layer.dilation
    _gather(img, cg, kh, kw, sh, sw, dh, dw, hw_out[1], ohw, out, pa)
    return out, pa


def pad_corr(layer, ints: np.ndarray, hw_in) -> np.ndarray:
    """(Cout_g, PB*16) int64: for each channel and output position, ``sum w`` over the taps
    outside the input (ints: the group's (Cout_g, C_g, kh, kw) integer weights)."""
    kh, kw = ints.shape[2:]
    geo = (layer.stride, layer.padding, layer.dilation)
    oh, ow = ops.out_hw(hw_in, (kh, kw), *geo)
    ones = np.ones((1, 1, *hw_in), np.int8)
    inside = ops.im2col(ones, (kh, kw), *geo, order="hwc")[0]  # (OH*OW, kh*kw)
    tap_sums = ints.sum(axis=1).reshape(ints.shape[0], kh * kw)
    corr = (1 - inside.astype(np.int64)) @ tap_sums.T.astype(np.int64)
    out = np.zeros((ints.shape[0], -(-oh * ow // BLOCK) * BLOCK), np.int64)
    out[:, :oh * ow] = corr.T
    return out


@njit(inline="always")
def _put(y, acc, trace, n, ch, c_off, p, ohw, v, ep, beta, sc, bias, bn_a, bn_b, pa,
         corr):  # pragma: no cover - compiled
    """One vector of 8 output pixels p.. of channel ch: ``acc = alpha v + beta + gamma pa +
    corr``, then scale, bias, BatchNorm; stored into y (N, C, OH*OW)."""
    alpha, gamma, has_bias, has_bn, has_corr = ep
    if p >= ohw:
        return
    a = vadd(times(v, alpha), vsplat(beta[ch]))
    if gamma != 0:
        a = vadd(a, vmul(vload(pa, n * pa.shape[1] + p), vsplat(gamma)))
    if has_corr:
        a = vadd(a, vload(corr, ch * corr.shape[1] + p))
    f = vconvert(vmul(vconvert(a, _F64), vsplat(sc[ch])), _F32)
    if has_bias:
        f = vadd(f, vsplat(bias[ch]))
    if has_bn:
        f = vadd(vmul(f, vsplat(bn_a[ch])), vsplat(bn_b[ch]))
    off = (n * y.shape[1] + c_off + ch) * ohw + p
    if p + 8 <= ohw:
        vstore(y, off, f)
    else:
        for lane in range(ohw - p):
            y[n, c_off + ch, p + lane] = vget(f, lane)
    if trace:
        for lane in range(min(8, ohw - p)):
            acc[n * ohw + p + lane, ch] = vget(a, lane)


@njit(inline="always")
def _conv(wx, wn, yb, ppb, ohw, xor, dual, y, c_off, acc, trace, ep, beta, sc, bias, bn_a,
          bn_b, pa, corr):  # pragma: no cover - compiled
    cout, words = wx.shape
    for b in prange(yb.shape[0]):
        n, p = b // ppb, (b % ppb) * BLOCK
        for o in range(0, cout, 4):
            r1, r2, r3 = min(o + 1, cout - 1), min(o + 2, cout - 1), min(o + 3, cout - 1)
            c = counts_left(wx, wn, o, r1, r2, r3, yb, b, words, xor, dual)
            for q in range(min(4, cout - o)):
                for h in range(2):
                    _put(y, acc, trace, n, o + q, c_off, p + 8 * h, ohw, c[2 * q + h], ep, beta,
                         sc, bias, bn_a, bn_b, pa, corr)


@njit(cache=True, parallel=True)
def conv_xor(wx, wn, yb, ppb, ohw, y, c_off, acc, trace, ep, beta, sc, bias, bn_a, bn_b, pa,
             corr):  # pragma: no cover - compiled
    _conv(wx, wn, yb, ppb, ohw, True, False, y, c_off, acc, trace, ep, beta, sc, bias, bn_a,
          bn_b, pa, corr)


@njit(cache=True, parallel=True)
def conv_and(wx, wn, yb, ppb, ohw, y, c_off, acc, trace, ep, beta, sc, bias, bn_a, bn_b, pa,
             corr):  # pragma: no cover - compiled
    _conv(wx, wn, yb, ppb, ohw, False, False, y, c_off, acc, trace, ep, beta, sc, bias, bn_a,
          bn_b, pa, corr)


@njit(cache=True, parallel=True)
def conv_and2(wx, wn, yb, ppb, ohw, y, c_off, acc, trace, ep, beta, sc, bias, bn_a, bn_b, pa,
              corr):  # pragma: no cover - compiled
    _conv(wx, wn, yb, ppb, ohw, False, True, y, c_off, acc, trace, ep, beta, sc, bias, bn_a,
          bn_b, pa, corr)
