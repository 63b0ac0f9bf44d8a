"""Incremental Network Quantization: A. Zhou, A. Yao, Y. Guo, L. Xu, Y. Chen, "Incremental Network
Quantization: Towards Lossless CNNs with Low-Precision Weights", ICLR 2017, arXiv:1702.03044,
sec. 2.2-2.3 and Algorithm 1 (survey of Guo 2018, sec. 4.1 and 6.2).

Each layer's weights are partitioned by magnitude; at step i the largest-|w| float weights, up
to an accumulated portion sigma_i of the layer (the paper's 50%, 75%, 87.5%, 100%), are set to
their power-of-two levels and frozen; the remaining float weights are retrained (lowbit.train.fit)
to compensate. The levels and the freezing live in :class:`lowbit.quantizers.log2.INQWeight`
(frozen entries get a zero gradient and the forward reads their stored values).

The procedure attaches to the quantizer type: it partitions the layers whose weight quantizer
is an :class:`INQWeight` (:func:`inq_layers`), wherever a recipe or a LayerRule put one; every
other layer's parameters train as in :func:`fit` in every retraining step.

Each retraining step i trains with its own seed, :func:`step_seed` (config.seed, i), so every
step draws a new shuffle and augmentation order (Algorithm 1 retrains each step as a new run
over the data; replaying step 1's order in every step is no part of it). Step 1 keeps
``config.seed`` itself.

Deviation: after the last portion (1.0) every weight is frozen, so that step is not retrained
(only biases / batch-norm could move); it is evaluated. Algorithm 1 likewise ends there.
Tests: tests/train/test_inq.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from lowbit.errors import LowbitError
from lowbit.nn.layers import QuantConv2d, QuantLinear
from lowbit.quantizers.log2 import INQWeight
from lowbit.train.config import TrainConfig
from lowbit.train.loop import evaluate, fit

PAPER_PORTIONS = (0.5, 0.75, 0.875, 1.0)
SEED_STRIDE = 0x9E3779B1  # odd (golden-ratio constant): steps get distinct seeds mod 2^32


def step_seed(seed: int, step: int) -> int:
    """The seed of retraining step ``step`` (1-based): ``seed`` for step 1, then
    (seed + (step - 1) * SEED_STRIDE) mod 2^32, distinct for every step of a run."""
    return (seed + (step - 1) * SEED_STRIDE) % 2**32


def inq_layers(model: nn.Module) -> list[tuple[str, nn.Module, INQWeight]]:
    """(name, layer, quantizer) for every QuantLinear/QuantConv2d of ``model`` using INQ."""
    return [(name, m, m.weight_quant) for name, m in model.named_modules()
            if isinstance(m, (QuantLinear, QuantConv2d)) and isinstance(m.weight_quant, INQWeight)]


def inq_partition_(model: nn.Module, portion: float) -> dict[str, int]:
    """Freeze, in every INQ layer, the largest-|w| weights up to ``portion`` (accumulated) of
    the layer and set them to their power-of-two values. Returns {layer name: newly frozen}."""
    layers = inq_layers(model)
    if not layers:
        raise LowbitError(f"{type(model).__name__} has no INQ layer; quantize it with a recipe "
                          "or LayerRule that sets weight='inq' first")
    return {name: q.partition_(layer.weight, portion) for name, layer, q in layers}


def _check_portions(portions: Sequence[float]) -> tuple[float, ...]:
    ps = tuple(float(p) for p in portions)
    ok = bool(ps) and all(0.0 < p <= 1.0 for p in ps)
    ok = ok and all(a < b for a, b in zip(ps, ps[1:], strict=False))
    if not ok or ps[-1] != 1.0:
        raise ValueError(f"INQ portions must increase strictly within (0, 1] and end at 1.0, "
                         f"got {portions!r}")
    return ps


def fit_inq(
    model: nn.Module,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    config: TrainConfig,
    out_dir: str | Path,
    portions: Sequence[float] = PAPER_PORTIONS,
    epochs_per_step: int | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run INQ on an INQ-quantized (pre-trained) ``model``: for each accumulated portion,
    partition, then retrain with :func:`lowbit.train.fit` in ``out_dir/step<i>`` (``config``,
    with ``epochs = epochs_per_step`` when given, and the step's own seed, :func:`step_seed`).
    The last portion (1.0) is evaluated only.

    ``resume=True`` re-runs the partitions (deterministic given the model) and resumes every
    step's fit from its checkpoint, so an interrupted run continues where it stopped.
    Returns {"steps": [{portion, frozen_fraction, summary}], "test_accuracy", "test_loss"}.
    """
    ps = _check_portions(portions)
    if epochs_per_step is not None:
        config = dataclasses.replace(config, epochs=epochs_per_step)
    out_dir, steps = Path(out_dir), []
    for i, portion in enumerate(ps, start=1):
        inq_partition_(model, portion)
        frozen = min(q.frozen_fraction for _, _, q in inq_layers(model))
        if portion < 1.0:
            step_config = dataclasses.replace(config, seed=step_seed(config.seed, i))
            summary = fit(model, train, test, step_config, out_dir / f"step{i}", resume=resume,
                          progress=progress)
        else:
            loss, accuracy = evaluate(model, *test)
            summary = {"test_accuracy": accuracy, "test_loss": loss, "epochs": 0,
                       "wall_seconds": 0.0}
        steps.append({"portion": portion, "frozen_fraction": frozen, "summary": summary})
    last = steps[-1]["summary"]
    return {"steps": steps, "test_accuracy": last["test_accuracy"], "test_loss": last["test_loss"]}
