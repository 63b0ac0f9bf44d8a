"""The fast residual add (lowbit.runtime.kernels.nodes) equals the reference's
``x + grid.values[ranks]`` bit for bit, for float + coded and coded + coded operands."""

from __future__ import annotations

import types

import numpy as np
import pytest

from lowbit.runtime.kernels import nodes
from lowbit.runtime.kernels.rank import PARALLEL_MIN


def _grid(rng, levels: int):
    return types.SimpleNamespace(values=np.sort(rng.normal(size=levels)).astype(np.float32))


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, PARALLEL_MIN + 3)])
def test_add_float_and_coded(shape):
    rng = np.random.default_rng(0)
    g = _grid(rng, 16)
    ranks = rng.integers(0, 16, shape).astype(np.int16)
    x = (rng.normal(size=shape) * 1e3).astype(np.float32)
    want = x + g.values[ranks]
    for args in ([x, (ranks, g)], [(ranks, g), x]):
        got = nodes.add(args)
        assert got.dtype == np.float32 and got.shape == x.shape
        assert np.array_equal(got, want)


def test_add_two_coded():
    rng = np.random.default_rng(1)
    ga, gb = _grid(rng, 4), _grid(rng, 256)
    ra = rng.integers(0, 4, (3, 4, 9, 9)).astype(np.int16)
    rb = rng.integers(0, 256, ra.shape).astype(np.int16)
    assert np.array_equal(nodes.add([(ra, ga), (rb, gb)]), ga.values[ra] + gb.values[rb])


def test_add_declines_what_it_does_not_serve():
    """Broadcasting, two floats and non-contiguous operands are left to the reference."""
    rng = np.random.default_rng(2)
    g = _grid(rng, 4)
    ranks = rng.integers(0, 4, (2, 3, 4, 4)).astype(np.int16)
    assert nodes.add([np.zeros((2, 3, 4, 4), np.float32)] * 2) is None
    assert nodes.add([np.zeros((1, 3, 4, 4), np.float32), (ranks, g)]) is None
    x = np.zeros((2, 4, 4, 3), np.float32).transpose(0, 3, 1, 2)
    assert nodes.add([x, (ranks, g)]) is None
