"""calibrate(): quantizers observe, BatchNorm and dropout do not change, modes are restored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit
from lowbit.calibration import calibrate
from lowbit.quantizers.observers import MinMaxObserver


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def _batches(n=3):
    g = torch.Generator().manual_seed(1)
    return [torch.rand(8, 3, 8, 8, generator=g) for _ in range(n)]


def test_quantizers_observe_and_nothing_else_changes():
    recipe = lowbit.Recipe(weight="ivan", w_bits=4, act="ivan", a_bits=4, keep_first=False,
                           keep_last=False)
    model = lowbit.quantize(_net(), recipe)
    model.train()
    model[3].eval()  # a mixed state to restore
    modes = {name: m.training for name, m in model.named_modules()}
    bn = {k: v.clone() for k, v in model[1].state_dict().items()}
    act = model[2].quant
    assert int(act.num_batches) == 0
    calibrate(model, _batches())
    assert int(act.num_batches) == 3 and float(act.running_max) > 0  # observed
    assert all(torch.equal(v, model[1].state_dict()[k]) for k, v in bn.items())  # BN untouched
    assert {name: m.training for name, m in model.named_modules()} == modes  # restored
    assert not act.is_frozen


def test_dropout_is_off_while_calibrating_and_freeze_fixes_ranges():
    model = _net()
    obs = MinMaxObserver(8)
    seen = []
    model[3].register_forward_hook(lambda m, i, o: seen.append(torch.equal(i[0], o)))
    model[4].register_forward_pre_hook(lambda m, i: obs.update(i[0]))
    calibrate(model, _batches(2))
    assert seen == [True, True] and int(obs.count) == 2  # dropout was the identity
    q = lowbit.quantize(_net(), lowbit.Recipe(weight="ivan", w_bits=4, act="ivan", a_bits=4,
                                              keep_first=False, keep_last=False))
    calibrate(q, _batches(), freeze=True)
    assert q[2].quant.is_frozen and q[0].weight_quant.is_frozen
    m = float(q[2].quant.running_max)
    q.train()
    q(_batches(1)[0] * 100)  # a frozen range does not move, even in training mode
    assert float(q[2].quant.running_max) == m


def test_no_batches_is_an_error():
    with pytest.raises(ValueError, match="no batches"):
        calibrate(_net(), [])


def test_calibrate_reaches_input_quantizers():
    model = lowbit.quantize(_net(), lowbit.Recipe())
    lowbit.add_input_quantizers(model, "uniform", 8, skip_first=False)
    iq = model[0].input_quant
    lowbit.calibrate(model, _batches(2), freeze=True)
    assert int(iq.num_batches) == 2 and iq.is_frozen
