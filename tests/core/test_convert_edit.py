"""requantize(model, rules) (issue 8 item 8): replace the quantizers of the layers the rules
name in an already-quantized model, leaving every other layer's quantizer objects and state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit import (
    LayerRule,
    LowbitError,
    NoQuantizableLayerError,
    QuantAct,
    Recipe,
    add_input_quantizers,
    quantize,
    requantize,
)
from lowbit.quantizers import IvanAct, IvanWeight, LSQAct, UniformAct, UniformWeight

RECIPE = Recipe(w_bits=4, a_bits=4, keep_first=False, keep_last=False)


def trained() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(),
                          nn.Linear(4, 3))
    quantize(model, RECIPE).train()
    for seed in range(3):
        model(torch.randn(8, 6, generator=torch.Generator().manual_seed(seed)))
    return model


def state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_requantize_one_layer_leaves_the_others():
    model = trained()
    kept = {i: (model[i].weight_quant if i % 2 == 0 else model[i].quant) for i in (0, 1, 3, 4)}
    kept_state = {i: state(q) for i, q in kept.items()}
    plans = requantize(model, [LayerRule("2", weight="uniform", w_bits=8)])
    assert [(p.name, p.kind, p.method, p.bits) for p in plans] == [("2", "weight", "uniform", 8)]
    assert isinstance(model[2].weight_quant, UniformWeight) and model[2].weight_quant.bits == 8
    for i, q in kept.items():
        now = model[i].weight_quant if i % 2 == 0 else model[i].quant
        assert now is q
        assert all(torch.equal(v, kept_state[i][k]) for k, v in q.state_dict().items())


def test_bits_only_keeps_the_method_and_init_from_the_weight():
    model = trained()
    requantize(model, [LayerRule("0", w_bits=2)])
    wq = model[0].weight_quant
    fresh = IvanWeight(2)
    fresh.init_from(model[0].weight)
    assert type(wq) is IvanWeight and wq.bits == 2
    assert torch.equal(wq(model[0].weight), fresh(model[0].weight))


def test_activation_and_input_slots():
    model = trained()
    add_input_quantizers(model, "uniform", 8)
    plans = requantize(model, [LayerRule("1", act="lsq"), LayerRule("3", a_bits=32),
                               LayerRule("4", a_bits=4)])
    assert [(p.name, p.kind, p.method, p.bits) for p in plans] == [
        ("1", "activation", "lsq", 4), ("3", "activation", "ivan", 32),
        ("4", "input", "uniform", 4)]
    assert isinstance(model[1], QuantAct) and isinstance(model[1].quant, LSQAct)
    assert type(model[3]) is nn.ReLU  # back to the float activation
    assert isinstance(model[4].input_quant, UniformAct) and model[4].input_quant.bits == 4
    assert model[2].input_quant.bits == 8
    model.eval()(torch.randn(2, 6))


def test_float_weight_slot_needs_a_method():
    model = trained()
    requantize(model, [LayerRule("0", w_bits=32)])
    assert model[0].weight_quant is None
    with pytest.raises(LowbitError, match="give both the method and the bits"):
        requantize(model, [LayerRule("0", w_bits=4)])
    requantize(model, [LayerRule("0", weight="ivan", w_bits=4)])
    assert isinstance(model[0].weight_quant, IvanWeight)


def test_refusals():
    model = trained()
    with pytest.raises(NoQuantizableLayerError, match="'fc' matches no quantized layer"):
        requantize(model, [LayerRule("fc", w_bits=2)])
    with pytest.raises(NoQuantizableLayerError, match="no quantized layer; quantize it first"):
        requantize(nn.Sequential(nn.Linear(2, 2)), [LayerRule("0", w_bits=2)])
    with pytest.raises(LowbitError, match="use lowbit.convert.requantize"):
        quantize(model, RECIPE)
    assert isinstance(model[1].quant, IvanAct)  # nothing changed


def test_activation_table_applies():
    torch.manual_seed(0)
    model = quantize(nn.Sequential(nn.Linear(3, 3), nn.GELU(), nn.Linear(3, 2)),
                     Recipe(act="uniform", a_bits=4))
    with pytest.raises(LowbitError, match="'1'.*'ivan' cannot stand for it"):
        requantize(model, [LayerRule("1", act="ivan")])


def test_rule_on_one_name_of_a_shared_layer_changes_it_everywhere():
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    model = quantize(nn.Sequential(shared, nn.ReLU(), shared), RECIPE)
    (p,) = requantize(model, [LayerRule("2", w_bits=2)])
    assert (p.name, p.aliases, p.bits) == ("2", ("0",), 2)
    assert model[0] is model[2] and model[0].weight_quant.bits == 2
    with pytest.raises(LowbitError, match="different quantizers"):
        requantize(model, [LayerRule("0", w_bits=4), LayerRule("2", w_bits=3)])
