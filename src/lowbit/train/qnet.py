"""Training Quantization Networks (Yang et al., CVPR 2019, sec. 3.2 and 4.1): the temperature
schedule, activation calibration and the three training phases, on top of :func:`fit`.

Temperature: "T is set to 10 and increased linearly w.r.t. the number of training epochs, i.e.
T = epoch x 10" (AlexNet; 5 for ResNet). Epochs count from 1 in the paper (Algorithm 1), so with
fit's 0-based epoch index T = (epoch + 1) x factor: the first epoch trains at T = factor, never 0.
Across phases the epoch count runs on (phase 2 starts where phase 1 ended), since the paper ties T
to the training epoch.

Phases (sec. 4.1): "Firstly, we disable the activation quantization and only train the
quantization of the weights. Secondly, we fix the quantization of the weights and only train the
quantization of the activations. Finally, we train the quantization of both weights and
activations until the model converges." Our reading (:data:`PAPER_PHASES`):
  1. activation quantizers off (float ReLU); everything trains, weights through soft eq. (6);
  2. activation quantizers on, calibrated on 1000 training samples first (sec. 4.1); the
     quantized weight layers (their weight, bias and SoftWeight parameters) are frozen and their
     quantizers switched to the step eq. (11); everything else trains;
  3. both soft and trained.
After the last phase every quantizer is switched to eq. (11) (Algorithm 1, inference network).
Deviation: the paper does not say whether phase 2 calibrates or restarts T; we calibrate when
activations are first switched on. The paper clips gradients (L2 norm 5): :func:`qnet_config`.

Final temperature (issue 12, the default of :class:`lowbit.experiment.Job` and the CLI): the
paper's ResNet schedule T = epoch x 5 over "at most 55 epochs" (sec. 4.1) ends at T = 275
(:data:`FINAL_TEMPERATURE`). A short budget cannot run 55 epochs, so ``final_temperature``
compresses that linear ramp into the steps the phase has: T = final x (step + 1) / steps, which
reaches the paper's final T at the phase's last step (the zoo's old T -> 50 left a soft/hard gap:
issue 12 item 1). The temperature restarts with each phase, as the authors' reference code does
(github.com/aliyun/alibabacloud-quantization-networks: each phase is its own run of
quan_weight_main.py / quan_all_main.py with ``t = (epoch + 1) * args.temperature`` from epoch 0);
``restart_temperature=False`` runs one ramp over all phases. The ``factor`` schedule (T = (global
epoch + 1) x factor, kept running across phases) is the earlier reading, still available.

BatchNorm re-estimation (issue 12 item 2; not in the paper or the reference code, which
evaluates the hard network with the running statistics gathered under soft weights): after the
last phase, with every quantizer on eq. (11), :func:`reestimate_batchnorm` recomputes each
BatchNorm's running mean/variance as the cumulative average (momentum None) over ``bn_batches``
training batches, in train mode under no_grad. :func:`fit_qnet` reports the soft accuracy (the
last phase's evaluation, eq. 6), the hard accuracy with the soft statistics and the hard accuracy
after re-estimation (the model it returns), labelled; each phase's metrics.jsonl records say
which function each quantizer evaluated with ("eval_weights", "eval_activations").

Quantized activations (issue 12 item 3; measurements in :func:`fit_qnet`): alpha is fitted to
the calibration activations by least squares and the activations' backward runs at T = 1 (the
forward keeps T) by default; the paper's alpha = 1/beta and backward at T collapse ResNet-20
2/2 to chance here (``act_alpha="reciprocal"``, ``act_grad_temperature=None`` select them).

Phase seeds: phase k trains with seed ``config.seed + k * PHASE_SEED_STRIDE`` (:func:`phase_seed`),
so each phase draws its own shuffle and augmentation order (issue 12 item 5), and phase k of seed
s < 1000 never replays a phase of another seed below 1000.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lowbit.data.augment import augment_batch
from lowbit.nn.layers import QuantAct, QuantConv2d, QuantLinear
from lowbit.quantizers.soft import SoftAct, SoftWeight
from lowbit.train.config import TrainConfig
from lowbit.train.loop import evaluate, fit
from lowbit.train.metrics import rewrite_jsonl

SOFT_KINDS: tuple[type, ...] = (SoftWeight, SoftAct)
CALIBRATION_CAP = 1 << 20  # values kept per layer for k-means (q uses every value)
GRAD_CLIP = 5.0  # "we clip the gradients with an L2 norm of 5" (sec. 4.1)
FINAL_TEMPERATURE = 275.0  # ResNet: T = epoch x 5 (sec. 4.1) at its last epoch, 55
BN_BATCHES = 100  # training batches for the BatchNorm re-estimation under eq. (11)
PHASE_SEED_STRIDE = 1000  # phase k trains with seed + k * stride (see phase_seed)
ACT_GRAD_TEMPERATURE = 1.0  # fit_qnet: the activations' backward at T = 1 (issue 12 item 3)
ACT_ALPHA = "fit"  # fit_qnet: activation alpha by least squares (issue 12 item 3)
ACT_INIT = "auto"  # fit_qnet: activation steps by bit width (act_init_for)
#: "auto": activations of at most this many bits take the paper's k-means steps, wider ones
#: evenly spaced steps (measured: fit_qnet's docstring)
AUTO_KMEANS_MAX_BITS = 2
ACT_INITS = ("auto", "kmeans", "linear")


def act_init_for(init: str, bits: int) -> str:
    """The steps a SoftAct of ``bits`` takes under ``init``: "kmeans" or "linear" as given;
    "auto": k-means up to :data:`AUTO_KMEANS_MAX_BITS` bits, evenly spaced above."""
    if init not in ACT_INITS:
        raise ValueError(f"act_init must be one of {ACT_INITS}, got {init!r}")
    if init != "auto":
        return init
    return "kmeans" if bits <= AUTO_KMEANS_MAX_BITS else "linear"


def temperature_schedule(epoch: int, factor: float, fraction: float = 1.0) -> float:
    """T = (epoch + fraction) * factor for fit's 0-based ``epoch`` (the paper's T = epoch x
    factor with ``fraction`` 1). A ``fraction`` in (0, 1] of the epoch done gives the per-step
    ramp: T rises linearly within the epoch and reaches the paper's value at its last step."""
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
        raise ValueError(f"temperature factor must be a finite number > 0, got {factor!r}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction of the epoch must be in (0, 1], got {fraction!r}")
    return float((epoch + fraction) * factor)


def _soft_modules(model: nn.Module, kinds: tuple[type, ...]) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kinds)]


def soft_quantizers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) for every SoftWeight/SoftAct in ``model``: what :func:`fit_qnet` trains."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SOFT_KINDS)]


def qnet_config(config: TrainConfig) -> TrainConfig:
    """``config`` as Quantization Networks train with it: gradients clipped at L2 norm
    :data:`GRAD_CLIP` unless ``config.grad_clip`` is set."""
    return config if config.grad_clip else replace(config, grad_clip=GRAD_CLIP)


def set_temperature(model: nn.Module, temperature: float,
                    kinds: tuple[type, ...] = SOFT_KINDS) -> int:
    """Set T on every SoftWeight/SoftAct (of ``kinds``) in ``model``; returns how many."""
    mods = _soft_modules(model, kinds)
    for m in mods:
        m.temperature.fill_(float(temperature))
    return len(mods)


def set_hard(model: nn.Module, hard: bool, kinds: tuple[type, ...] = SOFT_KINDS) -> int:
    """Switch quantizers to eq. (11) (``hard``) or eq. (6); returns how many were switched."""
    mods = _soft_modules(model, kinds)
    for m in mods:
        m.hard = bool(hard)
    return len(mods)


def qnet_epoch_callback(factor: float, offset: int = 0,
                        kinds: tuple[type, ...] = SOFT_KINDS) -> Callable[[int, nn.Module], None]:
    """``on_epoch_start`` for :func:`fit`: T = (offset + epoch + 1) * factor before each epoch."""
    temperature_schedule(offset, factor)  # validate now, not in the first epoch

    def on_epoch_start(epoch: int, model: nn.Module) -> None:
        set_temperature(model, temperature_schedule(offset + epoch, factor), kinds)

    return on_epoch_start


def qnet_batch_callback(factor: float, offset: int = 0, kinds: tuple[type, ...] = SOFT_KINDS
                        ) -> Callable[[int, int, int, nn.Module], None]:
    """``on_batch_start`` for :func:`fit`: the per-step ramp T = (offset + epoch + (batch + 1) /
    num_batches) * factor, which ends every epoch at the paper's per-epoch value. For budgets of
    a few epochs, where the per-epoch schedule would hold T constant over the whole run."""
    temperature_schedule(offset, factor)

    def on_batch_start(epoch: int, batch: int, num_batches: int, model: nn.Module) -> None:
        t = temperature_schedule(offset + epoch, factor, (batch + 1) / num_batches)
        set_temperature(model, t, kinds)

    return on_batch_start


def ramp_temperature(step: int, steps: int, final: float, start: float | None = None) -> float:
    """T = final x (step + 1) / steps for the 0-based ``step`` of ``steps``: the paper's linear
    T = epoch x factor with factor = final / steps, reaching ``final`` at the last step.

    With ``start``: linear from ``start`` at step 0 to ``final`` at the last step (the paper's
    ramp T = epoch x 5 over epochs 1..55 runs from 5 to 275, never below its first epoch's T)."""
    for name, v in (("final", final), ("start", final if start is None else start)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} temperature must be a finite number > 0, got {v!r}")
    if not 0 <= step < steps:
        raise ValueError(f"step must be in [0, {steps}), got {step!r}")
    if start is None:
        return float(final * (step + 1) / steps)
    return float(start + (final - start) * (step / (steps - 1) if steps > 1 else 1.0))


def qnet_ramp_callback(final: float, epochs: int, offset_steps: int = 0, total_epochs: int = 0,
                       kinds: tuple[type, ...] = SOFT_KINDS, start: float | None = None
                       ) -> Callable[[int, int, int, nn.Module], None]:
    """``on_batch_start`` for :func:`fit`: T = :func:`ramp_temperature` over the run's steps.

    ``epochs`` of fit's epochs, ``num_batches`` each; ``offset_steps`` (in epochs) and
    ``total_epochs`` (0: ``epochs``) place this fit inside a longer ramp (one ramp over all
    phases); ``start``: the ramp's first T (:func:`ramp_temperature`)."""
    ramp_temperature(0, 1, final, start)
    total = total_epochs or epochs

    def on_batch_start(epoch: int, batch: int, num_batches: int, model: nn.Module) -> None:
        step = (offset_steps + epoch) * num_batches + batch
        set_temperature(model, ramp_temperature(step, total * num_batches, final, start), kinds)

    return on_batch_start


def phase_seed(seed: int, k: int) -> int:
    """The seed phase ``k`` (0-based) trains with: ``seed + k * PHASE_SEED_STRIDE`` mod 2**32
    (phase 0 keeps ``seed``), so every phase draws a new shuffle/augmentation order.

    The stride is small on purpose: torch's CPU generator keeps only the low 32 bits of a seed,
    and fit's shuffle seed is ``(seed << 20) + epoch``, so only ``seed mod 2**12`` reaches the
    shuffle (a stride of 2**12 or more would replay phase 0's order). 1000 keeps phases 0-3
    of seeds below 1000 distinct from each other and from the other seeds' phase 0."""
    return (seed + k * PHASE_SEED_STRIDE) % (1 << 32)


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, images: Tensor, batches: int = BN_BATCHES,
                         batch_size: int = 128, augment: str = "none",
                         generator: torch.Generator | None = None) -> int:
    """Recompute every BatchNorm's running mean/variance under the model as it is now (issue 12:
    the hard eq. 11 network after training with soft weights).

    Running statistics are reset and accumulated as the cumulative average (momentum None)
    over ``batches`` shuffled training batches of uint8 ``images`` (augmented as
    ``augment``), in train mode without gradients; the momenta and the model's mode are
    restored. Returns the number of BatchNorm layers re-estimated (0: nothing ran)."""
    bns = _batchnorms(model)
    if not bns or batches <= 0:
        return 0
    device = next(model.parameters()).device
    index = torch.randperm(len(images), generator=generator)
    momenta, was_training = [m.momentum for m in bns], model.training
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        for b in range(min(batches, math.ceil(len(index) / batch_size))):
            x = images[index[b * batch_size:(b + 1) * batch_size]].float().div_(255.0)
            model(augment_batch(x, augment, generator).to(device))
    finally:
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom
        model.train(was_training)
    return len(bns)


def _label_metrics(path: Path, phase: QNetPhase) -> None:
    """Add to every record of a phase's metrics.jsonl which function its test accuracy was
    evaluated with: eq. (6) "soft", eq. (11) "hard", or "float" activations."""
    if not path.exists():
        return
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    labels = {"eval_weights": "soft eq. (6)" if phase.train_weights else "hard eq. (11)",
              "eval_activations": "soft eq. (6)" if phase.quantize_acts else "float"}
    rewrite_jsonl([r | labels for r in records], path)


def beta_floors(model: nn.Module, fraction: float) -> list[tuple[Tensor, float]]:
    """(beta, ``fraction`` x its value now) for each SoftAct of ``model``: taken right after
    calibration, the floors of ``act_beta_floor``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"act_beta_floor must be in (0, 1], got {fraction!r}")
    return [(m.quant.beta, fraction * float(m.quant.beta.detach())) for m in _soft_acts(model)]


def _with_beta_floor(hooks: dict[str, Callable], floors: list[tuple[Tensor, float]]
                     ) -> dict[str, Callable]:
    """``hooks`` plus an ``on_batch_start`` projecting each beta onto beta >= its floor
    (:func:`beta_floors`) before every step."""
    inner = hooks.get("on_batch_start")

    def on_batch_start(epoch: int, batch: int, num_batches: int, net: nn.Module) -> None:
        with torch.no_grad():
            for beta, low in floors:
                beta.clamp_(min=low)
        if inner is not None:
            inner(epoch, batch, num_batches, net)

    return {**hooks, "on_batch_start": on_batch_start}


def set_act_grad_temperature(model: nn.Module, t: float | None) -> int:
    """Every SoftAct's backward temperature: eq. (7)-(10) at T = ``t`` in the sigmoids and in
    the chain-rule factor (``grad_keeps_t`` False); None: at the forward's T (eq. 7-10 as the
    paper writes them). Returns how many were set."""
    if t is not None and not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
        raise ValueError(f"act_grad_temperature must be a finite number > 0, got {t!r}")
    acts = _soft_acts(model)
    for m in acts:
        m.quant.grad_temperature = None if t is None else float(t)
        m.quant.grad_keeps_t = False
    return len(acts)


def _soft_acts(model: nn.Module) -> list[QuantAct]:
    return [m for m in model.modules() if isinstance(m, QuantAct) and isinstance(m.quant, SoftAct)]


@torch.no_grad()
def calibrate_activations(model: nn.Module, images: Tensor, n: int = 1000,
                          batch_size: int = 250, generator: torch.Generator | None = None,
                          init: str = "kmeans", alpha: str = "reciprocal") -> int:
    """Initialise every SoftAct from the activations ``n`` random samples produce (sec. 4.1);
    ``init`` as :func:`act_init_for` takes it.

    ``images``: uint8 (N, C, H, W) as :func:`fit` takes them (scaled by 1/255). The activations
    are the float ReLU outputs each SoftAct would quantize (its QuantAct runs with quantization
    off meanwhile); the model runs in eval mode. k-means sees at most CALIBRATION_CAP evenly
    strided values per layer; q = max |activation| uses all. Returns the number calibrated.
    """
    acts = _soft_acts(model)
    if not acts:
        return 0
    index = torch.randperm(len(images), generator=generator)[:n]
    seen: dict[int, list[Tensor]] = {id(m): [] for m in acts}
    qmax: dict[int, float] = {id(m): 0.0 for m in acts}
    stride = max(1, math.ceil(len(index) * _per_sample(model, images, acts) / CALIBRATION_CAP))

    def hook(mod: nn.Module, _inp: Any, out: Tensor) -> None:
        qmax[id(mod)] = max(qmax[id(mod)], float(out.abs().max()))
        seen[id(mod)].append(out.detach().reshape(-1)[::stride].clone())

    was_training, enabled = model.training, [m.quant_enabled for m in acts]
    handles = [m.register_forward_hook(hook) for m in acts]
    try:
        model.eval()
        for m in acts:
            m.quant_enabled = False
        for start in range(0, len(index), batch_size):
            model(images[index[start:start + batch_size]].float().div_(255.0))
    finally:
        for h in handles:
            h.remove()
        for m, e in zip(acts, enabled, strict=True):
            m.quant_enabled = e
        model.train(was_training)
    for m in acts:
        m.quant.calibrate(torch.cat(seen[id(m)]), q=qmax[id(m)],
                          init=act_init_for(init, m.quant.bits), alpha=alpha)
    return len(acts)


def _per_sample(model: nn.Module, images: Tensor, acts: list[QuantAct]) -> int:
    """The largest number of activation values one sample gives any calibrated layer."""
    sizes = [0]
    handles = [m.register_forward_hook(lambda _m, _i, o: sizes.append(o[0].numel())) for m in acts]
    try:
        was_training = model.training
        model.eval()
        model(images[:1].float().div_(255.0))
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return max(sizes)


@dataclass(frozen=True)
class QNetPhase:
    """One training phase: are activations quantized, and which quantizers train."""

    name: str
    quantize_acts: bool
    train_weights: bool
    train_acts: bool


PAPER_PHASES: tuple[QNetPhase, ...] = (
    QNetPhase("weights", quantize_acts=False, train_weights=True, train_acts=False),
    QNetPhase("activations", quantize_acts=True, train_weights=False, train_acts=True),
    QNetPhase("joint", quantize_acts=True, train_weights=True, train_acts=True),
)


def _soft_weight_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (QuantLinear, QuantConv2d))
            and isinstance(m.weight_quant, SoftWeight)]


def _apply_phase(model: nn.Module, phase: QNetPhase) -> None:
    """Switch activation quantizers, hard/soft weights and requires_grad as ``phase`` says."""
    for m in _soft_acts(model):
        m.quant_enabled = phase.quantize_acts
        for p in m.quant.parameters():
            p.requires_grad_(phase.train_acts)
    for layer in _soft_weight_layers(model):
        layer.weight_quant.hard = not phase.train_weights
        for p in layer.parameters():  # weight, bias and the SoftWeight's alpha, beta
            p.requires_grad_(phase.train_weights)


def _phase_dir(out_dir: Path, k: int, phase: QNetPhase) -> Path:
    return out_dir / f"phase{k + 1}-{phase.name}"


def fit_qnet(model: nn.Module, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor],
             config: TrainConfig, out_dir: str | Path, factor: float | None = None,
             phases: tuple[QNetPhase, ...] = PAPER_PHASES, resume: bool = False,
             progress: bool = True, per_step: bool = False,
             final_temperature: float | None = None, restart_temperature: bool | None = None,
             bn_batches: int = BN_BATCHES, act_beta_floor: float | None = None,
             act_init: str = ACT_INIT, act_alpha: str = ACT_ALPHA,
             initial_temperature: float | None = None,
             act_grad_temperature: float | None = ACT_GRAD_TEMPERATURE) -> dict[str, Any]:
    """Train a model holding SoftWeight/SoftAct quantizers in ``phases`` (sec. 4.1).

    Each phase is one :func:`fit` of ``config.epochs`` epochs in ``out_dir/phase<k>-<name>``
    (so ``resume`` works per phase), seeded with :func:`phase_seed`. Temperature: with
    ``final_temperature`` (default :data:`FINAL_TEMPERATURE` when ``factor`` is None) the
    per-step ramp of :func:`qnet_ramp_callback` to that T, restarted each phase unless
    ``restart_temperature`` is False; with ``factor``, T = (global epoch + 1) * factor, or with
    ``per_step`` the ramp of :func:`qnet_batch_callback`, running on across phases unless
    ``restart_temperature``. A model without quantized activations (weights only) runs only the
    phases that leave activations off (the paper's phases stage the activation quantization;
    without it, phase 3 would repeat phase 1). Activations are calibrated on 1000 training
    samples (generator seeded with ``config.seed``) when first switched on.

    Activations (issue 12 item 3). The paper's reading -- alpha = 1/beta and eq. (7)-(10) at the
    forward's T -- does not train here: ResNet-20 2/2 collapses to chance (hard 0.0995, loss
    ln 10) as the activation betas change sign. Two causes, each measured
    (``benchmarks/qnet_short_budget.py``, 10k CIFAR-10 images, 3 phases of 1 epoch, 2k test
    images, and a phase-2-only variant with float weights, 5k images, 40 steps):

    - alpha = 1/beta = 4q/5p with q the largest activation and k-means steps on skewed ReLU
      outputs maps the first step's activations (~0.4/beta) to 1/beta: magnitudes ~3x too
      large; with float weights the hard network gives 0.107 before any step (0.287 with
      BatchNorm re-estimated; ``--w 32 --a 2 --init-check``). ``act_alpha="fit"`` (default)
      fits alpha to the calibration activations by least squares
      (:func:`lowbit.functional.soft.fit_alpha`): 0.555 (0.706) before any step.
      ``"reciprocal"``: the paper's.
    - the backward at T (eq. 7, 9 with the chain-rule factor T, as the paper writes them and
      as the authors' reference code computes them for activations, models/quantization.py)
      makes beta's gradient, summed over every activation element, T times larger (T up to
      275): phase 2 alone (``--w 32 --a 2 --n 5000 --phases activations``) with alpha fitted,
      the backward at T and T held at 275 ends at 0.416;
      ``act_grad_temperature=1.0`` (default) evaluates the activations' backward at T = 1
      (sigmoids and factor; the forward keeps T) -- the paper's "freezing T = 1 for the
      back-propagation" (sec. 4.1, said of binary quantization), which the CIFAR-10
      re-implementation github.com/haoyz/quantization-networks-cifar10 (models/qa.py) applies to
      activations of every width: phase 2 alone 0.697, with the paper's alpha 0.315 (a beta
      reaches -0.06).
      None: the backward at T.

    Both defaults together: 2/2 trains, hard 0.649 (soft 0.661; no beta below 0.21; the
    first six betas end at the same values, to 4 decimals, as in the run with the paper's
    alpha below, so at T = 1 they barely move from their common calibration);
    either alone does not (three phases, alpha fit only: 0.0995, betas down to -0.83; T = 1
    backward only: 0.0995, phase 2 at 0.309 and a beta down to -2.38 in phase 3).
    Weights are unaffected (SoftWeight keeps the paper's initialisation and backward).

    The steps' placement matters by bit width, so the default ``act_init="auto"`` chooses it
    per SoftAct (:func:`act_init_for`): the paper's k-means steps up to
    :data:`AUTO_KMEANS_MAX_BITS` = 2 bits, evenly spaced steps (``"linear"``) above. Measured
    with both defaults above, ResNet-20 from the zoo's float model:

    - 2/2: zoo cells (3 x 1 epoch, full CIFAR-10): k-means 66.98 % [66.67, 67.22] n=3,
      evenly spaced 49.05 % (seed 0); short budget 0.649 vs 0.334.
    - 3/3: short budget only, 0.736 (k-means) vs 0.7475 (evenly spaced), a tie within the
      2k test images' noise (``--w 3 --a 3 --extra '{"act_init": "kmeans"}'`` / ``"linear"``):
      3 bits follow 4.
    - 4/4: zoo cells, k-means 45.87 % [44.27, 46.74] n=3, evenly spaced 85.31 %
      [85.11, 85.46] n=3;
      short budget 0.366 vs 0.849 (``--w 4 --a 4 --extra '{"act_init": "linear"}'``).

    (benchmarks/results/zoo_table2_v2/; the short budget is ``benchmarks/qnet_short_budget.py``,
    its 3/3 outputs in benchmarks/results/qnet_short_budget/.)
    ``"kmeans"`` / ``"linear"`` force one placement for every width (CLI ``--qnet-act-init``).

    ``act_beta_floor`` (a fraction f in (0, 1]; default None: off): before every step of a
    phase that trains the activation quantizers, each SoftAct's beta is projected onto
    beta >= f x its calibrated value (floors taken once, right after calibration; projected
    SGD). Measured under the paper's reading (before the defaults above): f = 0.5 kept beta
    positive but 2/2 reached only 0.20 hard. ``act_init``: "auto" (default, above), "kmeans"
    (the paper's) or "linear" (evenly spaced steps b_i = i + 1/2,
    :meth:`lowbit.quantizers.soft.SoftAct.calibrate`); under the paper's reading "linear" did
    not train either (hard 0.0995).

    ``initial_temperature``: with ``final_temperature``, each phase's ramp starts at this T
    (:func:`ramp_temperature`) instead of final / steps; default None. Measured with
    ``act_alpha="fit"`` alone (paper backward): T0 = 5 did not prevent the collapse (0.0995);
    with both defaults at 4/4, T0 = 50 gave 0.322.

    Ends with every quantizer on eq. (11), BatchNorm statistics re-estimated under it over
    ``bn_batches`` training batches (0: kept from training) and all requires_grad flags
    restored; returns {"phases": [fit summaries], "soft_test_accuracy"/"_loss" (the last
    phase's evaluation, eq. 6 where that phase trained), "hard_test_accuracy_soft_bn"/"_loss"
    (eq. 11, training's BatchNorm statistics), "hard_test_accuracy"/"hard_test_loss" (eq. 11,
    re-estimated statistics: the returned model), "bn_reestimated" (layers), "temperature"}
    (:func:`lowbit.experiment.run` writes them to summary.json under "qnet").
    """
    if factor is None and final_temperature is None:
        final_temperature = FINAL_TEMPERATURE
    if final_temperature is not None:
        ramp_temperature(0, 1, final_temperature)
        restart = True if restart_temperature is None else restart_temperature
    else:
        temperature_schedule(0, factor)
        restart = bool(restart_temperature)
    out_dir, summaries, calibrated, floors = Path(out_dir), [], False, []
    act_init_for(act_init, 1)  # validate now, not when phase 2 calibrates
    if act_beta_floor:
        beta_floors(nn.Sequential(), act_beta_floor)  # validate now
    if not _soft_acts(model):
        phases = tuple(p for p in phases if not p.quantize_acts)
    set_act_grad_temperature(model, act_grad_temperature)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for k, phase in enumerate(phases):
            _apply_phase(model, phase)
            if phase.quantize_acts and not calibrated:
                gen = torch.Generator().manual_seed(config.seed)
                calibrate_activations(model, train[0], generator=gen, init=act_init,
                                      alpha=act_alpha)
                calibrated = True
                if act_beta_floor:
                    floors = beta_floors(model, act_beta_floor)
            kinds = ((SoftWeight,) if phase.train_weights else ()) + (
                (SoftAct,) if phase.train_acts else ())
            offset = 0 if restart else k * config.epochs
            if final_temperature is not None:
                total = config.epochs * (1 if restart else len(phases))
                hooks = {"on_batch_start": qnet_ramp_callback(
                    final_temperature, config.epochs, offset, total, kinds,
                    initial_temperature)}
            elif per_step:
                hooks = {"on_batch_start": qnet_batch_callback(factor, offset, kinds)}
            else:
                hooks = {"on_epoch_start": qnet_epoch_callback(factor, offset, kinds)}
            if act_beta_floor and phase.train_acts:
                hooks = _with_beta_floor(hooks, floors)
            phase_dir = _phase_dir(out_dir, k, phase)
            summaries.append(fit(model, train, test, replace(config, seed=phase_seed(
                config.seed, k)), phase_dir, resume=resume, progress=progress, **hooks))
            _label_metrics(phase_dir / "metrics.jsonl", phase)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    set_hard(model, True)
    for m in _soft_acts(model):
        m.quant_enabled = True
    loss_soft_bn, acc_soft_bn = evaluate(model, *test)
    gen = torch.Generator().manual_seed(config.seed)
    n_bn = reestimate_batchnorm(model, train[0], bn_batches, config.batch_size, config.augment,
                                gen)
    loss, accuracy = evaluate(model, *test) if n_bn else (loss_soft_bn, acc_soft_bn)
    result = {"phases": summaries,
              "soft_test_accuracy": summaries[-1]["test_accuracy"],
              "soft_test_loss": summaries[-1]["test_loss"],
              "hard_test_accuracy_soft_bn": acc_soft_bn, "hard_test_loss_soft_bn": loss_soft_bn,
              "hard_test_accuracy": accuracy, "hard_test_loss": loss, "bn_reestimated": n_bn,
              "bn_batches": bn_batches if n_bn else 0,
              "temperature": ({"final": final_temperature, "restart_per_phase": restart}
                              if final_temperature is not None else
                              {"factor": factor, "per_step": per_step,
                               "restart_per_phase": restart})}
    return result
