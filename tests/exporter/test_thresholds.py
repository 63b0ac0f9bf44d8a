"""Activation grids as exact thresholds (lowbit/exporter/thresholds.py): for every activation
method and bit width, ``values[searchsorted(t, x, "right")]`` equals the frozen quantizer's
output bit for bit, on the thresholds, their float32 neighbours, random and special inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import LowbitError
from lowbit.exporter.thresholds import float_key, key_float, thresholds
from lowbit.quantizers import METHODS
from lowbit.quantizers.base import ActQuantizer

CASES = [(name, bits) for name, m in METHODS.items() if m.act is not None
         for bits in (1, 2, 3, 4, 8) if bits in m.act.BITS]


def _frozen(name: str, bits: int) -> ActQuantizer:
    torch.manual_seed(bits)
    q = METHODS[name].act(bits)
    q.train()
    with torch.no_grad():
        q(torch.randn(512) * 2)
    q.eval()
    return q.freeze()


def _values(q) -> np.ndarray:
    cb = q.codebook()
    return cb.decode(torch.arange(cb.num_codes)).numpy()


@pytest.mark.parametrize("name,bits", CASES)
def test_thresholds_reproduce_the_quantizer(name, bits):
    q = _frozen(name, bits)
    values = _values(q)
    t, reach = thresholds(q, values, name)
    assert len(t) == len(reach) - 1 <= 2**bits - 1
    assert np.all(np.diff(t) > 0)
    v = np.unique(values)[reach]
    rng = np.random.default_rng(1)
    x = np.concatenate([t, key_float(float_key(t) - 1), key_float(float_key(t) + 1),
                        rng.standard_normal(20000).astype(np.float32) * 4,
                        np.array([0.0, -0.0, 1e-45, -1e-45, 3e38, -3e38], np.float32)])
    with torch.no_grad():
        want = q(torch.from_numpy(x)).numpy()
    got = v[np.searchsorted(t, x, side="right")]
    np.testing.assert_array_equal(got, want)


@settings(max_examples=200, deadline=None)
@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float_key_orders_float32_and_round_trips(x):
    a = np.float32(x)
    k = float_key(np.array([a]))[0]
    assert key_float(np.array([k]))[0] == a
    with np.errstate(over="ignore"):
        nxt = np.nextafter(a, np.float32(np.inf))
    if np.isfinite(nxt):
        assert float_key(np.array([nxt]))[0] == k + 1 or (a == 0 and nxt > 0)


class _Tent(ActQuantizer):
    """Not monotone: |x| rounded (a V shape)."""

    def forward(self, x):
        return torch.clamp(torch.round(x.abs()), 0, 3)

    def codebook(self):
        from lowbit.functional.codebook import IntegerGrid, LevelRange
        return IntegerGrid(LevelRange(0, 3), torch.tensor(1.0), 2)


def test_a_quantizer_that_is_not_monotone_is_refused():
    q = _Tent(2)
    with pytest.raises(LowbitError, match="monotone"):
        thresholds(q, _values(q), "tent")


def test_values_outside_the_codebook_are_refused():
    q = _frozen("dorefa", 2)
    with pytest.raises(LowbitError, match="not in its codebook"):
        thresholds(q, _values(q)[:2], "dorefa")
