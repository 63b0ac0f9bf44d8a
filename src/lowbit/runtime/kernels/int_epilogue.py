"""The integer path's passes around the GEMM (:mod:`lowbit.runtime.kernels.int_gemm`):
activation ranks to the kernel's codes (rows of a linear layer, a padded NHWC copy for a
convolution) and the fused float epilogue, ``float32(float64(acc) * s_a s_w) + bias`` then
BatchNorm's ``x * a + b`` in float32 -- the reference's operations in its order (no fast-math),
so outputs equal the reference bit for bit (:mod:`lowbit.runtime.kernels.integer`).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


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
