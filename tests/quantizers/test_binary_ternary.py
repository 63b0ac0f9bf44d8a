"""Binary and ternary quantizer modules: encode/decode, BITS, hooks, registry, end to end."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import BitsError, MethodError
from lowbit.functional.codebook import BitPlanes, IntegerGrid, Table, decode
from lowbit.quantizers.binary import (
    ABCAct,
    ABCWeight,
    BinaryConnectWeight,
    BNNAct,
    BNNWeight,
    XNORAct,
    XNORWeight,
)
from lowbit.quantizers.registry import METHODS, validate
from lowbit.quantizers.ternary import TTQWeight, TWNWeight

WEIGHT_CASES = [
    (BinaryConnectWeight, 1),
    (BNNWeight, 1),
    (XNORWeight, 1),
    (ABCWeight, 1),
    (ABCWeight, 3),
    (ABCWeight, 5),
    (TWNWeight, 2),
    (TTQWeight, 2),
]


RECORDS = {BinaryConnectWeight: IntegerGrid, BNNWeight: IntegerGrid, XNORWeight: IntegerGrid,
           ABCWeight: BitPlanes, TWNWeight: IntegerGrid, TTQWeight: Table}


def _weights():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, 3, 3, generator=g)
    w[0, 0, 0, 0] = 0.0
    w[1] = 0.0  # an all-zero output channel
    return [w, torch.randn(7, 5, generator=g), torch.tensor([[0.0, -0.0, 1.0, -1.0]])]


@pytest.mark.parametrize(("cls", "bits"), WEIGHT_CASES)
def test_encode_decode_exact(cls, bits):
    for w in _weights():
        q = cls(bits)
        q.init_from(w)
        q.eval()
        codes, codebook = q.encode(w)
        assert isinstance(codebook, RECORDS[cls])
        assert codes.dtype == torch.int64 and codes.shape == w.shape
        assert int(codes.min()) >= 0 and int(codes.max()) < codebook.num_codes <= 2**bits
        assert torch.equal(codebook.decode(codes), q(w).detach())
        assert torch.equal(decode(codes, codebook), q(w).detach())
        rows = q(w).detach().reshape(w.shape[0], -1) if cls is XNORWeight else [q(w)]
        assert all(len(r.unique()) <= 2**bits for r in rows)
        assert q.storage_bytes(w) == codebook.storage_bytes(w.numel())


@pytest.mark.parametrize(("cls", "bits"), WEIGHT_CASES)
def test_idempotent_where_the_method_is(cls, bits):
    if cls is ABCWeight and bits > 1:
        pytest.skip("ABC-Net re-solves the bases on its own output: not idempotent for M > 1")
    w = torch.randn(5, 8)
    q = cls(bits)
    q.init_from(w)
    y = q(w).detach()
    if cls is TTQWeight:  # levels are the trained scales; with W_p = W_n = 1 it is a fixpoint
        q.wp.data.fill_(1.0)
        q.wn.data.fill_(1.0)
        y = q(w).detach()
    torch.testing.assert_close(q(y).detach(), y, rtol=1e-6, atol=0)  # scale: up to rounding


@pytest.mark.parametrize(
    ("cls", "bad"),
    [(BinaryConnectWeight, 2), (BNNWeight, 3), (XNORWeight, 2), (BNNAct, 2), (XNORAct, 4),
     (ABCWeight, 6), (TWNWeight, 1), (TWNWeight, 3), (TTQWeight, 3)],
)
def test_bits_rejected(cls, bad):
    with pytest.raises(BitsError, match="cannot take"):
        cls(bad)


def test_after_step_clips_in_place():
    for cls in (BinaryConnectWeight, BNNWeight):
        w = torch.tensor([-2.0, -0.5, 0.5, 3.0])
        cls(1).after_step(w)
        assert w.tolist() == [-1.0, -0.5, 0.5, 1.0]


def test_binaryconnect_stochastic_module_trains_stochastic_evals_sign():
    g = torch.Generator().manual_seed(0)
    q = BinaryConnectWeight(1, stochastic=True, generator=g)
    w = torch.full((4000,), 0.5)
    frac = float((q(w) > 0).float().mean())
    assert abs(frac - 0.75) < 4 * (0.75 * 0.25 / 4000) ** 0.5  # P(+1) = (0.5 + 1)/2
    q.eval()
    assert torch.equal(q(w), torch.ones(4000))
    q.train()
    q.freeze()  # Courbariaux et al. sec. 2.6: deploy the binary weights sign(w), in every mode
    assert torch.equal(q(w), torch.ones(4000))
    codes, grid = q.encode(w)
    assert torch.equal(grid.decode(codes), q(w))


def test_frozen_activation_records():
    x = torch.tensor([[-2.0, -0.5, 0.0, 0.5, 2.0]] * 2)
    for q in (BNNAct(1), XNORAct(1), ABCAct(3)):
        q.freeze()
        codes, cb = q.encode(x)
        assert torch.equal(cb.decode(codes), q(x)) and torch.equal(q.codebook().decode(codes), q(x))
    with pytest.raises(lowbit.errors.NonFiniteError):
        BNNAct(1).freeze().encode(torch.tensor([float("nan")]))
    k = XNORAct(1, kernel_size=3, padding=1).freeze()
    x4 = torch.randn(2, 3, 4, 4)
    codes, grid = k.encode(x4)  # K is data-dependent: output = decode(codes) * input_scale(x)
    assert torch.equal(k(x4), grid.decode(codes) * k.input_scale(x4))
    a = ABCAct(2).freeze()
    a(torch.randn(10, requires_grad=True)).sum().backward()
    assert a.shifts.grad is None and a.betas.grad is None  # frozen: the grid no longer learns


def test_ttq_init_and_parameters_learn():
    w = torch.tensor([-4.0, -2.0, -0.1, 0.0, 0.1, 1.0, 3.0])  # delta = 0.2
    q = TTQWeight(2, scale_grad="mean", init="mean")
    q.init_from(w)
    assert float(q.wp.detach()) == pytest.approx(2.0)
    assert float(q.wn.detach()) == pytest.approx(3.0)
    assert q(w).tolist() == pytest.approx([-3.0, -3.0, 0, 0, 0, 2.0, 2.0])
    q(w).sum().backward()
    assert float(q.wp.grad) == 1.0 and float(q.wn.grad) == -1.0  # "mean": 2 / 2 per region
    assert {n for n, _ in q.named_parameters()} == {"wp", "wn"}
    with pytest.raises(ValueError, match="scale_grad"):
        TTQWeight(2, scale_grad="max")
    with pytest.raises(ValueError, match="init"):
        TTQWeight(2, init="max")


def test_ttq_defaults_are_the_papers_unit_scales_and_summed_gradient():
    """Zhu et al. 2017 eq. (7) and the reference code (W_p = W_n = 1.0, summed gradient)."""
    w = torch.tensor([-4.0, -2.0, -0.1, 0.0, 0.1, 1.0, 3.0])  # delta = 0.2
    paper = TTQWeight(2)
    assert (paper.scale_grad, paper.init) == ("sum", "one")
    paper.init_from(w)  # a no-op: the scales stay at 1
    assert float(paper.wp) == 1.0 and float(paper.wn) == 1.0
    g = torch.tensor([0.5, -1.0, 7.0, 7.0, 7.0, 2.0, 0.25])  # an arbitrary upstream gradient
    wl = w.clone().requires_grad_(True)
    (paper(wl) * g).sum().backward()
    assert paper(w).tolist() == [-1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    assert float(paper.wp.grad) == 2.25  # sum over I_p = {1.0, 3.0}
    assert float(paper.wn.grad) == 0.5   # -(0.5 - 1.0): minus the sum over I_n = {-4, -2}
    assert wl.grad.tolist() == g.tolist()  # W_p = W_n = 1: eq. (8) passes g through


def test_act_modules():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
    for cls in (BNNAct, XNORAct):
        assert cls.REPLACES_ACTIVATION
        x.grad = None
        y = cls(1)(x)
        assert y.tolist() == [-1, -1, 1, 1, 1]
        y.sum().backward()
        assert x.grad.tolist() == [0, 1, 1, 1, 0]
    scaled = XNORAct(1, kernel_size=3, padding=1)(torch.randn(2, 3, 4, 4))
    assert scaled.shape == (2, 3, 4, 4)


def test_registry_entries():
    for name in ("binaryconnect", "bnn", "xnor", "abc", "twn", "ttq"):
        assert name in METHODS and METHODS[name].description
    validate("xnor", "activation", 32)  # BWN: binary weights, float activations
    validate("abc", "activation", 3)
    with pytest.raises(BitsError):
        validate("abc", "activation", 6)
    for name in ("binaryconnect", "twn", "ttq"):
        with pytest.raises(MethodError, match="has no activation quantizer"):
            validate(name, "activation", 1)
    with pytest.raises(BitsError):
        validate("twn", "weight", 1)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 3))


@pytest.mark.parametrize(
    ("method", "w_bits", "act", "a_bits"),
    [("binaryconnect", 1, "bnn", 32), ("bnn", 1, "bnn", 1), ("xnor", 1, "xnor", 1),
     ("xnor", 1, "xnor", 32), ("abc", 3, "bnn", 32), ("twn", 2, "xnor", 1), ("ttq", 2, "bnn", 1)],
)
def test_end_to_end_finite_grads(method, w_bits, act, a_bits):
    model = lowbit.quantize(_mlp(), lowbit.Recipe(weight=method, w_bits=w_bits, act=act,
                                                  a_bits=a_bits, keep_first=False,
                                                  keep_last=False))
    x = torch.randn(10, 8)
    loss = nn.functional.cross_entropy(model(x), torch.randint(0, 3, (10,)))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
