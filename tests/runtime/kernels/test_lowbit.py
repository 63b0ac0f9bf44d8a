"""lowbit.runtime.kernels.lowbit: the packed low-bit weight GEMV within its stated float32
bound of a float64 oracle (hypothesis over bits, shapes, groups), its layout, and the fast
runtime on exported models: float-path layers within the bound and close logits, lookup-path
layers equal to the reference bit for bit (accumulators and outputs)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
import lowbit.runtime as rt
from lowbit.exporter import export
from lowbit.runtime.fast import kernels
from lowbit.runtime.kernels import lowbit as lb

from ..test_model import SHAPES, _model

BITS = sorted(lb.SLOTS)


def _data(seed, bits, m, k, n, group_size, magnitude=1.0):
    rng = np.random.default_rng(seed)
    groups = 1 if group_size is None else -(-k // group_size)
    codes = rng.integers(0, 2**bits, (n, k))
    scale = (rng.random((n, groups)) + 0.05).astype(np.float32) * rng.choice([-1, 1], (n, 1))
    zero = rng.integers(0, 2**bits, (n, groups))
    x = (rng.standard_normal((m, k)) * magnitude).astype(np.float32)
    x[rng.random((m, k)) < 0.1] = 0
    return x, codes, scale, zero


def _decoded(codes, scale, zero, group_size):
    """The float32 weights ``fl32(s * (c - z))`` (as the reference runtime decodes them)."""
    k = codes.shape[1]
    g = np.zeros(k, np.int64) if group_size is None else np.arange(k) // group_size
    return (scale[:, g] * (codes - zero[:, g]).astype(np.float32)).astype(np.float32)


def test_pack_layout_by_definition():
    rng = np.random.default_rng(0)
    for bits in BITS:
        p = lb.SLOTS[bits]
        codes = rng.integers(0, 2**bits, (3, 2 * 8 * p + 5))
        words = lb.pack_nbit(codes, bits).view(np.uint32)
        kp = lb.padded_k(codes.shape[1], bits)
        assert words.shape == (3, kp // p)
        for n in range(3):
            for col in range(kp):  # column c*8P + 8s + i: word c*8 + i, bits [b s, b(s+1))
                c, r = divmod(col, 8 * p)
                s, i = divmod(r, 8)
                got = int(words[n, c * 8 + i]) >> (bits * s) & (2**bits - 1)
                assert got == (codes[n, col] if col < codes.shape[1] else 0)


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from(BITS), m=st.integers(1, 5), k=st.integers(1, 300),
       n=st.integers(1, 9), grouped=st.booleans(), magnitude=st.sampled_from([1e-3, 1, 1e3]),
       seed=st.integers(0, 2**32 - 1))
def test_gemv_within_the_bound_of_a_float64_oracle(bits, m, k, n, grouped, magnitude, seed):
    gs = lb.CHUNK[bits] * (1 + seed % 2) if grouped else None
    x, codes, scale, zero = _data(seed, bits, m, k, n, gs, magnitude)
    y = lb.gemv_nbit(x, lb.pack_nbit(codes, bits, gs), scale, zero, bits, k, gs)
    oracle = x.astype(np.float64) @ _decoded(codes, scale, zero, gs).astype(np.float64).T
    bound = lb.error_bound(x, codes, scale, zero, bits, gs)
    assert y.dtype == np.float32 and y.shape == (m, n)
    assert np.all(np.abs(y - oracle) <= bound)


def test_the_bound_is_not_vacuous():
    """The measured error is a small fraction of the bound, and the bound is no looser than
    BLAS's own worst case ``gamma_K sum |x w|`` (both against float64)."""
    x, codes, scale, zero = _data(1, 4, 3, 4096, 64, None)
    y = lb.gemv_nbit(x, lb.pack_nbit(codes, 4), scale, zero, 4, 4096)
    w = _decoded(codes, scale, zero, None)
    oracle = x.astype(np.float64) @ w.astype(np.float64).T
    bound = lb.error_bound(x, codes, scale, zero, 4)
    blas = lb.gamma(4096) * (np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64).T)
    assert np.abs(y - oracle).max() <= 0.05 * bound.max()
    assert bound.max() <= blas.max()


def test_integer_inputs_are_exact():
    """Integer activations and codes with every partial sum below 2^24: the float32 sums are
    exact (what the lookup path relies on)."""
    rng = np.random.default_rng(2)
    for bits in BITS:
        for m in (1, 3, 4, 6):
            codes = rng.integers(0, 2**bits, (7, 999))
            x = rng.integers(-15, 16, (m, 999)).astype(np.float32)
            y = lb.gemv_nbit(x, lb.pack_nbit(codes, bits), 1.0, 0, bits, 999)
            np.testing.assert_array_equal(y, x.astype(np.int64) @ codes.T)


def test_bad_arguments():
    codes = np.zeros((2, 100), np.int64)
    with pytest.raises(ValueError, match="multiple"):
        lb.pack_nbit(codes, 4, group_size=32)
    with pytest.raises(ValueError, match="bits"):
        lb.pack_nbit(codes, 6)
    with pytest.raises(ValueError, match="lie in"):
        lb.pack_nbit(codes + 16, 4)
    x = np.full((1, 100), 1e30, np.float32)
    with pytest.raises(ValueError, match="too large"):
        lb.gemv_nbit(x, lb.pack_nbit(codes, 4), 1.0, 0, 4, 100)


def test_bench_cases():
    cases = lb.bench_cases(1, 64, 128, np.random.default_rng(0))
    for name in ("gemv_w4_f32", "gemv_w3_f32", "gemv_w2_f32"):
        assert name in cases
    for name, (fn, macs) in cases.items():
        fn()
        assert macs == 64 * 128, name


# -- the fast runtime on exported models -------------------------------------------------------
def _load_both(net, tmp_path):
    path = export(net, tmp_path / "net.lowbit")
    return rt.load(path), rt.load(path, fast=True)


def _inputs(arch, n, seed):
    return np.random.default_rng(seed).random((n, *SHAPES[arch]), dtype=np.float32)


@pytest.fixture
def every_size(monkeypatch):
    """Packed kernels for every layer and batch size (the small layers of these models and
    convolutions, rows = N*OH*OW, stay with BLAS otherwise)."""
    monkeypatch.setattr(lb, "MAX_ROWS", 10**9)
    monkeypatch.setattr(lb, "MIN_WEIGHTS", 0)


def _recording(run, inputs):
    def rec(layer, x, trace=None):
        inputs[layer.name] = x
        return run(layer, x, trace)

    return rec


def _check_float_layers(model, x):
    """Each packed layer's product on its real input rows within the bound of float64."""
    inputs = {}
    for layer in model.layers:
        if layer.fast is not None:
            layer.fast = _recording(layer.fast, inputs)
    model(x)
    checked = 0
    for layer in model.layers:
        if layer.name not in inputs:
            continue
        cin = layer.weight.shape[1] * (layer.groups if layer.kind == "conv2d" else 1)
        for i, part in enumerate(lb._float_parts(layer)):
            rows = layer._rows(inputs[layer.name], i, cin // layer.groups)[0].astype(np.float32)
            oracle = rows.astype(np.float64) @ layer.parts[i].floats.astype(np.float64).T
            bound = lb.error_bound(rows, part.codes, part.scale, part.zero, part.bits,
                                   part.group_size)
            assert np.all(np.abs(part(rows) - oracle) <= bound), layer.name
            checked += 1
    return checked


@pytest.mark.parametrize("arch", ["lenet300", "resnet20"])
@pytest.mark.parametrize("recipe", [("twn", "twn", 2, 32), ("ivan", "ivan", 4, 32),
                                    ("dorefa", "dorefa", 3, 32)])
def test_float_path_models(arch, recipe, tmp_path, every_size):
    w, a, wb, ab = recipe
    net = _model_with(arch, lowbit.Recipe(weight=w, act=a, w_bits=wb, a_bits=ab))
    ref, fast = _load_both(net, tmp_path)
    served = [k for k in kernels(fast).values() if k.startswith("lowbit-gemv")]
    assert served and all(ly.path == "float" for ly in fast.layers if ly.fast is not None)
    for n, seed in ((1, 0), (5, 1)):
        x = _inputs(arch, n, seed)
        want, got = ref(x), fast(x)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
        assert _check_float_layers(rt.load(tmp_path / "net.lowbit", fast=True), x) >= 1


def _model_with(arch, recipe, seed=0):
    import torch

    from lowbit.models import build_model

    torch.manual_seed(seed)
    c, h, _ = SHAPES[arch]
    net = lowbit.quantize(build_model(arch, c, h, 10, 0.45, 0.25), recipe)
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.rand(32, *SHAPES[arch]))
    return net.eval()


def _equal_traces(t_ref, t_fast):
    for name, rec in t_ref.items():
        assert t_fast[name]["path"] == rec["path"]
        for a, b in zip(rec["acc"], t_fast[name]["acc"], strict=True):
            assert (a is None) == (b is None), name
            if a is not None:
                assert len(a) == len(b)
                for u, v in zip(a, b, strict=True):
                    assert v.dtype == np.int64 and np.array_equal(u, v), name


@pytest.mark.parametrize("arch,seed", [("lenet300", 0), ("lenet300", 1), ("resnet20", 0)])
def test_lookup_path_equals_the_reference(arch, seed, tmp_path, every_size):
    ref, fast = _load_both(_model(arch, "ttq-dorefa-a4", seed), tmp_path)
    assert "lowbit-lookup" in kernels(fast).values()
    for n in (1, 3):
        x = _inputs(arch, n, seed + 10 * n)
        t_ref, t_fast = {}, {}
        want, got = ref(x, trace=t_ref), fast(x, trace=t_fast)
        np.testing.assert_array_equal(got, want)
        _equal_traces(t_ref, t_fast)
        assert any(t["kernel"] == "lowbit-lookup" for t in t_fast.values() if "kernel" in t)


def test_small_layers_stay_with_blas(tmp_path):
    """LeNet300's largest quantized layer has 30,000 weights, below MIN_WEIGHTS."""
    _, fast = _load_both(_model("lenet300", "twn-float-a"), tmp_path)
    assert set(kernels(fast).values()) == {"reference"}


def test_large_batches_keep_the_reference_product(tmp_path, monkeypatch):
    monkeypatch.setattr(lb, "MIN_WEIGHTS", 0)
    ref, fast = _load_both(_model("lenet300", "twn-float-a"), tmp_path)
    assert "lowbit-gemv-w2" in kernels(fast).values()
    x = _inputs("lenet300", lb.MAX_ROWS + 1, 0)
    np.testing.assert_array_equal(fast(x), ref(x))


def test_a_large_layer_takes_the_packed_kernel_by_default(tmp_path):
    """With the default thresholds: a 2048 x 1024 4-bit layer (Ivan's grid: 5-bit codes) at
    batch 1 and 4, within the bound's reach of the reference (logits to 1e-5)."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 2048), torch.nn.ReLU(),
                              torch.nn.Linear(2048, 1024), torch.nn.ReLU(),
                              torch.nn.Linear(1024, 10))
    net = lowbit.quantize(net, lowbit.Recipe(weight="ivan", act="ivan", w_bits=4, a_bits=32))
    ref, fast = _load_both(net.eval(), tmp_path)
    assert kernels(fast)["3"].startswith("lowbit-gemv")
    for n in (1, 4):
        x = _inputs("lenet300", n, n)
        want, got = ref(x), fast(x)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
