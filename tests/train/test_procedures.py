"""Training procedures attach to the quantizer types in the model (issue 8 item 6): an INQ or
Quantization Networks layer set by a LayerRule trains with its procedure, and summary.json
records the config the run really used."""

from __future__ import annotations

import json

import pytest
import torch

import lowbit
from lowbit.errors import LowbitError
from lowbit.experiment import (
    Job,
    Procedure,
    effective_config,
    evaluate_file,
    load_model,
    procedure,
    run,
)
from lowbit.models import build_model
from lowbit.quantizers.log2 import INQWeight
from lowbit.quantizers.soft import SoftAct, SoftWeight
from lowbit.recipe import LayerRule, Recipe
from lowbit.train import TrainConfig
from lowbit.train.checkpoint import load_checkpoint

CONFIG = TrainConfig(epochs=1, batch_size=64, lr=1e-3, optimizer="adam")
INQ_RULE = Recipe(weight="dorefa", w_bits=4, rules=(LayerRule("fc2", weight="inq", w_bits=5),))
QNET_RULES = Recipe(weight="dorefa", w_bits=4, rules=(LayerRule("fc2", weight="qnet", w_bits=3),
                                                      LayerRule("relu2", act="qnet", a_bits=2)))


def lenet(recipe: Recipe) -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_model(name="lenet300", in_channels=1, image_size=8, num_classes=10,
                      mean=0.0, std=1.0)
    return lowbit.quantize(net, recipe)


def test_procedure_is_chosen_by_quantizer_type():
    assert procedure(lenet(Recipe(weight="dorefa", w_bits=4))) is Procedure.FIT
    assert procedure(lenet(Recipe())) is Procedure.FIT  # float
    assert procedure(lenet(INQ_RULE)) is Procedure.INQ
    assert procedure(lenet(QNET_RULES)) is Procedure.QNET
    assert procedure(lenet(Recipe(weight="dorefa", w_bits=4, rules=(
        LayerRule("relu1", act="qnet", a_bits=2),)))) is Procedure.QNET


def test_inq_and_qnet_in_one_model_are_refused_by_name(tmp_path):
    recipe = Recipe(weight="inq", w_bits=5, rules=(LayerRule("fc2", weight="qnet", w_bits=3),))
    with pytest.raises(LowbitError, match=r"INQ layers \(fc1, fc3\).*Quantization Networks "
                                          r"quantizers \(fc2.weight_quant\)"):
        procedure(lenet(recipe))
    with pytest.raises(LowbitError, match="cannot run in one job"):
        run(Job("lenet300", "digits", recipe, CONFIG), tmp_path / "run", progress=False)
    assert not list((tmp_path / "run").glob("*"))  # refused before anything was written


def test_effective_config_follows_the_quantizers():
    job = Job("lenet300", "digits", QNET_RULES, CONFIG)
    assert effective_config(job, lenet(QNET_RULES)).grad_clip == 5.0
    told = Job("lenet300", "digits", QNET_RULES, TrainConfig(epochs=1, grad_clip=2.0))
    assert effective_config(told, lenet(QNET_RULES)).grad_clip == 2.0
    plain = Job("lenet300", "digits", INQ_RULE, CONFIG)
    assert effective_config(plain, lenet(INQ_RULE)) == CONFIG


def test_rule_set_inq_layer_trains_with_inq_steps(tmp_path):
    """Before: the INQ layer trained as a plain layer (0 % frozen, no step dirs)."""
    s = run(Job("lenet300", "digits", INQ_RULE, CONFIG), tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.glob("step*")) == ["step1", "step2", "step3"]
    assert s["procedure"] == "inq" and s["epochs"] == 3
    net, _ = load_model(tmp_path / "model.pt")
    q = net.fc2.weight_quant
    assert isinstance(q, INQWeight) and q.frozen_fraction == 1.0
    assert not isinstance(net.fc1.weight_quant, INQWeight)
    # the other layers train in every retraining step
    fc1 = [load_checkpoint(tmp_path / f"step{i}" / "checkpoint.pt")["model"]["fc1.weight"]
           for i in (1, 2, 3)]
    assert not torch.equal(fc1[0], fc1[1]) and not torch.equal(fc1[1], fc1[2])
    assert evaluate_file(tmp_path / "model.pt")["test_accuracy"] == s["test_accuracy"]


def test_rule_set_qnet_layers_train_in_phases_and_end_hard(tmp_path):
    """Before: fc2/relu2 trained soft at T = 1 with no phases, and stayed soft."""
    s = run(Job("lenet300", "digits", QNET_RULES, CONFIG), tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.glob("phase*")) == [
        "phase1-weights", "phase2-activations", "phase3-joint"]
    assert s["procedure"] == "qnet" and s["config"]["grad_clip"] == 5.0
    assert json.loads((tmp_path / "job.json").read_text())["config"]["grad_clip"] == 5.0
    net, _ = load_model(tmp_path / "model.pt")
    soft = [m for m in net.modules() if isinstance(m, (SoftWeight, SoftAct))]
    assert len(soft) == 2 and all(m.hard for m in soft)
    assert evaluate_file(tmp_path / "model.pt")["test_accuracy"] == s["test_accuracy"]
    # phase 2 freezes the qnet weight layer only; fc1 (dorefa) trains throughout
    ph = [load_checkpoint(tmp_path / d / "checkpoint.pt")["model"]
          for d in ("phase1-weights", "phase2-activations")]
    assert torch.equal(ph[0]["fc2.weight"], ph[1]["fc2.weight"])
    assert not torch.equal(ph[0]["fc1.weight"], ph[1]["fc1.weight"])


def test_plain_recipe_trains_with_fit(tmp_path):
    recipe = Recipe(weight="dorefa", w_bits=4, act="dorefa", a_bits=4)
    s = run(Job("lenet300", "digits", recipe, CONFIG), tmp_path, progress=False)
    assert s["procedure"] == "fit" and s["config"]["grad_clip"] is None
    assert not list(tmp_path.glob("step*")) and not list(tmp_path.glob("phase*"))
