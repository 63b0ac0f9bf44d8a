"""lowbit: train, compress and deploy quantized neural networks at any bit width.

The public names below are loaded on first use (PEP 562 module ``__getattr__``), so that
``import lowbit.runtime`` -- the deployment runtime, numpy only -- does not import torch or the
training code on a device that has neither (tests/runtime/test_no_torch.py). ``import lowbit``
followed by ``lowbit.quantize(...)`` works as before; ``from lowbit import quantize`` too.
The exporter lives in ``lowbit.exporter`` (not ``lowbit.export``, which would shadow the
function ``lowbit.export`` as soon as a submodule of it is imported).
"""

import importlib
import os

# Before torch loads its OpenMP runtime (it reads the environment once, at load): a thread that
# waits at a barrier sleeps instead of spinning, so it yields its core to the thread it waits
# for when the machine is busy. The user's own setting wins. Why and how much: lowbit/threads.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

# public name -> the module that defines it (a submodule itself when the name is a module)
_LAZY = {
    "data": "lowbit.data", "functional": "lowbit.functional", "models": "lowbit.models",
    "ptq": "lowbit.ptq", "train": "lowbit.train", "runtime": "lowbit.runtime",
    "calibrate": "lowbit.calibration", "freeze_model": "lowbit.calibration",
    "LayerPlan": "lowbit.convert", "add_input_quantizers": "lowbit.convert",
    "plan": "lowbit.convert", "quantize": "lowbit.convert", "requantize": "lowbit.convert",
    "BitsError": "lowbit.errors", "CheckpointError": "lowbit.errors",
    "DataError": "lowbit.errors", "LowbitError": "lowbit.errors",
    "MethodError": "lowbit.errors", "NonFiniteError": "lowbit.errors",
    "NoQuantizableLayerError": "lowbit.errors",
    "export": "lowbit.exporter", "fold_batchnorm": "lowbit.fold",
    "QuantAct": "lowbit.nn", "QuantConv2d": "lowbit.nn", "QuantLinear": "lowbit.nn",
    "set_quantization": "lowbit.nn",
    "METHODS": "lowbit.quantizers", "get_method": "lowbit.quantizers",
    "QuantSpec": "lowbit.quantizers.spec",
    "LayerRule": "lowbit.recipe", "Recipe": "lowbit.recipe",
    "model_bytes": "lowbit.size",
    "TrainConfig": "lowbit.train", "evaluate": "lowbit.train", "fit": "lowbit.train",
}
_MODULES = {"data", "functional", "models", "ptq", "train", "runtime"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'lowbit' has no attribute {name!r}")
    module = importlib.import_module(target)
    value = module if name in _MODULES else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
