"""The binary fast kernels (lowbit/runtime/kernels/binary*.py) against independent numpy
oracles (``np.bitwise_count`` of the packed words, integer matrix products of ±1 / {0,1}
values) and against the reference runtime layer for layer, bit for bit: accumulators
(the trace) and float32 outputs (``np.array_equal``), on hand-made layers over the geometry
(K not a multiple of 64, K < 64, odd sizes, stride, padding, dilation, groups) and on layers
of exported models (LeNet300, ResNet-20) over several seeds."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit.runtime as rt
from lowbit.exporter import export
from lowbit.runtime.fast import kernels
from lowbit.runtime.kernels import binary as kb
from lowbit.runtime.layers import Layer, pack_rows
from lowbit.runtime.records import Codebook, Grid, Weight

from ..test_model import SHAPES, _model

FAST = settings(max_examples=25, deadline=None)


def _oracle(a, w, op):
    fn = np.bitwise_xor if op == "xor" else np.bitwise_and
    return np.bitwise_count(fn(a[:, None, :], w[None])).sum(-1, dtype=np.int64)


@FAST
@given(st.integers(1, 6), st.integers(1, 200), st.integers(0, 2**32 - 1))
def test_pack_signs_equals_pack_rows(m, k, seed):
    rng = np.random.default_rng(seed)
    x = rng.choice(np.array([-1.5, -0.0, 0.0, 0.25, 2.0], np.float32), (m, k))
    np.testing.assert_array_equal(kb.pack_signs(x), pack_rows(x > 0))


@FAST
@given(st.integers(1, 9), st.integers(1, 40), st.integers(1, 300), st.integers(0, 2**32 - 1))
def test_raw_gemms_equal_the_popcount_oracle(m, n, k, seed):
    rng = np.random.default_rng(seed)
    bits = [rng.integers(0, 2, (r, k)).astype(bool) for r in (m, n, n)]
    a, w, w2 = (pack_rows(b) for b in bits)
    p, q = pack_rows(bits[1] & ~bits[2]), pack_rows(bits[2] & ~bits[1])
    want = k - 2 * _oracle(a, w, "xor")
    np.testing.assert_array_equal(kb.xnor_gemm(a, w, k), want)
    pm = 2 * bits[0].astype(np.int64) - 1  # the ±1 dot products themselves
    np.testing.assert_array_equal(want, pm @ (2 * bits[1].astype(np.int64) - 1).T)
    np.testing.assert_array_equal(kb.and_gemm(a, (kb.block_words(w), n)), _oracle(a, w, "and"))
    np.testing.assert_array_equal(kb.ternary_gemm(a, p, q),
                                  _oracle(a, p, "and") - _oracle(a, q, "and"))


# -- hand-made layers -------------------------------------------------------------------
def _grid(signed: bool, scale=0.375) -> Grid:
    ints = np.array([-1, 1] if signed else [0, 1], np.int64)
    cb = Codebook("integer", 1, 2, levels=ints, scale=np.array(scale, np.float32))
    values = (ints * np.float32(scale)).astype(np.float32)
    return Grid("q", np.array([0.0 if signed else scale / 2], np.float32), values,
                np.arange(2), cb, ints, float(np.float32(scale)))


def _layer(kind, path, cin, cout, k, rng, groups=1, **geo) -> Layer:
    levels = {"xnor": [-1, 1], "binary01": [-1, 1], "ternary": [-1, 0, 1]}[path]
    per_channel = rng.random() < 0.5
    scale = rng.uniform(0.1, 2, cout if per_channel else ()).astype(np.float32)
    zp = 0
    if path == "ternary" and rng.random() < 0.5:  # the same integers through a zero point
        levels, zp = [0, 1, 2], 1
    cb = Codebook("integer", 2, len(levels), levels=np.array(levels, np.int64), scale=scale,
                  zero_point=zp)
    shape = (cout, cin // groups, *k) if kind == "conv2d" else (cout, cin)
    weight = Weight(shape, cb, rng.integers(0, len(levels), shape))
    bias = rng.standard_normal(cout).astype(np.float32) if rng.random() < 0.5 else None
    bn = None
    if rng.random() < 0.5:
        bn = {"affine": (rng.uniform(0.5, 2, cout).astype(np.float32),
                         rng.standard_normal(cout).astype(np.float32))}
    grid = _grid(path == "xnor" or (path == "ternary" and rng.random() < 0.5))
    return Layer("l", kind, weight, bias, bn, grid, groups=groups, **geo)


def _same(layer, x):
    ref, fast = {}, {}
    want = layer(x, trace=ref)
    run = kb.build(layer)
    assert run is not None and run.kernel.startswith(f"numba-{layer.path}")
    got = run(layer, x, fast)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert fast["l"]["path"] == layer.path and fast["l"]["kernel"] == run.kernel
    for a, b in zip(ref["l"]["acc"], fast["l"]["acc"], strict=True):
        assert b.dtype == np.int64
        np.testing.assert_array_equal(b, a)
    np.testing.assert_array_equal(got, want)


@FAST
@given(st.sampled_from(["xnor", "binary01", "ternary"]), st.integers(1, 3),
       st.integers(1, 150), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_linear_layers_equal_the_reference(path, n, k, cout, seed):
    rng = np.random.default_rng(seed)
    layer = _layer("linear", path, k, cout, None, rng)
    assert layer.path in kb.PATHS  # (a small ternary weight may hold no 0)
    _same(layer, (rng.integers(0, 2, (n, k)).astype(np.int16), layer.grid))


@FAST
@given(st.sampled_from(["xnor", "binary01", "ternary"]), st.integers(1, 3),
       st.integers(1, 70), st.sampled_from([1, 2]), st.integers(1, 3), st.integers(1, 3),
       st.integers(1, 2), st.integers(0, 2), st.integers(1, 2), st.integers(3, 9),
       st.integers(3, 9), st.integers(0, 2**32 - 1))
def test_conv_layers_equal_the_reference(path, n, cin_g, groups, kh, kw, stride, pad, dil,
                                         h, w, seed):
    rng = np.random.default_rng(seed)
    if (h + 2 * pad - dil * (kh - 1) - 1) < 0 or (w + 2 * pad - dil * (kw - 1) - 1) < 0:
        return  # no output position
    cout = groups * int(rng.integers(1, 9))
    layer = _layer("conv2d", path, cin_g * groups, cout, (kh, kw), rng, groups=groups,
                   stride=(stride, stride), padding=(pad, pad), dilation=(dil, dil))
    assert layer.path in kb.PATHS  # (a small ternary weight may hold no 0)
    ranks = rng.integers(0, 2, (n, cin_g * groups, h, w)).astype(np.int16)
    _same(layer, (ranks, layer.grid))


@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_float_input_takes_the_signs(kind):
    """A layer given float values (not codes) packs ``x > 0``, as the reference does."""
    rng = np.random.default_rng(3)
    if kind == "linear":
        layer, x = _layer(kind, "xnor", 70, 5, None, rng), rng.standard_normal((2, 70))
    else:
        layer = _layer(kind, "xnor", 6, 4, (3, 3), rng, padding=(1, 1))
        x = rng.standard_normal((2, 6, 5, 5))
    x = x.astype(np.float32)
    x[0, 0] = 0.0
    _same(layer, x)


def test_build_declines_other_paths():
    rng = np.random.default_rng(0)
    layer = _layer("linear", "xnor", 8, 3, None, rng)
    layer.path = "integer"
    assert kb.build(layer) is None


# -- exported models --------------------------------------------------------------------
CASES = ["xnor", "bnn", "bnn-w-dorefa-a1", "twn-bnn-a", "twn-dorefa-a1", "abc-w2-ivan-a4",
         "abc"]
SERVED = {"xnor", "binary01", "ternary", "bitplanes", "bitplanes2"}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Models are built at one torch thread: on a shared 2-vCPU machine two threads are
    10-40x slower (PERFORMANCE.md)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _equal_nested(a, b) -> None:
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        for u, v in zip(a, b, strict=True):
            _equal_nested(u, v)
    else:
        assert b.dtype == np.int64
        np.testing.assert_array_equal(b, a)


def _compare(path, x):
    ref, fast = rt.load(path), rt.load(path, fast=True)
    t_ref, t_fast = {}, {}
    want, got = ref(x, trace=t_ref), fast(x, trace=t_fast)
    names = kernels(fast)
    served = [ly.name for ly in fast.layers if ly.path in SERVED]
    for name in served:
        assert names[name].startswith("numba-"), (name, names[name])
        _equal_nested(t_ref[name]["acc"], t_fast[name]["acc"])
    np.testing.assert_array_equal(got, want)
    return served


@pytest.mark.parametrize("case", CASES)
def test_lenet300_fast_equals_reference(case, tmp_path):
    served = 0
    for seed in range(3):
        path = export(_model("lenet300", case, seed), tmp_path / f"{seed}.lowbit")
        x = torch.rand(5, *SHAPES["lenet300"], generator=torch.Generator().manual_seed(seed))
        served += len(_compare(path, x.numpy()))
    assert served > 0


@pytest.mark.parametrize("case", CASES)
def test_resnet20_fast_equals_reference(case, tmp_path):
    seeds = (0, 1) if case in ("xnor", "bnn-w-dorefa-a1") else (0,)  # (export is slow)
    for seed in seeds:
        path = export(_model("resnet20", case, seed), tmp_path / f"{seed}.lowbit")
        x = torch.rand(2 + seed, *SHAPES["resnet20"],
                       generator=torch.Generator().manual_seed(seed))
        assert len(_compare(path, x.numpy())) >= 10


# -- the instructions -------------------------------------------------------------------
_PROBE = """
import re
import numpy as np
from numba import njit
from lowbit.runtime.kernels.binary_gemm import _put_layer, counts4
from lowbit.runtime.kernels.simd import vadd

@njit
def probe(x, yb, words, y, acc, beta, sc, bias, bn_a, bn_b):
    c = counts4(x, 0, 1, 2, 3, yb, yb, 0, words, True, False)
    # all 8 tile counts live (with one used, LLVM drops 7 accumulators and the count of
    # vpopcntq is its unroll factor, which depends on the host tuning it guesses)
    s = vadd(vadd(vadd(c[0], c[1]), vadd(c[2], c[3])), vadd(vadd(c[4], c[5]), vadd(c[6], c[7])))
    _put_layer(y, acc, True, 0, 0, 8, s, np.int64(3), np.int64(-2), beta, np.int64(1), sc,
               bias, bn_a, bn_b, True, True)

f32 = "float32[::1]"
probe.compile(f"(uint64[:, ::1], uint64[:, :, ::1], int64, float32[:, ::1], int64[:, ::1], "
              f"int64[::1], float64[::1], {f32}, {f32}, {f32})")
asm = next(iter(probe.inspect_asm().values()))
print(len(re.findall(r"vpopcntq\\s+%zmm", asm)), len(re.findall(r"vpopcntq\\s+%ymm", asm)),
      len(re.findall(r"vfn?m(add|sub)", asm)))
"""


def _probe(env: dict) -> tuple[int, int, int]:
    """(zmm vpopcntq, ymm vpopcntq, FMA instructions) in the micro-kernel + epilogue."""
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                         text=True, check=True, timeout=300)
    zmm, ymm, fma = out.stdout.split()
    return int(zmm), int(ymm), int(fma)


def _env(tmp_path, **extra) -> dict:
    src = str(Path(kb.__file__).parents[3])
    return {**os.environ, "PYTHONPATH": src, "NUMBA_CACHE_DIR": str(tmp_path), **extra}


def test_micro_kernel_compiles_to_vpopcntq_for_avx512_targets(tmp_path):
    """Compiled (not run) for Zen 4 and Sapphire Rapids, the micro-kernel's loop is 512-bit
    ``vpopcntq`` (the explicit 8 x 64-bit vectors stay whole on both), and the epilogue has
    no FMA (``x * a + b`` is two roundings, as numpy computes it)."""
    for cpu in ("znver4", "sapphirerapids"):
        zmm, _, fma = _probe(_env(tmp_path, NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES="+popcnt"))
        assert zmm >= 8 and fma == 0, cpu


def test_micro_kernel_on_this_cpu(tmp_path):
    """No FMA in the epilogue on this CPU either; ``vpopcntq`` where it has VPOPCNTDQ."""
    zmm, ymm, fma = _probe(_env(tmp_path))
    assert fma == 0
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if not re.search(r"\bavx512_vpopcntdq\b", flags):
        pytest.skip("this CPU has no AVX512-VPOPCNTDQ: the popcount is LLVM's AVX2 lowering")
    assert zmm + ymm >= 8
