"""Which float activation module a given activation quantizer may stand for (the table
:func:`lowbit.quantize` consults before it swaps an activation for a :class:`QuantAct`).

Two kinds of activation quantizers (``ActQuantizer.REPLACES_ACTIVATION``):

- **True: the quantizer is the non-linearity.** It replaces a float activation only where the
  function it computes is that activation's (quantized):
  * the clipped-ReLU quantizers (Ivan's A_b, DoReFa, PACT, LSQ, HWGQ, ABC-Net) contain a ReLU
    clip ``[0, c]``: they replace ``nn.ReLU``, as their papers do. Not ``nn.ReLU6`` (their clip
    is 1, learned or fitted, not 6) nor any activation with negative outputs.
  * the sign quantizers (BNN, XNOR-Net): sign(x) with the gradient cancelled where |x| > 1 is
    the quantized ``nn.Hardtanh(-1, 1)`` (BNN's own activation: same gradient, sign of the same
    value), so they replace ``nn.Hardtanh(-1, 1)``; and ``nn.ReLU``, the place the lowbit models
    give every activation (what ``quantize`` has always done for these methods).
- **False: the quantizer quantizes the output of the float activation** it follows (kept in
  the :class:`QuantAct` as ``float_act``). An affine grid with a zero point (``UniformAct``)
  follows any activation in :data:`ACTIVATIONS`; the unsigned grids starting at 0 (power-of-two,
  stochastic fixed point, Quantization Networks) follow only activations whose outputs are
  never negative (:data:`NONNEGATIVE`, ``nn.Hardtanh`` with ``min_val >= 0``): after GELU, SiLU
  or Tanh they would silently clip the negative part.

Anything else is refused with a message naming the alternatives (:func:`refusal`).
"""

from __future__ import annotations

from torch import nn

from lowbit.quantizers.base import ActQuantizer
from lowbit.quantizers.binary import BNNAct, XNORAct
from lowbit.quantizers.uniform import UniformAct

NONNEGATIVE: tuple[type, ...] = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid, nn.Softplus)
SIGNED: tuple[type, ...] = (nn.Hardtanh, nn.Tanh, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU,
                            nn.Hardswish, nn.Mish)
ACTIVATIONS: tuple[type, ...] = NONNEGATIVE + SIGNED  # the modules quantize() can swap
SIGN_QUANTIZERS: tuple[type, ...] = (BNNAct, XNORAct)
AFFINE_QUANTIZERS: tuple[type, ...] = (UniformAct,)


def is_activation(module: nn.Module) -> bool:
    """True for a float activation module quantize() considers (exact type: ReLU6 is a
    subclass of Hardtanh in torch, and a user subclass may compute something else)."""
    return type(module) in ACTIVATIONS


def nonnegative(act: nn.Module) -> bool:
    """True when ``act``'s outputs are never negative."""
    if type(act) is nn.Hardtanh:
        return act.min_val >= 0
    return type(act) in NONNEGATIVE


def _is_unit_hardtanh(act: nn.Module) -> bool:
    return type(act) is nn.Hardtanh and (act.min_val, act.max_val) == (-1.0, 1.0)


def refusal(quant_cls: type[ActQuantizer], act: nn.Module) -> str | None:
    """Why a quantizer of class ``quant_cls`` cannot stand for ``act`` (None: it can)."""
    name, act_name = quant_cls.__name__, repr(act)
    if quant_cls.REPLACES_ACTIVATION:
        if type(act) is nn.ReLU:
            return None
        if issubclass(quant_cls, SIGN_QUANTIZERS):
            if _is_unit_hardtanh(act):
                return None
            return (f"{name} computes sign(x), the quantized nn.ReLU / nn.Hardtanh(-1, 1), not "
                    f"{act_name}")
        return (f"{name} replaces the activation with its own ReLU clip, so it stands only for "
                f"nn.ReLU, not {act_name}; quantize its output with a method that follows the "
                "activation (e.g. 'uniform')")
    if issubclass(quant_cls, AFFINE_QUANTIZERS) or nonnegative(act):
        return None
    return (f"{name} quantizes to an unsigned grid starting at 0, but {act_name} has negative "
            "outputs it would clip; use an affine method (e.g. 'uniform') for this activation")
