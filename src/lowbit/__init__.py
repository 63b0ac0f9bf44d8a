"""lowbit: train, compress and deploy quantized neural networks at any bit width."""

from lowbit import data, functional, models, train
from lowbit.convert import LayerPlan, plan, quantize
from lowbit.errors import (
    BitsError,
    CheckpointError,
    DataError,
    LowbitError,
    MethodError,
    NonFiniteError,
    NoQuantizableLayerError,
)
from lowbit.nn import QuantAct, QuantConv2d, QuantLinear, set_quantization
from lowbit.quantizers import METHODS, get_method
from lowbit.recipe import LayerRule, Recipe
from lowbit.size import model_bytes
from lowbit.train import TrainConfig, evaluate, fit

__version__ = "0.1.0"

__all__ = [
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
    "Recipe",
    "TrainConfig",
    "data",
    "evaluate",
    "fit",
    "functional",
    "get_method",
    "model_bytes",
    "models",
    "plan",
    "quantize",
    "set_quantization",
    "train",
]
