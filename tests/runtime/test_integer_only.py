"""The integer-only path (lowbit/runtime/integer_only.py, Jacob et al. 2018) on PTQ int8
models: each fused chain's output codes equal an independent numpy computation of ONNX
Runtime's QLinearMatMul rule (float32 multiplier, round half to even; the rule
tests/runtime/test_requant.py checks against ONNX Runtime bit for bit), stay within one code
of the float-epilogue reference, and the model's predictions agree with the fake-quantized
model for every rounding convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lowbit.runtime as rt
from lowbit.exporter import export, frozen_copy
from lowbit.models import build_model
from lowbit.ptq import PTQConfig, quantize
from lowbit.runtime.integer_only import run_chain
from lowbit.runtime.model import _run
from lowbit.runtime.requant import Rounding


@pytest.fixture(scope="module")
def lenet_file(tmp_path_factory):
    torch.manual_seed(0)
    net = build_model("lenet300", 1, 28, 10, 0.5, 0.25).eval()
    q, _ = quantize(net, [torch.rand(64, 1, 28, 28) for _ in range(4)], PTQConfig())
    path = export(q, tmp_path_factory.mktemp("io") / "l.lowbit")
    return q, path


def test_chain_codes_equal_ort_s_rule(lenet_file):
    _, path = lenet_file
    model = rt.load(path, integer_only="half_even")
    assert len(model.chains) == 2  # fc1 -> relu -> fc2's input, fc2 -> relu -> fc3's input
    x = np.random.default_rng(0).random((32, 1, 28, 28), dtype=np.float32)
    ref = rt.load(path)
    vals = {}  # the reference run's values: each chain's coded input and output codes
    for node in ref.nodes:
        if node.op == "output":
            break
        args = [vals[v] for v in node.inputs]
        vals[node.output] = x if node.op == "input" else _run(node, args, None)
    for i, (j, relu) in model.chains.items():
        node, q = model.nodes[i], model.nodes[j]
        xin = vals[node.inputs[0]]
        ranks, grid = xin
        got, _ = run_chain(node.layer, xin, q.grid, relu, Rounding.HALF_EVEN)
        # independent: ORT's rule in numpy
        zx, zy = int(grid.codebook.zero_point), int(q.grid.codebook.zero_point)
        x_q = (grid.ints[ranks] + zx).reshape(len(x), -1).astype(np.int64)
        w = node.layer.parts[0].ints.astype(np.int64)
        sw = node.layer.weight.codebook.scale.astype(np.float32)
        bias_q = np.rint(node.layer.bias.astype(np.float64) / (
            np.float32(grid.scale) * sw).astype(np.float64)).astype(np.int64)
        acc = (x_q - zx) @ w.T + bias_q
        m = (np.float32(grid.scale) * sw / np.float32(q.grid.scale)).astype(np.float32)
        y = np.rint(acc.astype(np.float32) * m) + zy
        lo = max(int(q.grid.codebook.levels.min()), zy if relu else -10**9)
        y = np.clip(y, lo, int(q.grid.codebook.levels.max())).astype(np.int64)
        want = np.searchsorted(q.grid.ints, y - zy)
        np.testing.assert_array_equal(got, want)
        # within one code of the float-epilogue reference's codes
        ref_ranks = vals[q.output][0]
        assert np.abs(got.astype(int) - ref_ranks.astype(int)).max() <= 1
        assert (got != ref_ranks).mean() < 0.02


@pytest.mark.parametrize("rounding", ["half_even", "single", "gemmlowp"])
def test_predictions_agree_for_every_rounding(lenet_file, rounding):
    q, path = lenet_file
    x = torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = frozen_copy(q)(x).numpy()
    trace = {}
    got = rt.load(path, integer_only=rounding)(x.numpy(), trace=trace)
    assert sum(v["path"].startswith("integer-only") for v in trace.values()) == 2
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.99
    np.testing.assert_allclose(got, want, atol=0.05 * np.abs(want).max())


def test_unknown_rounding_is_refused(lenet_file):
    with pytest.raises(ValueError):
        rt.load(lenet_file[1], integer_only="nearest")
