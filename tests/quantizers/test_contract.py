"""The quantizer contract, for every registered method and every bit width it accepts, weights
and activations (issue 8): after ``freeze()``, ``encode`` gives int64 codes in range and a typed
codebook record whose ``decode(codes)`` is the frozen forward bit for bit, whose storage size
is what ``storage_bytes`` reports, and which survives a state-dict round trip. New methods get
this test by being registered.
"""

from __future__ import annotations

import pytest
import torch

from lowbit.functional.codebook import BitPlanes, HalfFloat, IntegerGrid, Table
from lowbit.quantizers import METHODS

RECORDS = (IntegerGrid, BitPlanes, Table, HalfFloat)


def _cases(role: str):
    for name, m in sorted(METHODS.items()):
        cls = m.weight if role == "weight" else m.act
        if cls is None:
            continue
        for bits in cls.BITS:
            yield pytest.param(cls, bits, id=f"{name}-{bits}")


def _weights(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, 3, 3, generator=g) * 0.2, torch.randn(6, 10, generator=g)]


@pytest.mark.parametrize("cls,bits", list(_cases("weight")))
def test_frozen_weight_quantizer_encodes_what_it_computes(cls, bits):
    for w in _weights(bits):
        q = cls(bits)
        q.init_from(w)
        q.train()
        q(w)  # one training forward (methods with lazy state initialise here)
        assert q.freeze() is q and q.is_frozen
        q.eval()
        codes, cb = q.encode(w)
        assert isinstance(cb, RECORDS), type(cb)
        assert codes.dtype == torch.int64 and codes.shape == w.shape
        assert int(codes.min()) >= 0 and int(codes.max()) < cb.num_codes <= 2**bits
        assert cb.bits == bits
        assert torch.equal(cb.decode(codes), q(w).detach())
        assert q.storage_bytes(w) == cb.storage_bytes(codes.numel())
        fresh = cls(bits)
        fresh.load_state_dict(q.state_dict())
        fresh.eval()
        assert fresh.is_frozen
        codes2, cb2 = fresh.encode(w)
        assert torch.equal(codes2, codes) and torch.equal(cb2.decode(codes2), cb.decode(codes))


@pytest.mark.parametrize("cls,bits", list(_cases("act")))
def test_frozen_activation_quantizer_encodes_what_it_computes(cls, bits):
    g = torch.Generator().manual_seed(bits)
    batches = [torch.randn(4, 3, 5, 5, generator=g) * 2 for _ in range(3)]
    if not cls.REPLACES_ACTIVATION:  # it quantizes the output of the ReLU it follows
        batches = [torch.relu(x) for x in batches]
    q = cls(bits)
    q.train()
    for x in batches:
        q(x)
    assert q.freeze() is q and q.is_frozen
    q.eval()
    x = batches[0]
    codes, cb = q.encode(x)
    assert isinstance(cb, RECORDS), type(cb)
    assert codes.dtype == torch.int64 and codes.shape == x.shape
    assert int(codes.min()) >= 0 and int(codes.max()) < cb.num_codes <= 2**bits
    assert cb.bits == bits
    assert torch.equal(cb.decode(codes), q(x).detach())
    assert torch.equal(q.codebook().decode(codes), cb.decode(codes))  # data-independent grid
    fresh = cls(bits)
    fresh.load_state_dict(q.state_dict())
    fresh.eval()
    assert fresh.is_frozen and torch.equal(fresh(x), q(x))
