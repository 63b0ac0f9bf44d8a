"""Population count inside numba code: LLVM's ``ctpop`` intrinsic, which compiles to AVX-512
``vpopcntq`` on Sapphire Rapids and Zen 4 when the loop vectorises (numba has no popcount
builtin and does not support ``np.bitwise_count`` in nopython mode).

Exact: an integer instruction. Oracle in the tests: ``np.bitwise_count``.
"""

from __future__ import annotations

from numba import types
from numba.extending import intrinsic


@intrinsic
def popcount(typingctx, x):
    """``popcount(x)`` of an unsigned 64-bit integer, as uint64."""
    if not isinstance(x, types.Integer):
        return None
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        (v,) = args
        return builder.ctpop(v)

    return sig, codegen
