"""The exactness that lowbit.kernels.fused declares, tested where code generation makes it
fail: bit-exact kernels == their torch fallback (``torch.equal``); the soft quantizer's sigmoid
within SIGMOID_ULPS ulp of torch.sigmoid; every kernel's result independent of where an element
lands (the vector main loop, the vector tail or the scalar remainder, for vector widths 4, 8
and 16), hence of the memory layout (NCHW vs NHWC), and of the CPU LLVM compiles for (run in
subprocesses under several NUMBA_CPU_NAME values, e.g. Zen 4 code generation on an Intel host).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lowbit.kernels import fused as kernels

pytestmark = pytest.mark.skipif(kernels.numba is None, reason="numba not installed")

# numel = 16 k + 4 j + r, r in 1..3: elements in the main loop, the vector tail and the scalar
# remainder whatever the vector width; (3, 6, 5, 7) is the shape of issue 7 (630 = 16*39 + 4 + 2)
SHAPES = [(3, 6, 5, 7), (2, 5, 3, 11), (1, 3, 3, 9), (2, 16, 5, 13), (1, 1, 1, 3)]
STEPS, BIASES = [1.0, 1.0, 1.0], [0.5, 1.5, 2.5]  # ACT_LEVELS["2"]
T = torch.tensor


def run_all(x: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every kernel on (x, g): elementwise outputs and the float64 sums (as 0-d/1-d tensors)."""
    x4, g4 = x * 4, g
    out = {"ivan": kernels.ivan_act(x4, 3.0, T(0.37)),
           "ivan_grad": kernels.ivan_act_grad(g4, x4, 3.0),
           "lsq": kernels.lsq_forward(x4, T(0.3), T(1 / 0.3), 4, 3)}
    out["lsq_gx"], s = kernels.lsq_backward(g4, x4, T(1 / 0.3), 4, 3)
    out["lsq_sum"] = T(s, dtype=torch.float64)
    out["soft"] = kernels.soft_forward(x4, T(5.5), T(BIASES) * 5, STEPS, 0.0, T(0.9))
    for name, grad_t in (("soft_bwd", None), ("soft_bwd_tg", (T(2.2), T(BIASES) * 2))):
        gx, sums = kernels.soft_backward(g4, x4, T(5.5), T(BIASES) * 5, grad_t, STEPS, 0.0,
                                         T(5.0))
        out[name], out[name + "_sums"] = gx, torch.from_numpy(sums)
    return out


def inputs(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=gen) - 0.1, torch.randn(shape, generator=gen)


def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    return threads


@pytest.mark.parametrize("shape", SHAPES)
def test_every_kernel_same_in_nchw_and_nhwc(shape):
    """Elementwise outputs bit for bit; sums over another memory order to float64 rounding."""
    x, g = inputs(shape)
    nchw = run_all(x, g)
    nhwc = run_all(x.contiguous(memory_format=torch.channels_last),
                   g.contiguous(memory_format=torch.channels_last))
    for name, a in nchw.items():
        if name == "lsq_sum" or name.endswith("_sums"):
            torch.testing.assert_close(nhwc[name], a, rtol=1e-12, atol=1e-12, msg=name)
        else:
            assert torch.equal(nhwc[name], a), name


def test_every_kernel_independent_of_element_position():
    """Shifting the data by 0..80 elements moves each element between the main vector loop
    (up to 16 wide, interleaved up to 4 times), the vector tail and the scalar remainder: the
    elementwise outputs must not change (on any CPU: this is what NCHW vs NHWC exposed)."""
    x, g = inputs((333,), seed=1)
    pad_x, pad_g = inputs((80,), seed=2)
    ref = run_all(x, g)
    for shift in range(81):
        got = run_all(torch.cat([pad_x[:shift], x]), torch.cat([pad_g[:shift], g]))
        for name, a in ref.items():
            if a.shape == x.shape:
                assert torch.equal(got[name][shift:], a), (name, shift)
    w = x * 3
    ref_w = kernels.signed_levels(w, T(0.1), 8.0)
    for shift in range(81):
        got = kernels.signed_levels(torch.cat([pad_x[:shift], w]), T(0.1), 8.0)
        assert torch.equal(got[shift:], ref_w), shift


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("shape", SHAPES)
def test_bit_exact_kernels_equal_torch(shape, layout):
    x, g = inputs(shape, seed=3)
    x = x * 9 - 2
    if layout == "nhwc":
        x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
    step = T(0.37)
    assert torch.equal(kernels.ivan_act(x, 3.0, step), kernels._ivan_act_torch(x, 3.0, step))
    assert torch.equal(kernels.ivan_act_grad(g, x, 3.0), kernels._ivan_act_grad_torch(g, x, 3.0))
    d = T(0.11)
    assert torch.equal(kernels.signed_levels(x, d, 8.0),
                       kernels._signed_levels_torch(x.contiguous(), d, 8.0))
    s, inv = T(0.3), 1.0 / T(0.3)
    q = x * inv  # the torch path of lowbit.functional.learned
    assert torch.equal(kernels.lsq_forward(x, s, inv, 4, 3), torch.round(q).clamp(-4, 3) * s)
    gx, _ = kernels.lsq_backward(g, x, inv, 4, 3)
    assert torch.equal(gx, g * ((q > -4) & (q < 3)))


def test_soft_sigmoid_within_stated_ulps_of_torch():
    """sum_i s_i sigmoid(u - b_i) with one level is the kernel's sigmoid: within SIGMOID_ULPS
    ulp of torch.sigmoid at the same float32 argument (u - b exact), |u - b| <= 69 (beyond, the
    kernel's clamp to 2^-100 applies, see kernels)."""
    threads = single_thread()
    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.cat([torch.linspace(-69, 69, 100001), torch.randn(50000, generator=gen) * 8])
        worst = 0.0
        for b in [0.0, 0.5, 1.5, -2.25, 3.7, -10.3, 21.0]:
            bt = T([b])
            z = x - bt
            xs = x[((x.double() - bt.double()) == z.double()) & (z.abs() <= 69)]
            got = kernels.soft_forward(xs, T(1.0), bt, [1.0], 0.0, T(1.0)).double().numpy()
            want = torch.sigmoid(xs - bt).numpy()
            ulp = np.abs(got - want) / np.spacing(np.abs(want)).astype(np.float64)
            worst = max(worst, float(ulp.max()))
    finally:
        torch.set_num_threads(threads)
    assert worst <= kernels.SIGMOID_ULPS, worst


def test_tree_sum_is_the_stated_pairwise_tree():
    """float32 terms, summed in float64 as the fixed tree the docstring states, bit for bit."""
    gen = np.random.default_rng(4)
    for n in [1, 2, 3, 5, 17, 630, 1000, kernels.CHUNK]:
        a = (gen.standard_normal(n) * 10.0 ** gen.integers(-8, 8, n)).astype(np.float32)
        p = 1 << (n - 1).bit_length()
        ref = np.concatenate([a, np.zeros(p - n, np.float32)]).astype(np.float64)
        while ref.size > 1:
            ref = ref[: ref.size // 2] + ref[ref.size // 2:]
        t = np.empty(kernels.CHUNK, np.float32)
        t[:n] = a
        assert kernels._tree_sum(t, n, np.empty(kernels.CHUNK // 2)) == ref[0], n
    assert kernels._tree_sum(np.empty(kernels.CHUNK, np.float32), 0,
                             np.empty(kernels.CHUNK // 2)) == 0.0


# ---------------------------------------------------------------- across CPUs
CHILD = """
import sys, numpy as np, torch
torch.set_num_threads(1)  # serial kernels only: less to compile
sys.path.insert(0, sys.argv[2])
from test_kernel_exactness import SHAPES, inputs, run_all
res = {}
for shape in SHAPES[:2] + [(kernels_chunk + 333,)]:
    for fmt in (torch.contiguous_format, torch.channels_last) if len(shape) == 4 else (None,):
        x, g = inputs(shape)
        if fmt is not None:
            x, g = x.contiguous(memory_format=fmt), g.contiguous(memory_format=fmt)
        for name, t in run_all(x, g).items():
            res[f"{shape}-{fmt}-{name}"] = t.contiguous().numpy()
np.savez(sys.argv[1], **res)
"""
# (name, NUMBA_CPU_FEATURES): None = the host's features with that CPU's tuning (Sapphire
# Rapids: 256-bit vectors preferred, float32 8 wide; Zen 4: 512-bit, 16 wide), "" = that CPU's
# own ISA (generic x86-64: SSE2, 4 wide, no FMA)
CPUS = [("sapphirerapids", None), ("znver4", None), ("generic", "")]


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 CPUs")
def test_kernels_bit_identical_across_cpus(tmp_path):
    """Each CPU's code generation in its own process and cache: all outputs and sums equal."""
    src = str(Path(kernels.__file__).parents[2])
    env0 = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
            "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    env0.pop("NUMBA_CPU_FEATURES", None)
    code = CHILD.replace("kernels_chunk", str(kernels.CHUNK))
    procs = {}
    for name, features in CPUS:
        env = {**env0, "NUMBA_CPU_NAME": name, "NUMBA_CACHE_DIR": str(tmp_path / name)}
        if features is not None:
            env["NUMBA_CPU_FEATURES"] = features
        out = tmp_path / f"{name}.npz"
        procs[name] = (out, subprocess.Popen(
            [sys.executable, "-c", code, str(out), str(Path(__file__).parent)], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = {}
    for name, (out, proc) in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: {err[-2000:]}"
        if "not a recognized processor" in err:  # an older LLVM: that CPU cannot be tested
            continue
        with np.load(out) as z:
            results[name] = {k: z[k] for k in z.files}
    assert len(results) >= 3, sorted(results)
    ref_name, ref = next(iter(results.items()))
    diffs = [(name, key) for name, res in results.items() for key, v in ref.items()
             if res[key].tobytes() != v.tobytes()]
    which = sorted({(name, key.rsplit("-", 1)[1]) for name, key in diffs})
    assert not diffs, f"{len(diffs)} arrays differ from {ref_name}'s: {which}"
