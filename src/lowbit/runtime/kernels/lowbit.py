"""Low-bit weight GEMV / GEMM with float32 activations, for memory-bound batch sizes (issue 11):
2-, 3- and 4-bit weight codes unpacked in registers, and the ``lookup`` path's exact sums.

**What it computes.** ``y[m, n] = sum_g s[n, g] * sum_{k in g} x[m, k] * (c[n, k] - z[n, g])``:
unsigned codes ``c`` of ``bits`` bits, a scale ``s`` and a zero point ``z`` per output row
(``G = 1``) or per group of ``group_size`` columns. The zero point is folded out,
``sum x (c - z) = sum x c - z sum x`` (llama.cpp's Q4_1 and ORT's MatMulNBits keep one too).

**Layout** (:func:`pack_nbit`, once at build). A row is cut into chunks of ``8 * P`` columns,
``P = 32 // bits`` codes per int32 word (8, 10 and 16 codes for 4, 3 and 2 bits; 3-bit words
leave 2 bits empty). Word ``i`` (lane ``i`` of 8) of chunk ``c`` holds column
``c * 8P + 8s + i`` at bits ``[bits*s, bits*(s+1))``: the 8 words of a chunk are one 256-bit
vector and slot ``s`` of all 8 lanes meets 8 consecutive activations. llama.cpp's Q4_0 splits
its 32-weight blocks the same way (low nibbles the first 16 weights, high nibbles the next 16),
so that a nibble is taken out with one AND or shift and no shuffle.

**Inner loop** (numba, no fast-math). Slot ``s`` is masked *in place*, ``v & (2^b-1) << bs``,
converted to float32 (exactly ``c * 2^(bs)``) and FMA'd into its own accumulator; the 8 slot
accumulators are scaled by ``2^(-bs)`` once per row (or group): one AND, one convert, one FMA
per 8 weights, no shift. The lanes are explicit arrays (``acc[s*8 + i]``), so the vectoriser
needs no reassociation and the summation order is the source's on every CPU (Sapphire Rapids
and Zen 4 give the same bits); the FMA is ``llvm.fma`` (one rounding, IEEE). For ``M >= 4``
the 4-row kernel decodes each slot once (shift + AND) for four activation rows. Large batches
(``rows > MAX_ROWS``) are compute-bound: the layer then keeps the reference's BLAS product.

**Error bound** (float path; :func:`error_bound`, tested). With ``u = 2^-24``,
``gamma_n = n u / (1 - n u)``, ``K'`` the padded row length and
``A = sum_g |s_g| (sum_{k in g} |x_k| c_k + |z_g| sum_{k in g} |x_k|)``, the result satisfies
``|y - sum_k x_k w_k| <= gamma_{K'+G+8} A``, where ``w_k = fl32(s q_k)`` is the decoded float32
weight the reference multiplies: every term passes through at most ``K'/8 + P + 3`` roundings
inside a group (lane FMAs, slot scaling, lane tree), ``G + 3`` more outside, and ``w_k``'s own
rounding is one more ``u``. (Normal-range values: a subnormal intermediate adds at most
``2^-149`` per rounding; ``K' max|x| < 2^90`` is checked, so the scaled slots cannot overflow.)
BLAS's float32 product satisfies ``gamma_K sum |x_k w_k|``; neither is exact, the float64 product
is the oracle. ONNX Runtime's MatMulNBits at accuracy level 4 (what its QDQ fusion makes)
quantizes the activations to int8 per block and is further off (about 1e-2 relative).

**Lookup path** (table codebooks, coded integer input, :func:`build`): the sums
``S_j = sum_k a_k [code_k = j]`` are GEMVs of the integer activations with 0/1 mask codes; every
partial sum is an integer below ``K' max|a| < 2^24``, so float32 holds them exactly and the
int64 sums equal the reference's; ``S_0 = sum_k a_k - sum_{j>0} S_j``; the epilogue is the
reference's own code.

T-MAC (Wei et al., EuroSys 2025, arXiv 2407.00088) replaces the per-weight convert + FMA by a
lookup of precomputed activation subset sums per bit-plane pattern, a cost linear in the bits;
its x86 kernels need a variable in-register table lookup (``pshufb``/``vpermps``) that numba
does not emit, so this module stays with the decode: at 2 bits it costs as much per weight as at
4 bits (it moves half the bytes).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from lowbit.runtime import layers as ref
from lowbit.runtime import ops
from lowbit.runtime.records import integers

LANES = 8                       # one 256-bit vector of float32 / int32
SLOTS = {2: 16, 3: 10, 4: 8, 5: 6}  # codes per int32 word
CHUNK = {b: LANES * p for b, p in SLOTS.items()}  # columns per chunk: 128, 80, 64, 48
MAX_ROWS = 32                   # above: the reference's BLAS product (compute-bound)
MIN_WEIGHTS = 2**18             # smaller layers (1 MiB as float32) stay with BLAS: in cache
KB = 8                          # chunks per column block of the four-row kernel
_X_LIMIT = 2.0**90              # K' max|x| below this: the scaled slot sums cannot overflow
_F32_EXACT = 2**24

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
def _acc(s, b):
    """The accumulator of slot ``s``: its own, except that 2-bit slots 8..15 share those of
    slots 0..7 (the upper half-word, shifted down, has the same place values)."""
    return s - 8 if b == 2 and s >= 8 else s


@njit(inline="always")
def _in_place(v, s, b):
    """Code ``s`` of word ``v`` masked in place, ``c * 2^(b t)`` as float32 (exact) for its
    accumulator ``t``; the top 4-bit code shifted down instead, ``c``."""
    if b == 4 and s == 7:
        return f32(i32(u32(v) >> u32(28)))
    if b == 2 and s >= 8:
        return f32(i32(i32(u32(v) >> u32(16)) & i32(3 << (2 * (s - 8)))))
    return f32(i32(v & i32(((1 << b) - 1) << (b * s))))


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
def _one(acc, x, xb, v, i, e, g, h, s, b):
    """One row: slot ``s`` of word ``v`` (lane ``i``) times ``x[xb + 8 s]`` into its own
    accumulator."""
    t = _acc(s, b) * LANES + i
    acc[t] = _fma(x[u64(xb + s * LANES)], _in_place(v, s, b), acc[t])


@njit(inline="always")
def _four(acc, x0, x1, x2, x3, xb, v, i, s, b):
    """Four rows: slot ``s`` decoded once, into row r's even or odd accumulator."""
    d = _code(v, s, b)
    j = (s & 1) * LANES + i
    acc[j] = _fma(x0[xb + s * LANES], d, acc[j])
    acc[2 * LANES + j] = _fma(x1[xb + s * LANES], d, acc[2 * LANES + j])
    acc[4 * LANES + j] = _fma(x2[xb + s * LANES], d, acc[4 * LANES + j])
    acc[6 * LANES + j] = _fma(x3[xb + s * LANES], d, acc[6 * LANES + j])


@njit(inline="always")
def _fold(acc, r, b, c, d, e, g, h, s, bits):
    """Lanes of accumulator ``s`` times its place value ``2^(-bits s)`` (exact) into ``r``."""
    if _acc(s, bits) == s:
        sc = f32(1.0) if bits == 4 and s == 7 else f32(1.0 / (1 << (bits * s)))
        for i in range(LANES):
            r[i] = _fma(acc[s * LANES + i], sc, r[i])


@njit(inline="always")
def _tree(t, o):
    """``t[o..o+8]`` summed as a fixed tree."""
    return ((t[o] + t[o + 1]) + (t[o + 2] + t[o + 3])) + (
        (t[o + 4] + t[o + 5]) + (t[o + 6] + t[o + 7]))


def _kernels(bits: int):
    """The one-row and four-row kernels for ``bits``: ``one_row(x, w, scale, off, sx, cpg,
    m0, out)`` writes rows ``m0..`` of ``out``, ``four_rows(..., cpg, tile, out)`` its first
    ``4*(M//4)`` rows, ``tile`` weight rows at a time and the columns in blocks of ``KB``
    chunks, so that four activation rows of a block stay in L1 while the tile's rows pass
    (the accumulators wait in ``buf``: the same sums in the same order as without blocks).
    Views start every group and block so that indices are provably >= 0 (a possibly negative
    index takes numba's wraparound select, which stops the vectoriser)."""
    p = SLOTS[bits]
    ch, na, na4 = LANES * p, LANES * min(p, 10), 8 * LANES

    @njit(parallel=True, cache=True)
    def one_row(x, w, scale, off, sx, cpg, m0, out):
        n_rows, groups = scale.shape
        for n in prange(n_rows):
            acc = numba.carray(_stack(na), na)
            r = numba.carray(_stack(LANES), LANES)
            tot = numba.carray(_stack(LANES), LANES)
            for m in range(m0, out.shape[0]):
                y = f32(0.0)  # the zero-point terms
                for i in range(LANES):
                    tot[i] = 0.0
                xm, wn = x[m], w[n]
                for g in range(groups):
                    for j in range(na):
                        acc[j] = 0.0
                    for c in range(g * cpg, (g + 1) * cpg):
                        for i in range(LANES):
                            _slots(_one, bits, acc, xm, c * ch + i, wn[u64(c * LANES + i)], i,
                                   0, 0, 0)
                    for i in range(LANES):
                        r[i] = 0.0
                    _slots(_fold, bits, acc, r, 0, 0, 0, 0, 0, 0)
                    sg = scale[n, g]
                    for i in range(LANES):  # group scales lane by lane: cheap small groups
                        tot[i] = _fma(r[i], sg, tot[i])
                    y += sg * (off[n, g] * sx[m, g])
                out[m, n] = _tree(tot, 0) + y

    @njit(parallel=True, cache=True)
    def four_rows(x, w, scale, off, sx, cpg, tile, out):
        n_rows, groups = scale.shape
        for t in prange((n_rows + tile - 1) // tile):
            n0, n1 = t * tile, min(n_rows, (t + 1) * tile)
            buf = np.empty((tile, na4), np.float32)
            acc = numba.carray(_stack(na4), na4)
            r = numba.carray(_stack(LANES), LANES)
            for m in range(0, out.shape[0] - 3, 4):
                for n in range(n0, n1):
                    for k in range(4):
                        out[m + k, n] = 0.0
                for g in range(groups):
                    buf[:] = 0.0
                    for cb in range(0, cpg, KB):
                        nc = min(cpg - cb, KB)
                        o = (g * cpg + cb) * ch
                        x0, x1, x2, x3 = x[m, o:], x[m + 1, o:], x[m + 2, o:], x[m + 3, o:]
                        for n in range(n0, n1):
                            wg = w[n, (g * cpg + cb) * LANES:]
                            bn = buf[n - n0]
                            for j in range(na4):
                                acc[j] = bn[j]
                            for c in range(nc):
                                for i in range(LANES):
                                    _slots(_four, bits, acc, x0, x1, x2, x3, c * ch + i,
                                           wg[c * LANES + i], i)
                            for j in range(na4):
                                bn[j] = acc[j]
                    for n in range(n0, n1):
                        bn = buf[n - n0]
                        for k in range(4):
                            for i in range(LANES):
                                r[i] = bn[2 * k * LANES + i] + bn[(2 * k + 1) * LANES + i]
                            y = _tree(r, 0) + off[n, g] * sx[m + k, g]
                            out[m + k, n] += scale[n, g] * y

    return one_row, four_rows


_KERNELS = {b: _kernels(b) for b in SLOTS}  # compiled on first use (then cached)


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
    return np.ascontiguousarray(np.broadcast_to(a, (n, groups or a.shape[1])))


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
    if offsets:
        sx = xp.reshape(m, groups, gs).sum(axis=2, dtype=np.float32)
    else:
        sx = np.zeros((m, groups), np.float32)
    out = np.empty((m, n), np.float32)
    one_row, four_rows = _KERNELS[bits]
    m4 = m // 4 * 4
    if m4:  # tiles of weight rows: at least two per thread, at most 32 rows
        tile = max(1, min(32, n // (2 * numba.get_num_threads())))
        four_rows(xp, packed, scale, off, sx, gs // CHUNK[bits], tile, out[:m4])
    if m4 < m:
        one_row(xp, packed, scale, off, sx, gs // CHUNK[bits], m4, out)
    return out


def gamma(n: int) -> float:
    u = 2.0**-24
    return n * u / (1 - n * u)


def error_bound(x: np.ndarray, codes: np.ndarray, scales, zeros, bits: int,
                group_size: int | None = None) -> np.ndarray:
    """``gamma_{K'+G+8} * A`` (module doc) per output, float64 (M, N): the largest distance of
    :func:`gemv_nbit` from ``x @ w.T`` with ``w = fl32(s * (c - z))``."""
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
    return gamma(kp + scale.shape[1] + 8) * a


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
