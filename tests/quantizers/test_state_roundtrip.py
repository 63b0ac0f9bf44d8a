"""What is saved evaluates to what was measured (issue 7 item 5): for every method of the
registry, a quantized model trained a few steps (and switched into its inference mode where the
method has one) gives bit-identical eval outputs after state_dict -> a model rebuilt from the
same recipe -> load_state_dict."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from lowbit import Recipe, quantize
from lowbit.quantizers import INQWeight, SoftAct, SoftWeight
from lowbit.quantizers.registry import METHODS


def _bits(cls) -> list[int]:
    return sorted({min(cls.BITS), *([4] if 4 in cls.BITS else [])})


CASES = [(name, role, b) for name, m in METHODS.items()
         for role, cls in (("weight", m.weight), ("activation", m.act)) if cls is not None
         for b in _bits(cls)]


class TinyNet(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        )
        self.fc = nn.Linear(4 * 6 * 6, 8)
        self.relu = nn.ReLU()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.relu(self.fc(self.features(x).flatten(1))))


def recipe_for(method: str, role: str, bits: int) -> Recipe:
    kw = {"weight": method, "w_bits": bits} if role == "weight" else {"act": method,
                                                                    "a_bits": bits}
    return Recipe(keep_first=False, keep_last=False, **kw)


def train_a_little(model: nn.Module, steps: int = 3) -> None:
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for m in model.modules():  # a temperature other than the initial 1 must be saved too
        if isinstance(m, (SoftWeight, SoftAct)):
            m.temperature.fill_(5.0)
    for _ in range(steps):
        x = torch.randn(16, 1, 6, 6, generator=gen)
        y = torch.randint(0, 3, (16,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        for m in model.modules():
            wq = getattr(m, "weight_quant", None)
            if hasattr(wq, "after_step"):
                wq.after_step(m.weight)


def switch_modes(model: nn.Module) -> None:
    """The methods' mode switches: Quantization Networks soft -> hard, INQ's partial freeze."""
    for m in model.modules():
        if isinstance(m, (SoftWeight, SoftAct)):
            m.hard = True
        wq = getattr(m, "weight_quant", None)
        if isinstance(wq, INQWeight):
            wq.partition_(m.weight, 0.5)


@pytest.mark.parametrize("method,role,bits", CASES, ids=[f"{m}-{r}-{b}" for m, r, b in CASES])
def test_saved_state_evaluates_the_same(method, role, bits):
    recipe = recipe_for(method, role, bits)
    model = quantize(TinyNet(0), recipe)
    train_a_little(model)
    switch_modes(model)
    train_a_little(model, steps=1)  # a step in the switched mode (INQ retrains the rest)
    x = torch.randn(10, 1, 6, 6, generator=torch.Generator().manual_seed(7))
    model.eval()
    with torch.no_grad():
        expected = model(x)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = quantize(TinyNet(123), recipe)
    fresh.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)


@pytest.mark.parametrize("role", ["weight", "activation"])
def test_qnet_hard_flag_is_saved_and_old_state_dicts_load(role):
    recipe = recipe_for("qnet", role, 2)
    model = quantize(TinyNet(0), recipe)
    switch_modes(model)
    sd = model.state_dict()
    hard_keys = [k for k in sd if k.endswith(".hard")]
    assert hard_keys and all(sd[k].dtype == torch.bool and bool(sd[k]) for k in hard_keys)
    fresh = quantize(TinyNet(1), recipe)
    fresh.load_state_dict(sd)
    soft = [m for m in fresh.modules() if isinstance(m, (SoftWeight, SoftAct))]
    assert soft and all(m.hard for m in soft)
    # a state dict written before the flag was saved: loads strictly, the flag is left alone
    old = {k: v for k, v in sd.items() if not k.endswith(".hard")}
    older = quantize(TinyNet(1), recipe)
    older.load_state_dict(old, strict=True)
    assert not any(m.hard for m in older.modules() if isinstance(m, (SoftWeight, SoftAct)))
