"""The integer-path fast kernels (lowbit/runtime/kernels/integer.py, bitserial.py) against
``np.int64`` matrix products (shapes with K not a multiple of 4 or 64, M = 1, odd N, extreme
codes 0 / 255, -128 / 127, +-32767) and against the reference runtime layer, bit for bit:
accumulators (the trace) and float32 outputs (``np.array_equal``) on hand-made layers over the
geometry (stride, padding, dilation, groups, odd sizes; signed, shifted and non-consecutive
grids; per-channel and per-group scales; bias, BatchNorm) and on exported models (LeNet300,
ResNet-20) over several seeds."""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

import numba
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
import lowbit.runtime as rt
from lowbit.exporter import export
from lowbit.nn.layers import QuantConv2d
from lowbit.runtime import ops
from lowbit.runtime.fast import kernels
from lowbit.runtime.kernels import bitserial as bs
from lowbit.runtime.kernels import int_gemm as ig
from lowbit.runtime.kernels import integer as ki
from lowbit.runtime.layers import Layer
from lowbit.runtime.records import Codebook, Grid, Weight

from ..test_model import SHAPES, _GroupInt4, _model, grouped_conv_net

pytestmark = pytest.mark.skipif(ki.ISA is None, reason="the integer kernels need AVX2")
FAST = settings(max_examples=30, deadline=None)


def _ints(rng, lo, hi, shape):
    """Random integers in [lo, hi] with both extremes present."""
    x = rng.integers(lo, hi + 1, shape)
    flat = x.reshape(-1)
    flat[rng.integers(0, flat.size, 2)] = (lo, hi)
    return x


# -- the GEMM kernels against int64 ------------------------------------------------------------
RANGES = [((0, 15), (-8, 7)), ((0, 3), (-2, 1)), ((-4, 3), (-4, 3)), ((0, 255), (-128, 127)),
          ((-128, 127), (-128, 127)), ((0, 255), (-64, 63)), ((0, 255), (-32, 31)),
          ((-32767, 32767), (-3, 3)),
          ((0, 1000), (-1000, 1000))]


#: the kernel sets to test: the AVX2 kernels on every CPU, the VNNI ones where it has VNNI
ISAS = ["avx2"] + (["vnni"] if ig.HAS_VNNI else [])


@pytest.mark.parametrize("isa", ISAS)
@FAST
@given(st.integers(1, 9), st.integers(1, 300), st.integers(1, 41),
       st.sampled_from(RANGES), st.integers(0, 2**32 - 1))
def test_gemm_equals_int64_matmul(isa, m, k, n, ranges, seed):
    rng = np.random.default_rng(seed)
    (alo, ahi), (wlo, whi) = ranges
    a, w = _ints(rng, alo, ahi, (m, k)), _ints(rng, wlo, whi, (n, k))
    mm = ki.Matmul(w, alo, ahi, vnni=isa == "vnni")
    np.testing.assert_array_equal(mm(a), a @ w.T)


@pytest.mark.parametrize("isa", ISAS)
def test_kernel_choice_keeps_int16_pairs_exact(isa):
    """Without VNNI, u8 x s8 pairs go through saturating int16 (vpmaddubsw): the choice must
    never allow a pair above 32767, and the int16 chunk must keep every partial sum below it."""
    vnni = isa == "vnni"
    for (alo, ahi), (wlo, whi) in RANGES:
        kind, z, chunk = ki.choose_kind(alo, ahi, wlo, whi, 1000, vnni)
        span, wmax = max(ahi, 0) - min(alo, 0), max(-wlo, whi)
        if kind == "u8s8" and not vnni:
            assert chunk >= 2 and chunk * 2 * span * wmax <= 32767
    assert ki.choose_kind(0, 255, -128, 127, 64, vnni)[0] == ("u8s8" if vnni else "s16")
    assert ki.choose_kind(0, 2**16, -1, 1, 64, vnni) is None  # beyond int16


@pytest.mark.parametrize("isa", ISAS)
def test_extreme_codes_over_a_long_k(isa):
    rng = np.random.default_rng(0)
    for (alo, ahi), (wlo, whi) in RANGES:
        k = 4097
        a = np.full((5, k), ahi)
        a[1], a[2, ::3] = alo, alo
        w = np.full((7, k), wlo)
        w[3], w[4, 1::2] = whi, whi
        w[6] = rng.integers(wlo, whi + 1, k)
        if k * max(-alo, ahi) * max(-wlo, whi) < 2**31:
            np.testing.assert_array_equal(ki.Matmul(w, alo, ahi, vnni=isa == "vnni")(a),
                                          a @ w.T)


def _asm(fn, sig) -> str:
    """The assembly of a fresh, uncached compile of numba function ``fn``."""
    from numba import njit

    fresh = njit(parallel=True)(fn.py_func)
    fresh.compile(sig)
    return "\n".join(fresh.inspect_asm().values())


def test_the_microkernel_uses_the_instruction_it_names():
    from numba import types

    arr = lambda dt, nd: types.Array(dt, nd, "C")  # noqa: E731
    sig = (arr(types.uint8, 1), arr(types.int64, 1), arr(types.int64, 1), arr(types.int8, 3),
           arr(types.int32, 2), types.intp, types.intp, types.intp)
    # AVX2: u8 x s8 pairs to s16 (vpmaddubsw), s16 pairs to s32 by vpmaddwd + add -- which LLVM
    # fuses into vpdpwssd (same exact s32 result) where the CPU has AVX512-VNNI or AVX-VNNI
    # (Zen 4, Sapphire Rapids), so either instruction names the second step
    kernels = [(ig.gemm_u8s8_avx2, [("vpmaddubsw",), ("vpmaddwd", "vpdpwssd")])]
    if ig.HAS_VNNI:  # the VNNI kernel compiles (and is checked) on every VNNI CPU
        kernels.append((ig.gemm_u8s8_vnni, [("vpdpbusd",)]))
    for fn, want in kernels:
        asm = _asm(fn, sig)
        for alternatives in want:
            assert any(re.search(rf"\b{ins}\b", asm) for ins in alternatives), alternatives
    assert ig.GEMM["u8s8"] is (ig.gemm_u8s8_vnni if ki.VNNI else ig.gemm_u8s8_avx2)


_CACHE_PROBE = """
import numpy as np
from lowbit.runtime.kernels import integer as ki
rng = np.random.default_rng(0)
for (lo, hi), (wlo, whi) in (((0, 255), (-128, 127)), ((0, 15), (-8, 7))):
    a, w = rng.integers(lo, hi + 1, (5, 300)), rng.integers(wlo, whi + 1, (17, 300))
    mm = ki.Matmul(w, lo, hi)
    assert (mm(a) == a @ w.T).all(), (lo, hi)
print(ki.ISA, mm.kind)
"""


@pytest.mark.skipif(not ig.HAS_VNNI, reason="needs a CPU with VNNI")
def test_vnni_and_avx2_runs_share_a_numba_cache(tmp_path):
    """A run with LOWBIT_VNNI=0 (the AVX2 kernels) and then one with the VNNI kernels, on one
    numba cache directory: each gets its own kernels, exact (one function whose tile read the
    VNNI flag had the VNNI run load the cached AVX2 code: SIGFPE)."""
    import os
    import subprocess
    import sys

    src = str(Path(ki.__file__).parents[3])
    env = {**os.environ, "PYTHONPATH": src, "NUMBA_CACHE_DIR": str(tmp_path)}
    for flag, isa in (("0", "avx2"), ("1", "vnni"), ("0", "avx2"), ("", "vnni")):
        out = subprocess.run([sys.executable, "-c", _CACHE_PROBE], capture_output=True,
                             text=True, timeout=600, env={**env, "LOWBIT_VNNI": flag})
        assert out.returncode == 0, (flag, out.stderr[-2000:])
        assert out.stdout.split()[0] == isa


# -- hand-made layers against the reference ---------------------------------------------------
GRIDS = {  # activation grid integers
    "u4": np.arange(0, 16), "signed": np.arange(-4, 4), "u8": np.arange(0, 256),
    "pow2": np.array([0, 1, 2, 4, 8, 16, 32, 64]), "positive": np.arange(3, 10),
    "wide": np.arange(-300, 301, 3),
}
WEIGHTS = {"s4": (-8, 7), "s8": (-128, 127), "s2": (-2, 1), "wide": (-1000, 1000)}


def _grid(ints: np.ndarray, scale: float) -> Grid:
    values = (ints * np.float32(scale)).astype(np.float32)
    cb = Codebook("integer", 16, len(ints), levels=ints.astype(np.int64),
                  scale=np.array(scale, np.float32), zero_point=0)
    t = ((values[1:] + values[:-1]) / 2).astype(np.float32)
    return Grid("g", t, values, np.arange(len(ints)), cb, ints.astype(np.int64), float(scale))


def _layer(rng, kind, shape, wr, grid, per_channel, bias, bn, group_size=None, **geo):
    lo, hi = wr
    cout = shape[0]
    if group_size is not None:
        groups = -(-int(np.prod(shape[1:])) // group_size)
        scale = rng.uniform(0.01, 0.1, (cout, groups)).astype(np.float32)
    else:
        scale = rng.uniform(0.01, 0.1, cout if per_channel else ()).astype(np.float32)
    cb = Codebook("integer", 16, hi - lo + 1, levels=np.arange(lo, hi + 1), scale=scale,
                  zero_point=0, group_size=group_size)
    codes = _ints(rng, 0, hi - lo, shape)
    b = rng.normal(size=cout).astype(np.float32) if bias else None
    bnd = None
    if bn:
        bnd = {"affine": ops.bn_affine(rng.normal(size=cout).astype(np.float32),
                                       rng.uniform(0.5, 2, cout).astype(np.float32),
                                       rng.normal(size=cout).astype(np.float32),
                                       rng.normal(size=cout).astype(np.float32), 1e-5)}
    return Layer("l", kind, Weight(tuple(shape), cb, codes), b, bnd, grid, **geo)


def _compare(layer, x):
    run = ki.build(layer)
    assert run is not None
    want_t, got_t = {}, {}
    want = layer(x, trace=want_t)
    got = run(layer, x, got_t)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    a, b = want_t["l"]["acc"], got_t["l"]["acc"]
    flat = lambda v: [y for z in v for y in (z if isinstance(z, list) else [z])]  # noqa: E731
    assert len(a) == len(b) and len(flat(a)) == len(flat(b))
    for p, q in zip(flat(a), flat(b), strict=True):
        assert q.dtype == np.int64
        np.testing.assert_array_equal(p, q)
    assert got_t["l"]["kernel"] == run.kernel


@FAST
@given(st.integers(0, 2**32 - 1), st.sampled_from(sorted(GRIDS)), st.sampled_from(sorted(WEIGHTS)),
       st.integers(1, 3), st.integers(1, 5), st.integers(1, 2), st.integers(1, 5),
       st.integers(1, 3), st.integers(1, 3), st.integers(1, 2), st.integers(0, 2),
       st.integers(1, 2), st.integers(1, 9), st.integers(1, 9), st.booleans(), st.booleans(),
       st.booleans())
def test_conv_equals_the_reference(seed, gk, wk, n, cin_g, groups, cout_g, kh, kw, stride, pad,
                                   dil, h, w, per_channel, bias, bn):
    if (h + 2 * pad - dil * (kh - 1) - 1) < 0 or (w + 2 * pad - dil * (kw - 1) - 1) < 0:
        return
    rng = np.random.default_rng(seed)
    grid = _grid(GRIDS[gk], 0.05)
    layer = _layer(rng, "conv2d", (cout_g * groups, cin_g, kh, kw), WEIGHTS[wk], grid,
                   per_channel, bias, bn, stride=(stride, stride), padding=(pad, pad),
                   dilation=(dil, dil), groups=groups)
    if layer.path != "integer" or ki.build(layer) is None:
        return  # a binary / ternary path, or beyond int32
    ranks = _ints(rng, 0, len(grid.ints) - 1, (n, cin_g * groups, h, w)).astype(np.int16)
    _compare(layer, (ranks, grid))


@FAST
@given(st.integers(0, 2**32 - 1), st.sampled_from(sorted(GRIDS)), st.sampled_from(sorted(WEIGHTS)),
       st.integers(1, 9), st.integers(1, 300), st.integers(1, 41), st.booleans(), st.booleans(),
       st.booleans(), st.sampled_from([None, 1, 3, 8, 64]))
def test_linear_equals_the_reference(seed, gk, wk, n, k, cout, per_channel, bias, bn, gs):
    rng = np.random.default_rng(seed)
    grid = _grid(GRIDS[gk], 0.03)
    layer = _layer(rng, "linear", (cout, k), WEIGHTS[wk], grid, per_channel, bias, bn, gs)
    if layer.path != "integer" or ki.build(layer) is None:
        return
    _compare(layer, (_ints(rng, 0, len(grid.ints) - 1, (n, k)).astype(np.int16), grid))


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 3), st.integers(1, 9), st.integers(0, 2),
       st.sampled_from([1, 5, 9, 16]))
def test_conv_with_per_group_scales_equals_the_reference(seed, n, hw, pad, gs):
    rng = np.random.default_rng(seed)
    grid = _grid(GRIDS["u4"], 0.05)
    layer = _layer(rng, "conv2d", (5, 3, 3, 3), WEIGHTS["s4"], grid, True, True, True, gs,
                   padding=(pad, pad))
    if hw + 2 * pad < 3:
        return
    _compare(layer, (_ints(rng, 0, 15, (n, 3, hw, hw)).astype(np.int16), grid))


def test_layers_on_all_threads_equal_the_reference(monkeypatch):
    """The layer tests above are small enough to run on the calling thread (SERIAL_MACS):
    here every call takes numba's parallel regions."""
    monkeypatch.setattr(ki, "SERIAL_MACS", 0)
    rng = np.random.default_rng(1)
    for gk, wk, groups, gs in (("u4", "s4", 1, None), ("signed", "s8", 2, None),
                               ("pow2", "s2", 1, None), ("u4", "s4", 1, 5)):
        grid = _grid(GRIDS[gk], 0.05)
        layer = _layer(rng, "conv2d", (6 * groups, 3, 3, 3), WEIGHTS[wk], grid, True, True, True,
                       gs, padding=(1, 1), stride=(2, 1), groups=groups)
        _compare(layer, (_ints(rng, 0, len(grid.ints) - 1, (3, 3 * groups, 11, 9)).astype(
            np.int16), grid))
        layer = _layer(rng, "linear", (37, 301), WEIGHTS[wk], grid, True, True, True, gs)
        _compare(layer, (_ints(rng, 0, len(grid.ints) - 1, (9, 301)).astype(np.int16), grid))


def test_a_float_input_takes_the_reference_path():
    rng = np.random.default_rng(0)
    grid = _grid(GRIDS["u4"], 0.05)
    layer = _layer(rng, "linear", (7, 20), WEIGHTS["s4"], grid, True, True, False)
    x = rng.random((3, 20)).astype(np.float32)
    np.testing.assert_array_equal(ki.build(layer)(layer, x), layer(x))


# -- exported models ----------------------------------------------------------------------------
@contextmanager
def _one_thread():
    """Training-mode passes and export at one thread: on a busy 2-vCPU machine every 2-thread
    region waits a scheduler slice (20x slower here); the kernels under test keep the default."""
    nt, tt = numba.get_num_threads(), torch.get_num_threads()
    numba.set_num_threads(1)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(nt)
        torch.set_num_threads(tt)


def _equal_models(path: Path, x: np.ndarray) -> dict:
    ref, fast = rt.load(path), rt.load(path, fast=True)
    t_ref, t_fast = {}, {}
    want, got = ref(x, trace=t_ref), fast(x, trace=t_fast)
    np.testing.assert_array_equal(got, want)
    served = {}
    for layer in fast.layers:
        if getattr(layer.fast, "__module__", "") != ki.__name__:
            continue
        a, b = t_ref[layer.name]["acc"], t_fast[layer.name]["acc"]
        flat = lambda v: [y for z in v for y in (z if isinstance(z, list) else [z])]  # noqa: E731
        for p, q in zip(flat(a), flat(b), strict=True):
            np.testing.assert_array_equal(p, q)
        served[layer.name] = t_fast[layer.name]["kernel"]
    assert set(served.values()) <= set(kernels(fast).values())
    return served


MODEL_CASES = ["ivan-w4a4", "dorefa-w2a2", "lsq-w3a3", "uniform-w8a8", "pow2-w4a4", "xnor-hwgq"]


@pytest.mark.parametrize("case", MODEL_CASES)
@pytest.mark.parametrize("arch", ["lenet300", "resnet20"])
def test_exported_models_equal_the_reference(arch, case, tmp_path):
    seeds = (0, 1, 2) if arch == "lenet300" else (MODEL_CASES.index(case) % 3,)
    for seed in seeds:
        with _one_thread():
            path = export(_model(arch, case, seed), tmp_path / f"{seed}.lowbit")
        n = 2 if arch == "resnet20" else 16
        x = torch.rand(n, *SHAPES[arch], generator=torch.Generator().manual_seed(seed)).numpy()
        served = _equal_models(path, x)
        assert served, "no layer took the integer kernels"


def _observed(net, x, tmp_path) -> Path:
    with _one_thread(), torch.no_grad():
        net.train()
        net(x)
        return export(net.eval(), tmp_path / "g.lowbit")


def test_grouped_conv_model(tmp_path):
    """The net of tests/runtime/test_model.py::test_grouped_conv_integer_path."""
    net, x = grouped_conv_net()
    served = _equal_models(_observed(net, x, tmp_path), x.numpy())
    assert "2" in served


def test_per_group_weight_scales_model(tmp_path):
    """The net of tests/runtime/test_model.py::test_per_group_weight_scales."""
    torch.manual_seed(0)
    conv = QuantConv2d(8, 6, 3, padding=1, weight_quant=_GroupInt4(4),
                       input_quant=lowbit.quantizers.METHODS["ivan"].act(4))
    net = torch.nn.Sequential(conv, torch.nn.Flatten())
    x = torch.rand(5, 8, 6, 6)
    assert len(_equal_models(_observed(net, x, tmp_path), x.numpy())) == 1


# -- bit-serial -------------------------------------------------------------------------------
@FAST
@given(st.integers(1, 7), st.integers(1, 200), st.integers(1, 13), st.integers(1, 4),
       st.integers(1, 4), st.integers(-8, 2), st.integers(-8, 2), st.integers(0, 2**32 - 1))
def test_bitserial_equals_int64_matmul(m, k, n, abits, wbits, za, zw, seed):
    rng = np.random.default_rng(seed)
    a = _ints(rng, 0, 2**abits - 1, (m, k)) + za
    w = _ints(rng, 0, 2**wbits - 1, (n, k)) + zw
    np.testing.assert_array_equal(bs.Packed(w, wbits, zw, abits).matmul(a, za), a @ w.T)


def test_bitserial_refuses_codes_outside_its_bits():
    p = bs.Packed(np.array([[0, 3]]), 2, 0, 2)
    with pytest.raises(ValueError, match="outside"):
        p.matmul(np.array([[4, 0]]), 0)


def test_bench_cases_run():
    rng = np.random.default_rng(0)
    cases = ki.bench_cases(5, 17, 70, rng)
    assert {"int8_gemm", "int8_gemm_w4a4", "bitserial_w2a2", "bitserial_w4a4"} <= set(cases)
    for fn, macs in cases.values():
        fn()
        assert macs == 5 * 17 * 70
