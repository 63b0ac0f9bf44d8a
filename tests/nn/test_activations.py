"""The activation table (issue 8 item 4): which float activation each method may stand for,
checked through quantize() for every registered activation method (written out here, not
derived from lowbit.nn.activations)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit import LowbitError, QuantAct, Recipe, quantize
from lowbit.quantizers.registry import METHODS

ACTS = {
    "relu": nn.ReLU, "relu6": nn.ReLU6, "hardtanh": nn.Hardtanh,
    "hardtanh_0_6": lambda: nn.Hardtanh(0.0, 6.0), "hardtanh_0_2": lambda: nn.Hardtanh(0.0, 2.0),
    "sigmoid": nn.Sigmoid, "hardsigmoid": nn.Hardsigmoid, "softplus": nn.Softplus,
    "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU, "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU, "hardswish": nn.Hardswish, "mish": nn.Mish,
}
NONNEG = {"relu", "relu6", "hardtanh_0_6", "hardtanh_0_2", "sigmoid", "hardsigmoid",
          "softplus"}
TABLE = {
    # the quantizer is the non-linearity: a ReLU clip stands for nn.ReLU only
    **{m: {"relu"} for m in ("ivan", "dorefa", "pact", "lsq", "hwgq", "abc")},
    # sign(x) with BNN's gradient is the quantized Hardtanh(-1, 1) (and stands where ReLU was)
    "bnn": {"relu", "hardtanh"}, "xnor": {"relu", "hardtanh"},
    # the quantizer follows the activation: affine grid after anything, unsigned after >= 0
    "uniform": set(ACTS),
    "pow2": NONNEG, "stochastic": NONNEG, "qnet": NONNEG,
}


def test_the_table_covers_every_activation_method():
    assert set(TABLE) == {n for n, m in METHODS.items() if m.act is not None}


def net(act: str) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), ACTS[act](), nn.Linear(6, 3))


@pytest.mark.parametrize("method", sorted(TABLE))
@pytest.mark.parametrize("act", sorted(ACTS))
def test_table(method, act):
    bits = min(METHODS[method].act.BITS)
    recipe = Recipe(act=method, a_bits=bits)
    model = net(act)
    if act not in TABLE[method]:
        with pytest.raises(LowbitError, match=f"'1'.*'{method}' cannot stand for it"):
            quantize(model, recipe)
        assert type(model[1]) is not QuantAct  # nothing swapped
        return
    quantize(model, recipe)
    assert isinstance(model[1], QuantAct) and type(model[1].float_act) is type(ACTS[act]())
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    assert model.train()(x).shape == (8, 3)


def test_follows_the_float_activation():
    model = quantize(net("gelu"), Recipe(act="uniform", a_bits=8)).eval()
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    model.train()(x)
    model.eval()
    h = model[0](x)
    assert torch.equal(model[1](h), model[1].quant(nn.functional.gelu(h)))


def test_sign_replaces_hardtanh():
    model = quantize(net("hardtanh"), Recipe(act="bnn", a_bits=1))
    h = torch.tensor([[-2.0, -0.5, 0.0, 0.3, 1.0, 3.0]])
    assert torch.equal(model[1](h), torch.tensor([[-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]]))


def test_float_recipe_leaves_every_activation():
    for act in ACTS:
        model = quantize(net(act), Recipe(w_bits=4, keep_first=False))
        assert type(model[1]) is type(ACTS[act]())
