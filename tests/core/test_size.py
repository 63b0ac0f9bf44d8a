"""size.model_bytes: float32 size and packed size (codes at their bit width + what the codebook
record stores: float32 scales, and 8 bytes for a level range (two int32: first and last))."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lowbit import LayerRule, Recipe, model_bytes, quantize


def stack(widths=(10, 7, 5, 3), relu=True, seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if relu and i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def all_layers(**kw) -> Recipe:
    return Recipe(keep_first=False, keep_last=False, **kw)


def test_float_model_packed_equals_float():
    model = stack()
    n = sum(p.numel() for p in model.parameters())  # 10*7+7 + 7*5+5 + 5*3+3 = 135
    assert n == 135
    assert model_bytes(model) == {"float_bytes": 540, "packed_bytes": 540}


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 7, 8, 16])
def test_ivan_weights_only(bits):
    model = quantize(stack(relu=False), all_layers(w_bits=bits))
    weights = [(7, 10), (5, 7), (3, 5)]
    codes = sum(math.ceil(o * i * bits / 8) for o, i in weights)
    alphas = (4 + 8) * len(weights)  # alpha as the grid's scale + the level range
    biases = 4 * (7 + 5 + 3)
    assert model_bytes(model) == {"float_bytes": 540, "packed_bytes": codes + alphas + biases}


def test_ivan_weights_and_activations_hand_computed():
    model = quantize(stack(), all_layers(w_bits=3, a_bits=2))
    # codes: ceil(70*3/8)=27, ceil(35*3/8)=14, ceil(15*3/8)=6 -> 47; alphas + level ranges
    # 3*(4+8); biases 15*4;
    # two IvanAct running_max buffers (float, 4 bytes each, on both sides; num_batches is
    # int64, not stored)
    assert model_bytes(model) == {"float_bytes": 540 + 8, "packed_bytes": 47 + 36 + 60 + 8}


def test_uniform_weights_and_activations():
    model = quantize(stack(), all_layers(weight="uniform", w_bits=4, act="uniform", a_bits=8))
    # per-channel symmetric: a scale per output channel (the zero points are 0: not stored) and
    # the level range per layer
    codes = math.ceil(70 * 4 / 8) + math.ceil(35 * 4 / 8) + math.ceil(15 * 4 / 8)
    scalars = 4 * (7 + 5 + 3) + 8 * 3
    act = 2 * 4 * 2  # two UniformActs, running_min and running_max
    assert model_bytes(model) == {"float_bytes": 540 + act,
                                  "packed_bytes": codes + scalars + 4 * 15 + act}


def test_mixed_recipe_with_float_layers_and_batchnorm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 6, 3, bias=False), nn.ReLU(), nn.Flatten(),
                          nn.Linear(6, 2))
    float_ = model_bytes(model)
    # params: 108+4 + bn 4+4 + 216 + 12+2 = 350; bn running mean/var 8 floats
    assert float_ == {"float_bytes": 4 * 358, "packed_bytes": 4 * 358}
    quantize(model, Recipe(w_bits=2, keep_bits=32, rules=(LayerRule("6", w_bits=8),)))  # "0" float
    packed = (4 * (108 + 4) + 4 * 8 + 4 * 8  # float conv, BN params + stats
              + math.ceil(216 * 2 / 8) + 4 + 8  # conv 3: 2-bit codes + alpha + level range
              + math.ceil(12 * 8 / 8) + 4 + 8 + 4 * 2)  # linear 6: the same + bias
    assert model_bytes(model) == {"float_bytes": 4 * 358, "packed_bytes": packed}


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_ratio_approaches_bits_over_32(bits):
    model = quantize(nn.Sequential(nn.Linear(512, 512, bias=False)),
                     all_layers(w_bits=bits))
    sizes = model_bytes(model)
    assert sizes["float_bytes"] == 4 * 512 * 512
    assert sizes["packed_bytes"] == 512 * 512 * bits // 8 + 4 + 8
    assert sizes["packed_bytes"] / sizes["float_bytes"] == pytest.approx(bits / 32, rel=1e-3)


@pytest.mark.parametrize("act", ["ivan", "uniform", "lsq", "pact", "qnet", "dorefa"])
def test_float_weights_quantized_activations_packed_equals_float(act):
    """W32/A-low stores every weight in float: packed == float (it was larger: the activation
    quantizers' ranges were counted on the packed side only)."""
    bits = 2
    model = quantize(stack(), all_layers(w_bits=32, act=act, a_bits=bits))
    sizes = model_bytes(model)
    assert sizes["packed_bytes"] == sizes["float_bytes"]


@pytest.mark.parametrize("w_bits", [1, 2, 4, 8, 16])
def test_packed_never_exceeds_float_with_low_bit_weights(w_bits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 8))
    sizes = model_bytes(quantize(model, Recipe(w_bits=w_bits, a_bits=2)))
    assert sizes["packed_bytes"] <= sizes["float_bytes"]
