"""Per-layer sensitivity to post-training quantization, and a mixed-precision suggestion.

:func:`layer_sensitivity` quantizes ONE weight layer at a time, everything else float, and
measures the accuracy drop against the float model on a fixed evaluation subset:
``weight_drop[layer][bits]`` (that layer's weights at ``bits``, per-channel uniform grid of the
``base`` PTQConfig's weight observer; no activation quantized) and ``input_drop[layer][bits]``
(the layer's input on the calibrated unsigned grid of the base's observer, weights float). The
BatchNorm-folded (and, with ``base.equalize``, equalized) float model is built once and reused;
AdaRound and bias correction are not applied to the single-layer probes (they would multiply
the run time by the number of probes). 32 bits is the float model itself: drop 0 exactly.

:func:`suggest_bits` picks one weight bit width per layer under a size budget with the least
*predicted* drop, ``sum_l weight_drop[l][b_l]``. Additivity assumption: the drops of layers
quantized together add up (no interaction terms); :func:`verify` measures how far that holds.
Size model (what :func:`lowbit.size.model_bytes` counts): ``ceil(n_l * b_l / 8)`` bytes of codes
per layer + ``other_bytes``, everything else the packed model stores (biases, per-channel
scales, float tensors), which does not depend on the bits. The optimisation is exact: a
multiple-choice knapsack solved by dynamic programming over bytes (:mod:`lowbit.ptq.knapsack`).

Caveat: the drops are measured on a subset of the test split (as the caller gives it), so a
suggestion picked on it and then scored on the same split is mildly optimistic.
Test: tests/ptq/test_sensitivity.py.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from lowbit.calibration import calibrate, freeze_model
from lowbit.convert import add_input_quantizers
from lowbit.errors import LowbitError
from lowbit.fold import fold_batchnorm
from lowbit.functional.checks import FLOAT_BITS
from lowbit.ptq.driver import PTQConfig, quantize
from lowbit.ptq.equalize import equalize as equalize_model
from lowbit.ptq.knapsack import knapsack
from lowbit.recipe import LayerRule
from lowbit.size import model_bytes
from lowbit.train import evaluate

log = logging.getLogger(__name__)

BITS = (8, 6, 4, 3, 2)


@dataclass
class SensitivityReport:
    """Accuracy drops (float accuracy minus accuracy, 0..1) per layer per bits, JSON-ready."""

    layers: list[str]
    weights: dict[str, int]
    bits: tuple[int, ...]
    float_accuracy: float
    eval_samples: int
    calibration_samples: int
    other_bytes: int
    weight_drop: dict[str, dict[int, float]]
    input_drop: dict[str, dict[int, float]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bits"] = list(self.bits)
        for key in ("weight_drop", "input_drop"):  # JSON keys are strings
            d[key] = {n: {str(b): v for b, v in row.items()} for n, row in d[key].items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SensitivityReport:
        d = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        d["bits"] = tuple(d["bits"])
        for key in ("weight_drop", "input_drop"):
            d[key] = {n: {int(b): v for b, v in row.items()} for n, row in d.get(key, {}).items()}
        return cls(**d)


def weight_layers(model: nn.Module) -> list[str]:
    """Qualified names of the nn.Linear/nn.Conv2d layers, in module order."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def pattern_of(name: str) -> str:
    """An fnmatch pattern matching exactly ``name`` (``*?[`` bracketed)."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def code_bytes(n: int, bits: int) -> int:
    return math.ceil(n * bits / 8)


def _float_images(batches) -> list[torch.Tensor]:
    xs = [b[0] if isinstance(b, (tuple, list)) else b for b in batches or ()]
    return [x.float().div(255.0) if x.dtype == torch.uint8 else x for x in xs if x.numel()]


def _check_base(base: PTQConfig) -> None:
    if base.mode not in ("static", "dynamic"):
        raise LowbitError(f"sensitivity needs an integer PTQ mode (static or dynamic), got "
                          f"{base.mode!r}")


def weights_config(base: PTQConfig, bits: dict[str, int], a_bits: int = FLOAT_BITS,
                   probe: bool = True) -> PTQConfig:
    """``base`` with the layers of ``bits`` at those weight bits and every other layer float
    (a ``*`` rule at 32 bits first), inputs at ``a_bits``, no first/last-layer keeping.
    ``probe``: also no folding/equalization (the model given is prepared already), AdaRound
    or bias correction."""
    rules = (LayerRule("*", w_bits=FLOAT_BITS),
             *(LayerRule(pattern_of(n), w_bits=b) for n, b in bits.items()))
    off = dict(fold_bn=False, equalize=False, adaround=False, bias_correction=False)
    return replace(base, a_bits=a_bits, keep_first=False, keep_last=False, rules=rules,
                   **(off if probe else {}))


def _input_probe(float_net: nn.Module, xs: list[torch.Tensor], name: str, bits: int,
                 base: PTQConfig) -> nn.Module:
    """A copy of ``float_net`` with only ``name``'s input quantized (calibrated as the driver
    calibrates: base's observer in static mode, per-batch ranges in dynamic mode)."""
    net = copy.deepcopy(float_net)
    options = ({"observer": base.observer} if base.mode == "static"
               else {"observer": "dynamic", "per_row": base.per_row})
    add_input_quantizers(net, "uniform", FLOAT_BITS, skip_first=False, options=options,
                         rules=[LayerRule(pattern_of(name), act="uniform", a_bits=bits)])
    if base.mode == "static":
        calibrate(net, xs)
    return freeze_model(net).eval()


def prepare_float(model: nn.Module, base: PTQConfig) -> nn.Module:
    """A copy of ``model`` (eval mode), BatchNorm folded and equalized as ``base`` says."""
    net = copy.deepcopy(model).eval()
    if base.fold_bn:
        fold_batchnorm(net)
    if base.equalize:
        equalize_model(net)
    return net


def layer_sensitivity(model: nn.Module, calib_batches, eval_images: torch.Tensor,
                      eval_labels: torch.Tensor, bits=BITS, base: PTQConfig | None = None,
                      inputs: bool = True) -> SensitivityReport:
    """Weight (and with ``inputs`` input) sensitivity of every weight layer at each of ``bits``
    (module doc). ``eval_images``: uint8, as :func:`lowbit.train.evaluate` takes them."""
    base = base or PTQConfig()
    _check_base(base)
    started = time.perf_counter()
    bits = tuple(int(b) for b in bits)
    xs = _float_images(calib_batches)
    if inputs and base.mode == "static" and not xs:
        raise LowbitError("input sensitivity in static mode needs calibration batches")
    float_net = prepare_float(model, base)
    _, float_acc = evaluate(float_net, eval_images, eval_labels)
    layers = weight_layers(float_net)
    counts = {n: float_net.get_submodule(n).weight.numel() for n in layers}

    def drop(net: nn.Module) -> float:
        return float_acc - evaluate(net, eval_images, eval_labels)[1]

    w_drop: dict[str, dict[int, float]] = {n: {} for n in layers}
    i_drop: dict[str, dict[int, float]] = {n: {} for n in layers} if inputs else {}
    for name in layers:
        for b in bits:
            if b == FLOAT_BITS:
                w_drop[name][b] = 0.0
                if inputs:
                    i_drop[name][b] = 0.0
                continue
            w_drop[name][b] = drop(quantize(float_net, [], weights_config(base, {name: b}))[0])
            if inputs:
                i_drop[name][b] = drop(_input_probe(float_net, xs, name, b, base))
        log.info("%s (%d weights): weight drop %s; input drop %s", name, counts[name],
                 _fmt(w_drop[name]), _fmt(i_drop.get(name, {})))
    return SensitivityReport(
        layers, counts, bits, float_acc, int(eval_labels.numel()),
        sum(int(x.shape[0]) for x in xs) if inputs else 0, _other_bytes(float_net, base),
        w_drop, i_drop, base.to_dict(), time.perf_counter() - started)


def _fmt(row: dict[int, float]) -> str:
    return " ".join(f"{b}:{100 * v:+.2f}%" for b, v in row.items())


def _other_bytes(float_net: nn.Module, base: PTQConfig) -> int:
    """Packed bytes besides the weight codes: every layer at 8 bits, minus those codes."""
    layers = weight_layers(float_net)
    qnet, _ = quantize(float_net, [], weights_config(base, dict.fromkeys(layers, 8)))
    codes = sum(code_bytes(qnet.get_submodule(n).weight.numel(), 8) for n in layers)
    return model_bytes(qnet)["packed_bytes"] - codes


def suggestion_bytes(report: SensitivityReport, suggestion: dict[str, int]) -> int:
    """Packed bytes of the model with ``suggestion``'s weight bits (module doc's size model)."""
    return report.other_bytes + sum(code_bytes(report.weights[n], b)
                                    for n, b in suggestion.items())


def predicted_drop(report: SensitivityReport, suggestion: dict[str, int],
                   inputs_at: int | None = None) -> float:
    """Sum of the per-layer weight drops (additivity; as :func:`suggest_bits` costs them,
    :func:`monotone_drops`), plus with ``inputs_at`` the input drops at those bits (32:
    none)."""
    total = sum(monotone_drops(report.weight_drop[n])[b] for n, b in suggestion.items())
    if inputs_at is not None and inputs_at != FLOAT_BITS:
        total += sum(monotone_drops(report.input_drop[n])[inputs_at] for n in suggestion)
    return total


def monotone_drops(drops: dict[int, float]) -> dict[int, float]:
    """Measured drops made usable as costs: never below 0, never smaller at fewer bits
    (a running maximum from most to fewest bits). Raw drops at high bits are noise around 0
    (one test sample is 0.1 point on 1000); summed over 20 layers, the negative ones bias the
    prediction downwards and the optimiser picks exactly those (measured on ResNet-20 at the
    all-4-bit size: raw drops gave a suggestion 5.2 points below float on the probe subset,
    these 2.4, all-4-bit 3.4)."""
    out, worst = {}, 0.0
    for b in sorted(drops, reverse=True):
        worst = max(worst, drops[b])
        out[b] = worst
    return out


def suggest_bits(report: SensitivityReport, size_budget_bytes: int,
                 bits=None, raw: bool = False) -> dict[str, int]:
    """Weight bits per layer with the least predicted drop whose packed size is within
    ``size_budget_bytes`` (module doc). ``bits``: the choices, each measured in the report
    (default: the report's bits up to 16). The drops are first made non-negative and monotone
    in the bits (:func:`monotone_drops`; ``raw=True``: as measured). A budget below the
    all-fewest-bits size is an error naming that minimum."""
    bits = sorted({int(b) for b in (bits or [b for b in report.bits if b <= 16])},
                  reverse=True)  # most bits first: a tie keeps more bits
    missing = [b for b in bits if b not in report.bits]
    if not bits or missing:
        raise LowbitError(f"suggest_bits: bits {missing or bits} not measured in the report "
                          f"(it has {list(report.bits)})")
    minimum = suggestion_bytes(report, dict.fromkeys(report.layers, bits[-1]))
    if size_budget_bytes < minimum:
        raise LowbitError(f"size budget {size_budget_bytes:,} B is below the smallest "
                          f"{bits[-1]}-bit model, {minimum:,} B ({minimum / 1000:.1f} kB)")
    sizes = [[code_bytes(report.weights[n], b) for b in bits] for n in report.layers]
    drops = {n: (report.weight_drop[n] if raw else monotone_drops(report.weight_drop[n]))
             for n in report.layers}
    losses = [[drops[n][b] for b in bits] for n in report.layers]
    picked, exact = knapsack(sizes, losses, size_budget_bytes - report.other_bytes)
    if not exact:
        log.warning("suggest_bits: budget too large for a byte-exact DP; sizes rounded up "
                    "(the suggestion fits, its optimality is approximate)")
    return {n: bits[j] for n, j in zip(report.layers, picked, strict=True)}


def verify(model: nn.Module, calib_batches, eval_images: torch.Tensor,
           eval_labels: torch.Tensor, suggestion: dict[str, int], report: SensitivityReport,
           base: PTQConfig | None = None) -> tuple[dict[str, Any], nn.Module]:
    """Measure ``suggestion`` with PTQ, all layers at once: weights only (exactly as the
    probes were quantized, the setting the prediction comes from) and deployed (inputs at
    ``base.a_bits``, base's AdaRound/bias correction); returns predicted vs measured drops
    and the deployed model."""
    base = base or PTQConfig()
    w_net, _ = quantize(prepare_float(model, base), [], weights_config(base, suggestion))
    w_acc = evaluate(w_net, eval_images, eval_labels)[1]
    net, _ = quantize(model, calib_batches, weights_config(base, suggestion, base.a_bits,
                                                            probe=False))
    acc = evaluate(net, eval_images, eval_labels)[1]
    measured_inputs = base.a_bits == FLOAT_BITS or base.a_bits in report.bits
    return {
        "eval_samples": int(eval_labels.numel()), "a_bits": base.a_bits,
        "predicted_bytes": suggestion_bytes(report, suggestion),
        "packed_bytes_weights_only": model_bytes(w_net)["packed_bytes"],
        "predicted_weight_drop": predicted_drop(report, suggestion),
        "measured_weight_drop": report.float_accuracy - w_acc,
        "predicted_drop": (predicted_drop(report, suggestion, base.a_bits)
                           if measured_inputs and report.input_drop else None),
        "measured_drop": report.float_accuracy - acc, "accuracy": acc,
    }, net


def to_recipe(suggestion: dict[str, int]) -> dict[str, Any]:
    """``{"rules": [{"pattern": name, "w_bits": bits}, ...]}``, as ``lowbit ptq --recipe`` and
    ``lowbit train --recipe`` read it."""
    return {"rules": [{"pattern": pattern_of(n), "w_bits": int(b)} for n, b in suggestion.items()]}


def markdown(report: SensitivityReport, suggestion: dict[str, int] | None = None) -> str:
    """The drops (percentage points) per layer per bits as a markdown table."""
    from lowbit.report.table import markdown_table

    cols = [("layer", "layer", ""), ("weights", "weights", ",d")]
    cols += [(f"w{b}", f"W{b} drop %", "+.2f") for b in report.bits]
    cols += [(f"i{b}", f"in{b} drop %", "+.2f") for b in report.bits if report.input_drop]
    if suggestion:
        cols.append(("suggested", "suggested bits", ""))
    rows = []
    for n in report.layers:
        row = {"layer": n, "weights": report.weights[n], "suggested": (suggestion or {}).get(n)}
        row |= {f"w{b}": 100 * report.weight_drop[n][b] for b in report.bits}
        row |= {f"i{b}": 100 * v for b, v in report.input_drop.get(n, {}).items()}
        rows.append(row)
    head = (f"Accuracy drop vs float ({100 * report.float_accuracy:.2f} %) when ONE layer is "
            f"quantized, on {report.eval_samples} evaluation samples "
            f"({report.calibration_samples} calibration samples for the inputs).")
    return head + "\n\n" + markdown_table(rows, cols) + "\n"


def plot(report: SensitivityReport, path) -> None:
    """Bar plot of the drops per layer per bits (weights, and inputs when measured) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("weights", report.weight_drop)] + (
        [("inputs", report.input_drop)] if report.input_drop else [])
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8, 0.5 * len(report.layers)),
                                                      3.5 * len(panels)), squeeze=False)
    width = 0.8 / len(report.bits)
    xs = range(len(report.layers))
    for ax, (what, drops) in zip(axes[:, 0], panels, strict=True):
        for k, b in enumerate(report.bits):
            ax.bar([x + k * width for x in xs], [100 * drops[n][b] for n in report.layers],
                   width, label=f"{b} bits")
        ax.set_ylabel("accuracy drop (pp)")
        ax.set_title(f"one layer's {what} quantized ({report.eval_samples} eval samples)")
        ax.set_xticks([x + 0.4 - width / 2 for x in xs], report.layers, rotation=60,
                      ha="right", fontsize=7)
        ax.axhline(0, color="k", lw=0.5)
        ax.legend(fontsize=7, ncol=len(report.bits))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def short_table(result: dict[str, Any]) -> str:
    """A few lines for the console: worst drops per layer, the suggestion, the verification."""
    report = SensitivityReport.from_dict(result["sensitivity"])
    sugg = result.get("suggestion") or {}
    lines = [f"{'layer':<24}{'weights':>9}{'worst W':>9}{'worst in':>9}{'bits':>6}"]
    for n in report.layers:
        w = max(report.weight_drop[n].values())
        i = max(report.input_drop[n].values()) if report.input_drop else float("nan")
        lines.append(f"{n:<24}{report.weights[n]:>9,}{100 * w:>8.2f}%{100 * i:>8.2f}%"
                     f"{sugg.get(n, ''):>6}")
    v = result.get("verify")
    if v:
        lines.append(f"suggestion {v['predicted_bytes']:,} B: predicted weight drop "
                     f"{100 * v['predicted_weight_drop']:.2f} pp, measured "
                     f"{100 * v['measured_weight_drop']:.2f} pp; with A{v['a_bits']} "
                     f"measured {100 * v['measured_drop']:.2f} pp")
    return "\n".join(lines)


def run_sensitivity(model_file, out_dir, base: PTQConfig, dataset: str | None = None,
                    data_dir: str | None = None, calib: int = 1000, batch_size: int = 128,
                    seed: int = 0, bits=BITS, eval_n: int = 2000, size_kb: float | None = None,
                    overwrite: bool = False) -> dict[str, Any]:
    """``lowbit ptq --sensitivity``: the report of the float model in ``model_file`` on
    ``eval_n`` test images (a seeded draw) written as ``out_dir/sensitivity.{json,md,png}``;
    with ``size_kb`` (1 kB = 1000 B) also the verified suggestion and ``out_dir/recipe.json``.
    Returns what sensitivity.json holds."""
    from pathlib import Path

    from lowbit.experiment import prepare_out_dir, write_json_atomic
    from lowbit.ptq.run import calibration_batches, open_float

    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, resume=False, overwrite=overwrite)
    net, blob, dataset, train, test = open_float(model_file, dataset, data_dir)
    if eval_n < 1:
        raise LowbitError(f"--sens-eval must be >= 1, got {eval_n}")
    n = min(eval_n, test.labels.numel())
    idx = torch.randperm(test.labels.numel(), generator=torch.Generator().manual_seed(seed))
    idx = idx[:n].sort().values
    images, labels = test.images[idx], test.labels[idx]
    batches = calibration_batches(train.images, calib, batch_size, seed)
    if size_kb is not None:  # refuse a budget below the smallest model before measuring
        probe = prepare_float(net, base)
        few = min(b for b in bits if b <= 16)
        smallest = _other_bytes(probe, base) + sum(
            code_bytes(probe.get_submodule(n).weight.numel(), few) for n in weight_layers(probe))
        if size_kb * 1000 < smallest:
            raise LowbitError(f"--size-kb {size_kb:g}: below the smallest {few}-bit model, "
                              f"{smallest:,} B ({smallest / 1000:.1f} kB)")
    report = layer_sensitivity(net, batches, images, labels, bits, base)
    result: dict[str, Any] = {"model": str(model_file), "dataset": dataset, "seed": seed,
                              "sensitivity": report.to_dict()}
    suggestion = None
    if size_kb is not None:
        budget = int(size_kb * 1000)
        suggestion = suggest_bits(report, budget)
        check, qnet = verify(net, batches, images, labels, suggestion, report, base)
        check["full_test_accuracy"] = evaluate(qnet, test.images, test.labels)[1]
        check["full_test_float_accuracy"] = evaluate(net, test.images, test.labels)[1]
        result |= {"size_budget_bytes": budget, "suggestion": suggestion, "verify": check,
                   "method": "multiple-choice knapsack, exact DP over bytes "
                             "(lowbit.ptq.knapsack); predicted drop = sum of per-layer "
                             "weight drops (additivity assumption)"}
        write_json_atomic(to_recipe(suggestion), out_dir / "recipe.json")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sensitivity.md").write_text(markdown(report, suggestion))
    plot(report, out_dir / "sensitivity.png")
    write_json_atomic(result, out_dir / "sensitivity.json")
    return result
