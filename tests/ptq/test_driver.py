"""lowbit.ptq.quantize: the modes, what each step leaves, and the bad inputs of issue 9."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import BitsError, LowbitError, NonFiniteError
from lowbit.functional.uniform import minmax_qparams, uniform
from lowbit.nn.layers import QuantConv2d, QuantLinear
from lowbit.ptq import PTQConfig, quantize


def convnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    for m in net.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def batches(n: int = 4, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(16, 3, 6, 6, generator=g) for _ in range(n)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def test_static_int8_is_close_to_float_and_leaves_the_model_alone():
    net = convnet()
    before = copy.deepcopy(net.state_dict())
    xs = batches()
    q, report = quantize(net, xs, PTQConfig())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not any(isinstance(m, (QuantLinear, QuantConv2d)) for m in net.modules())
    x = batches(1, seed=9)[0]
    assert _rel(q(x), net(x)) < 0.02
    layers = [m for m in q.modules() if isinstance(m, (QuantLinear, QuantConv2d))]
    assert len(layers) == 3
    for m in layers:  # every layer consumes integers on a frozen grid
        assert m.input_quant is not None and m.input_quant.is_frozen
        assert m.weight_quant.is_frozen
    assert report.folded == [["0", "1"], ["3", "4"]] and report.calibration_samples == 64
    assert set(report.seconds) >= {"fold_bn", "weights", "calibrate", "total"}


def test_static_grid_is_the_calibrated_min_max():
    net = convnet()
    xs = batches()
    q, _ = quantize(net, xs, PTQConfig(observer="minmax"))
    iq = q[0].input_quant
    lo = min(float(x.min()) for x in xs)
    hi = max(float(x.max()) for x in xs)
    scale, zp = minmax_qparams(torch.tensor(lo), torch.tensor(hi), 0, 255, symmetric=False)
    assert torch.equal(iq.scale, scale) and torch.equal(iq.zero_point, zp)
    x = batches(1, seed=5)[0] * 3  # beyond the calibrated range: clipped, not re-ranged
    assert torch.equal(iq(x), uniform(x, scale, zp, 0, 255))


def test_lower_bits_lose_more_and_mse_observer_clips():
    net = convnet()
    xs, x = batches(), batches(1, seed=9)[0]
    err = {b: _rel(quantize(net, xs, PTQConfig(w_bits=b, a_bits=8, keep_first=False,
                                                keep_last=False))[0](x), net(x))
           for b in (8, 4, 2)}
    assert err[8] < err[4] < err[2]
    q, _ = quantize(net, xs, PTQConfig(observer="mse", a_bits=4))
    assert q[3].input_quant.range_observer.clip_range()[1] <= q[3].input_quant.range_observer.hi


def test_dynamic_mode_computes_each_batch_its_own_range():
    net = convnet()
    q, report = quantize(net, None, PTQConfig(mode="dynamic"))
    assert report.calibration_samples == 0
    iq = q[3].input_quant
    x = torch.rand(4, 8, 6, 6)
    lo, hi = x.min(), x.max()
    s, z = minmax_qparams(lo, hi, 0, 255, symmetric=False)
    assert torch.equal(iq(x), uniform(x, s, z, 0, 255))
    y = torch.rand(4, 8, 6, 6) * 5  # another batch: another range
    s2, z2 = minmax_qparams(y.min(), y.max(), 0, 255, symmetric=False)
    assert not torch.equal(s, s2) and torch.equal(iq(y), uniform(y, s2, z2, 0, 255))
    rows = quantize(net, None, PTQConfig(mode="dynamic", per_row=True))[0][7].input_quant
    v = torch.stack([torch.rand(10), torch.rand(10) * 9])
    lo, hi = v.min(dim=1).values, v.max(dim=1).values
    s, z = minmax_qparams(lo, hi, 0, 255, symmetric=False)
    assert torch.equal(rows(v), uniform(v, s, z, 0, 255, axis=0))


@pytest.mark.parametrize("mode,dtype", [("float16", torch.float16),
                                        ("bfloat16", torch.bfloat16)])
def test_half_precision_modes_round_the_weights(mode, dtype):
    net = convnet()
    q, _ = quantize(net, None, PTQConfig(mode=mode))
    w = q[0].weight.detach()
    assert torch.equal(q[0].quantized_weight(), w.to(dtype).float())
    sizes = lowbit.model_bytes(q)
    weights = sum(m.weight.numel() for m in q.modules() if isinstance(m, (QuantLinear,
                                                                          QuantConv2d)))
    assert sizes["float_bytes"] - sizes["packed_bytes"] == 2 * weights


def test_bias_correction_and_adaround_run_and_report():
    net = convnet()
    xs = batches()
    q, report = quantize(net, xs, PTQConfig(w_bits=3, a_bits=8, keep_first=False,
                                            keep_last=False, bias_correction=True,
                                            adaround=True, adaround_iters=50))
    assert len(report.adaround) == 3 and len(report.bias) == 3
    assert all(r["loss_adaround"] <= r["loss_nearest"] for r in report.adaround)
    assert all(b["after"] <= b["uncorrected"] for b in report.bias)
    for m in q.modules():  # AdaRound's weights are on the frozen grid: they re-encode exactly
        if isinstance(m, (QuantLinear, QuantConv2d)):
            codes, grid = m.weight_quant.encode(m.weight)
            assert torch.equal(grid.decode(codes), m.weight.detach())


def test_equalize_keeps_the_float_function():
    net = convnet()
    q, report = quantize(net, batches(), PTQConfig(equalize=True, a_bits=32, w_bits=16,
                                                   keep_first=False, keep_last=False))
    assert [p["first"] for p in report.equalized] == ["0", "3"]  # conv-relu-conv, conv-flatten-fc
    x = batches(1, seed=3)[0]
    assert _rel(q(x), net(x)) < 1e-3  # 16-bit weights, float activations: only CLE + rounding


def test_bad_inputs_are_clear_errors():
    net = convnet()
    with pytest.raises(LowbitError, match="empty calibration set"):
        quantize(net, [], PTQConfig())
    with pytest.raises(LowbitError, match="empty calibration set"):
        quantize(net, [torch.zeros(0, 3, 6, 6)], PTQConfig())
    bad = batches(1)[0]
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="calibration batch 0"):
        quantize(net, [bad], PTQConfig())
    q, _ = quantize(net, batches(1), PTQConfig())
    with pytest.raises(LowbitError, match="already quantized"):
        quantize(q, batches(1), PTQConfig())
    with pytest.raises(LowbitError, match="float32 model"):
        quantize(copy.deepcopy(net).half(), batches(1), PTQConfig())
    for bits in (1, 17, 32):
        with pytest.raises(BitsError):
            PTQConfig(w_bits=bits)
    with pytest.raises(BitsError):
        PTQConfig(a_bits=1)
    with pytest.raises(LowbitError, match="mode"):
        PTQConfig(mode="int4")
    with pytest.raises(LowbitError, match="observer"):
        PTQConfig(observer="dynamic")
    with pytest.raises(LowbitError, match="fold_bn"):
        PTQConfig(equalize=True, fold_bn=False)
    with pytest.raises(LowbitError, match="integer grids"):
        PTQConfig(mode="float16", adaround=True)


def test_a_calibration_set_smaller_than_a_batch_and_constant_activations():
    net = convnet()
    q, report = quantize(net, [torch.rand(1, 3, 6, 6)], PTQConfig())
    assert report.calibration_samples == 1
    const = [torch.zeros(8, 3, 6, 6)]  # every input 0: zero range, eps scale, no NaN
    q, _ = quantize(net, const, PTQConfig())
    y = q(torch.rand(2, 3, 6, 6))
    assert torch.isfinite(y).all()
    assert float(q[0].input_quant.scale) == torch.finfo(torch.float32).eps
