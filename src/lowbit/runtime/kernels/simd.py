"""Explicit 8-lane vectors inside numba code: a numba type whose LLVM value is ``<8 x T>``,
with loads, stores, lane-wise integer / float arithmetic and popcount.

Why: LLVM's loop vectorizer only vectorizes along the innermost loop, which in a GEMM is the
K axis: each output then needs a horizontal sum at the end of its row (about 7 instructions per
output, a third of the work at K = 4096), and 16 accumulators of 8 lanes leave no room for
wider register tiles. With explicit vectors a kernel puts *outputs* in the lanes
(``acc[r, j:j+8] += popcount(bcast(a[r, k]) & w[k, j:j+8])``): no horizontal sums, any tile
shape, and a vectorized epilogue.

An 8 x 64-bit vector is one zmm register where LLVM uses 512-bit vectors (Zen 4), two ymm
registers where it prefers 256-bit ones (Sapphire Rapids by default) or has no AVX-512 (AVX2:
``ctpop`` then lowers to the ``vpshufb`` nibble table). Float operations carry no fast-math
flags (no FMA contraction, no reassociation): each lane computes the IEEE operation numpy
computes. Loads and stores are unchecked: callers keep ``off + 8 <= arr.size``.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

LANES = 8
_I32 = ir.IntType(32)


class Vec(types.Type):
    """Eight lanes of the numba scalar type ``dtype``."""

    def __init__(self, dtype):
        self.dtype = dtype
        super().__init__(name=f"Vec({dtype}x{LANES})")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(dmm.lookup(fe_type.dtype).get_value_type(),
                                                     LANES))


def _vt(context, vec: Vec):
    return ir.VectorType(context.get_value_type(vec.dtype), LANES)


def _ptr(context, builder, aty, arr, off, offty, vec):
    a = context.make_array(aty)(context, builder, arr)
    p = builder.gep(a.data, [context.cast(builder, off, offty, types.intp)])
    return builder.bitcast(p, _vt(context, vec).as_pointer())


@intrinsic
def vsplat(typingctx, x):
    """All lanes = the scalar ``x`` (of its own type)."""
    if not isinstance(x, (types.Integer, types.Float)):
        return None
    vec = Vec(x)

    def codegen(context, builder, sig, args):
        vt = _vt(context, vec)
        v = builder.insert_element(ir.Constant(vt, ir.Undefined), args[0], ir.Constant(_I32, 0))
        return builder.shuffle_vector(v, ir.Constant(vt, ir.Undefined),
                                      ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES))

    return vec(x), codegen


@intrinsic
def vload(typingctx, arr, off):
    """``arr.flat[off:off+8]`` of a C-contiguous array, as a vector."""
    if not isinstance(arr, types.Array) or arr.layout != "C":
        return None
    vec = Vec(arr.dtype)

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1], vec)
        return builder.load(p, align=context.get_abi_alignment(context.get_value_type(
            vec.dtype)))

    return vec(arr, off), codegen


@intrinsic
def vstore(typingctx, arr, off, v):
    """``arr.flat[off:off+8] = v`` (same dtype), C-contiguous ``arr``."""
    if not isinstance(arr, types.Array) or arr.layout != "C" or v != Vec(arr.dtype):
        return None

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1], sig.args[2])
        builder.store(args[2], p, align=context.get_abi_alignment(context.get_value_type(
            sig.args[2].dtype)))
        return context.get_dummy_value()

    return types.none(arr, off, v), codegen


def _binary(int_op: str, float_op: str | None):
    def typer(typingctx, a, b):
        if not isinstance(a, Vec) or a != b or (float_op is None and not isinstance(
                a.dtype, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            op = float_op if isinstance(sig.args[0].dtype, types.Float) else int_op
            return getattr(builder, op)(args[0], args[1])

        return a(a, b), codegen

    return intrinsic(typer)


vadd = _binary("add", "fadd")
vsub = _binary("sub", "fsub")
vmul = _binary("mul", "fmul")
vand = _binary("and_", None)
vxor = _binary("xor", None)
vor = _binary("or_", None)
vshl = _binary("shl", None)  # lane-wise shift left (amounts < 64)
vshr = _binary("lshr", None)  # lane-wise logical shift right (amounts < 64)


@intrinsic
def vpopcnt(typingctx, a):
    """Lane-wise population count (LLVM ``ctpop``: ``vpopcntq`` with AVX512-VPOPCNTDQ)."""
    if not isinstance(a, Vec) or not isinstance(a.dtype, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        vt = _vt(context, sig.args[0])
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt]),
                                            f"llvm.ctpop.v{LANES}i{vt.element.width}")
        return builder.call(fn, [args[0]])

    return a(a), codegen


@intrinsic
def vconvert(typingctx, v, proto):
    """The lanes of ``v`` converted to the type of the scalar ``proto`` as numpy's
    ``astype`` does: integer -> float rounds to nearest, float64 -> float32 rounds to nearest
    even, integer -> narrower integer wraps, same width: unchanged bits."""
    if not isinstance(v, Vec) or not isinstance(proto, (types.Integer, types.Float)):
        return None
    src, dst = v.dtype, proto

    def codegen(context, builder, sig, args):
        vt = _vt(context, Vec(dst))
        x = args[0]
        if isinstance(src, types.Integer) and isinstance(dst, types.Float):
            return (builder.sitofp if src.signed else builder.uitofp)(x, vt)
        if isinstance(src, types.Float) and isinstance(dst, types.Float):
            if src.bitwidth == dst.bitwidth:
                return x
            return (builder.fptrunc if src.bitwidth > dst.bitwidth else builder.fpext)(x, vt)
        if isinstance(src, types.Integer) and isinstance(dst, types.Integer):
            if src.bitwidth == dst.bitwidth:
                return x
            if src.bitwidth > dst.bitwidth:
                return builder.trunc(x, vt)
            return (builder.sext if src.signed else builder.zext)(x, vt)
        raise TypeError(f"vconvert: {src} -> {dst} is not supported")

    return Vec(dst)(v, proto), codegen


@intrinsic
def veven(typingctx, a, b):
    """The even lanes of the 16 lanes ``a, b``: ``(a0, a2, a4, a6, b0, b2, b4, b6)``."""
    if not isinstance(a, Vec) or a != b:
        return None

    def codegen(context, builder, sig, args):
        return builder.shuffle_vector(args[0], args[1], ir.Constant(
            ir.VectorType(_I32, LANES), list(range(0, 2 * LANES, 2))))

    return a(a, b), codegen


@intrinsic
def vget(typingctx, v, lane):
    """Lane ``lane`` of ``v`` as a scalar."""
    if not isinstance(v, Vec) or not isinstance(lane, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        i = context.cast(builder, args[1], sig.args[1], types.int32)
        return builder.extract_element(args[0], i)

    return v.dtype(v, lane), codegen
