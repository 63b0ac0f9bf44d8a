"""The float torch twin of a ``.lowbit`` file (lowbit.bench.torchnet) is the network the file
holds: a float model exported and interpreted gives the float model's logits, and with its
activation grids applied (``grids=True``) a quantized one gives the frozen fake-quantized
model's logits (the same decoded weights, the same quantizer outputs, torch's same float ops;
ResNet-20 covers add, BatchNorm and adaptive pooling in the float test, LeNet-5 convolutions and
max pooling in both).
With ``grids=False`` (the benchmark's float network) each quantizer is the clip to its range."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lowbit
from lowbit.bench.torchnet import torch_net
from lowbit.exporter import export, frozen_copy
from lowbit.models import build_model

SHAPES = {"lenet300": (1, 28, 28), "lenet5": (1, 28, 28), "resnet20": (3, 32, 32)}


def _net(arch: str, recipe=None) -> torch.nn.Module:
    torch.manual_seed(0)
    c, h, w = SHAPES[arch]
    net = build_model(arch, c, h, 10, 0.45, 0.25)
    if recipe is not None:
        net = lowbit.quantize(net, recipe)
    net.train()
    with torch.no_grad():  # BatchNorm statistics, observed ranges
        net(torch.rand(16, c, h, w))
    return net.eval()


def _x(arch: str, n: int = 8) -> torch.Tensor:
    return torch.rand(n, *SHAPES[arch], generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_a_float_file_interprets_to_the_float_model(arch, tmp_path):
    net = _net(arch)
    g = torch_net(export(net, tmp_path / "f.lowbit", input_shape=SHAPES[arch]))
    x = _x(arch)
    with torch.no_grad():
        np.testing.assert_allclose(g(x).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch,method,bits", [("lenet300", "xnor", 1), ("lenet5", "ivan", 4),
                                              ("lenet5", "dorefa", 2)])
def test_with_its_grids_it_is_the_fake_quantized_model(arch, method, bits, tmp_path):
    net = _net(arch, lowbit.Recipe(weight=method, act=method, w_bits=bits, a_bits=bits))
    path = export(net, tmp_path / "q.lowbit", input_shape=SHAPES[arch])
    x = _x(arch)
    with torch.no_grad():
        got, want = torch_net(path, grids=True)(x), frozen_copy(net)(x)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    assert (got.argmax(1) == want.argmax(1)).all()


def test_without_grids_a_quantizer_is_the_clip_to_its_range(tmp_path):
    net = _net("lenet300", lowbit.Recipe(weight="xnor", act="xnor", w_bits=1, a_bits=1))
    g = torch_net(export(net, tmp_path / "q.lowbit", input_shape=(1, 28, 28)))
    steps = [s for s in g.steps if s["op"] == "quantize"]
    assert steps and all(s["range"] == (-1.0, 1.0) for s in steps)  # sign: values -1, +1
    x = torch.linspace(-3, 3, 13)
    assert torch.equal(g._run(steps[0], [x]), x.clamp(-1, 1))
    assert [type(m) for m in g.layers.values()] == [torch.nn.Linear] * 3  # for quantize_dynamic
