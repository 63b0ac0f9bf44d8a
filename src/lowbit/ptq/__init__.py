"""Post-training algorithms that do better than round-to-nearest, as building blocks a PTQ
driver calls: cross-layer equalization and empirical bias correction (Nagel et al. 2019) and
AdaRound (Nagel et al. 2020)."""

from lowbit.ptq.adaround import (
    AdaRoundOptions,
    AdaRoundReport,
    AdaRoundResult,
    LayerRounding,
    adaround_layer,
    adaround_model,
)
from lowbit.ptq.bias_correction import BiasReport, LayerBias, correct_bias
from lowbit.ptq.driver import PTQConfig, PTQReport, quantize
from lowbit.ptq.equalize import EqualizedPair, EqualizeReport, SkippedLayer, equalize

__all__ = [
    "AdaRoundOptions",
    "AdaRoundReport",
    "AdaRoundResult",
    "BiasReport",
    "EqualizeReport",
    "EqualizedPair",
    "LayerBias",
    "LayerRounding",
    "PTQConfig",
    "PTQReport",
    "SkippedLayer",
    "adaround_layer",
    "adaround_model",
    "correct_bias",
    "equalize",
    "quantize",
]
