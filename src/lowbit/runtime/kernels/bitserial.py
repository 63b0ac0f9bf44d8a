"""Bit-serial low-bit GEMM: k-bit activations x m-bit weights as AND-popcounts of bit-planes.

DoReFa-Net (Zhou et al. 2016, arXiv:1606.06160, sec. 2.1): for unsigned codes
``u = sum_i 2^i u_i`` (k bits) and ``v = sum_j 2^j v_j`` (m bits) along K,

    dot(u, v) = sum_i sum_j 2^(i+j) popcount(and(u_i, v_j)),

with every plane packed 64 values to a uint64 word. Signed or shifted grids: activations
``a = u + za`` and weights ``w = v + zw`` (``za``, ``zw`` the smallest integers of the two grids)
give ``dot(a, w) = dot(u, v) + zw sum(u) + za sum(v) + K za zw``; ``sum(u) = sum_i 2^i
popcount(u_i)`` per row and ``sum(v)`` per weight row are exact integer corrections
(:func:`correct`). K is padded with zero bits to a multiple of 64 (no pad enters the sums).

Layout: plane pairs with the same shift ``s = i + j`` are laid end to end, so one row is a
single binary vector of ``k m W`` words (W = K / 64) cut into ``k + m - 1`` segments, and the
kernel sums ``2^s`` times the AND-popcount of each segment (a 2 x 4 register tile, popcounts
through LLVM's ``ctpop``: ``vpopcntq`` with AVX-512 VPOPCNTDQ, a ``vpshufb`` nibble table with
AVX2). Exact: integer instructions only.

When it beats the int8 kernel (:mod:`lowbit.runtime.kernels.integer`), measured at one thread
(``bench_cases``; AMD EPYC Zen 3, AVX2, no VPOPCNTDQ, a busy machine): its time grows as k m
(one binary GEMM per plane pair) while the int8 kernel's does not, and it was slower for every
k, m in 1..4 but w1a1 -- time(int8) / time(bit-serial) at 1024^3: 0.94 (w1a1), 0.50 (w2a1),
0.41 (w1a2), 0.20 (w2a2), 0.07 (w4a4); at M=64, K=N=4096: 1.22, 0.47, 0.56, 0.26, 0.07. A 1-bit
x 1-bit layer takes the xnor / binary01 kernels, so ``integer.build`` never picks this one on
such a CPU (``RULE``). With ``vpopcntq`` the binary ceiling is 11-22x fp32 against int8 VNNI's
4x (docs of issue 11), so there the rule is to be re-measured: k m <= 2 (Sapphire Rapids) to
k m <= 4 (Zen 4) is what the ceilings allow.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from lowbit.runtime.kernels.popcount import popcount

#: ISA -> the (activation bits, weight bits) where this kernel was measured faster than the
#: int8 kernel at one thread (module doc); empty on AVX2 without VPOPCNTDQ, not yet measured
#: elsewhere.
RULE: dict[str, set[tuple[int, int]]] = {"avx2": set()}


def segments(k: int, m: int) -> list[tuple[int, int]]:
    """The (i, j) plane pairs in kernel order: by shift ``s = i + j``, then i."""
    return sorted(((i, j) for i in range(k) for j in range(m)), key=lambda p: (p[0] + p[1], p[0]))


def pack_planes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned codes (R, K) -> (bits, R, ceil(K/64)) uint64 planes (bit b of the codes),
    value k at bit k % 64 of word k // 64, zero past K."""
    r, k = codes.shape
    w = -(-k // 64)
    out = np.zeros((bits, r, w * 8), np.uint8)
    for b in range(bits):
        by = np.packbits(((codes >> b) & 1).astype(bool), axis=1, bitorder="little")
        out[b, :, :by.shape[1]] = by
    return out.view(np.uint64)


def lay_out(planes: np.ndarray, k: int, m: int, side: str, rows_multiple: int) -> np.ndarray:
    """(rows padded to ``rows_multiple``, k m W) uint64: the planes of each pair of
    :func:`segments` end to end (``side`` "a": plane i of the pair, "w": plane j)."""
    idx = [i if side == "a" else j for i, j in segments(k, m)]
    bits, r, w = planes.shape
    rp = -(-r // rows_multiple) * rows_multiple
    out = np.zeros((rp, len(idx) * w), np.uint64)
    out[:r] = planes[idx].transpose(1, 0, 2).reshape(r, -1)
    return out


def seg_table(k: int, m: int, words: int) -> np.ndarray:
    """(k + m - 1, 3) int64: start word, end word and shift of each segment."""
    shifts = [i + j for i, j in segments(k, m)]
    rows = []
    for s in range(k + m - 1):
        first = shifts.index(s)
        rows.append((first * words, (first + shifts.count(s)) * words, s))
    return np.array(rows, np.int64)


@njit(parallel=True, cache=True)
def gemm(a, w, seg, out):
    """``out[r, n] = sum_s 2^s sum_{seg_s} popcount(a[r] & w[n])`` (int64); ``a`` (R, L) with
    R a multiple of 2, ``w`` (N, L) with N a multiple of 4 (module doc)."""
    nt = w.shape[0] // 4
    for t in prange((a.shape[0] // 2) * nt):
        r0, n0 = (t // nt) * 2, (t % nt) * 4
        t00 = t01 = t02 = t03 = t10 = t11 = t12 = t13 = np.int64(0)
        for q in range(seg.shape[0]):
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = np.uint64(0)
            for x in range(seg[q, 0], seg[q, 1]):
                a0, a1 = a[r0, x], a[r0 + 1, x]
                b0, b1, b2, b3 = w[n0, x], w[n0 + 1, x], w[n0 + 2, x], w[n0 + 3, x]
                s00 += popcount(a0 & b0)
                s01 += popcount(a0 & b1)
                s02 += popcount(a0 & b2)
                s03 += popcount(a0 & b3)
                s10 += popcount(a1 & b0)
                s11 += popcount(a1 & b1)
                s12 += popcount(a1 & b2)
                s13 += popcount(a1 & b3)
            sh = seg[q, 2]
            t00 += np.int64(s00) << sh
            t01 += np.int64(s01) << sh
            t02 += np.int64(s02) << sh
            t03 += np.int64(s03) << sh
            t10 += np.int64(s10) << sh
            t11 += np.int64(s11) << sh
            t12 += np.int64(s12) << sh
            t13 += np.int64(s13) << sh
        out[r0, n0], out[r0, n0 + 1], out[r0, n0 + 2], out[r0, n0 + 3] = t00, t01, t02, t03
        out[r0 + 1, n0], out[r0 + 1, n0 + 1] = t10, t11
        out[r0 + 1, n0 + 2], out[r0 + 1, n0 + 3] = t12, t13


class Packed:
    """Weight codes (N, K) of integers ``w = v + zw`` with ``v`` in [0, 2^m), packed once; then
    ``matmul(a_ints, k_bits, za)`` is the exact int64 ``a @ w.T``."""

    def __init__(self, w: np.ndarray, m: int, zw: int, k: int) -> None:
        self.n, self.kdim = w.shape
        self.m, self.k, self.zw = m, k, zw
        v = (w - zw).astype(np.int64)
        if v.min(initial=0) < 0 or v.max(initial=0) >= 2**m:
            raise ValueError(f"weights outside [{zw}, {zw + 2**m - 1}]")
        planes = pack_planes(v, m)
        self.words = planes.shape[2]
        self.w = lay_out(planes, k, m, "w", 4)
        self.seg = seg_table(k, m, self.words)
        self.vsum = v.sum(1)

    def pack_a(self, u: np.ndarray) -> np.ndarray:
        return lay_out(pack_planes(u, self.k), self.k, self.m, "a", 2)

    def matmul(self, a: np.ndarray, za: int) -> np.ndarray:
        u = (a - za).astype(np.int64)
        if u.min(initial=0) < 0 or u.max(initial=0) >= 2**self.k:
            raise ValueError(f"activations outside [{za}, {za + 2**self.k - 1}]")
        out = np.empty((-(-u.shape[0] // 2) * 2, self.w.shape[0]), np.int64)
        gemm(self.pack_a(u), self.w, self.seg, out)
        return correct(out[:u.shape[0], :self.n], u.sum(1), self.vsum, self.kdim, za, self.zw)


def correct(uv: np.ndarray, usum: np.ndarray, vsum: np.ndarray, k: int, za: int,
            zw: int) -> np.ndarray:
    """``dot(u + za, v + zw) = dot(u, v) + zw sum(u) + za sum(v) + K za zw`` (int64)."""
    return uv + zw * usum[:, None] + za * vsum[None, :] + k * za * zw


def bench_cases(m_rows: int, n: int, k: int, rng) -> dict:
    """``bitserial_w2a2`` and ``bitserial_w4a4``: the kernel on pre-packed random codes."""
    cases = {}
    for bits in (2, 4):
        w = rng.integers(0, 2**bits, (n, k))
        a = rng.integers(0, 2**bits, (m_rows, k))
        p = Packed(w, bits, 0, bits)
        ap = p.pack_a(a)
        out = np.empty((ap.shape[0], p.w.shape[0]), np.int64)
        cases[f"bitserial_w{bits}a{bits}"] = (
            lambda ap=ap, p=p, out=out: gemm(ap, p.w, p.seg, out), float(m_rows * n * k))
    return cases
