"""``calibrate(model, batches)``: let a model's quantizers and observers see data, and nothing
else change.

Quantizers observe ranges in their training-mode forward (running maxima, moving min/max, LSQ's
first-batch step, ...). Running the model in training mode to calibrate would also update
BatchNorm statistics and apply dropout; :func:`calibrate` puts only the quantizers and
observers in training mode, every other module in eval mode, runs the batches without
gradients, and restores every module's mode afterwards. With ``freeze=True`` every quantizer
is then frozen (:func:`freeze_model`): its observed range becomes its fixed grid.

Stochastic quantizers draw random rounding in training mode, so their calibration batches pass
noisy values on to the layers after them; freeze them first if that matters.
Test: tests/core/test_calibrate.py.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from lowbit.nn.layers import QuantConv2d, QuantLinear
from lowbit.quantizers.base import ActQuantizer, WeightQuantizer
from lowbit.quantizers.observers import Observer

OBSERVING = (WeightQuantizer, ActQuantizer, Observer)
QUANT_WEIGHT_LAYERS = (QuantLinear, QuantConv2d)


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor], freeze: bool = False,
              progress: bool = False) -> nn.Module:
    """Run ``batches`` (model inputs) through ``model`` with only its quantizers and observers
    observing; BatchNorm statistics and dropout untouched; modes restored; returns the model.
    Raises ValueError when ``batches`` is empty (nothing was observed)."""
    modes = {m: m.training for m in model.modules()}
    seen = 0
    try:
        model.eval()
        for m in model.modules():
            if isinstance(m, OBSERVING):
                m.train()
        for x in tqdm(batches, desc="calibrating", disable=not progress, leave=False):
            model(x)
            seen += 1
    finally:
        for m, mode in modes.items():
            m.training = mode
    if seen == 0:
        raise ValueError("calibrate() got no batches")
    if freeze:
        freeze_model(model)
    return model


def freeze_model(model: nn.Module) -> nn.Module:
    """Freeze every quantizer of ``model`` (returns it): each weight quantizer first observes
    the weight of its layer (:meth:`~lowbit.quantizers.base.WeightQuantizer.observe`, so that a
    stored scale is the current weight's), then every weight and activation quantizer is
    frozen. Observers that are not quantizers keep observing."""
    for m in model.modules():
        if isinstance(m, QUANT_WEIGHT_LAYERS) and m.weight_quant is not None:
            m.weight_quant.observe(m.weight)
    for m in model.modules():
        if isinstance(m, (WeightQuantizer, ActQuantizer)):
            m.freeze()
    return model
