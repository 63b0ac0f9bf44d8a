"""The exceptions lowbit raises. Each subclasses a builtin so callers can catch either."""


class LowbitError(Exception):
    """Base class of every error lowbit raises on purpose."""


class BitsError(LowbitError, ValueError):
    """A bit width that is not an integer, outside 1..32, or not accepted by a method."""


class MethodError(LowbitError, KeyError):
    """An unknown quantization method name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class NonFiniteError(LowbitError, ValueError):
    """NaN or Inf in a tensor that is being quantized."""


class EmptyTensorError(LowbitError, ValueError):
    """An empty tensor given to a quantizer that needs statistics of its input."""


class NoQuantizableLayerError(LowbitError, ValueError):
    """quantize() found nothing in the model that the recipe could quantize."""


class DataError(LowbitError, OSError):
    """A dataset file that is missing, truncated, corrupt or fails its checksum."""


class CheckpointError(LowbitError, OSError):
    """A checkpoint or model file that is missing, truncated or not a lowbit file."""
