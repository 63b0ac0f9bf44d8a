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
from lowbit.runtime.kernels.binary_gemm import BLOCK, counts_left
from lowbit.runtime.kernels.popcount import popcount
from lowbit.runtime.kernels.simd import vadd, vconvert, vget, vload, vmul, vsplat, vstore

_F64 = np.float64(0)
_F32 = np.float32(0)


@njit(cache=True, parallel=True)
def _pack_nchw(idx, table, cg, out):  # pragma: no cover - compiled
    """out[g, n, h, w, u] = channel bits ``table[idx[n, c, h, w]]`` of group g."""
    n_img, c_all, h, w = idx.shape
    groups, words = out.shape[0], out.shape[4]
    for t in prange(n_img * h):
        n, y = t // h, t % h
        for g in range(groups):
            for x in range(w):
                for u in range(words):
                    out[g, n, y, x, u] = 0
        for c in range(c_all):
            g, cc = c // cg, c % cg
            sh = np.uint64(cc % 64)
            for x in range(w):
                out[g, n, y, x, cc // 64] |= np.uint64(table[idx[n, c, y, x]]) << sh


def pack_nchw(idx: np.ndarray, table: np.ndarray, groups: int) -> np.ndarray:
    """(N, C, H, W) ranks (or uint8 bits with ``table = [0, 1]``) -> (G, N, H, W, ceil(C_g/64))
    words of ``table[idx]``, channels last per group."""
    n, c, h, w = idx.shape
    cg = c // groups
    out = np.empty((groups, n, h, w, -(-cg // 64)), np.uint64)
    _pack_nchw(np.ascontiguousarray(idx), table, cg, out)
    return out


@njit(cache=True, parallel=True)
def _gather(img, cg, kh, kw, sh, sw, ph, pw, dh, dw, ow, ohw, out, pa):  # pragma: no cover
    """Window bits of every output pixel into blocks ``out`` (N*PB, words, 16); ``pa``:
    each window's popcount (N, PB*16)."""
    n_img, h, w, wc = img.shape
    nblk, words = out.shape[0], out.shape[1]
    ppb = nblk // n_img
    for b in prange(nblk):
        n, p0 = b // ppb, (b % ppb) * BLOCK
        for lane in range(BLOCK):
            for k in range(words):
                out[b, k, lane] = 0
            p, cnt = p0 + lane, np.uint64(0)
            if p < ohw:
                oy, ox = p // ow, p % ow
                for i in range(kh):
                    iy = oy * sh - ph + i * dh
                    if iy < 0 or iy >= h:
                        continue
                    for j in range(kw):
                        ix = ox * sw - pw + j * dw
                        if ix < 0 or ix >= w:
                            continue
                        bit0 = (i * kw + j) * cg
                        for u in range(wc):
                            v = img[n, iy, ix, u]
                            cnt += popcount(v)
                            bit = bit0 + 64 * u
                            wd, s = bit // 64, bit % 64
                            out[b, wd, lane] |= v << np.uint64(s)
                            if s > 0 and wd + 1 < words:
                                out[b, wd + 1, lane] |= v >> np.uint64(64 - s)
            pa[n, p] = np.int64(cnt)


def gather(img: np.ndarray, layer, hw_out) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of the window bits of one group's packed image (N, H, W, Wc), and their
    popcounts."""
    n = img.shape[0]
    kh, kw = layer.weight.shape[2:]
    cg = layer.weight.shape[1]
    ohw = hw_out[0] * hw_out[1]
    ppb = -(-ohw // BLOCK)
    words = -(-kh * kw * cg // 64)
    out = np.empty((n * ppb, words, BLOCK), np.uint64)
    pa = np.empty((n, ppb * BLOCK), np.int64)
    (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
    _gather(img, cg, kh, kw, sh, sw, ph, pw, dh, dw, hw_out[1], ohw, out, pa)
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
    a = vadd(vmul(v, vsplat(alpha)), vsplat(beta[ch]))
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
