"""Quantizer modules: hyper-parameters, learned parameters and buffers around lowbit.functional."""

from lowbit.quantizers.base import ActQuantizer, WeightQuantizer
from lowbit.quantizers.ivan import IvanAct, IvanWeight
from lowbit.quantizers.registry import (
    METHODS,
    Method,
    get_method,
    make_act_quantizer,
    make_weight_quantizer,
)
from lowbit.quantizers.uniform import UniformAct, UniformWeight

__all__ = [
    "METHODS",
    "ActQuantizer",
    "IvanAct",
    "IvanWeight",
    "Method",
    "UniformAct",
    "UniformWeight",
    "WeightQuantizer",
    "get_method",
    "make_act_quantizer",
    "make_weight_quantizer",
]
