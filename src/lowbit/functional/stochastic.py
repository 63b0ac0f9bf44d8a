"""Rounding to a uniform grid: fixed point (deterministic and stochastic), Polino's scaled
stochastic quantizer and WAGE's clipped rounding. Formulas as printed in the survey of Guo 2018
(shared/papers/guo2018-survey-quantized-neural-networks), eq. 6, 8-9 and 10.

Fixed point <IL, FL>, eps = 2^-FL (S. Gupta, A. Agrawal, K. Gopalakrishnan, P. Narayanan,
"Deep Learning with Limited Numerical Precision", ICML 2015, arXiv:1502.02551):
  :func:`fixed_point_round`, survey eq. 6 (round to nearest, ties *down*): with
      floor_eps(x) = the largest multiple of eps <= x,
      q = floor_eps(x) if x <= floor_eps(x) + eps/2 else floor_eps(x) + eps
    computed as eps * ceil(x / eps - 1/2).
  :func:`stochastic_round`, Gupta eq. (2)-(3) ("stochastic rounding"): q = floor_eps(x) with
    probability 1 - (x - floor_eps(x)) / eps, floor_eps(x) + eps otherwise, i.e.
    q = eps floor(x / eps + u), u ~ U[0, 1): E[q] = x (unbiased).
  Both accept any step > 0 (not only powers of two), do not saturate (the saturation of
  Gupta's <IL, FL> format is the caller's: see quantizers/stochastic.py), and use a
  straight-through gradient dq/dx = 1.

Polino, Pascanu, Alistarh, "Model compression via distillation and quantization", ICLR 2018,
arXiv:1802.05668 (survey eq. 8-9): Q(v) = sc^-1(Q_hat(sc(v))), sc(v) = (v - min v) / (max v -
min v) per tensor, s = 2^b - 1 intervals (s + 1 = 2^b levels):
  :func:`polino_uniform`: Q_hat(x) = floor(x s)/s + xi/s, xi = 1 if x s - floor(x s) > 1/2
    (ties down, as eq. 9), else 0.
  :func:`stochastic_uniform`: xi ~ Bernoulli(x s - floor(x s)) (survey sec. 3.2): unbiased.
  Output = min + (max - min) k / s, k in 0..s. min and max are statistics (no gradient), so
  the straight-through gradient is dQ/dv = 1. A constant tensor (max = min) is returned as is.

WAGE rounding, S. Wu, G. Li, F. Chen, L. Shi, "Training and Inference with Integers in Deep
Neural Networks", ICLR 2018, arXiv:1802.04680, eq. (5) (survey eq. 10, "Shuang et al."):
  :func:`wu_round`: Q(x, k) = Clip(sigma round(x / sigma), -1 + sigma, 1 - sigma),
    sigma = 2^(1-k); 2^k - 1 levels j sigma, |j| <= 2^(k-1) - 1; round half to even;
    straight-through gradient dQ/dx = 1 (WAGE keeps weights inside the range by clipping
    them in the update, not in this gradient). 2..16 bits (k = 1 would map everything to 0).

Records (issue 8): :func:`fixed_point_encode`, :func:`stochastic_encode` and :func:`wu_encode`
return IntegerGrid(LevelRange(lo, hi), step): the fixed-point words k are integers in a range
(no table), times the step (WAGE: sigma times the layer scale). Each method rounds once
(``_grid_integers`` / ``_wu_integers``); the codes are k - lo and the value is k * step, the
record's formula on those same integers, so decode(encode(x)) is the forward bit for bit.
Stochastic rounding is a training-time draw: deployment uses eq. 6, round to nearest (the
quantizers switch at ``freeze()``; see quantizers/stochastic.py for the reading).

Tests: tests/functional/test_stochastic.py (test_fixed_point_round_eq6_ties_down,
test_wu_round_eq10, test_stochastic_encode_is_the_training_draw_and_decode_lookup_is_decode);
tests/quantizers/test_contract.py (stochastic, wu: every bit width, frozen).
"""

from __future__ import annotations

import math

import torch

from lowbit.functional.checks import check_bits, check_finite, check_nonempty, tensor_arg
from lowbit.functional.codebook import IntegerGrid, LevelRange
from lowbit.functional.ste import ste


def finite_absmax(w: torch.Tensor, what: str = "weight") -> torch.Tensor:
    """max|w| (detached), raising EmptyTensorError / NonFiniteError like check_finite, but
    with one reduction and a scalar check instead of a full isfinite pass (NaN and Inf both
    make the max non-finite)."""
    m = check_nonempty(tensor_arg(w, "w"), what).detach().abs().max()
    if not bool(torch.isfinite(m)):
        check_finite(w, what)
    return m


def _check_step(step: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """``step`` as a 0-d tensor of ``x``'s dtype; ValueError unless it is one finite value > 0."""
    x = tensor_arg(x, "x")
    s = tensor_arg(step, "step", like=x, table=True).to(dtype=x.dtype, device=x.device)
    if s.numel() != 1 or not bool((s > 0).all()) or not bool(torch.isfinite(s).all()):
        raise ValueError(f"step must be one finite value > 0, got {step!r}")
    return s.reshape(())


def _grid_integers(x, step, u, qmin, qmax):
    """(k, step, qmin, qmax): k = r(x / step + offset) as exact integers in x's float dtype,
    clamped to [qmin, qmax] (given or, when None, the range of k). ``u`` None: r = ceil,
    offset -1/2 (eq. 6, ties down); else r = floor, offset u (stochastic rounding). The one
    rounding of this family: the codes are k - qmin of IntegerGrid(LevelRange(qmin, qmax),
    step), and the value k * step is that record's formula on the same integers."""
    s = _check_step(step, x)
    z = x.detach() / s
    k = torch.ceil_(z.sub_(0.5)) if u is None else torch.floor_(z.add_(u))
    if k.numel() and (qmin is None or qmax is None):
        qmin = int(k.min()) if qmin is None else qmin
        qmax = int(k.max()) if qmax is None else qmax
    qmin, qmax = (0, 0) if qmin is None or qmax is None else (int(qmin), int(qmax))
    return k.clamp_(qmin, qmax), s, qmin, qmax


def _grid_record(k, s, qmin, qmax, bits):
    """(codes k - qmin, IntegerGrid(LevelRange(qmin, qmax), s, bits)); bits default
    ceil(log2(qmax - qmin + 1))."""
    bits = max(1, math.ceil(math.log2(qmax - qmin + 1))) if bits is None else bits
    return _codes(k, qmin), IntegerGrid(LevelRange(qmin, qmax), s, bits)


def _codes(k: torch.Tensor, lo: int) -> torch.Tensor:
    """int64 codes k - lo of float integers k."""
    if abs(lo) <= 2**24:  # k - lo exact in float (|k| <= 2^24 too: k is clamped near lo)
        return (k - lo).long()
    return k.long().sub_(lo)


def _value(x: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, *_) -> torch.Tensor:
    """ste(x, k * scale): IntegerGrid's (l - 0) * scale on the float integers k, which is
    ``record.decode(codes)`` bit for bit (int -> float of an integer-valued float is exact)."""
    return ste(x, k.mul_(scale))


def fixed_point_encode(
    x: torch.Tensor,
    step: torch.Tensor | float,
    qmin: int | None = None,
    qmax: int | None = None,
    bits: int | None = None,
) -> tuple[torch.Tensor, IntegerGrid]:
    """Survey eq. 6 (Gupta et al. 2015, round to nearest, ties down): codes and the record of
    k step, k = ceil(x / step - 1/2) clamped to [qmin, qmax] (Gupta's saturation; an omitted
    bound is the range of k). Record: IntegerGrid(LevelRange(qmin, qmax), step, bits), bits
    default ceil(log2(qmax - qmin + 1)): the integers k are the fixed-point words."""
    return _grid_record(*_grid_integers(x, step, None, qmin, qmax), bits)


def stochastic_encode(
    x: torch.Tensor,
    step: torch.Tensor | float,
    generator: torch.Generator | None = None,
    qmin: int | None = None,
    qmax: int | None = None,
    bits: int | None = None,
) -> tuple[torch.Tensor, IntegerGrid]:
    """Gupta et al. 2015 eq. (2)-(3), stochastic rounding: k = floor(x / step + u), u ~ U[0, 1)
    (E[k step] = x before the clamp to [qmin, qmax]); the record as :func:`fixed_point_encode`.
    A training-time draw: deployment rounds with :func:`fixed_point_encode` (eq. 6)."""
    return _grid_record(*_grid_integers(x, step, _noise(x, generator), qmin, qmax), bits)


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    x = tensor_arg(x, "x")
    return torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def fixed_point_round(
    x: torch.Tensor,
    step: torch.Tensor | float,
    qmin: float | None = None,
    qmax: float | None = None,
) -> torch.Tensor:
    """Survey eq. 6, decode(:func:`fixed_point_encode`): nearest multiple k step, ties down, k
    clamped to [qmin, qmax] when given; straight-through gradient (also where saturated)."""
    s = _check_step(step, x)
    if x.numel() == 0:
        return x.clone()
    return _value(x, *_grid_integers(x, s, None, qmin, qmax))


def stochastic_round(
    x: torch.Tensor,
    step: torch.Tensor | float,
    generator: torch.Generator | None = None,
    qmin: float | None = None,
    qmax: float | None = None,
) -> torch.Tensor:
    """Gupta et al. 2015 stochastic rounding, decode(:func:`stochastic_encode`): E[q] = x
    (before the optional saturation of k to [qmin, qmax]); straight-through gradient."""
    s = _check_step(step, x)
    if x.numel() == 0:
        return x.clone()
    return _value(x, *_grid_integers(x, s, _noise(x, generator), qmin, qmax))


def pow2_step(m: torch.Tensor, bits: int) -> torch.Tensor:
    """Fixed-point step 2^-FL for a <IL, FL> format of ``bits`` bits (sign included) whose
    range 2^(IL-1) is the smallest power of two >= m: FL = bits - 1 - ceil(log2 m)."""
    m, bits = tensor_arg(m, "m", table=True), check_bits(bits)
    f, p = torch.frexp(m)
    c = torch.where(f > 0.5, p, p - 1)
    c = torch.where(f > 0, c, torch.zeros_like(c))  # m = 0: any step; use 2^-(bits-1)
    return torch.exp2((c - (bits - 1)).to(m.dtype))


class _MinMaxRound(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s, u):
        lo, hi = x.min(), x.max()
        span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
        z = (x - lo) / span * s
        k = torch.floor(z + u) if u is not None else torch.ceil(z - 0.5)
        return torch.where(hi > lo, lo + span * (torch.clamp(k, 0.0, s) / s), x)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def polino_uniform(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Survey eq. 8-9, deterministic: 2^b levels between min and max of ``x``, ties down."""
    s = float(2 ** check_bits(bits, 1, 16) - 1)
    if tensor_arg(x, "x").numel() == 0:
        return x.clone()
    return _MinMaxRound.apply(x, s, None)


def stochastic_uniform(
    x: torch.Tensor, bits: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Survey eq. 8-9 with xi ~ Bernoulli(frac(x s)): unbiased, 2^b levels in [min, max]."""
    s = float(2 ** check_bits(bits, 1, 16) - 1)
    if tensor_arg(x, "x").numel() == 0:
        return x.clone()
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return _MinMaxRound.apply(x, s, u)


def _wu_integers(x: torch.Tensor, bits: int, scale) -> tuple[torch.Tensor, IntegerGrid]:
    bits, x = check_bits(bits, 2, 16), tensor_arg(x, "x").detach()
    sigma, top = 2.0 ** (1 - bits), 2 ** (bits - 1) - 1
    s = tensor_arg(scale, "scale", like=x, table=True).to(x.dtype).detach().reshape(())
    z = x / sigma if not torch.is_tensor(scale) and scale == 1.0 else (x / s).div_(sigma)
    return torch.round_(z).clamp_(-top, top), IntegerGrid(LevelRange(-top, top), s * sigma, bits)


def wu_encode(x: torch.Tensor, bits: int, scale: torch.Tensor | float = 1.0
              ) -> tuple[torch.Tensor, IntegerGrid]:
    """Survey eq. 10 (WAGE eq. 5) of x / scale: codes j + 2^(k-1) - 1 of the levels j sigma,
    j = clamp(round(x / scale / sigma), -(2^(k-1) - 1), 2^(k-1) - 1) (round half to even),
    sigma = 2^(1-k). Record: IntegerGrid(LevelRange(-(2^(k-1) - 1), 2^(k-1) - 1),
    sigma * scale, k): 2^k - 1 integer levels, one code unused. With a power-of-two scale
    (WuWeight's) the value is clip(sigma round(x / (scale sigma)), -1 + sigma, 1 - sigma) *
    scale exactly."""
    j, grid = _wu_integers(x, bits, scale)
    return _codes(j, grid.levels.lo), grid


def wu_round(x: torch.Tensor, bits: int, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Survey eq. 10 (WAGE): scale * clip(sigma round(x / (scale sigma)), -1 + sigma,
    1 - sigma), sigma = 2^(1-k), = decode(:func:`wu_encode`); straight-through gradient."""
    bits = check_bits(bits, 2, 16)
    if tensor_arg(x, "x").numel() == 0:
        return x.clone()
    j, grid = _wu_integers(x, bits, scale)
    return _value(x, j, grid.scale)
