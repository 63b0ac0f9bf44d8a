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

Codebook records (issue 8; :mod:`lowbit.functional.codebook`). Each method's primary function
*encodes*: ``x -> (codes, record)``, and its training forward is ``record.decode(codes)`` inside
the family's autograd Function (the surrogate gradients above), so ``decode(encode(x))`` is the
forward bit for bit; there is no second implementation.
  - sign, BNN, BinaryConnect, XNOR/BWN weights and XNOR activations: :class:`IntegerGrid` with
    the level table ``SIGN_LEVELS = [-1, 1]`` (code 0 -> -1, code 1 -> +1, i.e. code = 1{x >= 0})
    and scale 1 (sign, BNN, BinaryConnect) or alpha_c per output channel (XNOR/BWN weights,
    scale (C,)). An integer grid because a binary runtime needs exactly this: the +-1 integers
    (XNOR/popcount) and one float per channel. A two-entry table rather than
    ``LevelRange(-1, 1, skip_zero=True)``: the same values and storage (a progression), but
    decoding is one gather instead of three integer passes over the codes (the activation is the
    large tensor of a training step).
  - ABC-Net weights and activations: :class:`BitPlanes` (alphas (M,), or the betas (N,) of the
    activation bases): bit i of the code is B_i; the forward is ``BitPlanes.decode``, which sums
    in :func:`~lowbit.functional.codebook.plane_table`'s order i = 0..M-1.
  - NaN (activations only; weights are checked finite): NaN has no code. The training forward
    of sign / BNN / XNOR activations passes a NaN input through as NaN (torch's convention for
    activations, see :mod:`lowbit.functional.checks`); everywhere else it is the decoded code,
    and the frozen modules' ``encode`` raises NonFiniteError on NaN. ABC-Net's activation maps
    NaN to the all-minus code, as H_v(NaN) = -1 always did.
  - XNOR's activation scale K (sec. 3.2) depends on the input: the record is the data-independent
    +-1 grid of sign(I), and ``xnor_activation`` returns ``decode(codes) * xnor_scale(I)``,
    exactly that product. A runtime stores the codes and computes K from the input it already
    has (mean_c |I| box-filtered), as the paper does: conv(sign I, sign W) * K * alpha.

Tests: tests/functional/test_binary.py (references, closed-form gradients, properties, and
``test_forward_is_decode_of_encode`` for every method).
"""

from __future__ import annotations

import torch
import torch.nn.functional as TF

from lowbit.functional.checks import check_bits, check_finite, check_nonempty, tensor_arg
from lowbit.functional.codebook import BitPlanes, IntegerGrid
from lowbit.functional.ste import ste

SIGN_LEVELS = torch.tensor([-1, 1])  # code 0 -> -1, code 1 -> +1 (code = 1{x >= 0})


def _grid(scale: torch.Tensor) -> IntegerGrid:
    return IntegerGrid(SIGN_LEVELS, scale, 1)


def sign_encode(x: torch.Tensor) -> tuple[torch.Tensor, IntegerGrid]:
    """Survey eq. (3) as codes: 1{x >= 0} (so sign(0) = sign(-0.0) = +1), and the +-1 grid with
    scale 1 (in ``x``'s dtype and device). NaN gets code 0 (it has no code; see module doc)."""
    x = tensor_arg(x, "x")
    return (x >= 0).long(), _grid(torch.ones((), dtype=x.dtype, device=x.device))


def _keep_nan(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """NaN inputs stay NaN (an activation's convention; NaN has no code)."""
    nan = torch.isnan(x)
    return torch.where(nan, x, q) if bool(nan.any()) else q


def _decoded_sign(x: torch.Tensor) -> torch.Tensor:
    codes, grid = sign_encode(x)
    return _keep_nan(x, grid.decode(codes, check=False))


class _SignBNN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x.abs() <= 1)
        return _decoded_sign(x)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside


def sign(x: torch.Tensor) -> torch.Tensor:
    """Survey eq. (3): decode(sign_encode(x)), identity straight-through gradient."""
    x = tensor_arg(x, "x")
    return ste(x, _decoded_sign(x.detach()))


def bnn_sign(x: torch.Tensor) -> torch.Tensor:
    """Survey eq. (3) forward (decode(sign_encode(x))), BNN's gradient eq. (4)-(5):
    grad * 1_{|x| <= 1}."""
    return _SignBNN.apply(tensor_arg(x, "x"))


def binaryconnect_encode(
    x: torch.Tensor, stochastic: bool = False, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, IntegerGrid]:
    """BinaryConnect eq. (1)-(2) as codes on the +-1 grid (scale 1): 1{x >= 0}, or 1 with
    probability p = clip((x + 1)/2, 0, 1) (eq. 2, hard sigmoid), drawn with ``generator``."""
    x = tensor_arg(x, "x")
    if not stochastic:
        return sign_encode(x)
    p = torch.clamp((x + 1) / 2, 0.0, 1.0)
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return (u < p).long(), _grid(torch.ones((), dtype=x.dtype, device=x.device))


def binaryconnect(
    x: torch.Tensor, stochastic: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """BinaryConnect eq. (1)-(3): decode(binaryconnect_encode(x)): sign(x), or +1 with
    probability clip((x+1)/2, 0, 1) else -1. Gradient straight-through (eq. 3 / Algorithm 1).
    ``generator`` drives the stochastic draw (None: torch's default)."""
    x = tensor_arg(x, "x")
    if not stochastic:
        return sign(x)
    codes, grid = binaryconnect_encode(x.detach(), True, generator)
    return ste(x, grid.decode(codes, check=False))


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


def xnor_encode(w: torch.Tensor) -> tuple[torch.Tensor, IntegerGrid]:
    """XNOR-Net / BWN (survey eq. 12-13) as codes 1{w >= 0} on the +-1 grid with scale
    alpha_c = mean |W| per output channel ((C,); () for a 0-d weight)."""
    w = tensor_arg(w, "w")
    alpha = xnor_alpha(w).reshape(w.shape[:1])
    return (w >= 0).long(), _grid(alpha)


class _XNORWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w):
        codes, grid = xnor_encode(w)
        out = grid.decode(codes, check=False)
        ctx.save_for_backward(w, xnor_alpha(w))
        return out

    @staticmethod
    def backward(ctx, grad):
        w, alpha = ctx.saved_tensors
        s = torch.where(w >= 0, 1.0, -1.0).to(w.dtype)  # sign(w), w finite
        gs = _channels(grad * s)
        mean_gs = gs.mean(dim=1).reshape(alpha.shape)  # (1/n) sum_j g_j sign(w_j)
        return grad * alpha * (w.abs() <= 1) + s * mean_gs


def xnor_weight(w: torch.Tensor) -> torch.Tensor:
    """XNOR-Net/BWN: decode(xnor_encode(W)) = alpha_c sign(W), alpha_c = mean |W| of output
    channel c; gradient through alpha and BNN's STE (module doc)."""
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
    """decode(sign_encode(I)) with BNN's STE; with ``kernel_size``, that times K =
    :func:`xnor_scale` (see the module doc's Deviation and its note on the record)."""
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


def abc_encode(w: torch.Tensor, bases: int) -> tuple[torch.Tensor, BitPlanes]:
    """ABC-Net weights as codes (bit i-1 set where B_i = +1) and BitPlanes of the least-squares
    alphas (M,) (module doc)."""
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
    return codes.reshape(w.shape), BitPlanes(alphas)


def abc_weight(w: torch.Tensor, bases: int) -> torch.Tensor:
    """ABC-Net: decode(abc_encode(w)) = sum_i alpha_i B_i with M = ``bases`` shifted-sign bases
    (module doc); identity STE."""
    codes, planes = abc_encode(w, bases)
    return ste(w, planes.decode(codes, check=False))


def _abc_act_codes(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Bit n set where H_{v_n}(x) = +1, i.e. x + v_n >= 1/2 (clip(z, 0, 1) >= 1/2 iff z >= 1/2)."""
    codes = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)  # N <= 8 bits
    for n, v in enumerate(shifts.tolist()):
        codes.add_((x + v >= 0.5).to(torch.uint8), alpha=1 << n)
    return codes.long()


class _ABCAct(torch.autograd.Function):
    """Forward BitPlanes(betas).decode(codes); backward: H_v as 2 clip(z, 0, 1) - 1, so
    dA/dx = sum_n 2 beta_n 1{0 <= x + v_n <= 1}, dA/dv_n likewise summed, dA/dbeta_n = H_n."""

    @staticmethod
    def forward(ctx, x, shifts, betas):
        codes = _abc_act_codes(x, shifts.detach())
        ctx.save_for_backward(x, shifts, betas)
        return BitPlanes(betas.detach()).decode(codes, check=False)

    @staticmethod
    def backward(ctx, grad):
        x, shifts, betas = ctx.saved_tensors
        gx = torch.zeros_like(grad)
        gv, gb = torch.empty_like(shifts), torch.empty_like(betas)
        total, zero = grad.sum(), grad.new_zeros(())
        for n in range(len(shifts)):
            z = x + shifts[n]
            gz = torch.where((z >= 0) & (z <= 1), grad, zero)  # grad * 1{0 <= z <= 1}
            gx.add_(gz, alpha=2 * float(betas[n]))
            gv[n] = 2 * betas[n] * gz.sum()
            gb[n] = 2 * torch.where(z >= 0.5, grad, zero).sum() - total  # sum grad * H_n
        return gx, gv, gb


def _abc_act_args(x, shifts, betas):
    x = tensor_arg(x, "x")
    shifts = tensor_arg(shifts, "shifts", like=x, table=True)
    betas = tensor_arg(betas, "betas", like=x, table=True)
    if shifts.dim() != 1 or shifts.shape != betas.shape or len(shifts) == 0:
        raise ValueError(f"shifts and betas must be 1-d of one length N >= 1, got "
                         f"{tuple(shifts.shape)} and {tuple(betas.shape)}")
    return x, shifts, betas


def abc_activation_encode(
    x: torch.Tensor, shifts: torch.Tensor, betas: torch.Tensor
) -> tuple[torch.Tensor, BitPlanes]:
    """ABC-Net activations as codes (bit n set where H_{v_n}(x) = +1) and BitPlanes(betas)."""
    x, shifts, betas = _abc_act_args(x, shifts, betas)
    return _abc_act_codes(x, shifts.detach()), BitPlanes(betas.detach())


def abc_activation(x: torch.Tensor, shifts: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """ABC-Net activations: decode(abc_activation_encode(x)) = sum_n betas[n] H_{shifts[n]}(x)
    (module doc), differentiable in x, the shifts and the betas (1-d tensors of the same length
    N >= 1)."""
    return _ABCAct.apply(*_abc_act_args(x, shifts, betas))


def abc_activation_init(bases: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial (shifts, betas): v_n = 1/2 - (n - 1/2)/N, beta_n = 1/N (module doc)."""
    bases = check_bits(bases, 1, 8, what="ABC-Net activation bases")
    n = torch.arange(1, bases + 1, dtype=torch.float32)
    return 0.5 - (n - 0.5) / bases, torch.full((bases,), 1.0 / bases)
