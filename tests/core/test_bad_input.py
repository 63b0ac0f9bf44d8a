"""Defined behaviour for bad input (lowbit/functional/checks.py): bit widths, method names,
non-finite and empty tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lowbit import (
    METHODS,
    BitsError,
    LayerRule,
    LowbitError,
    MethodError,
    NonFiniteError,
    QuantAct,
    QuantLinear,
    Recipe,
    get_method,
)
from lowbit import functional as F
from lowbit.errors import EmptyTensorError
from lowbit.quantizers import (
    IvanAct,
    IvanWeight,
    UniformAct,
    UniformWeight,
    make_act_quantizer,
    make_weight_quantizer,
)

BAD_BITS = [0, 33, -1, 2.5, True, "4", None]


WHERE = [
    "Recipe.w_bits", "Recipe.a_bits", "LayerRule.w_bits", "LayerRule.a_bits",
    "make_weight_quantizer", "make_act_quantizer", "IvanWeight", "IvanAct", "UniformWeight",
    "F.ivan_weight", "F.ivan_activation", "F.ivan_scaled_weight", "F.check_bits",
]
# LayerRule(w_bits=None) is valid: it keeps the recipe's value
CASES = [(b, w) for w in WHERE for b in BAD_BITS if not (b is None and w.startswith("Layer"))]


@pytest.mark.parametrize(("bits", "where"), CASES, ids=[f"{w}-{b!r}" for b, w in CASES])
def test_bad_bits_raise_bits_error(bits, where):
    x = torch.rand(4)
    calls = {
        "Recipe.w_bits": lambda: Recipe(w_bits=bits),
        "Recipe.a_bits": lambda: Recipe(a_bits=bits),
        "LayerRule.w_bits": lambda: LayerRule("x", w_bits=bits),
        "LayerRule.a_bits": lambda: LayerRule("x", a_bits=bits),
        "make_weight_quantizer": lambda: make_weight_quantizer("ivan", bits),
        "make_act_quantizer": lambda: make_act_quantizer("ivan", bits),
        "IvanWeight": lambda: IvanWeight(bits),
        "IvanAct": lambda: IvanAct(bits),
        "UniformWeight": lambda: UniformWeight(bits),
        "F.ivan_weight": lambda: F.ivan_weight(x, bits),
        "F.ivan_activation": lambda: F.ivan_activation(x, bits),
        "F.ivan_scaled_weight": lambda: F.ivan_scaled_weight(x, torch.tensor(1.0), bits),
        "F.check_bits": lambda: F.check_bits(bits),
    }
    with pytest.raises(BitsError) as info:
        calls[where]()
    assert isinstance(info.value, ValueError) and isinstance(info.value, LowbitError)
    assert repr(bits) in str(info.value) or str(bits) in str(info.value)


def test_bits_error_messages_are_specific():
    with pytest.raises(BitsError, match=r"w_bits must be an integer, got True \(bool\)"):
        Recipe(w_bits=True)
    with pytest.raises(BitsError, match=r"a_bits must be in 1..32, got 33"):
        Recipe(a_bits=33)


def test_32_bits_means_float_not_a_quantizer():
    assert Recipe(w_bits=32, a_bits=32).is_float
    with pytest.raises(BitsError):
        IvanWeight(32)


@pytest.mark.parametrize("bits", [1, 17, 32 + 1])
def test_uniform_bits_out_of_range(bits):
    for call in (lambda: Recipe(weight="uniform", w_bits=bits),
                 lambda: Recipe(act="uniform", a_bits=bits),
                 lambda: make_weight_quantizer("uniform", bits),
                 lambda: make_act_quantizer("uniform", bits),
                 lambda: UniformWeight(bits), lambda: UniformAct(bits)):
        with pytest.raises(BitsError):
            call()
    with pytest.raises(BitsError):
        Recipe(w_bits=4, rules=(LayerRule("0", weight="uniform", w_bits=bits),))


def test_uniform_bit_range_edges_accepted():
    for bits in (2, 16):
        assert make_weight_quantizer("uniform", bits).bits == bits
        assert make_act_quantizer("uniform", bits).bits == bits
        Recipe(weight="uniform", w_bits=bits, act="uniform", a_bits=bits)


@pytest.mark.parametrize("name", ["nope", "Ivan", "", None, 4])
def test_unknown_method_lists_known_methods(name):
    calls = [lambda: get_method(name), lambda: make_weight_quantizer(name, 4),
             lambda: make_act_quantizer(name, 4), lambda: Recipe(weight=name, w_bits=4),
             lambda: Recipe(act=name, a_bits=4),
             lambda: Recipe(w_bits=4, rules=(LayerRule("*", weight=name),)) if name else
             get_method(name)]
    for call in calls:
        with pytest.raises(MethodError) as info:
            call()
        msg = str(info.value)
        assert f"known methods: {', '.join(sorted(METHODS))}" in msg and repr(name) in msg
        assert "ivan" in METHODS and "uniform" in METHODS
        assert isinstance(info.value, KeyError)


# --- non-finite weights -------------------------------------------------------------------------

def _bad_weight(value: float) -> torch.Tensor:
    w = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    w[1, 2] = value
    return w


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_weight_ivan(value):
    w = _bad_weight(value)
    q = IvanWeight(4)
    with pytest.raises(NonFiniteError, match="weight holds"):
        q(w)
    with pytest.raises(NonFiniteError):
        q.encode(w)
    with pytest.raises(NonFiniteError):
        F.ivan_scaled_weight(w, torch.tensor(1.0), 2)
    layer = QuantLinear.from_float(nn.Linear(3, 4), IvanWeight(2))
    with torch.no_grad():
        layer.weight.copy_(w)
    with pytest.raises(NonFiniteError):
        layer(torch.randn(2, 3))


@pytest.mark.parametrize("value", [math.nan, math.inf])
@pytest.mark.parametrize("method", ["forward", "encode"])
def test_non_finite_weight_uniform(value, method):
    q = UniformWeight(4)
    with pytest.raises(NonFiniteError):
        getattr(q, method)(_bad_weight(value))


# --- empty tensors ------------------------------------------------------------------------------

@pytest.mark.parametrize("q", [IvanWeight(3), UniformWeight(3), UniformWeight(3, False)],
                         ids=["ivan", "uniform-per-channel", "uniform-per-tensor"])
def test_empty_weight_raises(q):
    for w in (torch.empty(0, 3), torch.empty(0)):
        with pytest.raises(EmptyTensorError):
            q(w)
        with pytest.raises(EmptyTensorError):
            q.encode(w)
    with pytest.raises(EmptyTensorError):
        F.ivan_scaled_weight(torch.empty(2, 0), torch.tensor(1.0), 2)


def test_empty_activation_gives_empty_output():
    x = torch.empty(0, 5)
    for mod in (IvanAct(4).train(), IvanAct(4).eval(), UniformAct(4).train(),
                UniformAct(4).eval(), QuantAct(IvanAct(2), nn.ReLU())):
        y = mod(x)
        assert y.shape == (0, 5)
    q = IvanAct(4).train()
    q(x)
    assert int(q.num_batches) == 0  # an empty batch is not observed
    assert F.ivan_activation(x, 3).shape == (0, 5)
    assert F.ivan_weight(torch.empty(0), 3).shape == (0,)
    assert F.uniform(x, 0.1, 0, 0, 15).shape == (0, 5)


# --- NaN activations ----------------------------------------------------------------------------

def test_nan_activation_propagates_at_its_position():
    x = torch.tensor([math.nan, 0.5, 1.0])
    assert math.isnan(F.ivan_activation(x, 2)[0].item())
    assert math.isnan(F.ivan_activation(x, 2, torch.tensor(1.0))[0].item())
    assert math.isnan(F.uniform(x, 0.1, 0, 0, 15)[0].item())
    for mod in (IvanAct(2).train(), IvanAct(2).eval()):
        assert math.isnan(mod(x)[0].item())


def _finite_part_ok(y: torch.Tensor, x: torch.Tensor, bits: int) -> bool:
    """Either NaN everywhere (max(x_hat) = NaN in eq. 5), or the finite entries quantized with M
    from the finite entries."""
    if bool(torch.isnan(y).all()):
        return True
    fin = ~torch.isnan(x)
    return torch.equal(y[fin], F.ivan_activation(x[fin], bits))


def test_nan_activation_does_not_silently_change_the_other_entries():
    x = torch.tensor([math.nan, 1.0, 3.0])
    assert _finite_part_ok(F.ivan_activation(x, 2), x, 2)
    q = IvanAct(2).train()
    q(x)
    assert not math.isnan(q.running_max.item()) or bool(torch.isnan(q.eval()(x)).all())


def test_nan_activation_uniform_act():
    """Observing (training) a NaN is a clear error and records nothing; eval propagates it."""
    q = UniformAct(4).train()
    with pytest.raises(NonFiniteError, match="1 NaN"):
        q(torch.tensor([math.nan, 0.5, 1.0]))
    assert int(q.num_batches) == 0
    y = UniformAct(4).eval()(torch.tensor([math.nan, 0.5, 1.0]))
    assert math.isnan(y[0].item())
