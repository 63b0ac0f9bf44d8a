"""Quantized layers."""

from lowbit.nn.layers import QuantAct, QuantConv2d, QuantLinear, set_finite_check, set_quantization

__all__ = ["QuantAct", "QuantConv2d", "QuantLinear", "set_finite_check", "set_quantization"]
