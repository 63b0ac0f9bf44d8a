"""quantize() / plan(): the module-swap walk on a small MLP and a small conv net."""

from __future__ import annotations

import copy
import io
import re

import pytest
import torch
import torch.nn.functional as TF
from torch import nn

from lowbit import (
    LayerRule,
    LowbitError,
    NoQuantizableLayerError,
    QuantAct,
    QuantConv2d,
    QuantLinear,
    Recipe,
    plan,
    quantize,
    set_quantization,
)
from lowbit import functional as F
from lowbit.quantizers import IvanAct, IvanWeight, UniformAct, UniformWeight


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 4))


class ConvNet(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        )
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


class FunctionalRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        return self.b(TF.relu(self.a(x)))


def x_mlp(seed=1):
    return torch.randn(32, 8, generator=torch.Generator().manual_seed(seed))


def x_conv(seed=1):
    return torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(seed))


def summary(model, recipe):
    return [(p.name, p.kind, p.method, p.bits, p.why) for p in plan(model, recipe)]


def test_plan_keeps_first_and_last_at_8_bits_by_default():
    assert summary(mlp(), Recipe(w_bits=4, a_bits=2)) == [
        ("0", "weight", "ivan", 8, "keep_first (8-bit ivan)"),
        ("1", "activation", "ivan", 2, "recipe"),
        ("2", "weight", "ivan", 4, "recipe"),
        ("3", "activation", "ivan", 2, "recipe"),
        ("4", "weight", "ivan", 8, "keep_last (8-bit ivan)"),
    ]


def test_plan_keeps_first_and_last_in_float_with_keep_bits_32():
    assert summary(mlp(), Recipe(w_bits=4, a_bits=2, keep_bits=32)) == [
        ("0", "weight", "ivan", 32, "keep_first (float)"),
        ("1", "activation", "ivan", 2, "recipe"),
        ("2", "weight", "ivan", 4, "recipe"),
        ("3", "activation", "ivan", 2, "recipe"),
        ("4", "weight", "ivan", 32, "keep_last (float)"),
    ]
    # w_bits >= keep_bits: the kept layers are quantized like the others
    plans = plan(ConvNet(), Recipe(weight="uniform", w_bits=8, act="uniform", a_bits=8))
    assert [(p.name, p.bits, p.quantized) for p in plans] == [
        ("features.0", 8, True), ("features.2", 8, True), ("features.3", 8, True),
        ("features.5", 8, True), ("head", 8, True),
    ]


def test_plan_overrides_keep_first_and_rules():
    s = summary(mlp(), Recipe(w_bits=4, keep_first=False, keep_bits=32))
    assert [(n, b, w) for n, k, _, b, w in s if k == "weight"] == [
        ("0", 4, "recipe"), ("2", 4, "recipe"), ("4", 32, "keep_last (float)")]
    s = summary(mlp(), Recipe(w_bits=4, keep_last=False))
    assert [b for _, k, _, b, _ in s if k == "weight"] == [8, 4, 4]
    # a rule naming the first layer overrides keep_first
    s = summary(mlp(), Recipe(w_bits=4, rules=(LayerRule("0", w_bits=8),)))
    assert s[0] == ("0", "weight", "ivan", 8, "rule '0'")
    # rules later win; a rule may change the method
    rules = (LayerRule("*", w_bits=8), LayerRule("2", weight="uniform", w_bits=2),
             LayerRule("[13]", a_bits=32), LayerRule("3", a_bits=4))
    s = summary(mlp(), Recipe(w_bits=4, a_bits=2, rules=rules))
    assert s == [
        ("0", "weight", "ivan", 8, "rule '*'"),
        ("1", "activation", "ivan", 32, "rule '[13]'"),
        ("2", "weight", "uniform", 2, "rule '2'"),
        ("3", "activation", "ivan", 4, "rule '3'"),
        ("4", "weight", "ivan", 8, "rule '*'"),
    ]
    # reversed order: the catch-all rule, now last, wins everywhere
    s = summary(mlp(), Recipe(w_bits=4, rules=(LayerRule("2", w_bits=2), LayerRule("*", w_bits=8))))
    assert [b for _, k, _, b, _ in s if k == "weight"] == [8, 8, 8]


def test_plan_has_no_side_effects():
    model = mlp()
    before = copy.deepcopy(model)
    plan(model, Recipe(w_bits=4, a_bits=4, keep_first=False))
    assert [type(m) for m in model.modules()] == [type(m) for m in before.modules()]


def test_quantize_swaps_layers_per_plan():
    model = mlp()
    w2 = model[2].weight
    out = quantize(model, Recipe(w_bits=4, a_bits=2, keep_bits=32))
    assert out is model
    assert [type(m) for m in model] == [nn.Linear, QuantAct, QuantLinear, QuantAct, nn.Linear]
    assert model[2].weight is w2  # parameters are shared, not copied
    assert isinstance(model[2].weight_quant, IvanWeight) and model[2].weight_quant.bits == 4
    assert model[2].weight_quant.alpha.item() == w2.abs().max().item()
    assert isinstance(model[1].quant, IvanAct) and model[1].quant.bits == 2
    # quantized forward of the swapped layer is |alpha| Q_4(w / max|w|)
    h = torch.randn(3, 16)
    expected = TF.linear(h, F.ivan_scaled_weight(w2, model[2].weight_quant.alpha, 4),
                         model[2].bias)
    assert torch.equal(model[2](h), expected)


RECIPES = [
    Recipe(w_bits=4, a_bits=4, keep_first=False, keep_last=False),
    Recipe(w_bits=2, a_bits=32, keep_first=False),
    Recipe(weight="uniform", w_bits=8, act="uniform", a_bits=8, keep_first=False,
           keep_last=False),
    Recipe(w_bits=1, a_bits=3, rules=(LayerRule("[4h]*", weight="uniform", w_bits=4),)),
]


@pytest.mark.parametrize("recipe", RECIPES, ids=range(len(RECIPES)))
@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_disabled_quantization_is_bit_identical_to_float(recipe, net):
    model, x = (mlp(), x_mlp()) if net == "mlp" else (ConvNet(), x_conv())
    reference = copy.deepcopy(model)
    quantize(model, recipe)
    assert any(isinstance(m, (QuantLinear, QuantConv2d)) for m in model.modules())
    # eval first (BatchNorm statistics frozen), then train (each model updates its BatchNorm
    # statistics exactly once with the same batch before the quantized forward)
    for mode in ("eval", "train"):
        model.train(mode == "train")
        reference.train(mode == "train")
        set_quantization(model, False)
        assert torch.equal(model(x), reference(x))
        set_quantization(model, True)
        assert not torch.equal(model(x), reference(x))  # quantization does something
    assert all(m.quant_enabled for m in model.modules() if isinstance(m, QuantAct))


def _calibrate(model, x, steps=3):
    model.train()
    for i in range(steps):
        model(x * (1 + i))
    for m in model.modules():
        if isinstance(m, IvanWeight):
            with torch.no_grad():
                m.alpha.mul_(0.75)
    model.eval()


@pytest.mark.parametrize("recipe", [RECIPES[0], RECIPES[2], RECIPES[3]], ids=["ivan", "uniform",
                                                                              "mixed"])
@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_state_dict_round_trip(recipe, net):
    build, x = (mlp, x_mlp()) if net == "mlp" else (ConvNet, x_conv())
    model = quantize(build(0), recipe)
    _calibrate(model, x)
    expected = model(x)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = quantize(build(123), recipe)
    assert not torch.equal(fresh.eval()(x), expected)
    fresh.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    fresh.eval()
    assert torch.equal(fresh(x), expected)
    keys = set(model.state_dict())
    if recipe is RECIPES[2]:
        act = "features.2" if net == "conv" else "1"
        assert {f"{act}.quant.range_observer.lo", f"{act}.quant.range_observer.hi"} <= keys
    if recipe is RECIPES[0] and net == "mlp":
        assert {"0.weight_quant.alpha", "1.quant.running_max", "1.quant.num_batches"} <= keys


def test_quantize_twice_raises():
    model = quantize(mlp(), Recipe(w_bits=4))
    with pytest.raises(LowbitError, match="already quantized"):
        quantize(model, Recipe(w_bits=4))
    with pytest.raises(LowbitError, match="already quantized"):
        plan(model, Recipe(w_bits=2))


def test_no_quantizable_layers():
    with pytest.raises(NoQuantizableLayerError, match="no nn.Linear or nn.Conv2d"):
        quantize(nn.Sequential(nn.ReLU(), nn.Flatten()), Recipe(w_bits=4))
    with pytest.raises(NoQuantizableLayerError):
        plan(nn.Sequential(nn.BatchNorm1d(3)), Recipe())


def test_functional_relu_model_with_activation_bits_raises():
    model = FunctionalRelu()
    with pytest.raises(NoQuantizableLayerError, match="no nn.ReLU"):
        quantize(model, Recipe(w_bits=4, a_bits=4, keep_first=False, keep_last=False))
    with pytest.raises(NoQuantizableLayerError, match="no nn.ReLU"):
        quantize(model, Recipe(a_bits=8))
    assert type(model.a) is nn.Linear and type(model.b) is nn.Linear  # nothing half-swapped
    # weights only is fine
    quantize(model, Recipe(w_bits=4, keep_first=False, keep_last=False))
    assert type(model.a) is QuantLinear


def test_single_layer_model_with_keep_first_raises_clearly():
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(NoQuantizableLayerError, match="keep_first"):
        quantize(model, Recipe(w_bits=4))
    with pytest.raises(NoQuantizableLayerError, match="keep_first"):
        quantize(model, Recipe(w_bits=4, keep_first=False))  # still the last layer
    quantize(model, Recipe(w_bits=4, keep_first=False, keep_last=False))
    assert type(model[0]) is QuantLinear


@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_all_float_recipe_leaves_model_unchanged(net):
    model, x = (mlp(), x_mlp()) if net == "mlp" else (ConvNet(), x_conv())
    model.eval()
    reference = copy.deepcopy(model)
    for recipe in (Recipe(), Recipe(w_bits=32, a_bits=32, keep_first=False, keep_last=False)):
        assert recipe.is_float
        plans = plan(model, recipe)
        assert plans and not any(p.quantized for p in plans) and {p.bits for p in plans} == {32}
        assert quantize(model, recipe) is model
        assert [type(m) for m in model.modules()] == [type(m) for m in reference.modules()]
        assert torch.equal(model(x), reference(x))
    assert model.state_dict().keys() == reference.state_dict().keys()


def test_top_level_linear_model():
    torch.manual_seed(0)
    lin = nn.Linear(6, 3)
    reference = copy.deepcopy(lin)
    with pytest.raises(NoQuantizableLayerError):  # the only layer is first and last
        quantize(lin, Recipe(w_bits=3))
    q = quantize(lin, Recipe(w_bits=3, keep_first=False, keep_last=False))
    assert type(q) is QuantLinear and q is not lin
    assert type(lin) is nn.Linear  # the float module object is not mutated into another class
    assert q.weight is lin.weight and q.bias is lin.bias
    assert [p.name for p in plan(reference, Recipe(w_bits=3, keep_first=False,
                                                   keep_last=False))] == [""]
    x = torch.randn(5, 6)
    alpha = q.weight_quant.alpha
    assert alpha.item() == reference.weight.abs().max().item()
    assert torch.equal(q(x), TF.linear(x, F.ivan_scaled_weight(reference.weight, alpha, 3),
                                       reference.bias))
    set_quantization(q, False)
    assert torch.equal(q(x), reference(x))
    # and its parameters train: gradient reaches weight, bias and alpha
    set_quantization(q, True)
    q(x).sum().backward()
    assert q.weight.grad is not None and q.bias.grad is not None and alpha.grad is not None


def test_uniform_recipe_builds_uniform_quantizers():
    model = quantize(ConvNet(), Recipe(weight="uniform", w_bits=6, act="uniform", a_bits=5,
                                       keep_first=False, keep_last=False))
    convs = [m for m in model.modules() if isinstance(m, QuantConv2d)]
    acts = [m for m in model.modules() if isinstance(m, QuantAct)]
    assert len(convs) == 2 and isinstance(model.head, QuantLinear)
    assert all(isinstance(m.weight_quant, UniformWeight) and m.weight_quant.bits == 6
               for m in convs)
    assert len(acts) == 2 and all(isinstance(a.quant, UniformAct) for a in acts)
    # UniformAct quantizes the ReLU output: never negative
    y = model.features(x_conv())
    assert bool((y >= 0).all())


def test_quant_layers_can_be_built_directly():
    from lowbit.nn import QuantConv2d, QuantLinear
    from lowbit.quantizers import IvanWeight

    conv = QuantConv2d(3, 4, 3, padding=1, weight_quant=IvanWeight(2))
    lin = QuantLinear(3, 4, weight_quant=IvanWeight(2))
    assert conv(torch.rand(1, 3, 5, 5)).shape == (1, 4, 5, 5) and conv.output_grad_quant is None
    assert lin(torch.rand(2, 3)).shape == (2, 4)
    levels = conv.quantized_weight().unique()
    assert len(levels) <= 4  # 2-bit weights: at most 4 values


def test_g_bits_with_float_weights_attaches_gradient_quantizers():
    """--g-bits 4 with float weights attached nothing yet recorded g_bits 4 (issue 7)."""
    from lowbit.quantizers import DoReFaGradient

    model = mlp()
    recipe = Recipe(g_bits=4, keep_first=False, keep_last=False)
    assert summary(model, recipe) == [
        ("0", "weight", "ivan", 32, "recipe"), ("0", "gradient", "dorefa", 4, "recipe"),
        ("1", "activation", "ivan", 32, "recipe"),
        ("2", "weight", "ivan", 32, "recipe"), ("2", "gradient", "dorefa", 4, "recipe"),
        ("3", "activation", "ivan", 32, "recipe"),
        ("4", "weight", "ivan", 32, "recipe"), ("4", "gradient", "dorefa", 4, "recipe"),
    ]
    reference = copy.deepcopy(model)
    quantize(model, recipe)
    layers = [model[0], model[2], model[4]]
    assert all(type(m) is QuantLinear and m.weight_quant is None for m in layers)
    assert all(isinstance(m.output_grad_quant, DoReFaGradient) and m.output_grad_quant.bits == 4
               for m in layers)
    x = x_mlp()
    assert torch.equal(model(x), reference(x))  # forward unchanged; the backward is quantized
    torch.manual_seed(0)
    model(x).square().sum().backward()
    reference(x).square().sum().backward()
    assert not torch.equal(model[0].weight.grad, reference[0].weight.grad)


def test_g_bits_skips_kept_layers_and_lists_them():
    model = mlp()
    s = [(n, b, w) for n, k, _, b, w in summary(model, Recipe(w_bits=4, g_bits=8))
         if k == "gradient"]
    assert s == [("0", 32, "keep_first"), ("2", 8, "recipe"), ("4", 32, "keep_last")]
    quantize(model, Recipe(w_bits=4, g_bits=8))
    assert model[0].output_grad_quant is None and model[4].output_grad_quant is None
    assert model[2].output_grad_quant is not None and model[2].weight_quant.bits == 4


def test_g_bits_with_nothing_to_attach_to_raises():
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(NoQuantizableLayerError, match="4-bit gradients"):
        quantize(model, Recipe(g_bits=4))
    assert type(model[0]) is nn.Linear


def test_rule_matching_nothing_is_an_error():
    with pytest.raises(NoQuantizableLayerError, match=r"'\*head\*' matches no.*'0', '1', '2'"):
        plan(mlp(), Recipe(w_bits=4, rules=(LayerRule("*head*", w_bits=8),)))
    model = ConvNet()
    with pytest.raises(NoQuantizableLayerError, match="'fc' matches no"):
        quantize(model, Recipe(w_bits=4, rules=(LayerRule("head", w_bits=8), LayerRule("fc"))))
    assert type(model.head) is nn.Linear  # nothing half-swapped


@pytest.mark.parametrize("method,role,bits,allowed", [
    ("twn", "weight", 4, "2 (or 32 = float)"), ("uniform", "activation", 1, "2..16"),
    ("lsq", "weight", 1, "2..8"), ("dorefa", "gradient", 1, "2..16"),
    ("qnet", "activation", 8, "1..5")])
def test_cannot_quantize_message_lists_allowed_bits(method, role, bits, allowed):
    from lowbit import BitsError
    from lowbit.quantizers.registry import validate

    with pytest.raises(BitsError, match=f"cannot quantize {role}s to {bits} bits; it takes "
                                        f"{re.escape(allowed)}"):
        validate(method, role, bits)
    kw = {"weight": {"weight": method, "w_bits": bits}, "activation": {"act": method,
          "a_bits": bits}, "gradient": {"grad": method, "g_bits": bits}}[role]
    with pytest.raises(BitsError, match=re.escape(allowed)):
        Recipe(**kw)
