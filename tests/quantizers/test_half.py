"""Float16 / bfloat16 weights (post-training half precision): the record is the bit pattern,
decode is torch's own conversion, storage is 2 bytes per weight."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import NonFiniteError
from lowbit.functional.codebook import HalfFloat
from lowbit.quantizers import BFloat16Weight, Float16Weight


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-6e4, 6e4, width=32), min_size=1, max_size=64))
def test_float16_is_numpy_float16(values):
    w = torch.tensor(values, dtype=torch.float32)
    q = Float16Weight(16)
    expected = torch.from_numpy(np.asarray(values, dtype=np.float32).astype(np.float16)
                                .astype(np.float32))
    assert torch.equal(q(w), expected)
    codes, record = q.encode(w)
    assert int(codes.min()) >= 0 and int(codes.max()) < 2**16
    assert torch.equal(record.decode(codes), expected)
    bits = np.asarray(values, dtype=np.float32).astype(np.float16).view(np.uint16)
    assert codes.tolist() == bits.astype(np.int64).tolist()


def test_bfloat16_keeps_8_significant_bits_and_float32_range():
    w = torch.tensor([1.0 + 2**-8, 1.0 + 2**-7, 3e38, -1e-30])
    y = BFloat16Weight(16)(w)
    assert y[0].item() == 1.0 and y[1].item() == 1.0 + 2**-7  # half-even tie, exact
    assert torch.isfinite(y).all() and torch.equal(y, w.to(torch.bfloat16).float())


def test_storage_is_two_bytes_per_weight_and_gradient_is_straight_through():
    w = torch.randn(10, 7, requires_grad=True)
    q = Float16Weight(16)
    assert q.storage_bytes(w.detach()) == 2 * 70
    q(w).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_out_of_range_and_bad_input_are_clear():
    with pytest.raises(NonFiniteError, match="float16 range"):
        Float16Weight(16)(torch.tensor([1e5]))
    with pytest.raises(NonFiniteError):
        Float16Weight(16)(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="format"):
        HalfFloat("float8")
    with pytest.raises(ValueError, match="codes"):
        HalfFloat().decode(torch.tensor([2**16]))
