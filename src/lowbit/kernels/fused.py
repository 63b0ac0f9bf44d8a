"""Fused CPU kernels (numba) for the hot elementwise paths of training, with the torch
expressions they replace as the reference. Used only for contiguous float32 CPU tensors; anything
else (GPU, float64, no numba) takes the torch fallback.

Exactness, as declared and tested (tests/kernels/test_kernel_exactness.py):
- Bit-exact vs the torch fallback (``torch.equal``): signed_levels, ivan_act, ivan_act_grad,
  lsq_forward and lsq_backward's input gradient. IEEE float32 division, rint, ceil and clamp.
- Within a stated bound of torch: the soft quantizer (own exp, see below): each sigmoid within
  SIGMOID_ULPS ulp of torch.sigmoid at the same argument; the reductions (LSQ's step sum, the
  soft sums) are float64 pairwise sums, torch's float32 sums: equal to rounding (rtol 1e-5).
- Every kernel, sums included, is bit-identical across thread counts and CPUs (the vector width
  LLVM picks), and every elementwise output across memory layouts (NCHW vs NHWC; a sum over
  another memory order differs in float64 rounding only).
So no kernel has fast-math: no arcp (1 / x by vrcp14ps/vrcpps + Newton in the vector loops
only, exact vdivss in the scalar remainder: results that depended on where an element fell),
no contract (FMA or not per loop and per CPU), no reassoc (a float64 sum whose order follows the
vector width), no ninf. Sums are pairwise trees of fixed shape (:func:`_tree_sum`). Seen in
``inspect_asm`` (emeraldrapids, LLVM 22): the hot loops still vectorize (ymm on Sapphire /
Emerald Rapids, which LLVM tunes for 256-bit vectors; zmm with NUMBA_CPU_NAME=znver4) with
vdivps for 1 / (1 + e) and vaddpd trees, and no vrcp14ps, vrcpps, vrsqrt14ps or vfmadd remain.
The cost against the fast-math kernels, one thread, (128, 16, 32, 32): soft forward 1.08-1.09x
(the division), soft backward 1.17-1.20x, LSQ backward 1.02-1.11x (the sums' trees), LSQ
forward unchanged (benchmarks/results/kernel_exactness_cost).
Test: tests/kernels/test_kernels.py, test_fused_kernels.py, test_kernel_exactness.py.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

try:  # numba is a declared dependency; LOWBIT_NO_NUMBA=1 forces the torch path
    if os.environ.get("LOWBIT_NO_NUMBA"):
        raise ImportError
    import numba
except ImportError:  # pragma: no cover - exercised only without numba
    numba = None


def _signed_levels_torch(w: torch.Tensor, d: torch.Tensor, s: float) -> torch.Tensor:
    t = w / d
    k = t.abs().ceil_().clamp_(1.0, s)
    return k.copysign_(t.add_(0.0))  # t + 0.0 turns -0.0 into +0.0: sign(0) = +1


if numba is not None:

    @numba.njit(cache=True, nogil=True, fastmath=False)
    def _signed_levels_nb(w, d, s, out):  # pragma: no cover - compiled
        one = np.float32(1.0)
        for i in range(w.size):
            t = w[i] / d  # float32 / float32: the same IEEE division as torch
            k = min(max(np.ceil(np.abs(t)), one), s)
            out[i] = -k if t < 0 else k


def _ivan_act_torch(x: torch.Tensor, n: float, step: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.ceil(torch.clamp(x, 0.0, n) / step), 0.0, n) * step


def _ivan_act_grad_torch(grad: torch.Tensor, x: torch.Tensor, n: float) -> torch.Tensor:
    return grad * ((x > 0) & (x <= n)).to(grad.dtype)


def _ivan_act_loop(x, n, step, out):  # pragma: no cover - compiled
    zero = np.float32(0.0)
    for i in _range(x.size):  # selects only, no branches: LLVM vectorizes the loop
        v = x[i]
        k = min(max(np.ceil(min(max(v, zero), n) / step), zero), n)  # float32 ops, as torch
        out[i] = v if v != v else k * step  # NaN stays NaN, as in torch


def _ivan_act_grad_loop(grad, x, n, out):  # pragma: no cover - compiled
    zero = np.float32(0.0)
    for i in _range(x.size):
        v = x[i]
        out[i] = grad[i] * np.float32((v > zero) & (v <= n))


PARALLEL_MIN = 1 << 16  # below this, one thread: starting the pool costs more than it saves
_KERNELS: dict[str, tuple] = {}

if numba is not None:
    _range = numba.prange  # plain range in the serial compile, a parallel loop in the other
    for _loop in (_ivan_act_loop, _ivan_act_grad_loop):
        _KERNELS[_loop.__name__] = (numba.njit(cache=True, nogil=True)(_loop),
                                    numba.njit(cache=True, nogil=True, parallel=True)(_loop))


_NUMBA_THREADS: list[int] = []  # the count last given to numba.set_num_threads (per process)


def numba_threads() -> int:
    """numba's thread count, following torch's (``configure_threads``/``--threads`` set it):
    ``numba.set_num_threads`` is called only when torch's count changed, not per launch."""
    want = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    if not _NUMBA_THREADS or _NUMBA_THREADS[0] != want:
        numba.set_num_threads(want)
        _NUMBA_THREADS[:] = [want]
    return want


def _launch(name: str, n: int, *args, workers: bool = False) -> None:
    """Run kernel ``name`` on ``n`` elements: the parallel compile when it pays, else the serial
    one. ``workers``: the kernel's first argument is the number of threads it may use."""
    serial, parallel = _KERNELS[name]
    if n >= PARALLEL_MIN and torch.get_num_threads() > 1:
        kernel, lead = parallel, (numba_threads(),)
    else:
        kernel, lead = serial, (1,)
    kernel(*(lead if workers else ()), *args)


def _fast(*tensors: torch.Tensor) -> bool:
    return numba is not None and all(t.device.type == "cpu" and t.dtype == torch.float32
                                     for t in tensors)


def _layout(t: torch.Tensor) -> torch.memory_format:
    """channels_last for an NHWC-dense 4-d tensor (kept so, no copy), else contiguous."""
    nhwc = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
    if nhwc and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _dense(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """The tensors detached and dense in the first one's layout (NHWC kept)."""
    fmt = _layout(tensors[0])
    return [t.detach().contiguous(memory_format=fmt) for t in tensors]


def _flat(t: torch.Tensor) -> np.ndarray:
    """A 1-d numpy view of a dense tensor's memory, in memory order (elementwise kernels)."""
    if t.dim() == 4 and not t.is_contiguous():
        t = t.permute(0, 2, 3, 1)  # channels_last: NHWC is its contiguous order
    return t.view(-1).numpy()


def ivan_act(x: torch.Tensor, n: float, step: torch.Tensor) -> torch.Tensor:
    """A_b's output clamp(ceil(clamp(x, 0, n) / step), 0, n) * step, in one pass."""
    if not _fast(x):
        return _ivan_act_torch(x.detach(), n, step)
    (x,) = _dense(x)
    out = torch.empty_like(x)
    _launch("_ivan_act_loop", x.numel(), _flat(x), np.float32(n), np.float32(step), _flat(out))
    return out


def ivan_act_grad(grad: torch.Tensor, x: torch.Tensor, n: float) -> torch.Tensor:
    """A_b's straight-through gradient grad * 1{0 < x <= n}, in one pass."""
    if not _fast(grad, x):
        return _ivan_act_grad_torch(grad, x, n)
    x, grad = _dense(x, grad)
    out = torch.empty_like(x)
    _launch("_ivan_act_grad_loop", x.numel(), _flat(grad), _flat(x), np.float32(n), _flat(out))
    return out


def signed_levels(w: torch.Tensor, d: torch.Tensor, s: float) -> torch.Tensor:
    """k = clamp(ceil(|w / d|), 1, s) with the sign of w / d (sign(0) = sign(-0.0) = +1)."""
    w = w.detach()
    if numba is None or w.device.type != "cpu" or w.dtype != torch.float32:
        return _signed_levels_torch(w, d, s)
    w = w.contiguous()
    out = torch.empty_like(w)
    _signed_levels_nb(w.view(-1).numpy(), np.float32(d), np.float32(s), out.view(-1).numpy())
    return out


# --- Fused training kernels of LSQ (S. K. Esser et al., "Learned Step Size Quantization", ICLR
# 2020, eq. 1-3; lowbit.functional.learned) and of the soft quantizer of Quantization Networks
# (J. Yang et al., CVPR 2019, eq. 6-10; lowbit.functional.soft). Forwards are elementwise; each
# backward is one pass giving the input gradient and the scalar reductions as float64 pairwise
# sums per chunk of CHUNK elements (fixed, so the sums depend on neither the thread count nor
# the vector width), added with math.fsum (exactly rounded, so in no particular order).
# LSQ is bit-equal to its torch path (its step sum up to summation order). The soft quantizer is
# equal to float32 rounding, not bit for bit: numba has no SIMD exp (no SVML), so
#   sigmoid(u - b) = 1 / (1 + e),  e = exp(b - u) = (e_b P) 2^(n_b - n_u),
# with exp(b) = e_b 2^n_b per bias (float64, once per call) and exp(-u) = P 2^-n_u per element
# (Cody-Waite reduction, Cephes expf polynomial, plain mul and add): one exp per element for all
# n sigmoids, within SIGMOID_ULPS ulp of torch.sigmoid at the same float32 argument (measured: 4
# ulp, see test_kernel_exactness.py; torch's rounds u - b first, ours takes the exact u - b);
# 1 - sigmoid = e sigmoid, no cancellation. n_b - n_u is clamped to [-100, 100]: the sigmoid is
# then exactly 1 or below 1e-30 instead of smaller (no denormals). u and b are clamped to
# [-2^20, 2^20].

CHUNK = 1 << 12  # elements per partial sum and per block of scratch (a power of two)
SIGMOID_ULPS = 4  # the soft kernel's sigmoid vs torch.sigmoid at the same argument (measured)
_U_MAX = float(2**20)

if numba is not None:
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    @intrinsic
    def _pow2i(typingctx, k):  # pragma: no cover - compiled
        """2^k as float32 for int32 k in [-126, 127]: the exponent field, no libm call."""
        def codegen(context, builder, signature, args):
            i32 = ir.IntType(32)
            bits = builder.shl(builder.add(args[0], ir.Constant(i32, 127)), ir.Constant(i32, 23))
            return builder.bitcast(bits, ir.FloatType())
        return types.float32(types.int32), codegen

    @numba.njit(cache=True, nogil=True, error_model="numpy")  # no contract: no FMA
    def _exp_neg(u):  # pragma: no cover - compiled
        """exp(-u) = p 2^-n for float32 u: (n integral, p in [0.7, 1.42]); NaN u gives p NaN."""
        f = np.float32
        uc = min(max(u, f(-_U_MAX)), f(_U_MAX)) if u == u else f(0.0)
        n = np.rint(uc * f(1.44269504088896341))
        r = n * f(0.693359375) - uc + n * f(-2.12194440e-4)  # -(u - n ln 2), |r| <= ln2 / 2
        p = f(1.9875691500e-4) * r + f(1.3981999507e-3)
        p = p * r + f(8.3334519073e-3)
        p = p * r + f(4.1665795894e-2)
        p = p * r + f(1.6666665459e-1)
        p = p * r + f(5.0000001201e-1)
        p = p * (r * r) + r + f(1.0)
        return n, (p if u == u else u)

    @numba.njit(cache=True, nogil=True, error_model="numpy")  # IEEE division: vdivps / vdivss
    def _sigmoid_split(n, p, nb, eb):  # pragma: no cover - compiled
        """(sigmoid(u - b), 1 - sigmoid(u - b)) from exp(-u) = p 2^-n and exp(b) = eb 2^nb;
        1 - sigma = e sigma with e = exp(b - u): no cancellation as sigma -> 1."""
        k = min(max(nb - n, np.float32(-100.0)), np.float32(100.0))
        e = (eb * p) * _pow2i(np.int32(k))
        h = np.float32(1.0) / (np.float32(1.0) + e)
        return h, e * h

    @numba.njit(cache=True, nogil=True, error_model="numpy")
    def _split_into(x, ux, nn, pp):  # pragma: no cover - compiled
        for i in range(x.size):
            nn[i], pp[i] = _exp_neg(x[i] * ux)

    @numba.njit(cache=True, nogil=True)
    def _scratch():  # pragma: no cover - compiled
        return np.empty(CHUNK, np.float32)

    @numba.njit(cache=True, nogil=True)
    def _scratch64():  # pragma: no cover - compiled
        return np.empty(CHUNK // 2, np.float64)

    @numba.njit(cache=True, nogil=True)
    def _tree_sum(t, n, buf):  # pragma: no cover - compiled
        """Sum of the float32 terms t[:n] (n <= CHUNK) in float64, as a pairwise tree of fixed
        shape: t[n:p] = 0 for p the power of two >= n, buf[i] = t[i] + t[i + p/2] (in float64,
        exact), then buf[i] += buf[i + h] for h = p/4, ..., 1 (destroys t and buf). Each level is
        an elementwise loop (vectorized: vcvtps2pd, vaddpd) and no step is reassociated, so the
        result is the same for every vector width, CPU and thread count."""
        if n <= 1:
            return np.float64(t[0]) if n == 1 else 0.0
        p = 2
        while p < n:
            p *= 2
        t[n:p] = 0.0
        h = p // 2
        hi = t[h:p]
        for i in range(h):
            buf[i] = np.float64(t[i]) + np.float64(hi[i])
        h //= 2
        while h >= 1:
            lo, hi2 = buf[:h], buf[h:2 * h]
            for i in range(h):
                lo[i] += hi2[i]
            h //= 2
        return buf[0]


def _lsq_fwd_loop(x, inv, s, lo, hi, out):  # pragma: no cover - compiled
    for i in _range(x.size):
        r = np.rint(x[i] * inv)  # round half to even, as torch.round
        r = lo if r < lo else r  # compares, not min/max: NaN stays NaN
        r = hi if r > hi else r
        out[i] = r * s


def _lsq_bwd_loop(nw, g, x, inv, lo, hi, gx, parts):  # pragma: no cover - compiled
    for w in _range(nw):  # one worker per thread, each with its own scratch
        t, buf = _scratch(), _scratch64()
        for c in range(w, parts.size, nw):
            a, b = c * CHUNK, min((c + 1) * CHUNK, x.size)
            gc, xc, gxc = g[a:b], x[a:b], gx[a:b]  # slices: indices from 0, no wraparound checks
            for i in range(xc.size):
                q = xc[i] * inv
                r = np.rint(q)
                r = lo if r < lo else r
                r = hi if r > hi else r
                m = np.float32((q > lo) & (q < hi))
                gxc[i] = gc[i] * m
                t[i] = gc[i] * (r - q * m)
            parts[c] = _tree_sum(t, xc.size, buf)


def _soft_fwd_loop(nw, x, ux, nb, eb, steps, offset, alpha, out):  # pragma: no cover - compiled
    nch = (x.size + CHUNK - 1) // CHUNK
    for w in _range(nw):  # one worker per thread, each with its own scratch
        nn, pp = _scratch(), _scratch()
        for c in range(w, nch, nw):
            xc, oc = x[c * CHUNK:(c + 1) * CHUNK], out[c * CHUNK:(c + 1) * CHUNK]
            _split_into(xc, ux, nn, pp)
            oc[:] = 0.0
            for k in range(nb.size):  # the n sigmoids: one vectorized pass over the chunk each
                nk, ek, sk = nb[k], eb[k], steps[k]
                for i in range(xc.size):
                    oc[i] += sk * _sigmoid_split(nn[i], pp[i], nk, ek)[0]
            for i in range(xc.size):
                oc[i] = (oc[i] - offset) * alpha


def _soft_bwd_loop(nw, g, x, ux, nb, eb, same, uxg, nbg, ebg, steps, offset, cx, need_b, gx,
                   parts):  # pragma: no cover - compiled
    for w in _range(nw):
        nn, pp, nng, ppg = _scratch(), _scratch(), _scratch(), _scratch()  # separate arrays
        acc, dsum = _scratch(), _scratch()  # LLVM sees that they do not alias
        t, t2, buf = _scratch(), _scratch(), _scratch64()  # t, t2: float32 terms of the sums
        for c in range(w, parts.shape[0], nw):
            a, b = c * CHUNK, min((c + 1) * CHUNK, x.size)
            gc, xc, gxc = g[a:b], x[a:b], gx[a:b]
            _split_into(xc, ux, nn, pp)
            if not same:
                _split_into(xc, uxg, nng, ppg)
            acc[:] = 0.0
            dsum[:] = 0.0
            for k in range(nb.size):
                nk, ek, sk = nb[k], eb[k], steps[k]
                if same and not need_b:  # backward temperature = forward: h_i = sigma_i
                    for i in range(xc.size):
                        h, h1 = _sigmoid_split(nn[i], pp[i], nk, ek)
                        acc[i] += sk * h
                        dsum[i] += sk * (h * h1)
                    continue
                if same:  # t: the terms of sum g d_k (need_b)
                    for i in range(xc.size):
                        h, h1 = _sigmoid_split(nn[i], pp[i], nk, ek)
                        acc[i] += sk * h
                        dk = h * h1
                        dsum[i] += sk * dk
                        t[i] = gc[i] * dk
                else:
                    nkg, ekg = nbg[k], ebg[k]
                    for i in range(xc.size):
                        acc[i] += sk * _sigmoid_split(nn[i], pp[i], nk, ek)[0]
                        h, h1 = _sigmoid_split(nng[i], ppg[i], nkg, ekg)
                        dk = h * h1
                        dsum[i] += sk * dk
                        t[i] = gc[i] * dk
                if need_b:
                    parts[c, 2 + k] = _tree_sum(t, xc.size, buf)
            for i in range(xc.size):
                gd = gc[i] * dsum[i]
                gxc[i] = gd * cx
                t[i] = gc[i] * (acc[i] - offset)
                t2[i] = gd * xc[i]
            parts[c, 0] = _tree_sum(t, xc.size, buf)
            parts[c, 1] = _tree_sum(t2, xc.size, buf)


if numba is not None:
    for _loop in (_lsq_fwd_loop, _lsq_bwd_loop, _soft_fwd_loop, _soft_bwd_loop):
        _KERNELS[_loop.__name__] = (
            numba.njit(cache=True, nogil=True, error_model="numpy")(_loop),
            numba.njit(cache=True, nogil=True, error_model="numpy", parallel=True)(_loop))


def _bias_split(bt: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """exp(b) = e_b 2^n_b for each b of ``bt`` (float64 arithmetic): (n_b, e_b) as float32."""
    b = np.clip(bt.detach().double().reshape(-1).numpy(), -_U_MAX, _U_MAX)
    n = np.rint(b / np.log(2.0))
    return n.astype(np.float32), np.exp(b - n * np.log(2.0)).astype(np.float32)


def lsq_forward(x: torch.Tensor, s: torch.Tensor, inv: torch.Tensor, qn: int, qp: int
                ) -> torch.Tensor:
    """LSQ eq. (1)-(2), round(clamp(x * inv, -qn, qp)) * s with inv = 1/s, in one pass.
    ``x`` float32 CPU (:func:`fusable`), ``s`` and ``inv`` one-element; x's layout is kept."""
    (x,) = _dense(x)
    out = torch.empty_like(x)
    _launch("_lsq_fwd_loop", x.numel(), _flat(x), np.float32(inv), np.float32(s),
            np.float32(-qn), np.float32(qp), _flat(out))
    return out


def lsq_backward(g: torch.Tensor, x: torch.Tensor, inv: torch.Tensor, qn: int, qp: int
                 ) -> tuple[torch.Tensor, float]:
    """LSQ's backward in one pass: g * 1{-qn < x inv < qp} and the float64 sum of g times
    eq. (3), round(q) - q inside, -qn or qp outside (q = x inv)."""
    x, g = _dense(x, g)
    gx = torch.empty_like(x)
    parts = np.empty((x.numel() + CHUNK - 1) // CHUNK, np.float64)
    _launch("_lsq_bwd_loop", x.numel(), _flat(g), _flat(x), np.float32(inv), np.float32(-qn),
            np.float32(qp), _flat(gx), parts, workers=True)
    return gx, math.fsum(parts)


def soft_forward(x: torch.Tensor, ux: torch.Tensor, bt: torch.Tensor, steps: list[float],
                 offset: float, alpha: torch.Tensor) -> torch.Tensor:
    """Quantization Networks eq. (6), alpha (sum_i s_i sigmoid(x ux - bt_i) - o), in one pass;
    ``ux`` = T beta and ``bt`` = T b as the caller computes them (float32)."""
    (x,) = _dense(x)
    out = torch.empty_like(x)
    _launch("_soft_fwd_loop", x.numel(), _flat(x), np.float32(ux), *_bias_split(bt),
            np.asarray(steps, np.float32), np.float32(offset), np.float32(alpha), _flat(out),
            workers=True)
    return out


def soft_backward(g: torch.Tensor, x: torch.Tensor, ux: torch.Tensor, bt: torch.Tensor,
                  grad_t: tuple[torch.Tensor, torch.Tensor] | None, steps: list[float],
                  offset: float, cx: torch.Tensor, need_b: bool = True
                  ) -> tuple[torch.Tensor, np.ndarray]:
    """Eq. (7)-(10) in one pass. sigma_i = sigmoid(x ux - bt_i) (forward temperature), h_i the
    same with ``grad_t`` = (ux, bt) at the backward temperature (None: h_i = sigma_i), d_i =
    h_i (1 - h_i). Returns gx = g cx sum_i s_i d_i and the float64 sums [sum g (sum_i s_i sigma_i
    - o), sum g x sum_i s_i d_i, sum g d_1, ..., sum g d_n] (the last n: 0 unless ``need_b``)."""
    x, g = _dense(x, g)
    gx = torch.empty_like(x)
    parts = np.zeros(((x.numel() + CHUNK - 1) // CHUNK, 2 + len(steps)), np.float64)
    uxg, btg = (ux, bt) if grad_t is None else grad_t
    _launch("_soft_bwd_loop", x.numel(), _flat(g), _flat(x), np.float32(ux), *_bias_split(bt),
            grad_t is None, np.float32(uxg), *_bias_split(btg), np.asarray(steps, np.float32),
            np.float32(offset), np.float32(cx), bool(need_b), _flat(gx), parts, workers=True)
    return gx, np.array([math.fsum(col) for col in parts.T])


def fusable(x: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether the fused kernels apply: numba present, float32 CPU tensors, non-empty ``x``."""
    return x.numel() > 0 and _fast(x, *others)
