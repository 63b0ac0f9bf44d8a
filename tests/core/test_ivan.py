"""Ivan's Q_b (eq. 3), scaled weights (eq. 4) and A_b (eq. 5) against independent numpy
references written literally from shared/papers/ivan-quantization-schemes-for-training.txt.

Documented deviations (lowbit/functional/ivan.py) the references apply explicitly:
- Q_b(0) = +1/2^(b-1) (eq. 3 gives 0);
- A_b computes ceil(x_hat n / M) as ceil(x_hat / (M / n)); inputs where the two float forms can
  disagree (x_hat n / M within 1e-3 of an integer, M/n inexact) are excluded from the
  literal comparison, and exact grid points are tested where M/n is a power of two.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lowbit import functional as F
from lowbit.errors import LowbitError
from lowbit.functional.codebook import IntegerGrid, LevelRange
from lowbit.quantizers import IvanAct, IvanWeight

WEIGHT_BITS = [1, 2, 3, 4, 5, 6, 7, 8, 16]
ACT_BITS = [1, 2, 4, 8]
HYP = settings(max_examples=40, deadline=None)


# --- independent references -------------------------------------------------------------------

def np_q(x, b: int) -> np.ndarray:
    """Eq. (3) literally, float64, plus the documented Q_b(0) = +1/s deviation."""
    s = 2.0 ** (b - 1)
    x = np.asarray(x, dtype=np.float64)
    q = np.maximum(0.0, np.ceil(x * s) / s) + np.maximum(0.0, -np.floor(x * s) / s) * np.sign(x)
    return np.where(x == 0, 1.0 / s, q)


def np_a(x, b: int, m=None) -> np.ndarray:
    """Eq. (5) literally: ReLU(M/n * ceil(x_hat n / M)), x_hat = clip(x, 0, n), M = max x_hat.

    The ceil argument is computed in float64; the output multiply M/n * k in float32 (the value
    the float32 implementation must produce for that k).
    """
    n = 2**b - 1
    xh = np.clip(np.asarray(x, dtype=np.float64), 0, n)
    m = xh.max() if m is None else float(m)
    if m == 0:
        return np.zeros_like(xh, dtype=np.float32)
    k = np.ceil(xh * n / m).astype(np.float32)
    return np.maximum(np.float32(0), (np.float32(m) / np.float32(n)) * k)


def ambiguous(x, b: int, m: float, tol: float = 1e-3) -> np.ndarray:
    """Points with 0 < x_hat < M where x_hat n / M lies within ``tol`` of an integer and M/n is
    not exact: there ceil(x_hat n / M) and ceil(x_hat / (M / n)) may differ by float rounding."""
    n = 2**b - 1
    xh = np.clip(np.asarray(x, dtype=np.float64), 0, n)
    if float(np.float32(m) / np.float32(n)) * n == m and np.log2(m / n) % 1 == 0:
        return np.zeros(xh.shape, dtype=bool)  # step is a power of two: both forms exact
    r = xh * n / m
    return (np.abs(r - np.round(r)) < tol) & (xh > 0) & (xh < m)


def special_inputs(b: int) -> torch.Tensor:
    s = 2 ** (b - 1)
    k = np.arange(0, s + 1, dtype=np.float64) if s <= 256 else np.arange(0, s + 1, 97.0)
    grid = k / s
    half = (k[:-1] + 0.5) / s
    vals = np.concatenate([grid, -grid, half, -half, [0.0, 1.0, -1.0, 1e-7, -1e-7]])
    return torch.tensor(vals, dtype=torch.float32)


# --- Q_b (eq. 3) --------------------------------------------------------------------------------

@pytest.mark.parametrize("b", WEIGHT_BITS)
def test_ivan_weight_matches_eq3_on_special_points(b):
    x = special_inputs(b)
    gen = torch.Generator().manual_seed(b)
    x = torch.cat([x, torch.rand(2000, generator=gen) * 2 - 1])
    got = F.ivan_weight(x, b).double().numpy()
    np.testing.assert_array_equal(got, np_q(x.numpy(), b))


@pytest.mark.parametrize("b", WEIGHT_BITS)
def test_ivan_weight_concrete_values(b):
    s = 2.0 ** (b - 1)
    x = torch.tensor([0.0, -0.0, 1.0, -1.0, 1 / s, -1 / s, 0.5 / s, -0.5 / s, 1e-30, -1e-30])
    expected = [1 / s, 1 / s, 1.0, -1.0, 1 / s, -1 / s, 1 / s, -1 / s, 1 / s, -1 / s]
    assert F.ivan_weight(x, b).tolist() == expected


def test_ivan_weight_hand_computed_2_bits():
    # s = 2: levels -1, -1/2, +1/2, +1; ceil for x > 0, floor for x < 0
    x = torch.tensor([-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.5001, 0.75, 1.0])
    assert F.ivan_weight(x, 2).tolist() == [-1.0, -1.0, -0.5, -0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("b", WEIGHT_BITS)
def test_ivan_weight_has_exactly_2_pow_b_levels(b):
    s = 2 ** (b - 1)
    x = torch.linspace(-1, 1, 200_001)
    levels = torch.unique(F.ivan_weight(x, b))
    assert levels.numel() == 2**b
    k = torch.cat([torch.arange(-s, 0), torch.arange(1, s + 1)]).double()
    assert torch.equal(levels.double(), k / s)


def test_ivan_weight_1_bit_is_sign_with_sign0_plus1():
    x = torch.tensor([-1.0, -0.3, -1e-20, -0.0, 0.0, 1e-20, 0.7, 1.0])
    assert F.ivan_weight(x, 1).tolist() == [-1, -1, -1, 1, 1, 1, 1, 1]
    y = torch.rand(1000) * 2 - 1
    assert torch.equal(F.ivan_weight(y, 1), torch.where(y >= 0, 1.0, -1.0))


unit_floats = st.floats(-1.0, 1.0, width=32, allow_nan=False, allow_subnormal=False)


@HYP
@given(x=arrays(np.float32, st.integers(1, 64), elements=unit_floats),
       b=st.sampled_from(WEIGHT_BITS))
def test_ivan_weight_properties(x, b):
    s = 2.0 ** (b - 1)
    t = torch.from_numpy(x)
    q = F.ivan_weight(t, b)
    assert torch.equal(F.ivan_weight(q, b), q)  # idempotent
    assert bool((q.abs() <= 1).all()) and bool((q.abs() >= 1 / s).all())
    # |x - Q_b(x)| < 1/s, checked exactly as |Q_b(x)| s - 1 < |x| s (both sides exact, same
    # sign); exactly one step at x = 0 (the Q_b(0) = +1/s deviation)
    nz = t != 0
    assert bool((torch.sign(q[nz]) == torch.sign(t[nz])).all())
    assert bool((q[nz].abs() * s - 1 < t[nz].abs() * s).all())
    assert bool((q[nz].abs() >= t[nz].abs()).all())
    assert bool((q[~nz] == 1 / s).all())
    assert torch.equal(q * s, torch.round(q * s))  # on the grid k/s
    xs, _ = torch.sort(t)
    qs = F.ivan_weight(xs, b)
    assert bool((qs[1:] >= qs[:-1]).all())  # monotone non-decreasing
    np.testing.assert_array_equal(q.double().numpy(), np_q(x, b))


@pytest.mark.parametrize("b", [1, 3, 8])
def test_ivan_weight_gradient_is_straight_through(b):
    x = (torch.rand(50, generator=torch.Generator().manual_seed(0)) * 2 - 1).requires_grad_()
    g = torch.randn(50, generator=torch.Generator().manual_seed(1))
    F.ivan_weight(x, b).backward(g)
    assert torch.equal(x.grad, g)


# --- eq. (4): |alpha| Q_b(w / max|w|) ----------------------------------------------------------

def np_scaled(w: np.ndarray, alpha: float, b: int) -> np.ndarray:
    w = w.astype(np.float32)
    m = np.abs(w).max()
    w_hat = w / m  # float32 division, like the implementation's input to Q_b
    return (abs(np.float64(np.float32(alpha))) * np_q(w_hat, b)).astype(np.float32)


@pytest.mark.parametrize("b", WEIGHT_BITS)
@pytest.mark.parametrize("alpha", [0.37, -1.5, 2.0])
def test_ivan_scaled_weight_matches_reference(b, alpha):
    gen = torch.Generator().manual_seed(10 * b)
    w = torch.randn(16, 9, generator=gen) * 0.2
    w[0, 0] = 0.0
    a = torch.tensor(alpha)
    got = F.ivan_scaled_weight(w, a, b)
    np.testing.assert_array_equal(got.numpy(), np_scaled(w.numpy(), alpha, b))
    assert got[0, 0].item() == pytest.approx(abs(alpha) / 2 ** (b - 1), rel=1e-7)
    assert got.abs().max().item() == pytest.approx(abs(alpha), rel=1e-7)


@pytest.mark.parametrize("b", [1, 2, 4, 8])
@pytest.mark.parametrize("alpha", [0.8, -0.6])
def test_ivan_scaled_weight_gradients_closed_form(b, alpha):
    gen = torch.Generator().manual_seed(b)
    w0 = torch.randn(7, 5, generator=gen)
    g = torch.randn(7, 5, generator=gen)
    w = w0.clone().requires_grad_()
    a = torch.tensor(alpha, requires_grad=True)
    F.ivan_scaled_weight(w, a, b).backward(g)
    m = w0.abs().max()
    q = torch.from_numpy(np_q((w0 / m).numpy(), b)).float()
    torch.testing.assert_close(w.grad, g * abs(alpha) / m, rtol=1e-6, atol=0)
    expected_alpha = float((g.double() * q.double()).sum()) * np.sign(alpha)
    assert a.grad.item() == pytest.approx(expected_alpha, rel=1e-5, abs=1e-6)


def boundary_weights(seed: int, b: int) -> torch.Tensor:
    """Weights at the level boundaries k max|w| / s and one float32 ulp either side."""
    gen = torch.Generator().manual_seed(seed)
    s = 2 ** (b - 1)
    m = torch.rand((), generator=gen) * 3 + 0.1
    k = torch.arange(1, s + 1).float()
    edge = k * m / s
    w = torch.cat([m.reshape(1), edge, edge.nextafter(torch.tensor(0.0)),
                   edge.nextafter(torch.tensor(9.0)), -edge])
    return w[w.abs() <= m]


def test_ivan_weight_decode_equals_forward_at_level_boundaries():
    for seed in range(300):
        b = 2 + seed % 7
        w = boundary_weights(seed, b)
        q = IvanWeight(b)
        q.init_from(w)
        codes, codebook = q.encode(w)
        assert torch.equal(F.decode(codes, codebook), q(w).detach()), (seed, b)


def test_ivan_scaled_weight_matches_reference_at_level_boundaries():
    for seed in range(300):
        b = 2 + seed % 7
        w = boundary_weights(seed, b)
        alpha = float(w.abs().max())
        got = F.ivan_scaled_weight(w, torch.tensor(alpha), b).numpy()
        np.testing.assert_array_equal(got, np_scaled(w.numpy(), alpha, b), err_msg=str(seed))


def test_ivan_scaled_weight_all_zero_weight():
    y = F.ivan_scaled_weight(torch.zeros(3, 4), torch.tensor(0.5), 3)
    assert torch.equal(y, torch.full((3, 4), 0.5 / 4))


@pytest.mark.parametrize("b", WEIGHT_BITS)
def test_ivan_weight_module_init_forward_encode_decode(b):
    s = 2 ** (b - 1)
    w = torch.randn(12, 5, generator=torch.Generator().manual_seed(b)) * 0.3
    q = IvanWeight(b)
    assert q.alpha.item() == 1.0
    q.init_from(w)
    assert q.alpha.item() == w.abs().max().item()
    y = q(w)
    np.testing.assert_array_equal(y.detach().numpy(), np_scaled(w.numpy(), q.alpha.item(), b))
    codes, codebook = q.encode(w)
    assert codes.dtype == torch.int64 and codes.shape == w.shape
    assert int(codes.min()) >= 0 and int(codes.max()) < 2**b
    assert isinstance(codebook, IntegerGrid) and codebook.num_codes == 2**b
    assert codebook.levels == LevelRange(-s, s, skip_zero=True)
    k = torch.cat([torch.arange(-s, 0), torch.arange(1, s + 1)]).double()
    table = codebook.decode(torch.arange(2**b)).double()
    torch.testing.assert_close(table, k * q.alpha.item() / s, rtol=1e-7, atol=0)
    assert torch.equal(F.decode(codes, codebook), y.detach())  # bit-equal to forward
    assert q.storage_bytes(w) == (60 * b + 7) // 8 + 4 + 8  # codes, |alpha|/s, level range


def test_ivan_weight_module_zero_weight_init_and_negative_alpha():
    q = IvanWeight(2)
    q.init_from(torch.zeros(2, 2))
    assert q.alpha.item() == 1.0
    with torch.no_grad():
        q.alpha.fill_(-2.0)
    w = torch.tensor([[1.0, -0.5], [0.2, -1.0]])
    assert q(w).tolist() == [[2.0, -1.0], [1.0, -2.0]]
    codes, codebook = q.encode(w)
    assert codebook.decode(torch.arange(4)).tolist() == [-2.0, -1.0, 1.0, 2.0]
    assert codes.tolist() == [[3, 1], [2, 0]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b", [1, 2, 3, 5, 8, 16, 24, 25, 31])
def test_ivan_encode_decode_is_the_forward(b, dtype):
    """Q_b, eq. (4) and A_b: decode(encode(x)) equals the forward bit for bit (float32: the
    fused kernels signed_levels / ivan_act; float64: their torch paths), on level boundaries,
    0, -0.0 and clip edges; the records are tableless LevelRange grids up to 31 bits."""
    gen = torch.Generator().manual_seed(b)
    s, n = 2 ** (b - 1), 2**b - 1
    k = torch.randint(-s, s + 1, (300,), generator=gen, dtype=torch.long)  # level boundaries
    x = torch.cat([torch.rand(500, generator=gen) * 2 - 1, k.double() / s,
                   torch.tensor([0.0, -0.0, 1.0, -1.0])])
    x = x.to(dtype)
    codes, grid = F.ivan_weight_encode(x, b)
    assert grid.levels == LevelRange(-s, s, skip_zero=True) and grid.bits == b
    assert int(codes.min()) >= 0 and int(codes.max()) < 2**b
    assert torch.equal(grid.decode(codes), F.ivan_weight(x, b))
    w = x * 0.37
    codes, grid = F.ivan_scaled_encode(w, torch.tensor(-0.8), b)
    assert torch.equal(grid.decode(codes), F.ivan_scaled_weight(w, torch.tensor(-0.8), b))
    a = torch.cat([torch.randn(800, generator=gen).to(dtype) * 3, torch.tensor(
        [0.0, -0.0, float(n), float(n) + 1], dtype=dtype)])
    for m in (None, torch.tensor(2.5), torch.tensor(0.0)):
        codes, grid = F.ivan_activation_encode(a, b, m)
        assert grid.levels == LevelRange(0, n) and int(codes.max()) < 2**b
        assert torch.equal(grid.decode(codes), F.ivan_activation(a, b, m)), m


def test_ivan_act_freeze_encode_31_bits():
    """IvanAct freezes its running max; codebook()/encode decode to the frozen forward, 31 bits
    included (no 2^31 table); an unfrozen IvanAct has no grid."""
    q = IvanAct(31).train()
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        q(torch.randn(2, 3, 8, generator=gen) * 4)
    with pytest.raises(LowbitError, match="freeze"):
        q.encode(torch.ones(2))
    q.freeze()
    x = torch.cat([torch.randn(100, generator=gen) * 5, q.running_max.reshape(1)])
    codes, grid = q.encode(x)
    assert grid.num_codes == 2**31 and isinstance(grid.levels, LevelRange)
    assert torch.equal(grid.decode(codes), q(x)) and torch.equal(q.codebook().decode(codes), q(x))


# --- A_b (eq. 5) --------------------------------------------------------------------------------

@pytest.mark.parametrize("b", ACT_BITS)
def test_ivan_activation_matches_eq5_on_figure4_interval(b):
    x = torch.linspace(-3, 16, 20_001)
    x = torch.cat([x, torch.tensor([0.0, 16.0])])
    m = float(np.clip(x.numpy(), 0, 2**b - 1).max())
    ok = ~ambiguous(x.numpy(), b, m)
    assert ok.mean() > 0.9
    got = F.ivan_activation(x, b).numpy()
    np.testing.assert_array_equal(got[ok], np_a(x.numpy(), b)[ok])


@pytest.mark.parametrize("b", ACT_BITS)
@pytest.mark.parametrize("j", [0, 1, 3])
def test_ivan_activation_exact_grid_and_half_steps(b, j):
    # M = n / 2^j makes the step M/n = 2^-j exact: both forms of the ceil agree exactly.
    n = 2**b - 1
    step = 2.0**-j
    k = np.arange(0, n + 1, dtype=np.float64)
    grid = k * step
    half = (k[:-1] + 0.5) * step
    x = np.concatenate([grid, half, [-1.0, -0.5, -step / 2, 0.0]]).astype(np.float32)
    got = F.ivan_activation(torch.from_numpy(x), b).numpy()
    ref = np_a(x, b)
    np.testing.assert_array_equal(got, ref)
    # concrete expectations: grid points are fixed, half steps go up one step
    np.testing.assert_array_equal(got[: n + 1], grid.astype(np.float32))
    np.testing.assert_array_equal(got[n + 1: 2 * n + 1], ((k[:-1] + 1) * step).astype(np.float32))
    assert (got[-4:] == 0).all()


def test_ivan_activation_hand_computed_2_bits():
    # n = 3, x_hat = clip(x, 0, 3), M = 3 -> levels 0, 1, 2, 3 by ceil
    x = torch.tensor([-2.0, 0.0, 0.1, 1.0, 1.2, 2.5, 3.0, 7.0])
    assert F.ivan_activation(x, 2).tolist() == [0, 0, 1, 1, 2, 3, 3, 3]
    # M = 1.5 -> step 0.5
    x = torch.tensor([-1.0, 0.2, 0.5, 0.6, 1.5])
    assert F.ivan_activation(x, 2).tolist() == [0, 0.5, 0.5, 1.0, 1.5]


@pytest.mark.parametrize("b", ACT_BITS)
def test_ivan_activation_zero_max_gives_zeros(b):
    for x in (torch.zeros(10), -torch.rand(10) - 0.1, torch.tensor([-3.0, 0.0])):
        y = F.ivan_activation(x, b)
        assert torch.equal(y, torch.zeros_like(x))


def test_ivan_activation_given_zero_max_value_gives_zeros():
    y = F.ivan_activation(torch.tensor([0.5, 2.0]), 2, torch.tensor(0.0))
    assert torch.equal(y, torch.zeros(2))


act_floats = st.floats(-50.0, 300.0, width=32, allow_nan=False, allow_subnormal=False)


@HYP
@given(x=arrays(np.float32, st.integers(1, 64), elements=act_floats),
       b=st.sampled_from(ACT_BITS))
def test_ivan_activation_properties(x, b):
    n = 2**b - 1
    t = torch.from_numpy(x)
    y = F.ivan_activation(t, b)
    assert bool((y >= 0).all()) and bool((y <= n).all())
    assert torch.unique(y).numel() <= 2**b
    xh = t.clamp(0, n)
    m = float(xh.max())
    step = m / n if m > 0 else 1.0
    tol = 1e-5 * max(m, 1.0)
    assert bool((y >= xh - tol).all())  # ceil: never below x_hat
    assert bool((y - xh <= step + tol).all())  # at most one step above
    k = y / np.float32(step) if m > 0 else y
    assert torch.allclose(k, torch.round(k), atol=1e-3)
    xs, _ = torch.sort(t)
    ys = F.ivan_activation(xs, b)
    assert bool((ys[1:] >= ys[:-1]).all())
    if m > 0:
        ok = ~ambiguous(x, b, m)
        np.testing.assert_array_equal(y.numpy()[ok], np_a(x, b)[ok])


@pytest.mark.parametrize("b", ACT_BITS)
def test_ivan_activation_gradient_mask(b):
    n = float(2**b - 1)
    x = torch.tensor([-3.0, -1e-6, 0.0, 1e-6, 0.5, n - 0.5, n, n + 1e-3, n + 5, 16.0])
    x.requires_grad_()
    g = torch.arange(1.0, 11.0)
    F.ivan_activation(x, b).backward(g)
    mask = ((x.detach() > 0) & (x.detach() <= n)).float()
    assert torch.equal(x.grad, g * mask)
    assert x.grad[2].item() == 0.0 and x.grad[6].item() == g[6].item()
    assert x.grad[7].item() == 0.0


# --- IvanAct: batch max in training, running max in eval --------------------------------------

def test_ivan_act_training_updates_running_max():
    q = IvanAct(2)
    q.train()
    x1 = torch.tensor([-1.0, 0.3, 1.2])
    assert torch.equal(q(x1), F.ivan_activation(x1, 2))
    assert q.running_max.item() == pytest.approx(1.2) and int(q.num_batches) == 1
    x2 = torch.tensor([0.1, 2.2])
    assert torch.equal(q(x2), F.ivan_activation(x2, 2))
    assert q.running_max.item() == pytest.approx(0.9 * 1.2 + 0.1 * 2.2, rel=1e-6)
    x3 = torch.tensor([10.0])  # batch max is clipped to n = 3 before the average
    q(x3)
    assert q.running_max.item() == pytest.approx(0.9 * (0.9 * 1.2 + 0.1 * 2.2) + 0.1 * 3.0,
                                                 rel=1e-6)
    assert int(q.num_batches) == 3


def test_ivan_act_eval_uses_running_max_and_is_batch_independent():
    q = IvanAct(3)
    q.train()
    q(torch.tensor([0.0, 3.5]))  # running_max = 3.5
    q.eval()
    r = q.running_max.clone()
    sample = torch.tensor([1.1, -0.4, 2.9])
    alone = q(sample)
    with_others = q(torch.cat([sample, torch.tensor([6.5, 7.0])]))[:3]
    assert torch.equal(alone, with_others)
    assert torch.equal(alone, F.ivan_activation(sample, 3, r))
    step = 3.5 / 7
    assert alone.tolist() == pytest.approx([3 * step, 0.0, 6 * step], rel=1e-6)
    assert torch.equal(q.running_max, r) and int(q.num_batches) == 1  # eval does not update


def test_ivan_act_eval_before_training_uses_batch_max():
    q = IvanAct(2).eval()
    x = torch.tensor([0.2, 1.5])
    assert torch.equal(q(x), F.ivan_activation(x, 2))
    assert q.running_max.item() == 0.0 and int(q.num_batches) == 0
