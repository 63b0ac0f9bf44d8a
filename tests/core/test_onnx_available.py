"""The ONNX stack of the dev extra is installed and works: torch.onnx writes a model that
onnx.checker accepts and onnxruntime runs like torch. The legacy (TorchScript) exporter keeps
this under a second; the default dynamo exporter (which benchmarks/ptq_peers.py uses) costs
5-6 s of torch._dynamo and onnxscript imports, so onnxscript is only checked to be present."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning")
def test_linear_relu_linear_exports_and_runs_in_onnxruntime(tmp_path):
    assert importlib.util.find_spec("onnxscript") is not None  # the dynamo exporter's builder
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(5, 8)
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"])
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    np.testing.assert_allclose(got, net(x).detach().numpy(), rtol=0, atol=1e-5)
