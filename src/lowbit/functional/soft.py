"""The soft and hard quantization functions of J. Yang, X. Shen, J. Xing, X. Tian, H. Li, B. Deng,
J. Huang, X.-S. Hua, "Quantization Networks", CVPR 2019, arXiv:1911.09464
(shared/papers/yang2019-quantization-networks.txt).

Target level set Y = levels (ascending, n + 1 values), s_i = Y_{i+1} - Y_i (i = 1..n), offset o.

Soft, eq. (6), training:  y = alpha * (sum_i s_i * sigmoid(T (beta x - b_i)) - o)
Hard, eq. (11), inference: y = alpha * (sum_i s_i * A(beta x - b_i) - o),  A(z) = 1 if z >= 0 else 0
  (eq. 1: the unit step is 1 at 0, so beta x == b_i takes the upper level).

Offset: we use o = -Y_1 = -levels[0]. Sec. 3.1 defines o = (1/2) sum_i s_i = (Y_max - Y_min) / 2,
  which equals -Y_1 for every symmetric set the paper uses ({-1, 1}: "s = 2, o = 1"; {-1, 0, 1};
  {-4, -2, -1, 0, 1, 2, 4}; ...), and sec. 4.1 sets o = 0 for activations ({0, 1, 2, 3}), which is
  -Y_1 again. One rule covers both; with sorted biases the hard output is exactly alpha * Y_k.

Gradients, eq. (7)-(10), with sigma_i = sigmoid(T (beta x - b_i)):
    dy/dx     = alpha T beta sum_i s_i sigma_i (1 - sigma_i)           (7)
    dy/dalpha = y / alpha = sum_i s_i sigma_i - o                      (8)
    dy/dbeta  = alpha T x sum_i s_i sigma_i (1 - sigma_i)              (9)
    dy/db_i   = -alpha T s_i sigma_i (1 - sigma_i)                     (10)
  Deviation (reading): the paper writes these as (T beta / (alpha s_i)) g_i (alpha s_i - g_i) and
  defines g_i = sigma_i; they are the derivatives of eq. (6) only with g_i = alpha s_i sigma_i,
  which is what we implement (the exact derivatives of eq. 6). Eq. (8) is evaluated as
  sum_i s_i sigma_i - o, which is y / alpha without dividing by alpha (defined at alpha = 0).
  ``grad_temperature`` (default: T) replaces T in the backward only: sec. 4.1, "freezing T = 1 for
  the back-propagation of binary quantization achieves better performance". Where it replaces T
  is a reading: the sentence does not say. ``grad_keeps_t=False`` replaces every T of eq.
  (7), (9), (10) (the sigmoids and the chain-rule factor T); ``grad_keeps_t=True`` replaces it in
  the sigmoids only and keeps the factor T, dy/dx = alpha T beta sum_i s_i h_i (1 - h_i) with
  h_i = sigmoid(T_grad (beta x - b_i)): the derivative at T_grad = 1 times T, as the authors'
  reference code computes it (github.com/aliyun/alibabacloud-quantization-networks, anybit.py,
  ``updateQuaGradWeight``: "set T = 1 when train binary model", ``y_grad = self.backward(x, 1,
  ...).mul(T)``, the same y_grad also in the beta gradient). SoftWeight's 1-bit default is the
  reference reading (:mod:`lowbit.quantizers.soft`).

Records (:func:`hard_encode`, :func:`hard_grid`): eq. (11) is code k -> alpha * Y_k, an
  IntegerGrid of the integer level set Y times alpha (every set of table 2 is integer), or a
  Table for a fractional ``levels=``; :func:`hard_quantize` is its decode.

Hard function: no gradient w.r.t. x or the biases (the step's derivative is 0 almost everywhere);
  d/dalpha flows through the level table alpha * Y. The biases must be ascending (k-means gives
  ascending biases and the paper freezes them), so that code k = #{i : beta x >= b_i} indexes Y.

Initialisation (sec. 4.1), :func:`init_soft_params`: beta = 5p / (4q), p = max |Y|, q = max |x|
  (weights, or activations of 1000 samples); alpha = 1 / beta. Biases: k-means of x into n + 1
  clusters, centres c_1 < ... < c_{n+1}, b_i = (c_i + c_{i+1}) / 2; for binary weights b = 0.
  Deviation (reading): the biases are compared with beta x in eq. (6), so we store
  b_i = beta (c_i + c_{i+1}) / 2: the steps then sit at the cluster midpoints of x, as the paper
  intends (unscaled midpoints would put every step near x = 0 once beta is large).
  :func:`fit_alpha` (an option, the default of :func:`lowbit.train.qnet.fit_qnet` for
  activations): alpha = sum x Y_k / sum Y_k^2, the least-squares scale of the hard levels to
  the values, instead of 1 / beta (issue 12 item 3: with k-means steps on ReLU outputs,
  1 / beta blows small activations up ~3x and the network starts at chance).

Level sets (table 2 notation), :func:`levels_for`: see WEIGHT_LEVELS and ACT_LEVELS below.

Tests: tests/functional/test_soft.py (numpy reference of eq. 6/11, eq. 7-10 vs x.grad,
gradcheck, soft -> hard as T grows, k-means and init, test_hard_encode_records);
tests/kernels/test_fused_kernels.py (the fused float32 CPU path of eq. 6-10 == the torch
path == float64).
"""

from __future__ import annotations

import functools
import math

import torch

from lowbit.errors import BitsError
from lowbit.functional.checks import tensor_arg
from lowbit.functional.codebook import IntegerGrid, LevelRange, Table, decode_lookup
from lowbit.kernels import fused as kernels

# Weight level sets, by the paper's table 2 column names (sec. 4.1). "4" is ours: the paper has no
# 4-bit column; {-7..7} is the symmetric integer set that fits 4 bits, as "5" = {-15..15} fits 5.
WEIGHT_LEVELS: dict[str, tuple[float, ...]] = {
    "1": (-1.0, 1.0),
    "2": (-1.0, 0.0, 1.0),
    "3(±2)": (-2.0, -1.0, 0.0, 1.0, 2.0),
    "3(±4)": (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0),
    "4": tuple(float(v) for v in range(-7, 8)),
    "5": tuple(float(v) for v in range(-15, 16)),
}
# The set each bit width takes by default (3 bits -> the paper's best 3-bit set, "3(±4)").
DEFAULT_WEIGHT_LEVELS: dict[int, str] = {1: "1", 2: "2", 3: "3(±4)", 4: "4", 5: "5"}
# Activations (sec. 4.1): non-negative integers {0, 1} (1 bit), {0, 1, 2, 3} (2 bits), ...
ACT_LEVELS: dict[str, tuple[float, ...]] = {
    str(b): tuple(float(v) for v in range(2**b)) for b in range(1, 6)
}


def levels_for(name_or_bits: int | str, signed: bool = True) -> tuple[float, ...]:
    """The target level set Y: weights (``signed``) or activations (non-negative).

    ``name_or_bits``: a bit width 1..5 or a table-2 name ("1", "2", "3(±2)", "3(±4)", "5";
    "3(+-2)" is accepted for "3(±2)").
    """
    table = WEIGHT_LEVELS if signed else ACT_LEVELS
    if isinstance(name_or_bits, bool):
        raise BitsError(f"level set must be a bit width or a name, got {name_or_bits!r}")
    if isinstance(name_or_bits, int):
        key = DEFAULT_WEIGHT_LEVELS.get(name_or_bits, "?") if signed else str(name_or_bits)
    else:
        key = str(name_or_bits).replace("+-", "±").replace(" ", "")
    if key not in table:
        known = ", ".join(table)
        raise BitsError(f"no {'weight' if signed else 'activation'} level set {name_or_bits!r}; "
                        f"known: {known} (or bits {', '.join(table if not signed else '12345')})")
    return table[key]


def _as_scalar(v: torch.Tensor | float, like: torch.Tensor, what: str) -> torch.Tensor:
    if torch.is_tensor(v):
        return v.to(like.dtype)
    return tensor_arg(v, what, like=like, table=True).to(like.dtype)


class _SoftQuantize(torch.autograd.Function):
    """Eq. (6) forward and the exact eq. (7)-(10) backward.

    float32 CPU tensors, with or without ``grad_temperature``: fused numba kernels
    (:func:`lowbit.kernels.fused.soft_forward`, ``soft_backward``). The forward computes eq.
    (6) in one pass and keeps only x; the backward recomputes the sigmoids (at T, and at the
    backward temperature if it differs) in one pass over (g, x) giving gx and the float64 sums
    of eq. (8)-(10). Same formulas; they differ from this torch path by float32 rounding only
    (our exp, see kernels; 1 - sigma_i taken as exp(b - u) sigma_i, without the cancellation of
    acc - sum_i s_i sigma_i^2 below). Otherwise (float64, GPU, no numba): this torch loop.
    """

    @staticmethod
    def forward(ctx, x, biases, alpha, beta, steps, offset, t, t_grad, keep_t):
        ctx.steps, ctx.offset, ctx.same_t = steps, offset, t_grad is None
        tg = t if t_grad is None else t_grad
        ctx.tc = t if keep_t else tg  # the chain-rule factor T of eq. (7), (9), (10)
        ctx.fused = kernels.fusable(x, biases, alpha, beta, t, tg)
        if ctx.fused:  # one pass; only x is kept, the backward recomputes the sigmoids
            ctx.save_for_backward(x, biases, alpha, beta, t, tg)
            return kernels.soft_forward(x, beta * t, biases * t, steps, offset, alpha)
        # sigma_i = sigmoid(T beta x - T b_i);
        # sum_i s_i sigma_i (1 - sigma_i) = acc - sum_i s_i sigma_i^2
        ut, bt = x * (beta * t), biases * t
        acc, sq = torch.zeros_like(x), torch.zeros_like(x)
        for i, s in enumerate(steps):
            sig = torch.sub(ut, bt[i]).sigmoid_()
            acc.add_(sig, alpha=s)
            if t_grad is None:
                sq.addcmul_(sig, sig, value=s)
            else:
                sig = torch.sub(x * (beta * t_grad), biases[i] * t_grad).sigmoid_()
                sq.addcmul_(sig, sig, value=s).sub_(sig, alpha=s)
        dsum = acc - sq if t_grad is None else sq.neg_()
        inner = acc.sub_(offset)
        ctx.tg = tg
        ctx.save_for_backward(x, biases, alpha, beta, dsum,
                              inner if ctx.needs_input_grad[2] else None)
        return inner * alpha

    @staticmethod
    def backward(ctx, g):
        if ctx.fused:
            return _fused_backward(ctx, g)
        x, biases, alpha, beta, dsum, inner = ctx.saved_tensors
        tg, tc = ctx.tg, ctx.tc
        need = ctx.needs_input_grad
        gd = g * dsum
        gx = gd * (alpha * tc * beta) if need[0] else None
        galpha = (g * inner).sum().reshape(alpha.shape) if need[2] else None
        gbeta = ((gd * x).sum() * (alpha * tc)).reshape(beta.shape) if need[3] else None
        gb = None
        if need[1]:
            u = beta * x
            parts = []
            for i, s in enumerate(ctx.steps):
                sig = torch.sigmoid((u - biases[i]) * tg)
                parts.append((g * sig * (1.0 - sig)).sum() * (-alpha * tc * s))
            gb = torch.stack(parts).reshape(biases.shape)
        return gx, gb, galpha, gbeta, None, None, None, None, None


def _fused_backward(ctx, g):
    """Eq. (7)-(10) from one numba pass over (g, x): gx and the float64 sums of eq. (8)-(10)."""
    x, biases, alpha, beta, t, tg = ctx.saved_tensors
    need = ctx.needs_input_grad
    grad_t = None if ctx.same_t else (beta * tg, biases * tg)
    tc = ctx.tc  # T (grad_keeps_t) or the backward temperature
    gx, sums = kernels.soft_backward(g, x, beta * t, biases * t, grad_t, ctx.steps, ctx.offset,
                                     alpha * tc * beta, need_b=need[1])
    at = float(alpha * tc)

    def grad(v, like):
        return torch.as_tensor(v, dtype=like.dtype).reshape(like.shape)

    gb = grad([-at * s * v for s, v in zip(ctx.steps, sums[2:], strict=True)], biases)
    return (gx if need[0] else None, gb if need[1] else None,
            grad(sums[0], alpha) if need[2] else None,
            grad(sums[1] * at, beta) if need[3] else None, None, None, None, None, None)


def _steps_offset(levels: torch.Tensor) -> tuple[list[float], float]:
    lv = [float(v) for v in levels.detach().reshape(-1).tolist()]
    if len(lv) < 2 or any(b <= a for a, b in zip(lv, lv[1:], strict=False)):
        raise ValueError(f"levels must hold >= 2 strictly ascending values, got {lv}")
    return [b - a for a, b in zip(lv, lv[1:], strict=False)], -lv[0]


def soft_quantize(
    x: torch.Tensor,
    levels: torch.Tensor,
    biases: torch.Tensor,
    temperature: torch.Tensor | float,
    alpha: torch.Tensor | float = 1.0,
    beta: torch.Tensor | float = 1.0,
    grad_temperature: torch.Tensor | float | None = None,
    grad_keeps_t: bool = False,
) -> torch.Tensor:
    """Eq. (6): alpha * (sum_i s_i sigmoid(T (beta x - b_i)) - o), o = -levels[0].

    ``levels`` (n + 1,) ascending, ``biases`` (n,); ``alpha``, ``beta``, ``temperature``
    scalars (floats or 0-d tensors; tensors that require grad get eq. 8/9 gradients, biases
    eq. 10). Backward: exact derivatives, eq. (7)-(10) (see the module doc); with
    ``grad_temperature`` the sigmoids of the backward use it, and the chain-rule factor is T
    (``grad_keeps_t``, the reference code's binary backward) or ``grad_temperature``.
    """
    x, levels, biases, steps, offset = _check_args(x, levels, biases)
    if x.numel() == 0:
        return x.clone()
    a, b, t = (_as_scalar(v, x, name) for v, name in
               ((alpha, "alpha"), (beta, "beta"), (temperature, "temperature")))
    tg = None if grad_temperature is None else _as_scalar(grad_temperature, x, "grad_temperature")
    return _SoftQuantize.apply(x, biases.to(x.dtype).reshape(-1), a, b, steps, offset, t, tg,
                               bool(grad_keeps_t))


def _hard_codes(x: torch.Tensor, biases: torch.Tensor, beta: torch.Tensor | float = 1.0):
    """k = #{i : beta x - b_i >= 0} in 0..n (int64): the index of x's level in eq. (11)."""
    b = biases.detach().to(x.dtype).reshape(-1)
    if b.numel() > 1 and not bool((b[1:] >= b[:-1]).all()):
        raise ValueError("hard_quantize needs ascending biases (k-means gives them; the paper "
                         "freezes them after initialisation)")
    u = _as_scalar(beta, x, "beta").detach() * x.detach()
    if b.numel() > 16:
        return torch.bucketize(u, b, right=True)
    k = torch.zeros(u.shape, dtype=torch.uint8, device=u.device)  # faster than bucketize
    for bi in b.tolist():
        k.add_(u >= bi)
    return k.long()


def hard_grid(levels: torch.Tensor, alpha: torch.Tensor | float = 1.0, bits: int | None = None
              ) -> IntegerGrid | Table:
    """The codebook of eq. (11): code k -> alpha * (sum_{i <= k} s_i - o) = alpha * Y_k.

    Integer level sets (every set of the paper, table 2, and the activations' {0..2^b - 1}):
    :class:`IntegerGrid` of the integers Y (the offset o = -Y_1 applied: Y = cumsum(s) - o; a
    :class:`LevelRange` when consecutive) times the scale alpha, so a runtime multiplies
    integers and scales once. Other sets (``levels=`` with fractions): a :class:`Table` of
    alpha * (cumsum(s) - o), the values as eq. (11) sums them. ``bits`` default: the fewest
    holding n + 1 codes. ``alpha`` may require grad (the hard forward's eq. 8 gradient).
    """
    levels = tensor_arg(levels, "levels", table=True)
    lv = levels.detach().reshape(-1)
    ints = _integer_levels(tuple(lv.tolist()))
    bits = max(1, math.ceil(math.log2(lv.numel()))) if bits is None else bits
    a = _as_scalar(alpha, lv, "alpha").reshape(())
    if ints is not None:
        return IntegerGrid(ints, a, bits)
    steps, offset = _steps_offset(levels)
    cum = torch.cat([lv.new_zeros(1), torch.cumsum(lv.new_tensor(steps), 0)]) - offset
    return Table(cum * a, bits)


@functools.lru_cache(maxsize=64)
def _integer_levels(levels: tuple[float, ...]) -> LevelRange | torch.Tensor | None:
    """Y as a LevelRange (consecutive integers) or an int64 tensor (other integers), None if
    a level is not an integer (cached: the level set of a layer never changes)."""
    _steps_offset(torch.tensor(levels))  # >= 2 strictly ascending values
    if not all(float(v).is_integer() and abs(v) < 2**53 for v in levels):
        return None
    y = [int(v) for v in levels]
    if all(b - a == 1 for a, b in zip(y, y[1:], strict=False)):
        return LevelRange(y[0], y[-1])
    return torch.tensor(y, dtype=torch.long)


def _check_args(x, levels, biases):
    """x, levels, biases, steps, offset, checked: ascending levels, one bias per step."""
    x = tensor_arg(x, "x")
    levels = tensor_arg(levels, "levels", like=x, table=True)
    biases = tensor_arg(biases, "biases", like=x, table=True)
    steps, offset = _steps_offset(levels)
    if biases.numel() != len(steps):
        raise ValueError(f"{len(steps) + 1} levels need {len(steps)} biases, got {biases.numel()}")
    return x, levels, biases, steps, offset


def hard_encode(
    x: torch.Tensor,
    levels: torch.Tensor,
    biases: torch.Tensor,
    alpha: torch.Tensor | float = 1.0,
    beta: torch.Tensor | float = 1.0,
    bits: int | None = None,
) -> tuple[torch.Tensor, IntegerGrid | Table]:
    """Eq. (11) as (codes, codebook): k = #{i : beta x - b_i >= 0} (A(0) = 1; ascending
    biases) and :func:`hard_grid` (alpha detached: what a file stores)."""
    x, levels, biases, _, _ = _check_args(x, levels, biases)
    alpha = alpha.detach() if torch.is_tensor(alpha) else alpha
    return _hard_codes(x, biases, beta), hard_grid(levels.to(x.dtype), alpha, bits)


def hard_quantize(
    x: torch.Tensor,
    levels: torch.Tensor,
    biases: torch.Tensor,
    alpha: torch.Tensor | float = 1.0,
    beta: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """Eq. (11): alpha * (sum_i s_i A(beta x - b_i) - o), A(0) = 1: decode(:func:`hard_encode`).

    No gradient to x or the biases (the step's derivative is 0 almost everywhere); eq. (8)'s
    d/dalpha = Y_k flows through the decoded level table alpha * Y.
    """
    x, levels, biases, _, _ = _check_args(x, levels, biases)
    return decode_lookup(_hard_codes(x, biases, beta), hard_grid(levels.to(x.dtype), alpha))


def kmeans_1d(x: torch.Tensor, k: int, iters: int = 100) -> torch.Tensor:
    """Lloyd's k-means on the values of ``x`` (float64): ``k`` ascending centres.

    Deterministic: starts from the (j + 0.5) / k quantiles; an empty cluster keeps its centre.
    Runs on sorted values with prefix sums, so each iteration costs O(k log N).
    """
    v = torch.sort(tensor_arg(x, "x").detach().reshape(-1).to(torch.float64)).values
    if v.numel() == 0:
        raise ValueError("k-means needs at least one value")
    csum = torch.cat([v.new_zeros(1), torch.cumsum(v, 0)])
    n = v.numel()
    centres = torch.quantile(v, (torch.arange(k, dtype=torch.float64) + 0.5) / k)
    for _ in range(iters):
        cut = torch.searchsorted(v, (centres[1:] + centres[:-1]) / 2)
        edges = torch.cat([cut.new_zeros(1), cut, cut.new_full((1,), n)])
        count = (edges[1:] - edges[:-1]).to(torch.float64)
        total = csum[edges[1:]] - csum[edges[:-1]]
        new = torch.where(count > 0, total / count.clamp_min(1.0), centres)
        new = torch.sort(new).values
        if torch.equal(new, centres):
            break
        centres = new
    return centres


def init_soft_params(
    x: torch.Tensor, levels: torch.Tensor, q: float | None = None
) -> tuple[torch.Tensor, float, float]:
    """Sec. 4.1 initialisation: (biases (n,), alpha, beta) for the values ``x``.

    beta = 5p / (4q), p = max |levels|, q = max |x| (or the given ``q``; 1 if 0); alpha = 1/beta.
    Biases: beta * midpoints of k-means centres (n + 1 clusters); 0 for the binary set {-1, 1}.
    """
    x = tensor_arg(x, "x")
    levels = tensor_arg(levels, "levels", like=x, table=True)
    lv = levels.detach().reshape(-1).to(torch.float64)
    p = float(lv.abs().max())
    q = float(x.detach().abs().max()) if q is None else float(q)
    q = q if q > 0 else 1.0
    beta = 5.0 * p / (4.0 * q)
    n = lv.numel() - 1
    if n == 1 and float(lv[0]) == -float(lv[1]):
        return torch.zeros(1, dtype=levels.dtype), 1.0 / beta, beta
    c = kmeans_1d(x, n + 1)
    biases = beta * (c[1:] + c[:-1]) / 2
    return biases.to(levels.dtype), 1.0 / beta, beta


def fit_alpha(x: torch.Tensor, levels: torch.Tensor, biases: torch.Tensor,
              beta: torch.Tensor | float) -> float:
    """The output scale alpha minimising sum (x - alpha Y_k(x))^2 over the values ``x``, with
    k(x) the eq. (11) code at these ``biases`` and ``beta``: alpha = sum x Y_k / sum Y_k^2
    (1 / beta if every value lands on the level 0).

    Not the paper's alpha = 1 / beta (sec. 4.1), which keeps the magnitude only for a uniform
    quantizer of step 1 / beta; with k-means steps on skewed ReLU outputs the first step sits
    far below 1 / beta and alpha = 1 / beta blows small activations up (issue 12 item 3):
    :meth:`lowbit.quantizers.soft.SoftAct.calibrate` ``alpha="fit"``.
    """
    x = tensor_arg(x, "x").detach().reshape(-1).to(torch.float64)
    lv = tensor_arg(levels, "levels", table=True).detach().reshape(-1).to(torch.float64)
    b = tensor_arg(biases, "biases", like=x, table=True).to(torch.float64)
    beta = _as_scalar(beta, x, "beta").detach()
    y = lv[_hard_codes(x, b, beta)]
    den = float((y * y).sum())
    return float((x * y).sum()) / den if den > 0 else 1.0 / float(beta)
