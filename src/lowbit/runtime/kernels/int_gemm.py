"""The integer path's GEMM micro-kernels (LLVM vector intrinsics inside numba) and their
operand layouts: ``u8s8`` (``vpdpbusd`` with VNNI, else AVX2 ``vpmaddubsw`` with int16 chunks
proven not to saturate) and ``s16`` (``vpdpwssd`` / ``vpmaddwd``), a 4-row x 16-channel tile,
weights packed once as panels of 16 channels in 4- or 2-byte groups along K, rows addressed
through byte-offset tables. Which kernel a layer takes, why each is exact and the measured
rates: :mod:`lowbit.runtime.kernels.integer`.
"""

from __future__ import annotations

import os

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils, config
from numba.core.codegen import get_host_cpu_features
from numba.extending import intrinsic

from lowbit.runtime.kernels.jit import named_copy

MR, NR = 4, 16          # tile rows, panel width (output channels)
ROW_BLOCK, PANELS = 64, 4  # a parallel task: 64 rows x 4 panels
I16_MAX = 32767


def _features() -> set[str]:
    """The CPU features numba compiles for (NUMBA_CPU_FEATURES, else the host's)."""
    flat = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return {f[1:] for f in flat.split(",") if f.startswith("+")}


_FEATURES = _features()
AVX2 = "avx2" in _FEATURES
#: the CPU can run the VNNI kernels (AVX512-VNNI with VL, or AVX-VNNI)
HAS_VNNI = AVX2 and ("avxvnni" in _FEATURES or {"avx512vnni", "avx512vl"} <= _FEATURES)
#: VNNI (``vpdpbusd`` / ``vpdpwssd``) is the default where the CPU has it; ``LOWBIT_VNNI=0``
#: opts out (the AVX2 kernels). Measured by benchmarks/int8_vnni.py on Sapphire Rapids
#: (2026-12-04, 1 thread, one process; benchmarks/results/int8_vnni/): 1.94-2.20x the AVX2
#: kernels at 8 bits (where AVX2 must take s16) and 1.07-1.36x at 2 and 4 bits, 46-62 % of the
#: int8 ceiling at M >= 64; exact against numpy in test_integer.py there and on a Zen 4
#: (2026-12-04, LOWBIT_VNNI=1; its speed there is not measured)
VNNI = HAS_VNNI and os.environ.get("LOWBIT_VNNI", "1") != "0"
ISA = "vnni" if VNNI else "avx2" if AVX2 else None

# -- the micro-kernel (LLVM IR) --------------------------------------------------------------
_I8, _I16, _I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
_V8, _V16, _V32 = ir.VectorType(_I8, 32), ir.VectorType(_I16, 16), ir.VectorType(_I32, 8)


def _call(builder, name: str, ret, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
        ret, [a.type for a in args]), name)
    return builder.call(fn, args)


def _make_tile(kind: str, vnni: bool):
    """The intrinsic ``tile(a, rbase, koff, w, c, i0, p, k0, k1, chunk)``: ``c[i0:i0+4,
    16p:16p+16] = sum over K groups k0 <= s < k1`` of row ``i0 + r`` (the 4 bytes at
    ``a + rbase[i0 + r] + koff[s]``) times panel ``p`` group ``s`` (64 bytes of ``w``)."""
    wvec = _V8 if kind == "u8s8" else _V16

    def step(b, acc, av, wv):
        if kind == "u8s8" and vnni:
            return _call(b, "llvm.x86.avx512.vpdpbusd.256", _V32, [acc, av, wv])
        if kind == "s16" and vnni:
            return _call(b, "llvm.x86.avx512.vpdpwssd.256", _V32, [acc, av, wv])
        if kind == "s16":
            return b.add(acc, _call(b, "llvm.x86.avx2.pmadd.wd", _V32, [av, wv]))
        return b.add(acc, _call(b, "llvm.x86.avx2.pmadd.ub.sw", _V16, [av, wv]))  # int16

    chunked = kind == "u8s8" and not vnni  # int16 pair sums, flushed every `chunk` steps

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


_tile = None  # bound per variant by named_copy (below)


def _gemm(a, rbase, koff, w, c, k0, k1, chunk):  # pragma: no cover - compiled
    """``c[i, n] = sum_{k0 <= s < k1}`` row i's group s times panel n's (module doc), int32, by
    the variant's ``_tile``. ``rbase`` has one entry per row of ``c`` (a multiple of 4 rows);
    ``chunk``: the AVX2 u8s8 tile's int16 flush interval (unused by the others)."""
    nrb = -(-rbase.shape[0] // ROW_BLOCK)
    npg = -(-w.shape[0] // PANELS)
    for t in prange(nrb * npg):
        rb, pg = t // npg, t % npg
        for p in range(pg * PANELS, min(w.shape[0], (pg + 1) * PANELS)):
            for i0 in range(rb * ROW_BLOCK, min(rbase.shape[0], (rb + 1) * ROW_BLOCK), MR):
                _tile(a, rbase, koff, w, c, i0, p, k0, k1, chunk)


# One compiled function per layout and ISA, under its own name (lowbit.runtime.kernels.jit):
# with one function whose tile depended on VNNI, a VNNI run loaded the AVX2 code cached by a
# run with LOWBIT_VNNI=0 (u8s8 then divided by the VNNI layout's chunk 0: SIGFPE).
_JIT = {"parallel": True, "cache": True}
gemm_u8s8_avx2 = named_copy(_gemm, "gemm_u8s8_avx2", _JIT, _tile=_make_tile("u8s8", False))
gemm_s16_avx2 = named_copy(_gemm, "gemm_s16_avx2", _JIT, _tile=_make_tile("s16", False))
gemm_u8s8_vnni = named_copy(_gemm, "gemm_u8s8_vnni", _JIT, _tile=_make_tile("u8s8", True))
gemm_s16_vnni = named_copy(_gemm, "gemm_s16_vnni", _JIT, _tile=_make_tile("s16", True))


def gemms(vnni: bool) -> dict:
    """The GEMM kernels of one ISA, keyed by layout (``u8s8``, ``s16``)."""
    if vnni:
        return {"u8s8": gemm_u8s8_vnni, "s16": gemm_s16_vnni}
    return {"u8s8": gemm_u8s8_avx2, "s16": gemm_s16_avx2}


#: the kernels this process runs (by :data:`VNNI`)
GEMM = gemms(VNNI)


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
