"""Uniform fake quantization against its peers: torch's fake-quant ops (forward and gradient)
and torch.ao's MinMaxObserver / PerChannelMinMaxObserver (scale and zero point)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver

from lowbit import functional as F
from lowbit.errors import LowbitError
from lowbit.functional.codebook import IntegerGrid, LevelRange
from lowbit.quantizers import UniformAct, UniformWeight

HYP = settings(max_examples=50, deadline=None)


@st.composite
def grids(draw):
    """(qmin, qmax): a signed or unsigned b-bit grid, or an arbitrary sub-range."""
    kind = draw(st.sampled_from(["signed", "unsigned", "custom"]))
    if kind == "custom":
        qmin = draw(st.integers(-300, 200))
        return qmin, qmin + draw(st.integers(1, 300))
    b = draw(st.integers(2, 16))
    return (-(2 ** (b - 1)), 2 ** (b - 1) - 1) if kind == "signed" else (0, 2**b - 1)


def f32(v: float) -> float:
    return float(np.float32(v))


def inputs(seed: int, shape, scale: np.ndarray, zp: np.ndarray, qmin: int, qmax: int, axis):
    """Random values spanning beyond the clip range, plus exact grid points and half-steps
    (k + 0.5) * scale along ``axis``."""
    gen = np.random.default_rng(seed)
    bshape = [1] * len(shape)
    if axis is not None:
        bshape[axis] = -1
    s = scale.reshape(bshape)
    z = zp.reshape(bshape)
    k = gen.integers(qmin - 3, qmax + 4, size=shape)
    kind = gen.integers(0, 3, size=shape)
    rand = gen.uniform(qmin - 5, qmax + 5, size=shape)
    steps = np.where(kind == 0, k - z, np.where(kind == 1, k - z + 0.5, rand - z))
    return torch.from_numpy((steps * s).astype(np.float32))


@HYP
@given(grid=grids(), scale=st.floats(1e-3, 10.0), data=st.data(), seed=st.integers(0, 2**16))
def test_uniform_per_tensor_equals_torch(grid, scale, data, seed):
    qmin, qmax = grid
    zp = data.draw(st.integers(qmin, qmax))
    scale = f32(scale)
    x0 = inputs(seed, (5, 7), np.array(scale), np.array(zp), qmin, qmax, None)
    g = torch.from_numpy(np.random.default_rng(seed + 1).standard_normal((5, 7)).astype("f4"))

    x = x0.clone().requires_grad_()
    y = F.uniform(x, scale, zp, qmin, qmax)
    y.backward(g)
    xr = x0.clone().requires_grad_()
    yr = torch.fake_quantize_per_tensor_affine(xr, scale, zp, qmin, qmax)
    yr.backward(g)
    assert torch.equal(y, yr)
    assert torch.equal(x.grad, xr.grad)
    # the tensor-qparams overload too
    yt = torch.fake_quantize_per_tensor_affine(
        x0, torch.tensor(scale), torch.tensor(zp, dtype=torch.int32), qmin, qmax)
    assert torch.equal(F.uniform(x0, torch.tensor(scale), torch.tensor(zp), qmin, qmax), yt)


@HYP
@given(grid=grids(), data=st.data(), seed=st.integers(0, 2**16), axis=st.sampled_from([0, 1, 2]))
def test_uniform_per_channel_equals_torch(grid, data, seed, axis):
    qmin, qmax = grid
    shape = (3, 4, 5)
    c = shape[axis]
    gen = np.random.default_rng(seed)
    scale = np.exp(gen.uniform(np.log(1e-3), np.log(10.0), size=c)).astype(np.float32)
    zp = gen.integers(qmin, qmax + 1, size=c)
    x0 = inputs(seed, shape, scale, zp, qmin, qmax, axis)
    g = torch.from_numpy(gen.standard_normal(shape).astype(np.float32))
    s_t = torch.from_numpy(scale)

    x = x0.clone().requires_grad_()
    y = F.uniform(x, s_t, torch.from_numpy(zp).float(), qmin, qmax, axis=axis)
    y.backward(g)
    xr = x0.clone().requires_grad_()
    yr = torch.fake_quantize_per_channel_affine(
        xr, s_t, torch.from_numpy(zp).to(torch.int32), axis, qmin, qmax)
    yr.backward(g)
    assert torch.equal(y, yr)
    assert torch.equal(x.grad, xr.grad)


def test_uniform_concrete_values_and_mask():
    # scale 0.5, zp 2, grid q in [0, 7]: values (q - 2) * 0.5 in [-1, 2.5]; ties to even
    x = torch.tensor([-2.0, -1.0, -0.25, 0.25, 0.75, 1.3, 2.5, 2.75, 3.0], requires_grad=True)
    y = F.uniform(x, 0.5, 2, 0, 7)
    assert y.tolist() == [-1.0, -1.0, 0.0, 0.0, 1.0, 1.5, 2.5, 2.5, 2.5]
    y.sum().backward()
    # round(2.75/0.5) + 2 = round(5.5) + 2 = 8 > 7: outside; 3.0 -> 8 outside; -2 -> -2 outside
    assert x.grad.tolist() == [0, 1, 1, 1, 1, 1, 1, 0, 0]


@HYP
@given(grid=grids(), data=st.data(), seed=st.integers(0, 2**16),
       per_channel=st.booleans(), double=st.booleans())
def test_uniform_encode_decode_is_the_forward(grid, data, seed, per_channel, double):
    """decode(encode(x)) == uniform(x) bit for bit, on exact levels, half-steps and clip edges;
    the codes are q - qmin and the record an IntegerGrid over LevelRange(qmin, qmax)."""
    qmin, qmax = grid
    gen = np.random.default_rng(seed)
    c = 4 if per_channel else 1
    scale = np.exp(gen.uniform(np.log(1e-3), np.log(10.0), size=c)).astype(np.float32)
    zp = gen.integers(qmin, qmax + 1, size=c)
    x = inputs(seed, (4, 6), scale, zp, qmin, qmax, 0 if per_channel else None)
    x = x.double() if double else x
    s, z = torch.from_numpy(scale), torch.from_numpy(zp).float()
    if not per_channel:
        s, z = s[0], z[0]
    axis = 0 if per_channel else None
    codes, grid_ = F.uniform_encode(x, s, z, qmin, qmax, axis)
    assert isinstance(grid_, IntegerGrid) and grid_.levels == LevelRange(qmin, qmax)
    assert codes.dtype == torch.int64 and 0 <= int(codes.min()) and int(codes.max()) <= qmax - qmin
    y = F.uniform(x, s, z, qmin, qmax, axis)
    assert y.dtype == grid_.decode(codes).dtype and torch.equal(grid_.decode(codes), y)
    with pytest.raises(ValueError, match="dim 0"):
        F.uniform_encode(x, s, z, qmin, qmax, axis=1)


# --- qparams vs torch.ao observers -------------------------------------------------------------

def assert_scale_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Exact, or at most one float32 ulp apart."""
    ours, theirs = ours.reshape(-1).float(), theirs.reshape(-1).float()
    ulp = torch.nextafter(theirs, torch.full_like(theirs, float("inf"))) - theirs
    assert bool(((ours - theirs).abs() <= ulp).all()), (ours, theirs)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_minmax_qparams_per_channel_symmetric_equals_observer(seed, bits):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 3, 3, generator=gen) * (seed + 0.5)
    x[1] = x[1].abs() + 0.1  # all-positive channel
    x[2] = -x[2].abs()  # all-negative channel
    x[3] = 0.0  # zero-range channel
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8,
                                   qscheme=torch.per_channel_symmetric,
                                   quant_min=qmin, quant_max=qmax)
    obs(x)
    s_ref, z_ref = obs.calculate_qparams()
    lo, hi = F.minmax(x, 0)
    s, z = F.minmax_qparams(lo, hi, qmin, qmax, symmetric=True)
    assert_scale_close(s, s_ref)
    assert torch.equal(z.long(), z_ref.long())
    assert s[3].item() == torch.finfo(torch.float32).eps


@pytest.mark.parametrize("seed", range(8))
def test_minmax_qparams_per_tensor_affine_quint8_equals_observer(seed):
    gen = torch.Generator().manual_seed(seed)
    shift = [0.0, 2.0, -3.0, 0.5, 10.0, -10.0, 0.0, 1.0][seed]
    x = torch.randn(50, generator=gen) * (seed + 1) * 0.3 + shift
    obs = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    obs(x)
    s_ref, z_ref = obs.calculate_qparams()
    lo, hi = F.minmax(x, None)
    s, z = F.minmax_qparams(lo, hi, 0, 255, symmetric=False)
    assert_scale_close(s, s_ref)
    assert int(z) == int(z_ref)


def test_minmax_qparams_symmetric_quint8_default_range_equals_observer():
    x = torch.randn(40, generator=torch.Generator().manual_seed(3))
    obs = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_symmetric)
    obs(x)
    s_ref, z_ref = obs.calculate_qparams()
    s, z = F.minmax_qparams(*F.minmax(x, None), 0, 255, symmetric=True)
    assert_scale_close(s, s_ref)
    assert int(z) == int(z_ref) == 128


def test_minmax_qparams_zero_range():
    s, z = F.minmax_qparams(torch.tensor(0.0), torch.tensor(0.0), 0, 255, symmetric=False)
    assert s.item() == torch.finfo(torch.float32).eps and z.item() == 0
    y = F.uniform(torch.zeros(5), s, z, 0, 255)
    assert torch.equal(y, torch.zeros(5))


# --- UniformWeight ------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", range(2, 17))
@pytest.mark.parametrize("per_channel", [True, False])
def test_uniform_weight_encode_decode_and_levels(bits, per_channel):
    gen = torch.Generator().manual_seed(bits)
    w = torch.randn(5, 4, 3, generator=gen)
    w[2] = 0.0  # zero-range channel: quantizes to exactly 0
    q = UniformWeight(bits, per_channel=per_channel)
    y = q(w)
    assert not torch.isnan(y).any()
    codes, codebook = q.encode(w)
    assert codes.dtype == torch.int64 and codes.shape == w.shape
    assert int(codes.min()) >= 0 and int(codes.max()) < 2**bits
    assert isinstance(codebook, IntegerGrid) and codebook.num_codes == 2**bits
    assert codebook.granularity == ("channel" if per_channel else "tensor")
    assert torch.equal(codebook.decode(codes), y)
    for c in range(5):
        assert torch.unique(y[c]).numel() <= 2**bits
    if per_channel:
        assert torch.equal(y[2], torch.zeros_like(y[2]))
        # peer: torch's observer + fake-quant op give the same weights
        dtype = torch.qint8 if bits <= 8 else torch.qint32
        obs = PerChannelMinMaxObserver(ch_axis=0, dtype=dtype,
                                       qscheme=torch.per_channel_symmetric,
                                       quant_min=q.qmin, quant_max=q.qmax)
        obs(w)
        s_ref, z_ref = obs.calculate_qparams()
        ref = torch.fake_quantize_per_channel_affine(w, s_ref, z_ref.to(torch.int32), 0,
                                                     q.qmin, q.qmax)
        assert torch.equal(y, ref)
    # |w - q(w)| <= step/2 inside the range (the symmetric grid spans [-max|w|, max|w|]);
    # 4 float32 ulps of max|w| allowed for the rounding of w/scale and of the product
    dims = tuple(range(1, w.dim())) if per_channel else tuple(range(w.dim()))
    m = w.abs().amax(dim=dims, keepdim=True)
    half_step = m / ((q.qmax - q.qmin) / 2) / 2
    assert bool(((y - w).abs() <= half_step + 4 * torch.finfo(torch.float32).eps * m).all())


def test_uniform_weight_hand_computed():
    q = UniformWeight(2, per_channel=True)  # grid q in [-2, 1], scale = max|w| / 1.5
    w = torch.tensor([[1.5, -1.5, 0.4, 0.8], [3.0, 0.0, -2.0, -3.0]])
    y = q(w)
    # scales 1 and 2; -1.5 and 1.5 are ties: round half to even -> -2 and 2 (clamped to 1)
    assert y.tolist() == [[1.0, -2.0, 0.0, 1.0], [2.0, 0.0, -2.0, -4.0]]
    codes, codebook = q.encode(w)
    assert codes.tolist() == [[3, 0, 2, 3], [3, 2, 1, 0]]
    assert codebook.integers(codes).tolist() == [[1, -2, 0, 1], [1, 0, -1, -2]]
    assert codebook.scale.tolist() == [1.0, 2.0] and not codebook.zero_point.any()
    # 8 codes at 2 bits, two float32 scales, the level range (zero points all 0: not stored)
    assert q.storage_bytes(w) == 2 + 2 * 4 + 8


# --- UniformAct ---------------------------------------------------------------------------------

def test_uniform_act_running_min_max():
    q = UniformAct(4).train()
    x1 = torch.tensor([0.0, 1.0, 3.0])
    y1 = q(x1)
    assert q.running_min.item() == 0.0 and q.running_max.item() == 3.0
    assert int(q.num_batches) == 1
    s, z = F.minmax_qparams(torch.tensor(0.0), torch.tensor(3.0), 0, 15, symmetric=False)
    assert torch.equal(y1, F.uniform(x1, s, z, 0, 15))
    assert s.item() == pytest.approx(0.2) and z.item() == 0
    x2 = torch.tensor([-1.0, 5.0])
    y2 = q(x2)
    lo, hi = 0.99 * 0.0 + 0.01 * -1.0, 0.99 * 3.0 + 0.01 * 5.0
    assert q.running_min.item() == pytest.approx(lo, rel=1e-6)
    assert q.running_max.item() == pytest.approx(hi, rel=1e-6)
    s, z = F.minmax_qparams(q.running_min, q.running_max, 0, 15, symmetric=False)
    assert torch.equal(y2, F.uniform(x2, s, z, 0, 15))
    # eval: running range only, nothing updated, batch-independent
    q.eval()
    before = (q.running_min.clone(), q.running_max.clone(), int(q.num_batches))
    a = q(torch.tensor([1.7]))
    b = q(torch.tensor([1.7, 100.0, -50.0]))[:1]
    assert torch.equal(a, b) and torch.equal(a, F.uniform(torch.tensor([1.7]), s, z, 0, 15))
    assert (q.running_min.clone(), q.running_max.clone(), int(q.num_batches)) == before


def test_uniform_act_eval_before_training_and_zero_range():
    q = UniformAct(8).eval()
    x = torch.tensor([0.5, 2.0])
    s, z = F.minmax_qparams(torch.tensor(0.5), torch.tensor(2.0), 0, 255, symmetric=False)
    assert torch.equal(q(x), F.uniform(x, s, z, 0, 255))
    assert int(q.num_batches) == 0
    for mode in (True, False):
        q = UniformAct(4).train(mode)
        y = q(torch.zeros(3, 4))
        assert torch.equal(y, torch.zeros(3, 4)) and not torch.isnan(y).any()
    # a constant non-zero tensor: range widened to contain 0, the constant is the top level
    y = UniformAct(4).train()(torch.full((6,), 2.0))
    assert torch.allclose(y, torch.full((6,), 2.0))


def test_uniform_act_freeze_encode():
    """freeze() fixes the moving range: training batches no longer move it, and codebook() /
    encode(x) decode to the forward exactly; an unobserved quantizer refuses to freeze."""
    with pytest.raises(LowbitError, match="no training batch"):
        UniformAct(4).freeze()
    gen = torch.Generator().manual_seed(0)
    q = UniformAct(4).train()
    with pytest.raises(LowbitError, match="freeze"):
        q.codebook()
    for _ in range(3):
        q(torch.relu(torch.randn(2, 3, 4, generator=gen)) * 3)
    q.freeze()
    lo, hi = q.running_min.clone(), q.running_max.clone()
    x = torch.randn(2, 3, 4, generator=gen) * 5  # beyond the range: clipped
    y = q(x)  # training mode, frozen: no update
    assert torch.equal(q.running_min, lo) and torch.equal(q.running_max, hi)
    codes, grid_ = q.encode(x)
    assert torch.equal(grid_.decode(codes), y) and torch.equal(q.codebook().decode(codes), y)
    assert grid_.bits == 4 and grid_.levels == LevelRange(0, 15)
