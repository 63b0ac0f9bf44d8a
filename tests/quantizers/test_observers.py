"""Observers against torch.ao's (the peer), their grids, state round trips and bad input."""

from __future__ import annotations

import warnings

import pytest
import torch

from lowbit.errors import BitsError, EmptyTensorError, LowbitError, NonFiniteError
from lowbit.functional.uniform import uniform
from lowbit.quantizers.observers import MinMaxObserver, MovingAverageMinMaxObserver

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torch.ao.quantization import observer as ao


def _batches(seed=0, n=4, shape=(6, 5, 3)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) * (i + 1) + 0.3 * i for i in range(n)]


def _ao(cls, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(**kw)


@pytest.mark.parametrize("ours,peer", [
    (lambda: MinMaxObserver(8), lambda: _ao(ao.MinMaxObserver, dtype=torch.quint8)),
    (lambda: MinMaxObserver(8, signed=True, symmetric=True),
     lambda: _ao(ao.MinMaxObserver, dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)),
    (lambda: MovingAverageMinMaxObserver(8, momentum=0.01),
     lambda: _ao(ao.MovingAverageMinMaxObserver, dtype=torch.quint8, averaging_constant=0.01)),
    (lambda: MinMaxObserver(8, signed=True, symmetric=True, axis=0),
     lambda: _ao(ao.PerChannelMinMaxObserver, ch_axis=0, dtype=torch.qint8,
                 qscheme=torch.per_channel_symmetric)),
    (lambda: MovingAverageMinMaxObserver(8, axis=0, momentum=0.1),
     lambda: _ao(ao.MovingAveragePerChannelMinMaxObserver, ch_axis=0, dtype=torch.quint8,
                 averaging_constant=0.1)),
])
def test_qparams_equal_torch_ao(ours, peer):
    o, p = ours(), peer()
    for x in _batches():
        o.update(x)
        p(x)
    scale, zp = o.qparams()
    ps, pz = p.calculate_qparams()
    assert torch.allclose(scale, ps.reshape(scale.shape), rtol=1e-6, atol=0)
    assert torch.equal(zp.round().long(), pz.reshape(zp.shape).long())


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
@pytest.mark.parametrize("axis", [None, 0])
def test_codebook_decodes_the_uniform_fake_quant(bits, axis):
    o = MinMaxObserver(bits, signed=True, symmetric=axis is not None, axis=axis)
    x = _batches(bits)[2]
    o.update(x)
    cb = o.codebook()
    scale, zp = o.qparams()
    fq = uniform(x, scale, zp, o.qmin, o.qmax, axis)
    # codes of the fake-quantized values: q = round(fq / scale) + zp, code = q - qmin
    s = scale if axis is None else scale.reshape(-1, 1, 1)
    z = zp if axis is None else zp.reshape(-1, 1, 1)
    codes = (torch.round(fq / s) + z - o.qmin).long()
    assert cb.bits == bits and cb.num_codes == 2**bits
    assert torch.equal(cb.decode(codes), fq)


def test_state_round_trip_and_errors():
    o = MovingAverageMinMaxObserver(4, axis=0)
    for x in _batches():
        o.update(x)
    fresh = MovingAverageMinMaxObserver(4, axis=0)
    fresh.load_state_dict(o.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fresh.qparams(), o.qparams(), strict=True))
    with pytest.raises(LowbitError, match="observed nothing"):
        MinMaxObserver(8).qparams()
    bad = torch.ones(3)
    bad[1] = float("nan")
    o = MinMaxObserver(8)
    with pytest.raises(NonFiniteError):
        o.update(bad)
    assert int(o.count) == 0  # nothing recorded
    with pytest.raises(EmptyTensorError):
        o.update(torch.ones(0))
    with pytest.raises(BitsError):
        MinMaxObserver(1)
    with pytest.raises(LowbitError, match="channels"):
        p = MinMaxObserver(8, axis=0)
        p.update(torch.ones(3, 2))
        p.update(torch.ones(4, 2))
    x = torch.randn(5)
    assert MinMaxObserver(8)(x) is x  # update returns its input unchanged
