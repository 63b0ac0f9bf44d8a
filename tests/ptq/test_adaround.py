"""AdaRound (Nagel et al. 2020, eq. 22-25): h(V) and f_reg against independent expressions, h
initialised to the fractional part, never worse than round-to-nearest on its calibration data,
integers within [qmin, qmax], the written-back weight re-encodes to the same codes."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.functional.uniform import minmax, minmax_qparams, uniform, uniform_encode
from lowbit.nn.layers import QuantConv2d, QuantLinear
from lowbit.ptq import AdaRoundOptions, adaround_layer, adaround_model
from lowbit.ptq.adaround import (
    beta_at,
    inverse_rectified_sigmoid,
    reconstruction_loss,
    rectified_sigmoid,
    rounding_regularizer,
)
from lowbit.quantizers.base import WeightQuantizer
from lowbit.quantizers.uniform import UniformWeight

ITERS = 300


def test_rectified_sigmoid_and_regularizer_formulas():
    v = np.linspace(-8, 8, 101)
    h = np.clip(1 / (1 + np.exp(-v)) * 1.2 - 0.1, 0, 1)  # zeta = 1.1, gamma = -0.1
    got = rectified_sigmoid(torch.tensor(v)).numpy()
    np.testing.assert_allclose(got, h, rtol=1e-12, atol=1e-12)
    assert got.min() == 0.0 and got.max() == 1.0  # reaches both ends (the "rectified" part)
    for beta in (20.0, 7.5, 2.0):
        expected = np.sum(1 - np.abs(2 * h - 1) ** beta)
        assert float(rounding_regularizer(torch.tensor(h), beta)) == pytest.approx(expected)
    assert float(rounding_regularizer(torch.tensor([0.0, 1.0, 1.0]), 2.0)) == 0.0


def test_beta_schedule_warm_start_then_cosine_20_to_2():
    opts = AdaRoundOptions()
    assert [beta_at(i, 1000, opts) for i in (0, 199)] == [None, None]
    assert beta_at(200, 1000, opts) == pytest.approx(20.0)
    assert beta_at(600, 1000, opts) == pytest.approx(11.0)  # halfway: the cosine's midpoint
    assert beta_at(400, 1000, opts) == pytest.approx(2 + 9 * (1 + math.cos(math.pi / 4)))
    assert beta_at(999, 1000, opts) == pytest.approx(2.0, abs=1e-3)


def test_h_init_is_the_fractional_part():
    r = torch.linspace(0, 0.999, 1000, dtype=torch.float64)
    assert torch.allclose(rectified_sigmoid(inverse_rectified_sigmoid(r)), r, atol=1e-12)
    r32 = r.float()
    assert torch.allclose(rectified_sigmoid(inverse_rectified_sigmoid(r32)), r32, atol=1e-6)


def correlated(kind: str, g: torch.Generator):
    """A layer and inputs with correlated features (as real activations have; with i.i.d.
    inputs round-to-nearest is already optimal in expectation)."""
    if kind == "linear":
        layer = nn.Linear(32, 16)
        z, mix = torch.randn(256, 32, generator=g), torch.randn(32, 32, generator=g)
        return layer, z @ mix / 32**0.5 + 0.5
    layer = nn.Conv2d(8, 12, 3, padding=1, stride=2)
    z, mix = torch.randn(96, 8, 6, 6, generator=g), torch.randn(8, 8, generator=g)
    x = torch.einsum("nchw,cd->ndhw", z, mix) / 8**0.5
    return layer, x + nn.functional.avg_pool2d(x, 3, 1, 1)


def grid(w: torch.Tensor, bits: int, symmetric: bool = True):
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    lo, hi = minmax(w, 0)
    scale, zp = minmax_qparams(lo, hi, qmin, qmax, symmetric)
    return scale, zp, qmin, qmax


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("bits,symmetric", [(4, True), (3, True), (3, False)])
def test_never_worse_than_nearest(kind, bits, symmetric):
    torch.manual_seed(bits)
    layer, x = correlated(kind, torch.Generator().manual_seed(10 + bits))
    with torch.no_grad():
        y = layer(x)
    scale, zp, qmin, qmax = grid(layer.weight, bits, symmetric)
    w0 = layer.weight.detach().clone()
    res = adaround_layer(layer, scale, zp, qmin, qmax, x, y, iters=ITERS, batch_size=32)
    assert torch.equal(layer.weight, w0)  # the layer is only read
    with torch.no_grad():  # round-to-nearest, independently: the quantizer's own forward
        nearest = uniform(layer.weight, scale, zp, qmin, qmax, axis=0)
        loss_nearest = float(reconstruction_loss(layer, layer._conv_forward(
            x, nearest, layer.bias) if kind == "conv" else x @ nearest.T + layer.bias, y))
    assert res.loss_nearest == pytest.approx(loss_nearest, rel=1e-4)
    assert res.loss_adaround <= res.loss_nearest
    assert 0 < res.changed < 0.5
    assert res.integers.dtype == torch.int64 and res.integers.shape == w0.shape
    assert int(res.integers.min()) >= qmin and int(res.integers.max()) <= qmax
    # each weight is rounded down or up from W/s, never further
    base = torch.floor(w0 * (1 / scale.reshape(-1, *[1] * (w0.dim() - 1))))
    zp_b = zp.reshape(-1, *[1] * (w0.dim() - 1))
    step = res.integers - zp_b - base
    inside = (base + zp_b >= qmin) & (base + zp_b + 1 <= qmax)
    assert bool(((step == 0) | (step == 1))[inside].all())
    # the rounded weight re-encodes to the same codes at the same scale
    codes, record = uniform_encode(res.weight, scale, zp, qmin, qmax, axis=0)
    assert torch.equal(codes, res.codes)
    assert torch.equal(record.decode(codes), res.weight)


class FrozenUniform(WeightQuantizer):
    """A stand-in fixed-grid weight quantizer: per-channel min-max scale stored at construction."""

    def __init__(self, weight: torch.Tensor, bits: int, freeze: bool = True) -> None:
        super().__init__(bits)
        self.qmin, self.qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        lo, hi = minmax(weight, 0)
        scale, zp = minmax_qparams(lo, hi, self.qmin, self.qmax, True)
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zp)
        if freeze:
            self.freeze()

    def forward(self, w):
        return uniform(w, self.scale, self.zero_point, self.qmin, self.qmax, axis=0)

    def encode(self, w):
        return uniform_encode(w, self.scale, self.zero_point, self.qmin, self.qmax, axis=0)


def small_models(make_quant):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(8 * 5 * 5, 6), nn.ReLU(), nn.Linear(6, 4)).eval()
    q = copy.deepcopy(net)
    q[0] = QuantConv2d.from_float(q[0], make_quant(q[0].weight))
    q[3] = QuantLinear.from_float(q[3], make_quant(q[3].weight))
    return net, q  # q[5] stays a float nn.Linear: not a quantized layer, not visited


def test_model_level_writes_codes_back():
    net, q = small_models(lambda w: FrozenUniform(w, 3))
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(3, 3, generator=g)
    batches = [torch.einsum("nchw,cd->ndhw", torch.randn(32, 3, 5, 5, generator=g), mix)
               for _ in range(3)]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    report = adaround_model(net, q, batches, iters=200)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert [r.name for r in report.layers] == ["0", "3"] and report.skipped == ()
    for r in report.layers:
        assert r.loss_adaround <= r.loss_nearest and r.samples == 96
    for i in (0, 3):
        layer = q[i]
        codes, record = layer.weight_quant.encode(layer.weight)
        assert torch.equal(record.decode(codes), layer.weight)  # on the grid exactly
        assert torch.equal(layer.quantized_weight(), layer.weight)


@pytest.mark.parametrize("make", [lambda w: FrozenUniform(w, 4, freeze=False),
                                  lambda w: UniformWeight(4)])
def test_model_level_needs_a_frozen_grid(make):
    net, q = small_models(make)
    with pytest.raises(LowbitError, match="not frozen"):
        adaround_model(net, q, [torch.randn(4, 3, 5, 5)], iters=2)


def test_model_level_skips_float_weights():
    net, q = small_models(lambda w: FrozenUniform(w, 4))
    q[3].weight_quant = None
    report = adaround_model(net, q, [torch.randn(8, 3, 5, 5)], iters=20)
    assert [r.name for r in report.layers] == ["0"]
    assert report.skipped == (("3", "weight kept in float (no weight quantizer)"),)


def test_falls_back_to_nearest_when_the_learned_rounding_loses():
    """A rounding driven by a huge lr and regularizer for 3 steps loses to nearest (measured:
    it does with this seed); then nearest is what comes back."""
    from lowbit.ptq.adaround import AdaRoundOptions, adaround_layer

    torch.manual_seed(3)
    layer = torch.nn.Linear(16, 8)
    x = torch.randn(64, 16)
    t = layer(x).detach()
    scale = layer.weight.detach().abs().amax(dim=1) / 7
    res = adaround_layer(layer, scale, 0, -8, 7, x, t, iters=3, batch_size=8,
                         options=AdaRoundOptions(lr=50.0, warm_start=0.0, reg_weight=100.0))
    assert res.fell_back and res.loss_adaround == res.loss_nearest
    nearest = torch.clamp(torch.round(layer.weight.detach() * (1.0 / scale[:, None])), -8, 7)
    assert torch.equal(res.integers, nearest.long()) and res.changed == 0.0
