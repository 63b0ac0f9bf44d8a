"""Binary quantizers: sign with straight-through gradients, BinaryConnect, BNN, XNOR-Net / BWN and
ABC-Net's linear combination of binary bases.

Sign, survey eq. (3) (Guo, "A Survey on Methods and Theories of Quantized Neural Networks",
arXiv:1808.04752; shared/papers/guo2018-survey-quantized-neural-networks):
    sign(x) = +1 for x >= 0, -1 otherwise (so sign(0) = sign(-0.0) = +1; NaN stays NaN).
  ``sign``: straight-through, d sign/dx = 1 (Bengio et al. 2013).
  ``bnn_sign``: survey eq. (4)-(5), the "htanh" STE of BNN (Hubara, Courbariaux, Soudry,
  El-Yaniv, Bengio, "Binarized Neural Networks", NIPS 2016, arXiv:1602.02830):
  dE/dx = dE/dx^b * 1_{|x| <= 1}.

BinaryConnect (Courbariaux, Bengio, David, NIPS 2015, arXiv:1511.00363, eq. 1-3; survey eq. 3
and sec. 3.2 "Random Rounding"):
    deterministic: w_b = sign(w);
    stochastic:    w_b = +1 with probability p = hard_sigmoid(w) = clip((w + 1)/2, 0, 1), else -1,
  so E[w_b] = 2p - 1 = clip(w, -1, 1). Backward: straight-through, dw_b/dw = 1. The real-valued
  weights are clipped to [-1, 1] after every update (survey Algorithm 1): :func:`clip_`.

XNOR-Net / BWN (Rastegari, Ordonez, Redmon, Farhadi, ECCV 2016, arXiv:1603.05279; survey eq. 7,
12-13 and Algorithm 2):
    W~ = alpha sign(W), alpha = ||W||_l1 / n = mean |W| per output channel (dim 0).
  Backward: alpha is differentiated as the function of W it is (the paper's 1/n term) and sign
  with BNN's STE: for channel c with n weights,
    dE/dW_i = alpha_c dE/dW~_i 1_{|W_i| <= 1} + sign(W_i)/n sum_j dE/dW~_j sign(W_j).
  Deviation: the paper prints this as dE/dW~_i (1/n + alpha dsign/dW_i), dropping the sum over
  the channel that the chain rule through alpha gives; we keep the full derivative. The survey's
  eq. (7) states plain STE (dE/dx = dE/dx^b) instead.
  Activations (XNOR-Net sec. 3.2): sign(I) with BNN's STE; optional scale K = A * k, where
  A = mean over channels of |I| and k a (kh x kw) averaging filter with the next convolution's
  kernel size, stride and padding (:func:`xnor_scale`).
  Deviation: the paper multiplies the *convolution output* by K alpha. An activation module can
  only scale its own output, so :func:`xnor_activation` returns sign(I) * K, which needs K at
  the input resolution (stride 1, padding (k - 1)/2) and equals the paper's product only where
  K is constant over a receptive field. K is differentiated by autograd (no STE needed).

ABC-Net (Lin, Zhao, Pan, "Towards Accurate Binary Convolutional Neural Network", NIPS 2017,
arXiv:1711.11294, sec. 3.1; the paper is not in shared/papers, and the survey's "ABC-Net"
paragraph describes Tang et al. 2017 instead, so this follows the issue's statement of it):
    W ~ sum_{i=1..M} alpha_i B_i,  B_i = sign(W - mean(W) + u_i std(W)),
    u_i = -1 + (i - 1) 2/(M - 1),  alpha = argmin ||vec(W) - B alpha||^2 (least squares).
  std is the population std (correction 0); the normal equations are solved in float64 with a
  pseudo-inverse, so rank-deficient B (e.g. constant W) has a defined answer.
  Deviation: M = 1 (where u_i is undefined) uses u_1 = 0. alpha is a statistic recomputed every
  forward pass (no gradient). Backward: identity STE, dW~/dW = 1.
  Activations (ABC-Net sec. 3.3, as remembered: that paper is not in shared/papers):
    h_v(x) = clip(x + v, 0, 1),  H_v(R) = 2 1{h_v(R) >= 0.5} - 1,
    A = sum_{n=1..N} beta_n H_{v_n}(R),
  with shifts v_n and scales beta_n learned by back-propagation. Backward: H_v is differentiated
  as its relaxation 2 h_v(R) - 1, i.e. dH_v/dR = dH_v/dv = 2 1{0 <= R + v <= 1};
  dA/dbeta_n = H_{v_n}(R). Our choices (the paper leaves them to training): thresholds start
  evenly inside [0, 1], v_n = 1/2 - (n - 1/2)/N, and beta_n = 1/N, so A starts as a symmetric
  N-step staircase in [-1, 1] over R in [0, 1].

Tests: tests/functional/test_binary.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as TF

from lowbit.functional.checks import check_bits, check_finite, check_nonempty, tensor_arg


def _sign(x: torch.Tensor, finite: bool = False) -> torch.Tensor:
    """+1 for x >= 0 (including -0.0), -1 for x < 0, NaN for NaN; same dtype as ``x``.

    ``finite=True`` skips the NaN pass for tensors already checked (weights)."""
    one = torch.ones((), dtype=x.dtype, device=x.device)
    if finite:
        return torch.where(x >= 0, one, -one)
    return torch.where(x >= 0, one, torch.where(x < 0, -one, x))


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return _sign(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _SignBNN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x.abs() <= 1)
        return _sign(x)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside


def sign(x: torch.Tensor) -> torch.Tensor:
    """Survey eq. (3) forward (sign(0) = +1), identity straight-through gradient."""
    return _SignSTE.apply(tensor_arg(x, "x"))


def bnn_sign(x: torch.Tensor) -> torch.Tensor:
    """Survey eq. (3) forward, BNN's gradient eq. (4)-(5): grad * 1_{|x| <= 1}."""
    return _SignBNN.apply(tensor_arg(x, "x"))


class _Stochastic(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, generator):
        p = torch.clamp((x + 1) / 2, 0.0, 1.0)
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return torch.where(u < p, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def binaryconnect(
    x: torch.Tensor, stochastic: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """BinaryConnect eq. (1)-(3): sign(x), or +1 with probability clip((x+1)/2, 0, 1) else -1.

    Gradient straight-through. ``generator`` drives the stochastic draw (None: torch's default).
    """
    x = tensor_arg(x, "x")
    if stochastic:
        return _Stochastic.apply(x, generator)
    return _SignSTE.apply(x)


@torch.no_grad()
def clip_(w: torch.Tensor) -> torch.Tensor:
    """BinaryConnect's update rule: clip the real-valued weights to [-1, 1] in place."""
    return tensor_arg(w, "w").clamp_(-1.0, 1.0)


def _channels(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0] if w.dim() else 1, -1)


def xnor_alpha(w: torch.Tensor) -> torch.Tensor:
    """alpha_c = mean |W| over output channel c (dim 0), shaped to broadcast against ``w``."""
    w = tensor_arg(w, "w")
    shape = [-1] + [1] * (w.dim() - 1) if w.dim() else []
    return _channels(w).abs().mean(dim=1).reshape(shape)


class _XNORWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w):
        alpha = xnor_alpha(w)
        pos = w >= 0
        ctx.save_for_backward(w, alpha)
        return torch.where(pos, alpha, -alpha)

    @staticmethod
    def backward(ctx, grad):
        w, alpha = ctx.saved_tensors
        s = _sign(w, finite=True)
        gs = _channels(grad * s)
        mean_gs = gs.mean(dim=1).reshape(alpha.shape)  # (1/n) sum_j g_j sign(w_j)
        return grad * alpha * (w.abs() <= 1) + s * mean_gs


def xnor_weight(w: torch.Tensor) -> torch.Tensor:
    """XNOR-Net/BWN: alpha_c sign(W), alpha_c = mean |W| of output channel c (see module doc)."""
    w = tensor_arg(w, "w")
    check_nonempty(w, "weight")
    check_finite(w, "weight")
    return _XNORWeight.apply(w)


def xnor_scale(
    x: torch.Tensor, kernel_size: int, stride: int = 1, padding: int = 0
) -> torch.Tensor:
    """XNOR-Net sec. 3.2: K = A * k, A = mean_c |I|, k = 1/(kh kw) box filter; (N, 1, H', W').

    For a 2-D input (a fully connected layer) the filter spans the whole vector: K = mean |I| per
    sample, shaped (N, 1). Zero padding counts in the average, as a convolution with k does.
    """
    x = tensor_arg(x, "x")
    if x.dim() == 2:
        return x.abs().mean(dim=1, keepdim=True)
    if x.dim() != 4:
        raise ValueError(f"xnor_scale needs a (N, C, H, W) or (N, F) input, got {tuple(x.shape)}")
    a = x.abs().mean(dim=1, keepdim=True)
    return TF.avg_pool2d(a, kernel_size, stride, padding, count_include_pad=True)


def xnor_activation(
    x: torch.Tensor, kernel_size: int | None = None, stride: int = 1, padding: int = 0
) -> torch.Tensor:
    """sign(I) with BNN's STE; with ``kernel_size``, sign(I) * K (see module doc's Deviation)."""
    x = tensor_arg(x, "x")
    b = bnn_sign(x)
    if kernel_size is None or x.numel() == 0:
        return b
    k = xnor_scale(x, kernel_size, stride, padding)
    if x.dim() == 4 and k.shape[-2:] != x.shape[-2:]:
        raise ValueError(
            f"XNOR scale map {tuple(k.shape[-2:])} does not match the input {tuple(x.shape[-2:])}"
            "; scaling the activation needs stride 1 and padding (kernel_size - 1) / 2"
        )
    return b * k


def abc_shifts(bases: int) -> list[float]:
    """u_i = -1 + (i - 1) 2/(M - 1), i = 1..M (u_1 = 0 for M = 1)."""
    if bases == 1:
        return [0.0]
    return [-1.0 + i * 2.0 / (bases - 1) for i in range(bases)]


def abc_codes_alphas(w: torch.Tensor, bases: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (bit i-1 set where B_i = +1) and the least-squares alphas (M,) of ABC-Net."""
    bases = check_bits(bases, 1, 8, what="ABC-Net bases")
    check_nonempty(tensor_arg(w, "w"), "weight")
    check_finite(w, "weight")
    w = w.detach()
    flat = w.reshape(-1)
    centred = flat - flat.mean()
    std = flat.std(correction=0)
    pos = torch.stack([centred + u * std >= 0 for u in abc_shifts(bases)])  # (M, n): B_i = +1
    b = pos.to(w.dtype) * 2 - 1
    gram = (b @ b.T).double()
    rhs = (b @ flat).double()
    alphas = (torch.linalg.pinv(gram) @ rhs).to(w.dtype)
    codes = torch.zeros_like(flat, dtype=torch.int64)
    for i in range(bases):
        codes |= pos[i].long() << i
    codes = codes.reshape(w.shape)
    return codes, alphas


def abc_levels(alphas: torch.Tensor) -> torch.Tensor:
    """The 2^M level values: level[c] = sum_i alpha_i (+1 if bit i-1 of c is set else -1)."""
    alphas = tensor_arg(alphas, "alphas", table=True)
    m = alphas.shape[0]
    c = torch.arange(2**m, device=alphas.device)
    signs = ((c[:, None] >> torch.arange(m, device=alphas.device)) & 1).to(alphas.dtype) * 2 - 1
    return (signs * alphas).sum(dim=1)


class _Lookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, codes, levels):
        return levels[codes]

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def abc_weight(w: torch.Tensor, bases: int) -> torch.Tensor:
    """ABC-Net: sum_i alpha_i B_i with M = ``bases`` shifted-sign bases (module doc); STE."""
    codes, alphas = abc_codes_alphas(w, bases)
    return _Lookup.apply(w, codes, abc_levels(alphas))


class _ShiftedSign(torch.autograd.Function):
    """H(z) = 2 1{z >= 1/2} - 1 for z = R + v (clip(z, 0, 1) >= 1/2 iff z >= 1/2); backward
    2 1{0 <= z <= 1}, the derivative of 2 clip(z, 0, 1) - 1."""

    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return torch.where(z >= 0.5, 1.0, -1.0).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        return grad * 2 * ((z >= 0) & (z <= 1)).to(grad.dtype)


def abc_activation(x: torch.Tensor, shifts: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """ABC-Net activations: sum_n betas[n] H_{shifts[n]}(x) (module doc), differentiable in x,
    the shifts and the betas (1-d tensors of the same length N >= 1)."""
    x = tensor_arg(x, "x")
    shifts = tensor_arg(shifts, "shifts", like=x, table=True)
    betas = tensor_arg(betas, "betas", like=x, table=True)
    if shifts.dim() != 1 or shifts.shape != betas.shape or len(shifts) == 0:
        raise ValueError(f"shifts and betas must be 1-d of one length N >= 1, got "
                         f"{tuple(shifts.shape)} and {tuple(betas.shape)}")
    view = (-1,) + (1,) * x.dim()
    h = _ShiftedSign.apply(x.unsqueeze(0) + shifts.view(view))
    return (betas.view(view) * h).sum(dim=0)


def abc_activation_init(bases: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial (shifts, betas): v_n = 1/2 - (n - 1/2)/N, beta_n = 1/N (module doc)."""
    bases = check_bits(bases, 1, 8, what="ABC-Net activation bases")
    n = torch.arange(1, bases + 1, dtype=torch.float32)
    return 0.5 - (n - 0.5) / bases, torch.full((bases,), 1.0 / bases)
