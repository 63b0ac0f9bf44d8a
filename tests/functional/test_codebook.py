"""Typed codebook records (lowbit.functional.codebook): decode against values written out by
hand from each record's formula, granularity, level ranges, storage sizes, bad codes."""

from __future__ import annotations

import pytest
import torch

from lowbit.functional.codebook import (
    BitPlanes,
    IntegerGrid,
    LevelRange,
    Table,
    decode,
    plane_table,
)


def test_integer_grid_per_tensor_channel_and_group():
    g = IntegerGrid(torch.tensor([-2, -1, 0, 1]), torch.tensor(0.5), bits=2)
    assert g.decode(torch.tensor([0, 3, 2])).tolist() == [-1.0, 0.5, 0.0]
    assert g.granularity == "tensor" and g.num_codes == 4
    # per channel, affine: (q - z_c) * s_c
    g = IntegerGrid(torch.arange(0, 4), torch.tensor([1.0, 0.25]), bits=2,
                    zero_point=torch.tensor([1, 2]))
    codes = torch.tensor([[0, 3], [0, 3]])
    assert g.decode(codes).tolist() == [[-1.0, 2.0], [-0.5, 0.25]]
    assert g.integers(codes).tolist() == [[-1, 2], [-2, 1]]
    # per group: element j of a row uses group j // group_size
    scale = torch.tensor([[1.0, 10.0], [2.0, 20.0]])
    g = IntegerGrid(LevelRange(-1, 1), scale, bits=2, group_size=4)
    codes = torch.full((2, 6), 2)  # level +1 everywhere
    assert g.decode(codes).tolist() == [[1, 1, 1, 1, 10, 10], [2, 2, 2, 2, 20, 20]]
    assert g.granularity == "group"
    conv = IntegerGrid(LevelRange(0, 3), torch.tensor([1.0, 2.0]), bits=2)
    out = conv.decode(torch.ones(2, 3, 2, 2, dtype=torch.long))
    assert torch.equal(out[1], torch.full((3, 2, 2), 2.0)) and torch.equal(out[0], out[1] / 2)


def test_level_range_without_zero_and_without_a_table():
    r = LevelRange(-2, 2, skip_zero=True)
    codes = torch.arange(4)
    assert r.numel() == 4 and r.lookup(codes).tolist() == [-2, -1, 1, 2]
    assert torch.equal(r.to_codes(r.lookup(codes)), codes)
    big = IntegerGrid(LevelRange(-(2**30), 2**30, skip_zero=True), torch.tensor(1.0), bits=31)
    assert big.num_codes == 2**31  # described, not tabulated
    assert big.decode(torch.tensor([0, 2**30, 2**31 - 1])).tolist() == [-(2**30), 1, 2**30]
    assert big.overhead_bytes() == 4 + 8


def test_bit_planes_are_signed_sums():
    bp = BitPlanes(torch.tensor([0.5, 0.25]))
    assert bp.bits == 2 and bp.num_codes == 4
    assert bp.decode(torch.tensor([0, 1, 2, 3])).tolist() == [-0.75, 0.25, -0.25, 0.75]
    assert bp.planes(torch.tensor([1])).tolist() == [[1, -1]]
    per_channel = BitPlanes(torch.tensor([[1.0, 2.0], [4.0, 8.0]]))
    assert per_channel.decode(torch.tensor([[3], [1]])).tolist() == [[3.0], [-4.0]]
    assert torch.equal(plane_table(torch.tensor([0.5, 0.25])), bp.decode(torch.arange(4)))


def test_tables_scalar_channel_and_vector():
    t = Table(torch.tensor([-0.3, 0.0, 0.7]), bits=2)
    assert t.decode(torch.tensor([2, 0])).tolist() == pytest.approx([0.7, -0.3])
    t = Table(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), bits=1)
    assert t.decode(torch.tensor([[1, 0], [0, 0]])).tolist() == [[2.0, 1.0], [3.0, 3.0]]
    v = Table(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), bits=2, vector=True)
    assert v.num_codes == 3
    assert v.decode(torch.tensor([[2, 0]])).tolist() == [[5.0, 6.0, 1.0, 2.0]]


def test_storage_sizes():
    g = IntegerGrid(LevelRange(-8, 7), torch.ones(8), bits=4)
    assert g.code_bytes(100) == 50 and g.overhead_bytes() == 4 * 8 + 8
    assert g.storage_bytes(100) == 50 + 40
    odd = IntegerGrid(torch.tensor([-3, -1, 1, 3, 100]), torch.tensor(1.0), bits=3)
    assert odd.overhead_bytes() == 4 + 5  # not a progression: 5 int8 levels
    affine = IntegerGrid(LevelRange(0, 255), torch.ones(4), bits=8,
                         zero_point=torch.tensor([0, 300, 0, 1]))
    assert affine.overhead_bytes() == 16 + 8 + 4 * 2  # int16 zero points
    assert BitPlanes(torch.ones(3, 2)).overhead_bytes() == 24
    assert Table(torch.ones(3), bits=2).storage_bytes(7) == 2 + 12


def test_bad_codes_and_records_are_clear_errors():
    g = IntegerGrid(LevelRange(0, 3), torch.tensor(1.0), bits=2)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        g.decode(torch.tensor([4]))
    with pytest.raises(TypeError, match="integer"):
        g.decode(torch.tensor([0.0]))
    with pytest.raises(ValueError, match="do not fit"):
        IntegerGrid(torch.arange(5), torch.tensor(1.0), bits=2)
    with pytest.raises(ValueError, match="group_size"):
        IntegerGrid(LevelRange(0, 3), torch.ones(2, 2), bits=2)
    with pytest.raises(ValueError, match="do not fit"):
        Table(torch.ones(5), bits=2)


def test_decode_takes_records_and_plain_tables():
    codes = torch.tensor([1, 0])
    assert decode(codes, Table(torch.tensor([1.0, 2.0]), bits=1)).tolist() == [2.0, 1.0]
    assert decode(codes, torch.tensor([1.0, 2.0])).tolist() == [2.0, 1.0]


def test_ste_returns_q_exactly_with_the_identity_gradient():
    from lowbit.functional import ste

    x = torch.tensor([0.3, -1.7, 2.5], requires_grad=True)
    q = torch.tensor([0.1 + 0.2, -2.0, 2.0])  # a value x + (q - x) would round differently
    y = ste(x, q)
    assert torch.equal(y, q)
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0, 3.0]
