"""LSQWeight, LSQAct, PACTAct: encode/decode, initialisation, gradient scale, bits, registry,
end to end through lowbit.quantize."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lowbit
from lowbit.errors import BitsError, EmptyTensorError, LowbitError, MethodError, NonFiniteError
from lowbit.functional.codebook import IntegerGrid, decode
from lowbit.functional.learned import lsq
from lowbit.quantizers.learned import LSQAct, LSQWeight, PACTAct
from lowbit.quantizers.registry import make_act_quantizer, make_weight_quantizer
from lowbit.train.loop import quantizer_hooks


def _weight(seed: int, shape=(8, 5, 3, 3)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.2


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 8), st.booleans(), st.integers(0, 2**16), st.floats(0.2, 3.0))
def test_lsq_weight_encode_decode_exact(bits, per_channel, seed, jitter):
    w = _weight(seed)
    q = LSQWeight(bits, per_channel=per_channel)
    q.init_from(w)
    with torch.no_grad():
        q.step.mul_(jitter)  # a step that training moved away from its initial value
    codes, codebook = q.encode(w)
    assert codes.dtype == torch.int64 and codes.min() >= 0 and codes.max() < 2**bits
    assert isinstance(codebook, IntegerGrid) and codebook.num_codes == 2**bits
    assert codebook.scale.shape == ((8,) if per_channel else ())
    assert torch.equal(decode(codes, codebook), q(w))
    # codes at `bits`, one float32 step per block, the level range
    assert q.storage_bytes(w) == (w.numel() * bits + 7) // 8 + 4 * (8 if per_channel else 1) + 8


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_lsq_weight_init_from(bits):
    w = _weight(1)
    qp = 2 ** (bits - 1) - 1
    q = LSQWeight(bits)
    q.init_from(w)
    assert float(q.step.detach()) == pytest.approx(2 * float(w.abs().mean()) / math.sqrt(qp))
    qc = LSQWeight(bits, per_channel=True)
    qc.init_from(w)
    expect = 2 * w.abs().reshape(8, -1).mean(dim=1) / math.sqrt(qp)
    torch.testing.assert_close(qc.step.detach(), expect)
    zero = LSQWeight(bits)
    zero.init_from(torch.zeros(3, 3))
    assert float(zero.step.detach()) == 1.0


def test_lsq_weight_gradient_scale():
    w = _weight(2)
    q = LSQWeight(3)
    q.init_from(w)
    up = torch.randn(w.shape, generator=torch.Generator().manual_seed(0))
    (q(w) * up).sum().backward()
    raw = q.step.detach().clone().requires_grad_(True)
    (lsq(w, raw, 4, 3, 1.0) * up).sum().backward()
    torch.testing.assert_close(q.step.grad, raw.grad / math.sqrt(w.numel() * 3))
    qc = LSQWeight(3, per_channel=True)
    qc.init_from(w)
    (qc(w) * up).sum().backward()
    rawc = qc.step.detach().clone().requires_grad_(True)
    (lsq(w, rawc, 4, 3, 1.0, axis=0) * up).sum().backward()
    torch.testing.assert_close(qc.step.grad, rawc.grad / math.sqrt(w[0].numel() * 3))


def test_lsq_weight_bad_input():
    q = LSQWeight(4)
    with pytest.raises(NonFiniteError):
        q(torch.tensor([1.0, float("nan")]))
    with pytest.raises(NonFiniteError):
        q.encode(torch.tensor([1.0, float("inf")]))
    with pytest.raises(EmptyTensorError):
        q(torch.empty(0, 3))
    with pytest.raises(EmptyTensorError):
        q.init_from(torch.empty(0, 3))


def test_lsq_act_initialises_from_first_training_batch():
    x = torch.relu(torch.randn(16, 10, generator=torch.Generator().manual_seed(0)))
    q = LSQAct(2)
    q.eval()
    q(x)  # eval before training: derived from the batch, not stored
    assert not bool(q.initialized) and float(q.step.detach()) == 1.0
    q.train()
    q(torch.zeros(4, 10))  # an all-zero batch does not initialise
    assert not bool(q.initialized)
    q(x)
    assert bool(q.initialized)
    assert float(q.step.detach()) == pytest.approx(2 * float(x.mean()) / math.sqrt(3))
    s0 = float(q.step.detach())
    q(x * 5)
    assert float(q.step.detach()) == s0
    sd = q.state_dict()
    assert set(sd) == {"step", "initialized", "frozen"}


def test_lsq_act_forward_and_gradient_scale():
    x = torch.relu(torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(1)))
    q = LSQAct(3)
    q.train()
    y = q(x)
    assert torch.equal(y, torch.fake_quantize_per_tensor_affine(x, float(q.step.detach()), 0, 0, 7))
    y.sum().backward()
    raw = q.step.detach().clone().requires_grad_(True)
    lsq(x, raw, 0, 7, 1.0).sum().backward()
    torch.testing.assert_close(q.step.grad, raw.grad / math.sqrt(3 * 4 * 4 * 7))
    assert q(torch.empty(0, 3)).shape == (0, 3)


def test_lsq_act_in_place_of_relu_equals_lsq_after_relu():
    """The unsigned clip contains the ReLU: init, output and both gradients equal LSQ applied to
    relu(x) (values below 0, at 0, inside the grid, at and above the top)."""
    g = torch.Generator().manual_seed(4)
    x = torch.cat([torch.randn(6, 2, 3, 3, generator=g).reshape(-1) * 2,
                   torch.tensor([0.0, -0.0, -1e-6, 1e-6, 30.0, -30.0])]).reshape(-1, 2, 3, 1)
    x = x[: (len(x) // 2) * 2]
    a, b = LSQAct(2), LSQAct(2)
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    ya = a(xa)                      # in place of the ReLU
    yb = b(torch.relu(xb))          # after an explicit ReLU (the old wiring)
    assert torch.equal(a.step.detach(), b.step.detach())
    assert torch.equal(ya, yb)
    w = torch.randn(ya.shape, generator=g)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    assert torch.equal(xa.grad, xb.grad)
    torch.testing.assert_close(a.step.grad, b.step.grad)


def test_pact_act_regularization_and_flags():
    q = PACTAct(4, lambda_alpha=0.01)
    assert float(q.alpha.detach()) == 10.0
    r = q.regularization()
    assert float(r.detach()) == pytest.approx(0.01 * 100.0)
    r.backward()
    assert float(q.alpha.grad) == pytest.approx(2 * 0.01 * 10.0)
    assert PACTAct.REPLACES_ACTIVATION and LSQAct.REPLACES_ACTIVATION
    x = torch.tensor([-1.0, 0.0, 3.3, 12.0])
    torch.testing.assert_close(q(x), torch.tensor([0.0, 0.0, 5 * 10 / 15, 10.0]))
    with pytest.raises(ValueError):
        PACTAct(2, alpha_init=0.0)


@pytest.mark.parametrize(
    "make,bits",
    [(LSQWeight, 1), (LSQWeight, 9), (LSQAct, 9), (PACTAct, 9), (LSQAct, 0), (PACTAct, 2.0)],
)
def test_bits_rejected(make, bits):
    with pytest.raises(BitsError):
        make(bits)


def test_registry():
    assert isinstance(make_weight_quantizer("lsq", 3), LSQWeight)
    assert isinstance(make_act_quantizer("lsq", 1), LSQAct)
    assert isinstance(make_act_quantizer("pact", 2), PACTAct)
    with pytest.raises(BitsError):
        make_weight_quantizer("lsq", 1)
    with pytest.raises(MethodError):
        make_weight_quantizer("pact", 4)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(),
                         nn.Linear(8, 3))


@pytest.mark.parametrize("act,w_bits,a_bits", [("lsq", 2, 2), ("lsq", 4, 1), ("pact", 3, 2),
                                               ("pact", 8, 8)])
def test_end_to_end(act, w_bits, a_bits):
    model = lowbit.quantize(_mlp(), lowbit.Recipe(weight="lsq", w_bits=w_bits, act=act,
                                                  a_bits=a_bits, keep_first=False,
                                                  keep_last=False))
    x = torch.randn(32, 12, generator=torch.Generator().manual_seed(1))
    loss = model(x).pow(2).mean()
    for m in quantizer_hooks(model)[0]:  # the quantizers that define regularization()
        loss = loss + m.regularization()
    loss.backward()
    named = dict(model.named_parameters())
    assert any(n.endswith("step") for n in named)
    assert any(n.endswith("alpha") for n in named) == (act == "pact")
    for name, p in named.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("cls", [LSQAct, PACTAct])
def test_learned_act_freeze_codebook_encode(cls):
    """Frozen, the learned step / alpha is the grid: codebook().decode(encode(x)) == q(x);
    an unfrozen one has no grid, an LSQAct that never trained refuses to freeze."""
    if cls is LSQAct:
        with pytest.raises(LowbitError, match="no .*training batch"):
            cls(4).freeze()
    q = cls(4).train()
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        q(torch.randn(2, 3, 5, generator=g) * 3)
    with pytest.raises(LowbitError, match="freeze"):
        q.codebook()
    q.freeze().eval()
    x = torch.randn(2, 3, 5, generator=g) * 3
    codes, grid = q.encode(x)
    assert isinstance(grid, IntegerGrid) and grid.bits == 4
    assert torch.equal(grid.decode(codes), q(x)) and torch.equal(q.codebook().decode(codes), q(x))
