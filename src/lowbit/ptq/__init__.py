"""Post-training algorithms that do better than round-to-nearest, as building blocks a PTQ
driver calls: cross-layer equalization and empirical bias correction (Nagel et al. 2019) and
AdaRound (Nagel et al. 2020)."""

from lowbit.ptq.equalize import EqualizedPair, EqualizeReport, SkippedLayer, equalize

__all__ = ["EqualizeReport", "EqualizedPair", "SkippedLayer", "equalize"]
