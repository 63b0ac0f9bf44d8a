"""Quantizer options beyond bits reach the quantizers through Recipe, LayerRule and the CLI,
and survive model.pt (issue 8 item 5, first step: a non-default option was lost on reload)."""

from __future__ import annotations

import json

import pytest
import torch

import lowbit
from lowbit.errors import LowbitError
from lowbit.functional.hwgq import HWGQBackward
from lowbit.models import LeNet300
from lowbit.quantizers.options import normalize, parse_assignments, signature_options
from lowbit.quantizers.registry import METHODS
from lowbit.recipe import LayerRule, Recipe


def test_signature_options_of_every_registered_quantizer_are_plain():
    seen = 0
    for m in METHODS.values():
        for cls in (m.weight, m.act):
            if cls is None:
                continue
            for name, (kind, default) in signature_options(cls).items():
                assert name != "bits"
                assert isinstance(default, kind), (cls.__name__, name)
                seen += 1
    assert seen >= 12  # per_channel, symmetric, momentum, t, scale_grad, backward, ...


def test_options_reach_the_quantizers_and_rules_override():
    recipe = Recipe(weight="lsq", w_bits=2, act="uniform", a_bits=8, keep_first=False,
                    keep_last=False, weight_options={"per_channel": "true"},
                    act_options={"momentum": 0.05},
                    rules=(LayerRule("fc3", weight_options={"per_channel": False}),))
    assert recipe.weight_options == (("per_channel", True),)  # coerced, sorted pairs
    net = lowbit.quantize(LeNet300(), recipe)
    assert net.fc1.weight_quant.per_channel and not net.fc3.weight_quant.per_channel
    assert net.relu1.quant.momentum == 0.05
    plans = {p.name: p for p in lowbit.plan(LeNet300(), recipe)}
    assert plans["fc2"].options == (("per_channel", True),)
    # options of the recipe's method do not leak to another method (the 8-bit keep fallback)
    kept = Recipe(weight="ttq", w_bits=2, weight_options={"t": 0.1})
    ps = [p for p in lowbit.plan(LeNet300(), kept) if p.kind == "weight"]
    assert ps[0].method == "uniform" and ps[0].options == ()
    assert ps[1].options == (("t", 0.1),)


def test_enum_options_round_trip_through_to_dict_and_json():
    r = Recipe(weight="dorefa", w_bits=2, act="hwgq", a_bits=2,
               act_options={"backward": "RELU"})
    assert r.act_options == (("backward", HWGQBackward.RELU),)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["act_options"] == {"backward": "RELU"}
    assert Recipe.from_dict(d) == r


def test_bad_options_are_clear_errors():
    with pytest.raises(LowbitError, match="no option 'per_chanel'.*per_channel"):
        Recipe(weight="lsq", w_bits=2, weight_options={"per_chanel": True})
    with pytest.raises(LowbitError, match="momentum='fast' is not a float"):
        Recipe(act="uniform", a_bits=8, act_options={"momentum": "fast"})
    with pytest.raises(ValueError, match="no weight quantizer"):
        Recipe(weight="pact", act="pact", weight_options={"x": 1})
    with pytest.raises(LowbitError, match="NAME=VALUE"):
        parse_assignments(["per_channel"])
    assert normalize(METHODS["ttq"].weight, {"scale_grad": "sum"}) == (("scale_grad", "sum"),)


def test_a_non_default_option_survives_model_pt(tmp_path):
    from lowbit.cli import main
    from lowbit.experiment import load_model

    out = tmp_path / "run"
    assert main(["train", "--model", "lenet300", "--dataset", "digits", "--method", "lsq",
                 "--w-bits", "2", "--epochs", "1", "--batch-size", "64", "--no-progress",
                 "--w-option", "per_channel=true", "--out", str(out)]) == 0
    net, blob = load_model(out / "model.pt")
    assert net.fc2.weight_quant.per_channel and net.fc2.weight_quant.step.numel() == 100
    s = json.loads((out / "summary.json").read_text())
    assert s["recipe"]["weight_options"] == {"per_channel": True}
    x = torch.rand(4, 1, 8, 8)
    again, _ = load_model(out / "model.pt")
    assert torch.equal(again(x), net(x))
