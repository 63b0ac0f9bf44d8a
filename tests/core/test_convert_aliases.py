"""Shared modules (issue 7 item 9): a weight layer under two names is quantized at both; an
activation module at two places gets a quantizer (and a range) per place."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit import LayerRule, LowbitError, QuantAct, QuantLinear, Recipe, plan, quantize

ALL = {"keep_first": False, "keep_last": False}


class SharedLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(4, 4)
        self.b = self.a  # the same layer, called twice in forward under two names
        self.relu = nn.ReLU()
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.b(self.relu(self.a(x))))


class SharedRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 8)
        self.fc3 = nn.Linear(8, 2)
        self.act1 = nn.ReLU()
        self.act2 = self.act1  # one stateless ReLU used at two sites

    def forward(self, x):
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))


def test_shared_weight_layer_is_quantized_at_every_name():
    model = SharedLinear()
    plans = [p for p in plan(model, Recipe(w_bits=2, **ALL)) if p.kind == "weight"]
    assert [(p.name, p.aliases) for p in plans] == [("a", ("b",)), ("out", ())]
    quantize(model, Recipe(w_bits=2, **ALL))
    assert type(model.a) is QuantLinear and model.b is model.a  # one layer, at both names
    # every call runs quantized: with quantization on, forward uses the 2-bit weight twice
    x = torch.randn(3, 4)
    wq = model.a.quantized_weight()
    h = torch.relu(x @ wq.T + model.a.bias) @ wq.T + model.a.bias
    assert torch.equal(model(x), model.out(h))


def test_shared_weight_layer_counts_once_for_first_last():
    model = SharedLinear()
    ws = [(p.name, p.bits) for p in plan(model, Recipe(w_bits=2, keep_last=False))
          if p.kind == "weight"]
    assert ws == [("a", 8), ("out", 2)]  # "a"/"b" is the first layer once, not two layers


def test_shared_weight_layer_with_conflicting_rules_raises():
    rules = (LayerRule("b", w_bits=4),)
    with pytest.raises(LowbitError, match="registered as 'a' and 'b'"):
        plan(SharedLinear(), Recipe(w_bits=2, rules=rules, **ALL))
    model = SharedLinear()
    quantize(model, Recipe(w_bits=2, rules=(LayerRule("[ab]", w_bits=4),), **ALL))
    assert model.b is model.a and model.a.weight_quant.bits == 4


def test_shared_relu_gets_one_quantizer_per_site():
    model = SharedRelu()
    acts = [(p.name, p.aliases) for p in plan(model, Recipe(a_bits=2)) if p.kind == "activation"]
    assert acts == [("act1", ()), ("act2", ())]
    quantize(model, Recipe(a_bits=2))
    assert isinstance(model.act1, QuantAct) and isinstance(model.act2, QuantAct)
    assert model.act1 is not model.act2 and model.act1.quant is not model.act2.quant
    assert model.act1.layer_name == "act1" and model.act2.layer_name == "act2"
    model.train()
    model(torch.randn(16, 4) * 10)
    r1, r2 = model.act1.quant.running_max, model.act2.quant.running_max
    assert int(model.act1.quant.num_batches) == int(model.act2.quant.num_batches) == 1
    assert float(r1) != float(r2)  # each site has the range of its own tensor


def test_shared_container_is_one_place():
    """Names reaching one slot through a shared container: one quantized module there."""
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    model = nn.Sequential(nn.Linear(4, 4), block, block, nn.Linear(4, 2))
    plans = plan(model, Recipe(w_bits=2, a_bits=2, **ALL))
    assert [(p.name, p.kind, p.aliases) for p in plans] == [
        ("0", "weight", ()), ("1.0", "weight", ("2.0",)), ("1.1", "activation", ("2.1",)),
        ("3", "weight", ())]
    quantize(model, Recipe(w_bits=2, a_bits=2, **ALL))
    assert model[1] is model[2] and type(model[1][0]) is QuantLinear
    assert isinstance(model[1][1], QuantAct)
