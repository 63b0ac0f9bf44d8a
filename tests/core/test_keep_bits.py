"""Recipe.keep_bits: kept first/last layers at 8 bits by default (issue 7 item 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from lowbit import BitsError, LayerRule, QuantLinear, Recipe, model_bytes, plan, quantize
from lowbit.models import LeNet300
from lowbit.quantizers import IvanWeight, UniformWeight

ROOT = Path(__file__).resolve().parents[2]
FLOAT_AUG = ROOT / "benchmarks" / "results" / "zoo_table2" / "float_aug"


def weights(model, recipe):
    return [(p.name, p.method, p.bits, p.why) for p in plan(model, recipe) if p.kind == "weight"]


def test_lenet300_w4a4_is_about_a_quarter_of_float():
    model = quantize(LeNet300(), Recipe(w_bits=4, a_bits=4))
    assert [type(m) for m in model.modules() if isinstance(m, nn.Linear)] == [QuantLinear] * 3
    bits = [m.weight_quant.bits for m in model.modules() if isinstance(m, QuantLinear)]
    assert bits == [8, 4, 8]
    sizes = model_bytes(model)
    assert 0.2 < sizes["packed_bytes"] / sizes["float_bytes"] < 0.3  # was 961,460 / 1,066,448


def test_keep_bits_32_is_xnor_nets_float_first_and_last():
    model = quantize(LeNet300(), Recipe(w_bits=4, a_bits=4, keep_bits=32))
    assert [type(m) for m in model.modules() if isinstance(m, nn.Linear)] == [
        nn.Linear, QuantLinear, nn.Linear]


@pytest.mark.parametrize("method,w_bits", [("xnor", 1), ("bnn", 1), ("twn", 2), ("ttq", 2),
                                           ("qnet", 2), ("binaryconnect", 1)])
def test_kept_layers_fall_back_to_uniform_8_bit(method, w_bits):
    model = LeNet300()
    ws = weights(model, Recipe(weight=method, w_bits=w_bits))
    assert ws[0][1:] == ("uniform", 8, "keep_first (8-bit uniform)")
    assert ws[1][1:3] == (method, w_bits)
    assert ws[2][1:] == ("uniform", 8, "keep_last (8-bit uniform)")
    q = quantize(model, Recipe(weight=method, w_bits=w_bits))
    assert isinstance(q.fc1.weight_quant, UniformWeight) and q.fc1.weight_quant.per_channel
    assert q.fc1.weight_quant.symmetric


@pytest.mark.parametrize("method", ["ivan", "lsq", "dorefa", "uniform", "pow2", "wu"])
def test_kept_layers_use_the_recipe_method_when_it_takes_keep_bits(method):
    ws = weights(LeNet300(), Recipe(weight=method, w_bits=2))
    assert ws[0][1:] == (method, 8, f"keep_first (8-bit {method})")
    assert ws[2][1:] == (method, 8, f"keep_last (8-bit {method})")


@pytest.mark.parametrize("w_bits", [8, 16])
def test_kept_layers_take_the_recipe_bits_when_w_bits_at_least_keep_bits(w_bits):
    """Kept layers get no fewer than keep_bits: a W8 (or W16) recipe quantizes them like the
    others (a W8A8 model whose first and last layers stayed float was 0.56 of float on the
    demo's LeNet300 where 8 bits everywhere is about 0.26)."""
    ws = weights(LeNet300(), Recipe(weight="uniform", w_bits=w_bits))
    why = f"({w_bits}-bit uniform, >= keep_bits)"
    assert [(b, w) for _, _, b, w in ws] == [(w_bits, f"keep_first {why}"), (w_bits, "recipe"),
                                             (w_bits, f"keep_last {why}")]


def test_a_float_recipe_keeps_everything_float():
    ws = weights(LeNet300(), Recipe(weight="uniform", w_bits=32))
    assert [(b, w) for _, _, b, w in ws] == [(32, "keep_first (float)"), (32, "recipe"),
                                             (32, "keep_last (float)")]


def test_keep_bits_other_widths_and_rules():
    ws = weights(LeNet300(), Recipe(w_bits=2, keep_bits=4))
    assert [b for _, _, b, _ in ws] == [4, 2, 4]
    # a rule naming a kept layer overrides keeping, with the recipe's method (not the fallback)
    ws = weights(LeNet300(), Recipe(weight="xnor", w_bits=1, rules=(LayerRule("fc1", w_bits=1),)))
    assert ws[0] == ("fc1", "xnor", 1, "rule 'fc1'")
    assert ws[2][1:3] == ("uniform", 8)
    # keep_first=False quantizes the first layer like the others; the last stays kept
    ws = weights(LeNet300(), Recipe(w_bits=2, keep_first=False))
    assert [b for _, _, b, _ in ws] == [2, 2, 8]


@pytest.mark.parametrize("bad", [0, 33, True, 2.0, "8"])
def test_keep_bits_validated(bad):
    with pytest.raises(BitsError, match="keep_bits"):
        Recipe(w_bits=4, keep_bits=bad)


def test_keep_bits_neither_method_nor_fallback_raises():
    # uniform takes 2..16 and is the fallback: 1-bit kept layers are impossible
    with pytest.raises(BitsError, match=r"keep_bits=1.*2\.\.16"):
        Recipe(weight="uniform", w_bits=2, keep_bits=1)
    with pytest.raises(BitsError, match="keep_bits=20"):
        Recipe(weight="twn", w_bits=2, keep_bits=20)
    assert Recipe(weight="ivan", w_bits=2, keep_bits=1).keep_bits == 1  # ivan takes 1 bit


def test_recipe_dict_round_trip_keeps_keep_bits():
    r = Recipe(w_bits=4, keep_bits=6)
    assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    assert Recipe.from_dict(Recipe(w_bits=4).to_dict()).keep_bits == 8


def test_old_recipe_dicts_mean_float_first_and_last():
    """Every summary.json / model.pt written before keep_bits: kept layers were float."""
    old = json.loads((FLOAT_AUG / "summary.json").read_text())["recipe"]
    assert "keep_bits" not in old
    assert Recipe.from_dict(old).keep_bits == 32
    w4 = Recipe.from_dict(old | {"w_bits": 4, "a_bits": 4})
    ws = weights(LeNet300(), w4)
    assert [b for _, _, b, _ in ws] == [32, 4, 32]


def test_old_model_file_loads_and_evaluates_as_before():
    from lowbit.experiment import load_model

    net, blob = load_model(FLOAT_AUG / "model.pt")
    assert "keep_bits" not in blob["recipe"]
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = net(x)
    assert y.shape == (4, 10) and bool(torch.isfinite(y).all())
    assert not any(isinstance(m, (QuantLinear, IvanWeight)) for m in net.modules())
