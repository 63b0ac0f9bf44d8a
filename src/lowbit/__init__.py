"""lowbit: train, compress and deploy quantized neural networks at any bit width."""

import os

# Before torch loads its OpenMP runtime (it reads the environment once, at load): a thread that
# waits at a barrier sleeps instead of spinning, so it yields its core to the thread it waits
# for when the machine is busy. The user's own setting wins. Why and how much: lowbit/threads.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from lowbit import data, functional, models, ptq, train
from lowbit.calibrate import calibrate, freeze_model
from lowbit.convert import LayerPlan, add_input_quantizers, plan, quantize, requantize
from lowbit.errors import (
    BitsError,
    CheckpointError,
    DataError,
    LowbitError,
    MethodError,
    NonFiniteError,
    NoQuantizableLayerError,
)
from lowbit.fold import fold_batchnorm
from lowbit.nn import QuantAct, QuantConv2d, QuantLinear, set_quantization
from lowbit.quantizers import METHODS, get_method
from lowbit.quantizers.spec import QuantSpec
from lowbit.recipe import LayerRule, Recipe
from lowbit.size import model_bytes
from lowbit.train import TrainConfig, evaluate, fit

__version__ = "0.1.0"

__all__ = [
    "calibrate",
    "freeze_model",
    "METHODS",
    "BitsError",
    "CheckpointError",
    "DataError",
    "LayerPlan",
    "LayerRule",
    "LowbitError",
    "MethodError",
    "NoQuantizableLayerError",
    "NonFiniteError",
    "QuantAct",
    "QuantConv2d",
    "QuantLinear",
    "QuantSpec",
    "Recipe",
    "TrainConfig",
    "add_input_quantizers",
    "data",
    "evaluate",
    "fit",
    "fold_batchnorm",
    "functional",
    "get_method",
    "model_bytes",
    "models",
    "plan",
    "ptq",
    "quantize",
    "requantize",
    "set_quantization",
    "train",
]
