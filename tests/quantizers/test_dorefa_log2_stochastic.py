"""Modules of the dorefa, pow2, inq, stochastic and wu methods: encode/decode, BITS, state,
end-to-end through lowbit.quantize."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import (
    BitsError,
    EmptyTensorError,
    LowbitError,
    MethodError,
    NonFiniteError,
)
from lowbit.functional.codebook import IntegerGrid, decode
from lowbit.functional.stochastic import fixed_point_round, pow2_step
from lowbit.nn.layers import QuantLinear
from lowbit.quantizers.dorefa import DoReFaAct, DoReFaGradient, DoReFaWeight
from lowbit.quantizers.log2 import INQWeight, Pow2Act, Pow2Weight
from lowbit.quantizers.registry import validate
from lowbit.quantizers.stochastic import StochasticAct, StochasticWeight, WuWeight

WEIGHT_CLASSES = [Pow2Weight, INQWeight, StochasticWeight, WuWeight]  # DoReFa: typed, below


def _weights(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 5, generator=g) * 0.2, torch.randn(4, 3, 3, 3, generator=g),
            torch.tensor([[0.0, 0.0], [0.0, 1e-3]])]


def test_dorefa_weight_encode_is_an_integer_grid_decoding_to_the_forward():
    for bits in DoReFaWeight.BITS:
        for seed, w in enumerate(_weights(bits)):
            q = DoReFaWeight(bits)
            codes, grid = q.encode(w)
            assert isinstance(grid, IntegerGrid) and grid.num_codes == 2**bits == 2**grid.bits
            assert codes.dtype == torch.int64 and int(codes.max()) < 2**bits
            assert torch.equal(grid.decode(codes), q(w)), (bits, seed)
            assert q.storage_bytes(w) == grid.storage_bytes(w.numel())


@pytest.mark.parametrize("cls", WEIGHT_CLASSES)
def test_encode_decode_is_forward_bit_for_bit(cls):
    for bits in cls.BITS:
        for seed, w in enumerate(_weights(bits)):
            q = cls(bits)
            q.init_from(w)
            q.eval()
            if cls is INQWeight:
                q.partition_(w.clone(), 1.0)
            codes, codebook = q.encode(w)
            assert codes.dtype == torch.int64, (cls, bits, seed)
            assert int(codes.min()) >= 0 and int(codes.max()) < 2**bits
            size = codebook.num_codes if hasattr(codebook, "num_codes") else codebook.numel()
            assert size <= 2**bits
            assert torch.equal(decode(codes, codebook), q(w)), (cls, bits, seed)
            assert q(w).unique().numel() <= 2**bits


@pytest.mark.parametrize("cls,bad", [(DoReFaWeight, 17), (DoReFaWeight, 0), (Pow2Weight, 1),
                                     (INQWeight, 1), (INQWeight, 9), (StochasticWeight, 1),
                                     (WuWeight, 1), (DoReFaAct, 17), (StochasticAct, 1),
                                     (Pow2Act, 9), (DoReFaGradient, 1), (DoReFaGradient, 17)])
def test_bits_rejected(cls, bad):
    with pytest.raises(BitsError):
        cls(bad)


def test_registry_entries():
    validate("dorefa", "weight", 1)
    validate("dorefa", "activation", 16)
    validate("pow2", "activation", 3)
    for name in ("inq", "wu"):
        with pytest.raises(MethodError):
            validate(name, "activation", 4)
    with pytest.raises(BitsError):
        validate("inq", "weight", 1)


def test_pow2_weight_fsr_from_weight():
    q = Pow2Weight(4)
    q.init_from(torch.tensor([0.3, -0.05]))  # Round(log2 0.3) = Round(-1.74) = -2
    assert int(q.fsr) == -2
    assert float(q(torch.tensor([0.3]))) == 0.25
    q.init_from(torch.tensor([0.36]))  # log2 0.36 = -1.47 -> -1
    assert int(q.fsr) == -1
    codes, grid = q.encode(torch.tensor([0.36, -0.1, 0.0]))  # levels +-2^j x 2^(fsr - 6)
    assert isinstance(grid, IntegerGrid) and float(grid.scale) == 2.0**-7
    assert grid.integers(codes).tolist() == [64, -16, 0]
    assert q.storage_bytes(torch.ones(10)) == 5 + 4 + 15  # codes, scale, 15 int8 levels


def test_stochastic_weight_train_unbiased_eval_deterministic():
    w = torch.tensor([0.9, -0.33, 0.05, 0.0, 0.51])
    q = StochasticWeight(4, generator=torch.Generator().manual_seed(0))
    step = pow2_step(w.abs().max(), 4)  # 2^0 / 8
    draws = torch.stack([q(w) for _ in range(4000)]).double()
    mean, se = draws.mean(0), draws.std(0) / 4000**0.5
    inside = w.abs() < 0.875  # 0.9 saturates at the top level 7/8
    assert bool(((mean - w.double()).abs() <= 4 * se + 1e-7)[inside].all())
    q.eval()
    assert torch.equal(q(w), fixed_point_round(w, step, -8, 7))
    assert torch.equal(q(w), q(w))


@pytest.mark.parametrize("cls", [Pow2Act, StochasticAct])
def test_act_running_max_and_eval(cls):
    a = cls(3)
    x = torch.relu(torch.randn(64, 10, generator=torch.Generator().manual_seed(1)))
    a.train()
    a(x)
    assert float(a.running_max) == float(x.max()) and int(a.num_batches) == 1
    a.eval()
    y1, y2 = a(x), a(x)
    assert torch.equal(y1, y2) and y1.unique().numel() <= 2**3
    assert bool((y1 >= 0).all())
    assert a(torch.zeros(0, 3)).shape == (0, 3)


def test_dorefa_gradient_module_in_grad_slot():
    torch.manual_seed(0)
    lin = QuantLinear(5, 4, weight_quant=DoReFaWeight(2))
    lin.output_grad_quant = DoReFaGradient(4, generator=torch.Generator().manual_seed(0))
    x = torch.randn(8, 5)
    y = lin(x)
    lin.output_grad_quant = None
    assert torch.equal(y, lin(x))  # identity forward
    lin.output_grad_quant = DoReFaGradient(4, generator=torch.Generator().manual_seed(0))
    g = torch.randn(8, 4)
    lin(x).backward(g)
    m = g.abs().amax(dim=1, keepdim=True)
    expect_bias = (2 * m * (torch.round(  # same noise draw as the module
        (g / (2 * m) + 0.5 + (torch.rand(8, 4, generator=torch.Generator().manual_seed(0))
                              - 0.5) / 15) * 15).clamp(0, 15) / 15 - 0.5)).sum(0)
    torch.testing.assert_close(lin.bias.grad, expect_bias)
    assert "bits=4" in repr(lin.output_grad_quant)


def test_inq_encode_needs_full_partition():
    w = torch.randn(4, 4)
    q = INQWeight(3)
    q.init_from(w)
    size = q.storage_bytes(w)  # the final record's size, before the schedule ends
    q.partition_(w, 0.5)
    with pytest.raises(LowbitError, match="50.0% quantized"):
        q.encode(w)
    q.freeze()  # portion 1.0: the weights still float are INQ-quantized
    codes, grid = q.encode(w)
    assert size == grid.storage_bytes(16) and torch.equal(grid.decode(codes), q(w))
    assert torch.equal(q(w)[q.frozen_mask], q.frozen_values[q.frozen_mask])
    with pytest.raises(LowbitError, match="init_from"):
        INQWeight(3)(w)


def test_inq_state_dict_round_trip():
    w = torch.randn(3, 4)
    q = INQWeight(4)
    q.init_from(w)
    q.partition_(w, 0.75)
    fresh = INQWeight(4)
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh(w), q(w)) and int(fresh.n1) == int(q.n1)


@pytest.mark.parametrize("weight,w_bits,act,a_bits", [
    ("dorefa", 1, "dorefa", 2), ("dorefa", 4, "dorefa", 4), ("pow2", 3, "pow2", 3),
    ("pow2", 5, "uniform", 8), ("inq", 5, "uniform", 8), ("stochastic", 6, "stochastic", 4),
    ("wu", 4, "dorefa", 4),
])
def test_end_to_end_mlp(weight, w_bits, act, a_bits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    recipe = lowbit.Recipe(weight=weight, w_bits=w_bits, act=act, a_bits=a_bits,
                           keep_first=False, keep_last=False)
    model = lowbit.quantize(model, recipe)
    model(torch.randn(6, 12)).pow(2).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)


@pytest.mark.parametrize("cls", WEIGHT_CLASSES)
def test_weight_bad_input(cls):
    q = cls(4)
    q.init_from(torch.ones(3))
    for bad in (torch.tensor([1.0, float("nan"), 0.0]), torch.tensor([float("inf"), 1.0, 0.0])):
        with pytest.raises(NonFiniteError):
            q(bad) if cls is not INQWeight else q.init_from(bad)
    with pytest.raises(EmptyTensorError):
        q(torch.ones(0)) if cls is not INQWeight else q.init_from(torch.ones(0))
