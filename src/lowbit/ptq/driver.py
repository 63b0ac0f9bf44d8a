"""Post-training quantization of a trained float model, without retraining (ptq-vs-qat-overview):
``quantize(model, calibration_batches, PTQConfig(...)) -> (quantized model, PTQReport)``.

Modes (``PTQConfig.mode``):
- ``"static"`` (full integer): weights on a signed uniform grid (per output channel by default,
  scale from ``w_observer``), and every weight layer's *input* on an unsigned affine grid
  (:class:`~lowbit.quantizers.uniform.UniformAct` in its ``input_quant`` slot) whose range an
  ``observer`` (minmax, ema, percentile, mse, kl) estimates on the calibration batches; then
  every quantizer is frozen. The first layer's input (the image) is quantized too, at
  ``max(a_bits, keep_bits)`` when the first layer is kept, so every layer consumes integers.
  ``a_bits=32``: weights only.
- ``"dynamic"``: weights quantized ahead of time, inputs quantized on the fly with each batch's
  own range (per tensor, or per row with ``per_row``); no calibration needed.
- ``"float16"`` / ``"bfloat16"``: weights stored in half precision, computed in float.

Steps, in this order, each optional and each reported: BatchNorm folding (``fold_bn``, on by
default; :func:`lowbit.fold.fold_batchnorm`), cross-layer equalization (``equalize``; needs the
fold), weight quantization (``Recipe``'s first/last-layer policy and rules), AdaRound
(``adaround``, on the weights alone, inputs from the weight-quantized model), activation
calibration and freezing, empirical bias correction (``bias_correction``, on the fully
quantized model, so it also absorbs the mean shift of quantized activations). The given model
is never changed (the work is done on a copy). Residual adds, pooling and the activation
functions stay float in this simulation; the runtime issue gives them integer kernels.

Refused with a clear error: a model that is already quantized, a model whose parameters are not
float32 (give ``model.float()``), an empty calibration set or one holding NaN/Inf, bits the mode
cannot take, equalization without folding. A calibration set smaller than a batch is one batch;
a layer whose calibrated input is constant (zero range) gets the eps scale of
:func:`lowbit.functional.uniform.minmax_qparams` (every value maps to its exact grid point).
Test: tests/ptq/test_driver.py.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from lowbit.calibration import calibrate, freeze_model
from lowbit.convert import LayerPlan, add_input_quantizers
from lowbit.convert import quantize as qat_quantize
from lowbit.errors import BitsError, LowbitError, NonFiniteError
from lowbit.fold import fold_batchnorm
from lowbit.functional.checks import FLOAT_BITS
from lowbit.nn.layers import QUANT_LAYERS, QuantConv2d, QuantLinear
from lowbit.ptq.adaround import adaround_model
from lowbit.ptq.bias_correction import correct_bias
from lowbit.ptq.equalize import equalize as equalize_model
from lowbit.quantizers.histogram import ACT_OBSERVERS, WEIGHT_OBSERVERS
from lowbit.recipe import LayerRule, Recipe

MODES = ("static", "dynamic", "float16", "bfloat16")
PTQ_BITS = tuple(range(2, 17))


@dataclass(frozen=True)
class PTQConfig:
    """What post-training quantization does (module doc). ``rules``: LayerRules as in
    :class:`~lowbit.recipe.Recipe`; their ``w_bits`` set a layer's weight bits, their
    ``a_bits`` the bits of that layer's input (32: left float)."""

    mode: str = "static"
    w_bits: int = 8
    a_bits: int = 8
    observer: str = "minmax"
    w_observer: str = "minmax"
    per_channel: bool = True
    per_row: bool = False
    fold_bn: bool = True
    equalize: bool = False
    bias_correction: bool = False
    adaround: bool = False
    adaround_iters: int = 1000
    keep_first: bool = True
    keep_last: bool = True
    keep_bits: int = 8
    rules: tuple[LayerRule, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        if self.mode not in MODES:
            raise LowbitError(f"PTQ mode {self.mode!r}: one of {', '.join(MODES)}")
        if self.mode in ("static", "dynamic"):
            for name in ("w_bits", "a_bits"):
                bits = getattr(self, name)
                if bits not in PTQ_BITS and not (name == "a_bits" and bits == FLOAT_BITS):
                    raise BitsError(f"PTQ {self.mode} {name}={bits}: 2..16"
                                    + (" (or 32 = float)" if name == "a_bits" else ""))
        if self.observer not in ACT_OBSERVERS or self.observer == "dynamic":
            raise LowbitError(f"PTQ observer {self.observer!r}: one of "
                              f"{', '.join(o for o in ACT_OBSERVERS if o != 'dynamic')}")
        if self.w_observer not in WEIGHT_OBSERVERS:
            raise LowbitError(f"PTQ w_observer {self.w_observer!r}: one of "
                              f"{', '.join(WEIGHT_OBSERVERS)}")
        if self.equalize and not self.fold_bn:
            raise LowbitError("equalize needs fold_bn (cross-layer equalization scales the "
                              "folded weights)")
        if self.mode in ("float16", "bfloat16") and (self.adaround or self.bias_correction):
            raise LowbitError(f"{self.mode} mode stores weights in half precision: AdaRound and "
                              "bias correction apply to integer grids only")
        if self.adaround_iters < 1:
            raise ValueError(f"adaround_iters must be >= 1, got {self.adaround_iters}")

    @property
    def needs_calibration(self) -> bool:
        static_acts = self.mode == "static" and self.a_bits != FLOAT_BITS
        return static_acts or self.adaround or self.bias_correction

    def recipe(self) -> Recipe:
        """The weight recipe: uniform (or float16/bfloat16) weights, activations left to the
        input quantizers (the recipe's a_bits is 32)."""
        half = self.mode in ("float16", "bfloat16")
        return Recipe(
            weight=self.mode if half else "uniform", w_bits=16 if half else self.w_bits,
            act="uniform", a_bits=FLOAT_BITS,
            rules=tuple(r for r in self.rules if r.w_bits is not None or r.weight is not None),
            keep_first=self.keep_first and not half, keep_last=self.keep_last and not half,
            keep_bits=self.keep_bits,
            weight_options=() if half else (("observer", self.w_observer),
                                            ("per_channel", self.per_channel)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rules"] = [asdict(r) for r in self.rules]
        for r in d["rules"]:
            r["weight_options"], r["act_options"] = dict(r["weight_options"]), dict(
                r["act_options"])
        return d


@dataclass
class PTQReport:
    """What each step did and how long it took (seconds), JSON-ready through :meth:`to_dict`."""

    config: dict[str, Any]
    layers: list[LayerPlan]
    calibration_samples: int = 0
    folded: list[tuple[str, str]] = field(default_factory=list)
    equalized: list[dict[str, Any]] = field(default_factory=list)
    equalize_skipped: list[dict[str, Any]] = field(default_factory=list)
    adaround: list[dict[str, Any]] = field(default_factory=list)
    bias: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    added_bias: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = [{"name": p.name, "kind": p.kind, "method": p.method, "bits": p.bits,
                        "why": p.why, "options": dict(p.options)} for p in self.layers]
        return d


def _check_model(model: nn.Module) -> None:
    if any(isinstance(m, QUANT_LAYERS) for m in model.modules()):
        raise LowbitError("PTQ takes a float model; this one is already quantized (to change "
                          "its quantizers use lowbit.convert.requantize)")
    odd = {p.dtype for p in model.parameters() if p.dtype != torch.float32}
    if odd:
        raise LowbitError(f"PTQ takes a float32 model; this one has {sorted(map(str, odd))} "
                          "parameters (give model.float(); float16 weights are a PTQ mode: "
                          "mode='float16')")


def _check_batches(batches: Iterable | None, config: PTQConfig) -> list[torch.Tensor]:
    out = []
    for b in batches or ():
        x = b[0] if isinstance(b, (tuple, list)) else b
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"a calibration batch must be a tensor or (x, ...), got {type(x)}")
        if x.numel() == 0:
            continue
        if x.dtype == torch.uint8:  # lowbit's datasets store images as uint8
            x = x.float().div_(255.0)
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteError(f"calibration batch {len(out)} holds "
                                 f"{int((~torch.isfinite(x)).sum())} NaN/Inf values")
        out.append(x)
    if config.needs_calibration and not out:
        raise LowbitError("PTQ got an empty calibration set; static activations, AdaRound and "
                          "bias correction need calibration samples")
    return out


def _first_weight_layer(net: nn.Module) -> str | None:
    for name, m in net.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            return name
    return None


def _input_rules(config: PTQConfig, first: str | None) -> list[LayerRule]:
    rules = [LayerRule(r.pattern, act="uniform", a_bits=r.a_bits, act_options=r.act_options)
             for r in config.rules if r.a_bits is not None]
    if first is not None and config.keep_first and config.keep_bits != FLOAT_BITS:
        bits = max(config.a_bits, config.keep_bits)
        rules.insert(0, LayerRule(first, act="uniform", a_bits=bits))
    return rules


def _freeze_weights(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, (QuantLinear, QuantConv2d)) and m.weight_quant is not None:
            m.weight_quant.observe(m.weight)
            m.weight_quant.freeze()


def quantize(model: nn.Module, batches: Iterable | None = None,
             config: PTQConfig | None = None, progress: bool = False
             ) -> tuple[nn.Module, PTQReport]:
    """Post-training quantize a copy of ``model`` (module doc); returns it (eval mode) and the
    report. ``batches``: model inputs (tensors or (x, y) pairs) for calibration; uint8 images
    are scaled by 1/255 as lowbit's training batches are."""
    config = config or PTQConfig()
    _check_model(model)
    xs = _check_batches(batches, config)
    clock = time.perf_counter
    seconds: dict[str, float] = {}
    t = clock()
    float_net = copy.deepcopy(model).eval()
    folded = fold_batchnorm(float_net) if config.fold_bn else []
    seconds["fold_bn"] = clock() - t
    report_eq: tuple[list, list] = ([], [])
    if config.equalize:
        t = clock()
        eq = equalize_model(float_net)
        report_eq = ([asdict(p) for p in eq.pairs], [asdict(s) for s in eq.skipped])
        seconds["equalize"] = clock() - t
    t = clock()
    net = copy.deepcopy(float_net)
    plans = _plan_weights(net, config)
    _freeze_weights(net)
    seconds["weights"] = clock() - t
    report = PTQReport(config.to_dict(), plans, sum(int(x.shape[0]) for x in xs),
                       [list(p) for p in folded], *report_eq)
    if config.adaround:
        t = clock()
        ada = adaround_model(float_net, net, xs, iters=config.adaround_iters,
                             progress=progress)
        report.adaround = [asdict(r) for r in ada.layers]
        seconds["adaround"] = clock() - t
    if config.mode in ("static", "dynamic") and config.a_bits != FLOAT_BITS:
        t = clock()
        observer = ({"observer": config.observer} if config.mode == "static"
                    else {"observer": "dynamic", "per_row": config.per_row})
        report.layers += add_input_quantizers(
            net, "uniform", config.a_bits, rules=_input_rules(config, _first_weight_layer(net)),
            skip_first=False, options=observer)
        if config.mode == "static":
            calibrate(net, xs, progress=progress)
        seconds["calibrate"] = clock() - t
    freeze_model(net)
    if config.bias_correction:
        t = clock()
        had_bias = {n for n, m in net.named_modules() if getattr(m, "bias", None) is not None}
        bias = correct_bias(float_net, net, xs)
        report.bias = [asdict(b) for b in bias.layers]
        report.added_bias = sorted(n for n, m in net.named_modules()
                                   if isinstance(m, (QuantLinear, QuantConv2d))
                                   and m.bias is not None and n not in had_bias)
        seconds["bias_correction"] = clock() - t
    report.seconds = seconds
    report.seconds["total"] = sum(seconds.values())
    return net.eval(), report


def _plan_weights(net: nn.Module, config: PTQConfig) -> list[LayerPlan]:
    from lowbit.convert import plan

    recipe = config.recipe()
    plans = plan(net, recipe)
    qat_quantize(net, recipe)
    return plans
