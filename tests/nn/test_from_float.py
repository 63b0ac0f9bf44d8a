"""from_float builds the quantized layer through __init__ and shares only the Parameters and
buffers with the float layer: hooks registered after the swap stay on their own module
(issue 8 item 8); hooks of the float layer before the swap are copied."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit import QuantConv2d, QuantLinear
from lowbit.quantizers import IvanWeight

LAYERS = [
    (lambda: nn.Linear(5, 3), QuantLinear, (4, 5)),
    (lambda: nn.Linear(5, 3, bias=False), QuantLinear, (4, 5)),
    (lambda: nn.Conv2d(2, 4, 3, stride=2, padding=1, dilation=1, groups=2, bias=True,
                       padding_mode="reflect"), QuantConv2d, (2, 2, 7, 7)),
]


def float_layer(i: int) -> nn.Module:
    torch.manual_seed(i)
    return LAYERS[i][0]()


@pytest.mark.parametrize("i", range(len(LAYERS)))
def test_hooks_registered_after_the_swap_do_not_cross(i):
    make, cls, shape = LAYERS[i]
    mod = float_layer(i)
    q = cls.from_float(mod, IvanWeight(4))
    fired = []
    q.register_forward_hook(lambda *_: fired.append("q"))
    q.register_forward_pre_hook(lambda *_: fired.append("q-pre"))
    mod.register_forward_hook(lambda *_: fired.append("float"))
    x = torch.randn(*shape)
    mod(x)
    assert fired == ["float"]
    fired.clear()
    q(x)
    assert fired == ["q-pre", "q"]


def test_hooks_of_the_float_layer_are_copied_not_shared():
    mod = float_layer(0)
    fired = []
    handle = mod.register_forward_hook(lambda *_: fired.append("before"))
    q = QuantLinear.from_float(mod, None)
    assert q._forward_hooks is not mod._forward_hooks
    q(torch.randn(4, 5))
    assert fired == ["before"]  # kept on the quantized layer
    handle.remove()  # removes it from the float layer only
    fired.clear()
    mod(torch.randn(4, 5))
    q(torch.randn(4, 5))
    assert fired == ["before"]


@pytest.mark.parametrize("i", range(len(LAYERS)))
@pytest.mark.parametrize("training", [True, False])
def test_parameters_hyper_parameters_training_and_forward_preserved(i, training):
    make, cls, shape = LAYERS[i]
    mod = float_layer(i).train(training)
    q = cls.from_float(mod, None)
    assert q.weight is mod.weight and q.bias is mod.bias
    assert q.training is training
    assert not any(t.is_meta for t in (*q.parameters(), *q.buffers()))
    assert q.extra_repr() == mod.extra_repr()
    x = torch.randn(*shape)
    assert torch.equal(q(x), mod(x))
    assert list(q.state_dict()) == list(mod.state_dict())


def test_from_float_draws_no_random_numbers():
    conv, lin = float_layer(2), float_layer(0)
    torch.manual_seed(5)
    QuantConv2d.from_float(conv, None)
    QuantLinear.from_float(lin, None)
    drawn = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(drawn, torch.rand(3))


def test_dtype_and_user_attributes_carried():
    mod = nn.Linear(5, 3).double()
    mod.tag = "encoder"
    q = QuantLinear.from_float(mod, IvanWeight(4))
    assert q.weight.dtype == torch.float64 and q.tag == "encoder"
    assert q.weight_quant is not None and q.input_quant is None
