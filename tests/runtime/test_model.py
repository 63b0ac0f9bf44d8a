"""The keystone on small models: a file written by ``lowbit.export`` and run by
``lowbit.runtime`` computes what the frozen fake-quantized model computes.

- weights decode from the file bit for bit to the quantized weights;
- every integer accumulator of the runtime equals torch's float64 convolution / matmul of the
  integers (exact: the integers are small), taken from the torch model independently (the
  layer's input through its quantizer's own ``encode``, the weight's ``encode``);
- logits agree to float rounding and argmax agrees, for LeNet300, LeNet-5 and ResNet-20 over
  every path (integer, xnor, binary01, ternary, bitplanes, bitplanes2, lookup, float).
The full-test-set measurement is benchmarks/runtime_equivalence.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import lowbit
import lowbit.runtime as rt
from lowbit.exporter import export, frozen_copy
from lowbit.models import build_model
from lowbit.nn.layers import QuantConv2d, QuantLinear

# (weight method, act method, w_bits, a_bits) -> the path the runtime must take
CASES = {
    "ivan-w4a4": ("ivan", "ivan", 4, 4, "integer"),
    "dorefa-w2a2": ("dorefa", "dorefa", 2, 2, "integer"),
    "lsq-w3a3": ("lsq", "lsq", 3, 3, "integer"),
    "uniform-w8a8": ("uniform", "uniform", 8, 8, "integer"),
    "pow2-w4a4": ("pow2", "pow2", 4, 4, "integer"),
    "qnet-w2a2": ("qnet", "qnet", 2, 2, "integer"),
    "xnor": ("xnor", "xnor", 1, 1, "xnor"),
    "bnn": ("bnn", "bnn", 1, 1, "xnor"),
    "bnn-w-dorefa-a1": ("bnn", "dorefa", 1, 1, "binary01"),
    "twn-bnn-a": ("twn", "bnn", 2, 1, "ternary"),
    "twn-dorefa-a1": ("twn", "dorefa", 2, 1, "ternary"),
    "abc-w2-ivan-a4": ("abc", "ivan", 2, 4, "bitplanes"),
    "abc": ("abc", "abc", 2, 2, "bitplanes2"),
    "ttq-dorefa-a4": ("ttq", "dorefa", 2, 4, "lookup"),
    "twn-float-a": ("twn", None, 2, 32, "float"),
    "xnor-hwgq": ("xnor", "hwgq", 1, 2, "integer"),
}
SHAPES = {"lenet300": (1, 28, 28), "lenet5": (1, 28, 28), "resnet20": (3, 32, 32)}


def _model(arch: str, case: str, seed: int = 0) -> torch.nn.Module:
    w, a, wb, ab, _ = CASES[case]
    torch.manual_seed(seed)
    c, h, _w = SHAPES[arch]
    net = build_model(arch, c, h, 10, 0.45, 0.25)
    net = lowbit.quantize(net, lowbit.Recipe(weight=w, act=a or w, w_bits=wb, a_bits=ab))
    net.train()
    with torch.no_grad():  # running statistics and observed ranges
        for _ in range(2):
            net(torch.rand(32, c, h, _w))
    return net.eval()


def _run(net, arch, tmp_path, n=16, seed=1):
    path = export(net, tmp_path / "net.lowbit")
    model = rt.load(path)
    ref = frozen_copy(net)
    x = torch.rand(n, *SHAPES[arch], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        want = ref(x).numpy()
    trace = {}
    got = model(x.numpy(), trace=trace)
    return ref, model, x, want, got, trace


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("arch", ["lenet300", "resnet20"])
def test_runtime_matches_the_fake_quantized_model(arch, case, tmp_path):
    net = _model(arch, case)
    ref, model, x, want, got, trace = _run(net, arch, tmp_path)
    paths = {v["path"] for v in trace.values()}
    assert CASES[case][4] in paths, paths
    assert got.dtype == np.float32 and got.shape == want.shape
    # logits to float rounding, amplified by a code that flips at a threshold: argmax agrees
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9
    assert np.median(np.abs(got - want)) <= 1e-4 * max(1.0, float(np.abs(want).max()))


def test_lenet5_maxpool_on_codes(tmp_path):
    net = _model("lenet5", "ivan-w4a4")
    ref, model, x, want, got, trace = _run(net, "lenet5", tmp_path)
    assert trace["conv2"]["path"] == "integer"  # its input is pool1(quantized relu1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["ivan-w4a4", "uniform-w8a8", "ttq-dorefa-a4", "abc",
                                  "xnor", "pow2-w4a4"])
def test_weights_decode_bit_for_bit(case, tmp_path):
    net = _model("resnet20", case)
    export(net, tmp_path / "net.lowbit")
    model = rt.load(tmp_path / "net.lowbit")
    ref = dict(frozen_copy(net).named_modules())
    for layer in model.layers:
        torch_layer = ref[layer.name]
        with torch.no_grad():
            w = torch_layer.quantized_weight() if isinstance(
                torch_layer, (QuantLinear, QuantConv2d)) else torch_layer.weight
        np.testing.assert_array_equal(layer.weight.decoded(), w.numpy())


def _torch_integers(ref, name: str, x: torch.Tensor):
    """(input integers, weight integers) of layer ``name`` from the torch model alone: the
    layer's input as its producing quantizer encodes it, the weight as its quantizer does."""
    layer = dict(ref.named_modules())[name]
    seen = {}
    h = layer.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        ref(x)
    h.remove()
    codes, cb = layer.weight_quant.encode(layer.weight)
    return seen["x"], cb.integers(codes).double()


@pytest.mark.parametrize("case", ["ivan-w4a4", "dorefa-w2a2", "uniform-w8a8", "xnor",
                                  "twn-bnn-a", "bnn-w-dorefa-a1"])
def test_accumulators_equal_an_independent_integer_computation(case, tmp_path):
    net = _model("resnet20", case)
    ref, model, x, _, _, _ = _run(net, "resnet20", tmp_path, n=4)
    checked = 0
    for layer in model.layers:
        if layer.path in ("float",):
            continue
        xin, w_int = _torch_integers(ref, layer.name, x)
        # the input is on the grid of the quantizer upstream: integers = value / scale
        a_int = torch.round(xin.double() / layer.grid.scale)
        scale = torch.tensor(layer.grid.scale, dtype=torch.float32)
        assert torch.equal(a_int.float() * scale, xin)  # decoded as the codebook does
        if layer.kind == "conv2d":
            want_acc = TF.conv2d(a_int, w_int, stride=layer.stride, padding=layer.padding)
            want_acc = want_acc.permute(0, 2, 3, 1).reshape(-1, w_int.shape[0])
        else:
            want_acc = a_int.reshape(a_int.shape[0], -1) @ w_int.T
        # the runtime layer on the same input (upstream, float rounding may flip a code)
        ranks = np.searchsorted(layer.grid.values, xin.numpy())  # (A_b is not idempotent)
        np.testing.assert_array_equal(layer.grid.values[ranks], xin.numpy())
        one = {}
        layer((ranks, layer.grid), trace=one)
        acc = one[layer.name]["acc"][0]
        assert acc.dtype == np.int64
        np.testing.assert_array_equal(acc, want_acc.numpy().astype(np.int64))
        checked += 1
    assert checked >= 10


def _observe_export_run(net, x, tmp_path):
    """One training-mode pass on ``x`` (observed ranges), export, then (runtime logits, frozen
    torch logits, the runtime's trace) on ``x``."""
    net.train()
    with torch.no_grad():
        net(x)
    export(net.eval(), tmp_path / "g.lowbit")
    trace = {}
    got = rt.load(tmp_path / "g.lowbit")(x.numpy(), trace=trace)
    with torch.no_grad():
        want = frozen_copy(net)(x).numpy()
    return got, want, trace


def grouped_conv_net():
    """A quantized net with grouped, strided and padded convolutions, and its input."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1, groups=2, bias=True),
                              torch.nn.ReLU(), torch.nn.Conv2d(8, 6, 3, stride=2, groups=2),
                              torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(6 * 3 * 3, 5))
    net = lowbit.quantize(net, lowbit.Recipe(weight="ivan", act="ivan", w_bits=3, a_bits=3,
                                             keep_first=False, keep_last=False))
    return net, torch.rand(8, 4, 8, 8)


def test_grouped_conv_integer_path(tmp_path):
    net, x = grouped_conv_net()
    got, want, trace = _observe_export_run(net, x, tmp_path)
    assert trace["2"]["path"] == "integer" and len(trace["2"]["acc"]) == 2
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_model_with_no_quantizer_runs_in_float(tmp_path):
    net = build_model("resnet20", 3, 32, 10, 0.5, 0.25).eval()
    export(net, tmp_path / "f.lowbit")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        want = net(x).numpy()
    np.testing.assert_allclose(rt.load(tmp_path / "f.lowbit")(x.numpy()), want, rtol=1e-4,
                               atol=1e-4)


def test_export_leaves_the_model_unchanged(tmp_path):
    net = _model("lenet300", "ivan-w4a4")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    export(net, tmp_path / "n.lowbit")
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_input_with_nan_is_refused(tmp_path):
    export(_model("lenet300", "xnor"), tmp_path / "n.lowbit")
    x = np.zeros((2, 1, 28, 28), np.float32)
    x[1, 0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        rt.load(tmp_path / "n.lowbit")(x)


class _GroupInt4(lowbit.quantizers.base.WeightQuantizer):
    """A user's own weight quantizer with per-group scales (groups of 8 along each output
    channel's flattened row, symmetric 4-bit): the runtime's one-accumulator-per-group path."""

    def encode(self, w):
        from lowbit.functional.codebook import IntegerGrid, LevelRange

        rows = w.detach().reshape(w.shape[0], -1)
        g = rows.reshape(w.shape[0], -1, 8).abs().amax(-1).clamp_min(1e-8) / 7
        cb = IntegerGrid(LevelRange(-7, 7), g, 4, group_size=8)
        idx = torch.arange(rows.shape[1]) // 8
        q = torch.clamp(torch.round(rows / g[:, idx]), -7, 7)
        return (q + 7).long().reshape(w.shape), cb

    def forward(self, w):
        codes, cb = self.encode(w)
        return cb.decode(codes)


def test_per_group_weight_scales(tmp_path):
    torch.manual_seed(0)
    conv = QuantConv2d(8, 6, 3, padding=1, weight_quant=_GroupInt4(4),
                       input_quant=lowbit.quantizers.METHODS["ivan"].act(4))
    net = torch.nn.Sequential(conv, torch.nn.Flatten())
    x = torch.rand(5, 8, 6, 6)
    got, want, trace = _observe_export_run(net, x, tmp_path)
    (name, t), = trace.items()
    assert t["path"] == "integer" and len(t["acc"][0]) == 72 // 8  # one per group
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
