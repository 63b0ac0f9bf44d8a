"""AdaRound: learned up/down rounding of a layer's weights onto a fixed integer grid (Nagel,
Amjad, van Baalen, Louizos, Blankevoort, "Up or Down? Adaptive Rounding for Post-Training
Quantization", ICML 2020, arXiv:2004.10568, sec. 3-4, eq. 21-25 -- the numbers below are the
arXiv version's as recalled, not re-checked against the PDF here; constants as AIMET sets them).

Grid: per tensor or per output channel (dim 0) ``scale`` s and ``zero_point`` z, integers
qmin..qmax. With the fractional part r = W/s - floor(W/s) (W/s computed as W * (1/s), as
:func:`lowbit.functional.uniform` does):
    h(V) = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1),  zeta = 1.1, gamma = -0.1  (eq. 23)
    W~   = s (clamp(floor(W/s) + z + h(V), qmin, qmax) - z)                          (eq. 22)
    loss = recon(f(W~, X), Y) + lambda sum_ij (1 - |2 h(V_ij) - 1|^beta)     (eq. 24, 25)
    recon(y, t) = mean over samples and positions of sum over output channels (y - t)^2
V starts at h^-1(r) (h(V) = r: the soft weight is the float weight), Adam(lr 1e-3) on V only,
a random batch of ``batch_size`` calibration samples per iteration. lambda = 0.01; the
regularizer is off for the first 20 % of iterations (warm start); then beta is annealed from
20 to 2 with AIMET's cosine schedule
    beta(t) = beta_end + (beta_start - beta_end) (1 + cos(pi t')) / 2,
    t' = (it - warm_start * iters) / ((1 - warm_start) * iters).
Result: integers q = clamp(floor(W/s) + z + [h(V) >= 0.5], qmin, qmax); the rounded weight
s (q - z); ``codes`` = q - qmin as :func:`lowbit.functional.uniform.uniform_encode` and
IntegerGrid number them. The loss ``recon`` (AIMET's normalisation: summed over output
channels, so lambda = 0.01 weighs the regularizer as in AIMET) is reported for round-to-
nearest (torch.round, half to even, as the quantizer's forward) and for the result, on all
calibration samples. Never worse than nearest: when the learned rounding's loss on the
calibration samples exceeds nearest's, nearest is returned (``fell_back``).
Deviation: 2000 iterations by default instead of AIMET's 10k (a CPU budget: 2000 took 3-11 s
on the tests' tiny layers at one thread, about 1.5-5 ms per iteration, and grow with the layer
and batch; ``iters`` is a parameter). X is the layer's input in the quantized model
(earlier layers already rounded), Y the float layer's output on the float model's input
(:func:`adaround_model`); no activation function is applied to either (eq. 25 with f_a the
identity: lowbit's layers end at the pre-activation).
Tests: tests/ptq/test_adaround.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as TF
from torch import nn
from tqdm import tqdm

from lowbit.errors import LowbitError
from lowbit.functional.codebook import IntegerGrid, LevelRange
from lowbit.ptq.bias_correction import batch_input, evaluating, paired_layers

ZETA, GAMMA = 1.1, -0.1
EVAL_CHUNK = 256  # samples per forward when measuring the loss on all calibration data


@dataclass(frozen=True)
class AdaRoundOptions:
    """AIMET's defaults: Adam lr, lambda (reg_weight), beta range and the warm-start share."""

    lr: float = 1e-3
    reg_weight: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warm_start: float = 0.2

    def __post_init__(self) -> None:
        if not (self.lr > 0 and self.reg_weight >= 0 and 0 <= self.warm_start < 1
                and self.beta_start >= self.beta_end > 0):
            raise ValueError(f"invalid AdaRound options {self}")


def rectified_sigmoid(v: torch.Tensor, zeta: float = ZETA, gamma: float = GAMMA) -> torch.Tensor:
    """h(V) = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1) (eq. 23)."""
    return torch.clamp(torch.sigmoid(v) * (zeta - gamma) + gamma, 0.0, 1.0)


def inverse_rectified_sigmoid(h: torch.Tensor, zeta: float = ZETA,
                              gamma: float = GAMMA) -> torch.Tensor:
    """V with h(V) = h for h in [0, 1): -log((zeta - gamma) / (h - gamma) - 1)."""
    return -torch.log((zeta - gamma) / (h - gamma) - 1.0)


def rounding_regularizer(h: torch.Tensor, beta: float) -> torch.Tensor:
    """f_reg = sum (1 - |2h - 1|^beta) (eq. 24): 0 when every h is 0 or 1."""
    return (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum()


def beta_at(it: int, iters: int, options: AdaRoundOptions) -> float | None:
    """beta at iteration ``it`` (0-based), None during the warm start (regularizer off)."""
    start = options.warm_start * iters
    if it < start:
        return None
    t = (it - start) / max((1.0 - options.warm_start) * iters, 1.0)
    b0, b1 = options.beta_start, options.beta_end
    return b1 + 0.5 * (b0 - b1) * (1.0 + math.cos(math.pi * t))


@dataclass(frozen=True, eq=False)
class AdaRoundResult:
    integers: torch.Tensor  # q in [qmin, qmax], int64, shaped like the weight
    weight: torch.Tensor  # s (q - z): the rounded weight
    qmin: int
    loss_nearest: float
    loss_adaround: float
    changed: float  # fraction of weights whose q differs from round-to-nearest's
    fell_back: bool = False  # the learned rounding lost to nearest: nearest is returned

    @property
    def codes(self) -> torch.Tensor:
        """q - qmin: the codes uniform_encode / IntegerGrid(LevelRange(qmin, qmax)) use."""
        return self.integers - self.qmin


def _per_channel(p, w: torch.Tensor, what: str) -> torch.Tensor:
    p = torch.as_tensor(p, dtype=torch.float32, device=w.device)
    if p.dim() == 0:
        return p
    if p.dim() != 1 or p.numel() != w.shape[0]:
        raise ValueError(f"{what} must be a scalar or ({w.shape[0]},), got {tuple(p.shape)}")
    return p.reshape(-1, *([1] * (w.dim() - 1)))


def _forward(layer: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    bias = None if layer.bias is None else layer.bias.detach()
    if isinstance(layer, nn.Conv2d):
        return TF.conv2d(x, w, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    return TF.linear(x, w, bias)


def reconstruction_loss(layer: nn.Module, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Mean over samples and positions of the squared error summed over output channels."""
    channel = 1 if isinstance(layer, nn.Conv2d) else y.dim() - 1
    return (y - t).pow(2).sum(dim=channel).mean()


@torch.no_grad()
def _full_loss(layer, w, inputs, targets) -> float:
    total = 0.0
    for i in range(0, inputs.shape[0], EVAL_CHUNK):
        x, t = inputs[i:i + EVAL_CHUNK], targets[i:i + EVAL_CHUNK]
        total += float(reconstruction_loss(layer, _forward(layer, x, w), t)) * x.shape[0]
    return total / inputs.shape[0]


def _check_layer(layer, inputs, targets, qmin, qmax) -> None:
    if not isinstance(layer, (nn.Conv2d, nn.Linear)):
        raise TypeError(f"adaround_layer takes an nn.Conv2d or nn.Linear, got {type(layer)}")
    if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
        raise LowbitError(f"padding_mode {layer.padding_mode!r} is not supported (only zeros)")
    if qmin >= qmax:
        raise ValueError(f"qmin ({qmin}) must be < qmax ({qmax})")
    if inputs.shape[0] == 0 or inputs.shape[0] != targets.shape[0]:
        raise ValueError(f"inputs ({inputs.shape[0]}) and targets ({targets.shape[0]}) need "
                         "the same, non-zero number of samples")


def adaround_layer(layer: nn.Conv2d | nn.Linear, scale, zero_point, qmin: int, qmax: int,
                   inputs: torch.Tensor, targets: torch.Tensor, iters: int = 2000,
                   batch_size: int = 32, seed: int = 0, progress: bool = False,
                   options: AdaRoundOptions | None = None) -> AdaRoundResult:
    """AdaRound the weight of ``layer`` (used for its weight, bias, stride, padding, ...; not
    changed) onto the grid ``scale * (q - zero_point)``, q in [qmin, qmax] (module doc).
    ``inputs``/``targets``: (N, ...) layer inputs and float outputs; ``seed`` seeds the batch
    draws. ``options``: AIMET's lr, lambda, beta range, warm start by default."""
    options = options or AdaRoundOptions()
    _check_layer(layer, inputs, targets, qmin, qmax)
    w = layer.weight.detach()
    inputs, targets = inputs.to(w.device), targets.to(w.device)
    s = _per_channel(scale, w, "scale")
    if bool((s <= 0).any()):
        raise ValueError("scale must be > 0")
    z = _per_channel(zero_point, w, "zero_point").round()
    scaled = w * (1.0 / s)
    base = torch.floor(scaled)
    v = inverse_rectified_sigmoid(scaled - base).requires_grad_(True)

    def soft_weight() -> torch.Tensor:
        return (torch.clamp(base + z + rectified_sigmoid(v), qmin, qmax) - z) * s

    opt = torch.optim.Adam([v], lr=options.lr)
    gen = torch.Generator().manual_seed(seed)
    n = inputs.shape[0]
    for it in tqdm(range(iters), disable=not progress, desc="adaround", leave=False):
        idx = torch.randint(n, (min(batch_size, n),), generator=gen).to(w.device)
        loss = reconstruction_loss(layer, _forward(layer, inputs[idx], soft_weight()),
                                   targets[idx])
        beta = beta_at(it, iters, options)
        if beta is not None:
            loss = loss + options.reg_weight * rounding_regularizer(rectified_sigmoid(v), beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        up = (rectified_sigmoid(v) >= 0.5).to(base.dtype)
        q = torch.clamp(base + z + up, qmin, qmax)
        nearest = torch.clamp(torch.round(scaled) + z, qmin, qmax)
        rounded = ((q - z) * s).to(w.dtype)
        near_w = ((nearest - z) * s).to(w.dtype)
        loss_near = _full_loss(layer, near_w, inputs, targets)
        loss_ada = _full_loss(layer, rounded, inputs, targets)
        if loss_ada > loss_near:  # never worse than nearest on the layer's calibration data
            return AdaRoundResult(nearest.long(), near_w, qmin, loss_near, loss_near, 0.0,
                                  fell_back=True)
        return AdaRoundResult(q.long(), rounded, qmin, loss_near, loss_ada,
                              float((q != nearest).double().mean()))


@dataclass(frozen=True)
class LayerRounding:
    name: str
    loss_nearest: float
    loss_adaround: float
    changed: float
    samples: int


@dataclass(frozen=True)
class AdaRoundReport:
    layers: tuple[LayerRounding, ...]
    skipped: tuple[tuple[str, str], ...]  # (layer name, reason)


def _grid(name: str, layer: nn.Module) -> IntegerGrid | str:
    """The fixed uniform grid of ``layer``'s weight quantizer, or why there is none."""
    wq = layer.weight_quant
    if wq is None:
        return "weight kept in float (no weight quantizer)"
    if not wq.is_frozen:
        raise LowbitError(f"{name!r}: the weight quantizer {type(wq).__name__} is not frozen; "
                          "AdaRound needs a fixed stored scale (a quantizer that re-derives it "
                          "from max |w| would move the grid when the largest weight rounds "
                          "down): freeze() it first")
    _, grid = wq.encode(layer.weight)
    if not (isinstance(grid, IntegerGrid) and isinstance(grid.levels, LevelRange)
            and not grid.levels.skip_zero and grid.group_size is None):
        return f"{type(wq).__name__}'s grid is not a uniform qmin..qmax range per tensor/channel"
    return grid


def _capture(float_model, quant_model, name, xs) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs of the quantized layer as its matmul sees them, float layer outputs)."""
    q, f = quant_model.get_submodule(name), float_model.get_submodule(name)
    ins, outs = [], []

    def pre(module, args):
        x = args[0]
        if module.quant_enabled and module.input_quant is not None:
            x = module.input_quant(x)
        ins.append(x.detach())

    handles = [q.register_forward_pre_hook(pre),
               f.register_forward_hook(lambda _m, _a, y: outs.append(y.detach()))]
    try:
        for x in xs:
            quant_model(x)
            float_model(x)
    finally:
        for h in handles:
            h.remove()
    return torch.cat(ins), torch.cat(outs)


def adaround_model(float_model: nn.Module, quant_model: nn.Module, batches: Iterable,
                   iters: int = 2000, batch_size: int = 32, seed: int = 0,
                   progress: bool = False, options: AdaRoundOptions | None = None
                   ) -> AdaRoundReport:
    """AdaRound every QuantLinear/QuantConv2d of ``quant_model`` with a frozen uniform weight
    grid, in module order, in place: inputs from ``quant_model`` (earlier layers already
    rounded), targets from the same-named layer of ``float_model`` (not modified). The rounded
    weight ``scale * (q - zero_point)`` replaces ``layer.weight``, and re-encoding it is checked
    to give the AdaRound codes. Layer i uses seed ``seed + i``."""
    xs = [batch_input(b) for b in batches]
    if not xs:
        raise ValueError("adaround_model needs at least one calibration batch")
    layers, skipped = [], []
    with evaluating(float_model, quant_model):
        for i, name in enumerate(paired_layers(float_model, quant_model)):
            layer = quant_model.get_submodule(name)
            grid = _grid(name, layer)
            if isinstance(grid, str):
                skipped.append((name, grid))
                continue
            inputs, targets = _capture(float_model, quant_model, name, xs)
            with torch.enable_grad():
                res = adaround_layer(layer, grid.scale, grid.zero_point, grid.levels.lo,
                                     grid.levels.hi, inputs, targets, iters, batch_size,
                                     seed + i, progress, options)
            layer.weight.copy_(res.weight)
            if not torch.equal(layer.weight_quant.encode(layer.weight)[0], res.codes):
                raise LowbitError(f"{name!r}: re-encoding the rounded weight changed its codes; "
                                  "the weight quantizer's grid is not fixed")
            layers.append(LayerRounding(name, res.loss_nearest, res.loss_adaround, res.changed,
                                        inputs.shape[0]))
    return AdaRoundReport(tuple(layers), tuple(skipped))
