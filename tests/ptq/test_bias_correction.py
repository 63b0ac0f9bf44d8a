"""Empirical bias correction (Nagel et al. 2019, sec. 4.2): the per-channel mean output error of
the quantized model against the float model shrinks at every corrected layer, the float model
is bitwise unchanged, a bias is created where there was none."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lowbit import Recipe, quantize
from lowbit.errors import LowbitError
from lowbit.ptq import correct_bias

NAMES = ["0", "2", "6"]


def nets() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 10)).eval()
    recipe = Recipe(weight="uniform", w_bits=4, keep_first=False, keep_last=False)
    return net, quantize(copy.deepcopy(net), recipe).eval()


def data(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(64, 3, 8, 8, generator=g) + 0.5


def mean_errors(float_model, quant_model, x) -> dict[str, float]:
    """Independent measurement: mean over channels of |mean_q - mean_f| at each layer."""
    def means(model):
        out = {}
        hooks = [model.get_submodule(n).register_forward_hook(
            lambda m, a, y, n=n: out.__setitem__(
                n, y.double().mean(dim=(0, 2, 3) if y.dim() == 4 else 0)))
            for n in NAMES]
        with torch.no_grad():
            model(x)
        for h in hooks:
            h.remove()
        return out
    f, q = means(float_model), means(quant_model)
    return {n: float((q[n] - f[n]).abs().mean()) for n in NAMES}


def test_mean_error_shrinks_and_float_model_unchanged():
    net, q = nets()
    x, held_out = data(1), data(2)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    before, before_held = mean_errors(net, q, x), mean_errors(net, q, held_out)
    report = correct_bias(net, q, [x[:32], (x[32:], None)])
    after, after_held = mean_errors(net, q, x), mean_errors(net, q, held_out)
    for n in NAMES:
        assert after[n] * 5 <= before[n], (n, before[n], after[n])
    for n in NAMES:  # a fresh batch of the same distribution: ~20x measured, 3x asserted
        assert after_held[n] * 3 <= before_held[n], (n, before_held[n], after_held[n])
    assert net.state_dict().keys() == state.keys()
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert [layer.name for layer in report.layers] == NAMES
    assert [layer.bias_created for layer in report.layers] == [False, True, False]
    assert q[2].bias is not None and net[2].bias is None
    for layer in report.layers:
        assert layer.uncorrected == pytest.approx(before[layer.name], rel=1e-4)
        assert layer.after == pytest.approx(after[layer.name], rel=1e-3, abs=1e-7)


def test_training_flags_restored():
    net, q = nets()
    q.train()
    correct_bias(net, q, [data(3)])
    assert all(m.training for m in q.modules()) and not any(m.training for m in net.modules())


def test_shared_bias_is_refused():
    net, q = nets()
    q[0].bias = net[0].bias
    with pytest.raises(LowbitError, match="shares a parameter"):
        correct_bias(net, q, [data(4)])


def test_needs_batches():
    net, q = nets()
    with pytest.raises(ValueError, match="at least one"):
        correct_bias(net, q, [])
