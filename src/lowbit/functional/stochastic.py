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

Tests: tests/functional/test_stochastic.py.
"""

from __future__ import annotations

import torch

from lowbit.functional.checks import check_bits, check_finite, check_nonempty, tensor_arg


def finite_absmax(w: torch.Tensor, what: str = "weight") -> torch.Tensor:
    """max|w| (detached), raising EmptyTensorError / NonFiniteError like check_finite, but
    with one reduction and a scalar check instead of a full isfinite pass (NaN and Inf both
    make the max non-finite)."""
    m = check_nonempty(tensor_arg(w, "w"), what).detach().abs().max()
    if not bool(torch.isfinite(m)):
        check_finite(w, what)
    return m


class _GridRound(torch.autograd.Function):
    """step * clamp(r(x / step + offset), qmin, qmax), r = ceil (eq. 6) or floor (stochastic)."""

    @staticmethod
    def forward(ctx, x, step, offset, stochastic, qmin, qmax):
        z = x / step + offset
        k = torch.floor(z) if stochastic else torch.ceil(z)
        if qmin is not None or qmax is not None:
            k = torch.clamp(k, qmin, qmax)
        return k * step

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None, None, None


def _check_step(step: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """``step`` as a tensor of ``x``'s dtype; ValueError unless every entry is finite and > 0."""
    x = tensor_arg(x, "x")
    s = tensor_arg(step, "step", like=x, table=True).to(dtype=x.dtype, device=x.device)
    if not bool((s > 0).all()) or not bool(torch.isfinite(s).all()):
        raise ValueError(f"step must be finite and > 0, got {step!r}")
    return s


def fixed_point_round(
    x: torch.Tensor,
    step: torch.Tensor | float,
    qmin: float | None = None,
    qmax: float | None = None,
) -> torch.Tensor:
    """Survey eq. 6: nearest multiple k step of ``step``, ties down, k clamped to [qmin, qmax]
    when given (Gupta's saturation); straight-through gradient (also where saturated)."""
    s = _check_step(step, x)
    if x.numel() == 0:
        return x.clone()
    return _GridRound.apply(x, s, -0.5, False, qmin, qmax)


def stochastic_round(
    x: torch.Tensor,
    step: torch.Tensor | float,
    generator: torch.Generator | None = None,
    qmin: float | None = None,
    qmax: float | None = None,
) -> torch.Tensor:
    """Gupta et al. 2015 stochastic rounding to multiples of ``step``: E[q] = x (before the
    optional saturation of k to [qmin, qmax]); straight-through gradient."""
    s = _check_step(step, x)
    if x.numel() == 0:
        return x.clone()
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return _GridRound.apply(x, s, u, True, qmin, qmax)


def fixed_point_codes(x: torch.Tensor, step: torch.Tensor | float, qmin: int, qmax: int):
    """The integer k in [qmin, qmax] (int64) with :func:`fixed_point_round` = k step."""
    s = _check_step(step, x)
    return torch.clamp(torch.ceil(x / s - 0.5), qmin, qmax).long()


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


class _WuRound(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sigma):
        return torch.clamp(torch.round(x / sigma) * sigma, -1.0 + sigma, 1.0 - sigma)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def wu_round(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Survey eq. 10 (WAGE): clip(sigma round(x/sigma), -1+sigma, 1-sigma), sigma = 2^(1-k)."""
    sigma = 2.0 ** (1 - check_bits(bits, 2, 16))
    if tensor_arg(x, "x").numel() == 0:
        return x.clone()
    return _WuRound.apply(x, sigma)


def wu_codes(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Code j + 2^(k-1) - 1 in 0..2^k - 2 of :func:`wu_round` (level j sigma)."""
    bits, x = check_bits(bits, 2, 16), tensor_arg(x, "x")
    sigma, top = 2.0 ** (1 - bits), 2 ** (bits - 1) - 1
    return torch.clamp(torch.round(x / sigma), -top, top).long() + top
