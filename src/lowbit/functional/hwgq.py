"""The half-wave Gaussian quantizer (HWGQ) of Z. Cai, X. He, J. Sun, N. Vasconcelos, "Deep
Learning with Low Precision by Half-wave Gaussian Quantization", CVPR 2017, arXiv:1702.00953, as
summarised in Guo 2018, "A Survey on Methods and Theories of Quantized Neural Networks", sec. 4.2,
eq. (26)-(27) (shared/papers/guo2018-survey-quantized-neural-networks.txt).

Forward, survey eq. (26), m = 2^b - 1 positive levels q_1 < ... < q_m:
    Q(x) = q_i if x in (t_i, t_{i+1}],   Q(x) = 0 if x <= 0,
  with t_1 = 0, t_i = (q_{i-1} + q_i) / 2 (nearest level), t_{m+1} = inf: every positive input
  takes a positive level, so 0 and the m levels use all 2^b codes.
Levels, eq. (27): minimise E[(Q(x) - x)^2] for x ~ N(0, 1) (batch-normalised pre-activations);
  only x > 0 matters (x <= 0 maps to 0 = ReLU(x)), i.e. the half-normal. Two fits, cached:
  - :func:`uniform_half_normal` (``LevelFit.UNIFORM``, default): q_i = i * step with the optimal
    step, the uniform quantizer Cai et al. deploy for cheap arithmetic. It reproduces the steps
    of their released code, 0.799 (1 bit), 0.538 (2), 0.3217 (3), 0.185 (4 bits: we get 0.1842).
  - :func:`lloyd_half_normal` (``LevelFit.LLOYD``): Lloyd's algorithm with free levels
    (non-uniform), converged to each q_i = E[x | t_i < x <= t_{i+1}], t_i midpoints.
  The MSE uses closed forms: int_a^b x phi = phi(a) - phi(b) and
  int_a^b x^2 phi = Phi(b) - Phi(a) + a phi(a) - b phi(b) (the tests integrate numerically).
Backward (Cai et al. sec. 4), ``HWGQBackward``:
  - RELU: dQ/dx = 1 for x > 0, else 0;
  - CLIPPED (clipped ReLU, the paper's choice): 1 for 0 < x <= q_m, else 0;
  - LOG_TAILED: 1 for 0 < x <= q_m, 1 / (x - tau) for x > q_m with tau = q_m - 1, 0 for x <= 0
    (the derivative of q_m - tau + log(x - tau) beyond q_m, continuous at q_m).
  Deviation: the survey only names the backward approximations; their formulas are taken from
  Cai et al. (2017), sec. 4.

Codebook record (issue 8, :mod:`lowbit.functional.codebook`): code 0 is the zero of x <= 0,
code i the level q_i. :func:`hwgq_encode` gives ``(codes, record)`` and the forward is
``record.decode(codes)`` (inside the Function carrying the backward above), so
``decode(encode(x))`` is the forward bit for bit. The record (:func:`hwgq_codebook`):
  - uniform levels (``LevelFit.UNIFORM``, or ``hwgq(x, bits)``): IntegerGrid(LevelRange(0, m),
    scale = step): the activations are the integers 0..m times one float, which is why Cai et
    al. deploy the uniform fit (an integer kernel consumes the codes directly). The levels are
    computed as float(code) * step in the input's dtype.
    Deviation (numerics): before the typed protocol the float32 levels were float32(i * step)
    from float64; now they are float32(i) * float32(step): a level may differ by 1 ulp.
  - any other levels (``LevelFit.LLOYD``, or a given tensor): Table([0, q_1, ..., q_m]).
  Thresholds t_i are the midpoints of the record's own decoded levels.

Tests: tests/functional/test_hwgq.py (numpy reference, Lloyd optimality by scipy.integrate,
published steps, backward closed forms, properties, ``test_forward_is_decode_of_encode``).
"""

from __future__ import annotations

import enum
import functools
import math

import numpy as np
import torch
from scipy import optimize, special

from lowbit.functional.checks import check_bits, tensor_arg
from lowbit.functional.codebook import IntegerGrid, LevelRange, Table

HWGQ_MAX_BITS = 8


class LevelFit(enum.Enum):
    UNIFORM = "uniform"
    LLOYD = "lloyd"


class HWGQBackward(enum.Enum):
    RELU = "relu"
    CLIPPED = "clipped"
    LOG_TAILED = "log_tailed"


def _pdf(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * np.square(x)) / math.sqrt(2 * math.pi)


def _cdf(x: np.ndarray) -> np.ndarray:
    return special.ndtr(x)


def _cells(q: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], (q[:-1] + q[1:]) / 2, [np.inf]])


def _half_normal_mse(q: np.ndarray) -> float:
    """E[(Q(x) - x)^2 ; x > 0] for x ~ N(0, 1) (twice it is the half-normal MSE)."""
    t = _cells(q)
    a, b = t[:-1], t[1:]
    bx = np.where(np.isinf(b), 0.0, b)
    m0 = _cdf(b) - _cdf(a)
    m1 = _pdf(a) - _pdf(b)
    m2 = m0 + a * _pdf(a) - bx * _pdf(b)
    return float(np.sum(m2 - 2 * q * m1 + q * q * m0))


@functools.lru_cache(maxsize=None, typed=True)  # typed: a key np.int64(2) must not answer 2.0
def uniform_half_normal(bits: int) -> tuple[float, ...]:
    """Levels i * step, i = 1..2^b - 1, with the MSE-optimal step for the half-normal."""
    m = 2 ** check_bits(bits, 1, HWGQ_MAX_BITS) - 1
    i = np.arange(1, m + 1, dtype=np.float64)
    res = optimize.minimize_scalar(lambda d: _half_normal_mse(i * d), bounds=(1e-6, 3.0),
                                   method="bounded", options={"xatol": 1e-12})
    return tuple(float(v) for v in i * res.x)


@functools.lru_cache(maxsize=None, typed=True)  # typed: a key np.int64(2) must not answer 2.0
def lloyd_half_normal(bits: int, iters: int = 10_000, tol: float = 1e-13) -> tuple[float, ...]:
    """Lloyd's algorithm on the half-normal: 2^b - 1 free levels (t_1 = 0, midpoint cells)."""
    q = np.asarray(uniform_half_normal(bits))
    for _ in range(iters):
        t = _cells(q)
        new = (_pdf(t[:-1]) - _pdf(t[1:])) / (_cdf(t[1:]) - _cdf(t[:-1]))
        if np.max(np.abs(new - q)) < tol:
            q = new
            break
        q = new
    return tuple(float(v) for v in q)


def hwgq_levels(bits: int, fit: LevelFit = LevelFit.UNIFORM) -> tuple[float, ...]:
    """The positive levels q_1..q_m of the b-bit HWGQ (cached)."""
    return uniform_half_normal(bits) if fit is LevelFit.UNIFORM else lloyd_half_normal(bits)


def hwgq_codebook(
    levels_or_bits: int | torch.Tensor, fit: LevelFit = LevelFit.UNIFORM,
    dtype: torch.dtype = torch.float32,
) -> IntegerGrid | Table:
    """The record of the b-bit HWGQ: an int gives the ``fit`` of that many bits (UNIFORM: an
    IntegerGrid 0..2^b - 1 times the step; LLOYD: a Table), positive ascending levels q_1..q_m
    a Table [0, q_1, ..., q_m] (module doc)."""
    if isinstance(levels_or_bits, torch.Tensor | list | tuple | np.ndarray):
        levels = tensor_arg(levels_or_bits, "levels_or_bits", table=True)
        levels = levels.detach().to(dtype).reshape(-1)
        if levels.numel() == 0 or not bool((levels > 0).all()):
            raise ValueError("HWGQ levels must be positive")
        if levels.numel() > 1 and not bool((levels[1:] > levels[:-1]).all()):
            raise ValueError("HWGQ levels must be strictly ascending")
        bits = max(1, math.ceil(math.log2(levels.numel() + 1)))
        return Table(torch.cat([levels.new_zeros(1), levels]), bits)
    q = hwgq_levels(levels_or_bits, fit)
    bits = int(levels_or_bits)
    if fit is LevelFit.UNIFORM:
        return IntegerGrid(LevelRange(0, len(q)), torch.tensor(q[0], dtype=dtype), bits)
    return Table(torch.tensor((0.0, *q), dtype=dtype), bits)


def hwgq_thresholds(record: IntegerGrid | Table) -> torch.Tensor:
    """t_1 = 0, t_i = (q_{i-1} + q_i) / 2 over the record's decoded positive levels."""
    q = record.decode(torch.arange(1, record.num_codes))
    return torch.cat([q.new_zeros(1), (q[:-1] + q[1:]) / 2])


def _cell(x: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """#{i : t_i < x} (int64): x's cell (t_i, t_{i+1}]."""
    if thresholds.numel() > 16:
        return torch.bucketize(x, thresholds, right=False)
    k = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)  # faster than bucketize
    for t in thresholds.tolist():
        k.add_(x > t)
    return k.long()


class _HWGQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, record, thresholds, backward):
        ctx.save_for_backward(x)
        ctx.backward, ctx.qmax = backward, float(record.decode(torch.tensor(record.num_codes - 1)))
        return record.decode(_cell(x, thresholds), check=False)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * hwgq_grad(x, ctx.qmax, ctx.backward), None, None, None


def hwgq_grad(x: torch.Tensor, qmax: float, backward: HWGQBackward) -> torch.Tensor:
    """dQ/dx of the chosen backward approximation (module doc), elementwise."""
    pos = tensor_arg(x, "x") > 0
    if backward is HWGQBackward.RELU:
        return pos.to(x.dtype)
    inside = (pos & (x <= qmax)).to(x.dtype)
    if backward is HWGQBackward.CLIPPED:
        return inside
    tau = qmax - 1.0
    tail = 1.0 / torch.clamp(x - tau, min=1.0)  # x > qmax <=> x - tau > 1
    return torch.where(x > qmax, tail, inside)


def hwgq_encode(
    x: torch.Tensor, codebook: int | torch.Tensor | IntegerGrid | Table
) -> tuple[torch.Tensor, IntegerGrid | Table]:
    """Survey eq. (26) as codes: 0 for x <= 0, else i for x in (t_i, t_{i+1}] (ties to the lower
    level), and the record; ``codebook``: a record of :func:`hwgq_codebook`, or what it takes
    (bits: the uniform fit; positive ascending levels: a table)."""
    x = tensor_arg(x, "x")
    if not isinstance(codebook, IntegerGrid | Table):
        codebook = hwgq_codebook(codebook, dtype=x.dtype)
    return _cell(x, hwgq_thresholds(codebook).to(x.dtype)), codebook


def hwgq(
    x: torch.Tensor,
    levels_or_bits: int | torch.Tensor | IntegerGrid | Table,
    backward: HWGQBackward = HWGQBackward.CLIPPED,
) -> torch.Tensor:
    """Survey eq. (26): decode(hwgq_encode(x)): 0 for x <= 0, else the nearest of the positive
    levels (ties to the lower level, cells (t_i, t_{i+1}]). An int gives the uniform half-normal
    fit of that many bits; a tensor, list, tuple or numpy array gives the levels themselves; a
    record of :func:`hwgq_codebook` is used as it is.
    """
    x = tensor_arg(x, "x")
    record = levels_or_bits
    if not isinstance(record, IntegerGrid | Table):
        record = hwgq_codebook(levels_or_bits, dtype=x.dtype if x.is_floating_point() else
                               torch.float32)
    if not isinstance(backward, HWGQBackward):
        raise TypeError(f"backward must be an HWGQBackward, got {backward!r}")
    if x.numel() == 0:
        return x.clone()
    return _HWGQ.apply(x, record, hwgq_thresholds(record).to(x.dtype), backward)
