"""Shapes, parameter counts and the quantizer contract of lowbit.models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from lowbit.models import MODELS, LeNet5, LeNet300, Normalize, build_model, resnet20

# (name, in_channels, image_size) for every model on the input it is meant for.
CASES = [
    ("lenet300", 1, 28),
    ("lenet300", 1, 8),
    ("lenet5", 1, 28),
    ("lenet5", 1, 8),
    ("resnet20", 3, 32),
    ("resnet18", 3, 32),
]


def _build(name: str, channels: int, size: int) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, channels, size, 10, [0.5] * channels, [0.25] * channels).eval()


@pytest.mark.parametrize(("name", "channels", "size"), CASES)
def test_output_shape(name: str, channels: int, size: int) -> None:
    model = _build(name, channels, size)
    with torch.no_grad():
        out = model(torch.rand(2, channels, size, size))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_lenet5_non_square_and_three_channel() -> None:
    model = LeNet5(in_channels=3, image_size=(32, 20), num_classes=7).eval()
    assert model(torch.rand(1, 3, 32, 20)).shape == (1, 7)


def test_lenet300_parameter_count() -> None:
    # 784*300+300 + 300*100+100 + 100*10+10 = 235,500 + 30,100 + 1,010
    assert sum(p.numel() for p in LeNet300().parameters()) == 266_610


def test_resnet20_parameter_count() -> None:
    # stem conv 3*16*9 = 432, BN 32
    # stage 1: 3 blocks x (2 * 16*16*9 + 2 BN * 32) = 3 * 4,672 = 14,016
    # stage 2: first block 16*32*9 + 32*32*9 + 2*64 + projection (16*32 + 64) = 14,528,
    #          two blocks x (2 * 32*32*9 + 2*64) = 2 * 18,560 = 37,120 -> 51,648
    # stage 3: first block 32*64*9 + 64*64*9 + 2*128 + projection (32*64 + 128) = 57,728,
    #          two blocks x (2 * 64*64*9 + 2*128) = 2 * 73,984 = 147,968 -> 205,696
    # fc 64*10 + 10 = 650.  Total 432+32+14,016+51,648+205,696+650 = 272,474
    # (option A shortcuts would give the usual 269,722 = 272,474 - 576 - 2,176).
    assert sum(p.numel() for p in resnet20().parameters()) == 272_474


class _CountRelu(TorchFunctionMode):
    """Counts functional relu calls, whether from an nn.ReLU module or written inline."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func in (F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu):
            self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(("name", "channels", "size"), CASES)
def test_each_relu_module_runs_once_and_no_inline_relu(name: str, channels: int, size: int):
    model = _build(name, channels, size)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    every = model.named_modules(remove_duplicate=False)
    all_relus = [m for _, m in every if isinstance(m, nn.ReLU)]
    assert len(relus) == len(all_relus), "an nn.ReLU instance is registered twice"
    assert not any(m.inplace for m in relus)
    calls = {id(m): 0 for m in relus}
    for m in relus:
        m.register_forward_hook(lambda mod, i, o: calls.__setitem__(id(mod), calls[id(mod)] + 1))
    counter = _CountRelu()
    with torch.no_grad(), counter:
        model(torch.rand(1, channels, size, size))
    assert set(calls.values()) == {1}
    assert counter.calls == len(relus), "a relu ran outside an nn.ReLU module"


@pytest.mark.parametrize(("name", "channels", "size"), CASES)
def test_weight_layers_registered_in_execution_order(name: str, channels: int, size: int):
    model = _build(name, channels, size)
    registered = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    executed: list[nn.Module] = []
    for m in registered:
        m.register_forward_hook(lambda mod, i, o: executed.append(mod))
    with torch.no_grad():
        model(torch.rand(1, channels, size, size))
    assert executed == registered
    assert isinstance(registered[-1], nn.Linear) and registered[-1].out_features == 10
    weighted = (nn.Linear, nn.Conv2d, nn.BatchNorm2d)
    for m in model.modules():
        if any(True for _ in m.parameters(recurse=False)):
            assert isinstance(m, weighted), f"weights in unsupported module {type(m).__name__}"


def test_normalize_matches_formula() -> None:
    norm = Normalize([0.1, 0.2, 0.3], [0.5, 0.25, 2.0])
    x = torch.rand(4, 3, 5, 6)
    expected = torch.stack([(x[:, c] - m) / s for c, (m, s) in
                            enumerate([(0.1, 0.5), (0.2, 0.25), (0.3, 2.0)])], dim=1)
    torch.testing.assert_close(norm(x), expected)
    assert set(dict(norm.named_buffers())) == {"mean", "std"}
    assert not list(norm.parameters())


def test_normalize_is_first_layer_of_every_model() -> None:
    for name in MODELS:
        channels, size = (1, 28) if name.startswith("lenet") else (3, 32)
        model = build_model(name, channels, size, 10, 0.5, 0.5)
        assert isinstance(next(iter(model.children())), Normalize)


def test_normalize_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="std"):
        Normalize([0.0], [0.0])
    with pytest.raises(ValueError, match="values"):
        Normalize([0.0, 0.1], [1.0])


def test_build_model_errors() -> None:
    with pytest.raises(ValueError, match="lenet300"):
        build_model("vgg", 3, 32, 10, 0.5, 0.5)
    with pytest.raises(ValueError, match="mean"):
        build_model("resnet20", 3, 32, 10, [0.5, 0.5], 0.5)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("lenet300", 1, 28, 0, 0.5, 0.5)
    with pytest.raises(ValueError, match="4x4"):
        build_model("lenet5", 1, 3, 10, 0.5, 0.5)
