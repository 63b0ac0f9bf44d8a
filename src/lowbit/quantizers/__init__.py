"""Quantizer modules: hyper-parameters, learned parameters and buffers around lowbit.functional."""

from lowbit.quantizers.base import ActQuantizer, WeightQuantizer
from lowbit.quantizers.binary import (
    ABCAct,
    ABCWeight,
    BinaryConnectWeight,
    BNNAct,
    BNNWeight,
    XNORAct,
    XNORWeight,
)
from lowbit.quantizers.dorefa import DoReFaAct, DoReFaGradient, DoReFaWeight
from lowbit.quantizers.half import BFloat16Weight, Float16Weight
from lowbit.quantizers.hwgq import HWGQAct
from lowbit.quantizers.ivan import IvanAct, IvanWeight
from lowbit.quantizers.learned import LSQAct, LSQWeight, PACTAct
from lowbit.quantizers.log2 import INQWeight, Pow2Act, Pow2Weight
from lowbit.quantizers.registry import (
    METHODS,
    Method,
    get_method,
    make_act_quantizer,
    make_grad_quantizer,
    make_weight_quantizer,
)
from lowbit.quantizers.soft import SoftAct, SoftWeight
from lowbit.quantizers.stochastic import StochasticAct, StochasticWeight, WuWeight
from lowbit.quantizers.ternary import TTQWeight, TWNWeight
from lowbit.quantizers.uniform import UniformAct, UniformWeight

__all__ = [
    "ABCAct",
    "ABCWeight",
    "ActQuantizer",
    "BFloat16Weight",
    "BNNAct",
    "BNNWeight",
    "BinaryConnectWeight",
    "DoReFaAct",
    "DoReFaGradient",
    "DoReFaWeight",
    "Float16Weight",
    "HWGQAct",
    "INQWeight",
    "IvanAct",
    "IvanWeight",
    "LSQAct",
    "LSQWeight",
    "METHODS",
    "Method",
    "PACTAct",
    "Pow2Act",
    "Pow2Weight",
    "SoftAct",
    "SoftWeight",
    "StochasticAct",
    "StochasticWeight",
    "TTQWeight",
    "TWNWeight",
    "UniformAct",
    "UniformWeight",
    "WeightQuantizer",
    "WuWeight",
    "XNORAct",
    "XNORWeight",
    "get_method",
    "make_act_quantizer",
    "make_grad_quantizer",
    "make_weight_quantizer",
]
