"""The input-quantizer slot of QuantLinear / QuantConv2d (issue 8 item 4) and
lowbit.add_input_quantizers, which fills it from a recipe-like description."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit import (
    LayerRule,
    LowbitError,
    NonFiniteError,
    QuantConv2d,
    QuantLinear,
    Recipe,
    add_input_quantizers,
    quantize,
    set_quantization,
)
from lowbit.quantizers import IvanWeight, UniformAct
from lowbit.quantizers.binary import BNNAct


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_linear_input_quant_applies_to_the_input():
    torch.manual_seed(0)
    layer = QuantLinear(6, 3, input_quant=BNNAct(1))
    x = torch.randn(4, 6, generator=gen())
    expected = nn.functional.linear(torch.where(x >= 0, 1.0, -1.0), layer.weight, layer.bias)
    assert torch.equal(layer(x), expected)


def test_conv_input_quant_applies_to_the_input():
    torch.manual_seed(0)
    conv = QuantConv2d(2, 3, 3, padding=1, weight_quant=IvanWeight(2), input_quant=BNNAct(1))
    x = torch.randn(2, 2, 5, 5, generator=gen())
    expected = conv._conv_forward(torch.where(x >= 0, 1.0, -1.0), conv.quantized_weight(),
                                  conv.bias)
    assert torch.equal(conv(x), expected)


def test_default_is_none_and_disabled_layer_is_the_float_layer():
    torch.manual_seed(0)
    assert QuantLinear(3, 2).input_quant is None
    layer = QuantLinear(6, 3, input_quant=UniformAct(2))
    x = torch.randn(4, 6, generator=gen())
    set_quantization(layer, False)
    assert torch.equal(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
    assert int(layer.input_quant.num_batches) == 0  # not reached while disabled
    set_quantization(layer, True)
    layer.train()
    layer(x)
    assert int(layer.input_quant.num_batches) == 1


def test_input_quant_is_in_the_state_dict_and_round_trips():
    torch.manual_seed(0)
    layer = QuantLinear(6, 3, input_quant=UniformAct(4)).train()
    layer(torch.randn(8, 6, generator=gen()))
    state = layer.state_dict()
    assert {"input_quant.range_observer.lo", "input_quant.range_observer.hi"} <= set(state)
    fresh = QuantLinear(6, 3, input_quant=UniformAct(4))
    fresh.load_state_dict(state)
    x = torch.randn(4, 6, generator=gen(1))
    assert torch.equal(fresh.eval()(x), layer.eval()(x))


def test_nonfinite_input_is_refused_before_the_input_quantizer_sees_it():
    layer = QuantLinear(6, 3, input_quant=UniformAct(4)).train()
    layer.layer_name = "fc"
    x = torch.randn(4, 6, generator=gen())
    x[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="'fc'"):
        layer(x)
    assert int(layer.input_quant.num_batches) == 0


def test_autocast_input_quantizer_computes_in_float32():
    seen = []

    class Spy(UniformAct):
        def forward(self, x):
            seen.append(x.dtype)
            return super().forward(x)

    torch.manual_seed(0)
    layer = QuantLinear(6, 3, input_quant=Spy(8)).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(torch.randn(4, 6, generator=gen()))
    assert seen == [torch.float32] and y.dtype == torch.bfloat16


def test_to_float_drops_the_input_quantizer():
    torch.manual_seed(0)
    layer = QuantLinear(6, 3, weight_quant=IvanWeight(2), input_quant=BNNAct(1))
    lin = layer.to_float(bake=True)
    assert type(lin) is nn.Linear
    x = torch.randn(4, 6, generator=gen())
    assert torch.equal(lin(x), nn.functional.linear(x, layer.quantized_weight(), layer.bias))


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(),
                         nn.Linear(4, 3))


def test_quantize_adds_no_input_quantizer():
    model = quantize(net(), Recipe(w_bits=4, a_bits=4))
    assert all(getattr(m, "input_quant", None) is None for m in model.modules())


def test_add_input_quantizers_plan_skip_first_and_rules():
    model = quantize(net(), Recipe(w_bits=4, keep_first=False, keep_last=False))
    plans = add_input_quantizers(model, "uniform", 8, rules=[LayerRule("4", a_bits=4)])
    assert [(p.name, p.kind, p.bits, p.why) for p in plans] == [
        ("0", "input", 32, "skip_first"),
        ("2", "input", 8, "add_input_quantizers"),
        ("4", "input", 4, "rule '4'"),
    ]
    assert model[0].input_quant is None
    assert isinstance(model[2].input_quant, UniformAct) and model[2].input_quant.bits == 8
    assert model[4].input_quant.bits == 4
    model.train()(torch.randn(8, 6, generator=gen()))
    assert int(model[4].input_quant.num_batches) == 1


def test_add_input_quantizers_on_a_float_model_wraps_the_layers():
    model = net()
    weights = [model[i].weight for i in (0, 2, 4)]
    x = torch.randn(4, 6, generator=gen())
    y = model(x)
    add_input_quantizers(model, "uniform", 16, skip_first=False)
    assert all(type(model[i]) is QuantLinear and model[i].weight_quant is None
               for i in (0, 2, 4))
    assert [model[i].weight for i in (0, 2, 4)] == weights
    set_quantization(model, False)
    assert torch.equal(model(x), y)


def test_add_input_quantizers_twice_raises():
    model = net()
    add_input_quantizers(model, "uniform", 8)
    with pytest.raises(LowbitError, match="already has an input quantizer"):
        add_input_quantizers(model, "uniform", 8)


def test_add_input_quantizers_rule_matching_nothing_raises():
    with pytest.raises(LowbitError, match="'conv' matches no weight layer"):
        add_input_quantizers(net(), "uniform", 8, rules=[LayerRule("conv", a_bits=4)])

