"""Activation grids as exact thresholds (lowbit/exporter/thresholds.py): for every activation
method and bit width, ``values[searchsorted(t, x, "right")]`` equals the frozen quantizer's
output bit for bit, on the thresholds, their float32 neighbours, random and special inputs; and
ABC-Net's activation with a negative beta (not monotone) as a grid of its bit-planes' steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import LowbitError
from lowbit.exporter.thresholds import (
    float_key,
    key_float,
    plane_thresholds,
    step_grid,
    thresholds,
)
from lowbit.quantizers import METHODS
from lowbit.quantizers.base import ActQuantizer
from lowbit.quantizers.binary import ABCAct

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


def _abc(betas, shifts) -> ABCAct:
    """A frozen ABC-Net activation with the given betas and shifts set by hand."""
    q = ABCAct(len(betas))
    with torch.no_grad():
        q.betas.copy_(torch.tensor(betas))
        q.shifts.copy_(torch.tensor(shifts))
    q.eval()
    return q.freeze()


ABC_CASES = {  # name -> (betas, shifts): a negative beta makes the output non-monotone
    "a2 negative second beta": ([0.6, -0.25], [0.25, -0.25]),
    "a3 negative middle beta": ([0.4, -0.3, 0.5], [0.3, 0.1, -0.2]),
    "a3 shifts out of order": ([-0.2, 0.7, 0.1], [-0.4, 0.45, 0.05]),
    "a4 all negative": ([-0.1, -0.2, -0.3, -0.4], [0.4, 0.2, 0.0, -0.2]),
    "a2 shared shift": ([0.5, -0.7], [0.1, 0.1]),
}


@pytest.mark.parametrize("case", sorted(ABC_CASES))
def test_abc_with_a_negative_beta_is_a_non_monotone_step_grid(case):
    q = _abc(*ABC_CASES[case])
    g = step_grid(q, case)
    assert not g.monotone and np.any(np.diff(g.values) < 0)
    assert np.all(np.diff(g.thresholds) > 0) and g.thresholds.dtype == np.float32
    assert len(g.thresholds) <= q.bits and len(g.values) == len(g.codes) == len(g.thresholds) + 1
    t = g.thresholds
    rng = np.random.default_rng(2)
    x = np.concatenate([t, key_float(float_key(t) - 1), key_float(float_key(t) + 1),
                        key_float(float_key(t) - 2), key_float(float_key(t) + 2),
                        rng.standard_normal(50000).astype(np.float32) * 2,
                        rng.uniform(-1, 2, 50000).astype(np.float32),
                        np.array([0.0, -0.0, 1e-45, -1e-45, 3e38, -3e38], np.float32)])
    rank = np.searchsorted(t, x, side="right")
    with torch.no_grad():
        want = q(torch.from_numpy(x)).numpy()
        codes, _ = q.encode(torch.from_numpy(x))
    np.testing.assert_array_equal(g.values[rank], want)
    np.testing.assert_array_equal(g.codes[rank], codes.numpy())
    # each threshold is exactly where some plane x + v_n >= 1/2 switches on, in float32
    v = q.shifts.detach().numpy()
    for tj in t:
        before = key_float(float_key(np.array([tj])) - 1)[0]
        assert any(np.float32(tj + vn) >= 0.5 > np.float32(before + vn) for vn in v), tj


def test_a_monotone_abc_keeps_its_monotone_grid():
    q = _abc([0.3, 0.2, 0.5], [0.4, 0.1, -0.3])  # positive betas, ordered shifts
    g = step_grid(q, "abc")
    t, reach = thresholds(q, _values(q), "abc")
    assert g.monotone and np.array_equal(g.thresholds, t)
    np.testing.assert_array_equal(g.values, np.unique(_values(q))[reach])


class _PlaneBump(ActQuantizer):
    """Bit-planes whose plane 0 is on only for |x| < 1: not a monotone step of x."""

    def forward(self, x):
        codes, cb = self.encode(x)
        return cb.decode(codes)

    def codebook(self):
        from lowbit.functional.codebook import BitPlanes
        return BitPlanes(torch.tensor([0.5, -0.25]))

    def encode(self, x):
        codes = (x.abs() < 1).long() | ((x >= 2).long() << 1)
        return codes, self.codebook()


def test_a_quantizer_that_is_not_a_step_function_of_monotone_planes_is_refused():
    with pytest.raises(LowbitError, match="monotone"):
        step_grid(_Tent(2), "tent")
    with pytest.raises(LowbitError, match="bump is not a monotone step function, nor a step "
                       "function of monotone bit-planes"):
        step_grid(_PlaneBump(2), "bump")
    with pytest.raises(LowbitError, match="plane thresholds disagree"):
        plane_thresholds(_PlaneBump(2), "bump")
