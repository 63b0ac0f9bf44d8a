"""Issue 12 item 3: ``fit_qnet(act_beta_floor=f)`` keeps each SoftAct's beta >= f x its
calibrated value under a gradient that pushes beta down (a loss increasing in beta)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit
from lowbit.nn.layers import QuantAct
from lowbit.quantizers.soft import SoftAct
from lowbit.train.config import TrainConfig
from lowbit.train.qnet import _soft_acts, _with_beta_floor, beta_floors, fit_qnet


def test_beta_floor_projects_after_adversarial_steps():
    q = SoftAct(2)
    q.calibrate(torch.linspace(0.0, 3.0, 400))
    model = nn.Sequential(QuantAct(q, nn.ReLU()))
    beta0 = float(q.beta)
    assert beta0 == pytest.approx(5 * 3 / (4 * 3.0))  # beta = 5p / (4q), sec. 4.1
    hooks = _with_beta_floor({}, beta_floors(model, 0.5))
    opt = torch.optim.SGD([q.beta], lr=1.0)
    for step in range(5):
        hooks["on_batch_start"](0, step, 5, model)
        assert float(q.beta) >= 0.5 * beta0 - 1e-7
        opt.zero_grad()
        (10.0 * q.beta).backward()  # d/dbeta = 10: each step moves beta by -10
        opt.step()
    assert float(q.beta) < 0  # the unprojected last step crossed zero ...
    hooks["on_batch_start"](0, 0, 5, model)
    assert float(q.beta) == pytest.approx(0.5 * beta0)  # ... and the projection restores it


def test_beta_floor_rejects_fractions_outside_0_1():
    with pytest.raises(ValueError):
        beta_floors(nn.Sequential(), 0.0)
    with pytest.raises(ValueError):
        fit_qnet(nn.Sequential(), (None, None), (None, None), TrainConfig(), "unused",
                 act_beta_floor=1.5)


def test_fit_qnet_with_floor_keeps_beta_above_it(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))
    model = lowbit.quantize(net, lowbit.Recipe("qnet", 2, "qnet", 2, keep_first=False,
                                               keep_last=False))
    gen = torch.Generator().manual_seed(1)
    data = (torch.randint(0, 256, (64, 1, 4, 4), generator=gen, dtype=torch.uint8),
            torch.randint(0, 3, (64,), generator=gen))
    for m in _soft_acts(model):  # adversarial: a gradient of +1 pushes beta down by lr a step
        m.quant.beta.register_hook(lambda g: torch.ones_like(g))
    seen = []
    orig = SoftAct.forward

    def spy(self, x):
        if self.training and not self.hard:
            seen.append(float(self.beta.detach()))
        return orig(self, x)

    SoftAct.forward = spy
    try:
        cfg = TrainConfig(epochs=1, batch_size=16, lr=1.0, momentum=0.0, seed=0)
        fit_qnet(model, data, data, cfg, tmp_path, progress=False, act_beta_floor=0.9, bn_batches=0)
    finally:
        SoftAct.forward = orig
    beta = [m.quant.beta for m in _soft_acts(model)]
    assert seen and beta
    # every forward of phases 2 and 3 saw beta >= 0.9 x its calibrated value (the first seen):
    # the floor is taken once, at calibration, not again when phase 3 starts
    assert min(seen) >= 0.9 * seen[0] - 1e-6
    assert min(seen) == pytest.approx(0.9 * seen[0])  # the floor was reached (it acted)
