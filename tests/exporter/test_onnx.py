"""lowbit.exporter.onnx: the ONNX of a quantized net is valid (full checker), computes what the
frozen torch model computes (ONNX Runtime), stores weights at their width, and is small.

ORT's default graph optimizations change the numerics of a correct QDQ graph: a DQ -> MatMul on a
float input becomes ``MatMulNBits`` with int8-quantized activations (accuracy_level 4), a QDQ ->
MatMul/Conv becomes QGemm/QLinearConv. ``EXACT_CONFIG`` turns both off; the agreement tests use
it, and ``test_report`` prints the numbers of both configurations (``pytest -s``).

Measured (300 LeNet300 / 200 ResNet-20 random inputs, onnxruntime 1.32.0, EXACT_CONFIG):
LeNet300 argmax 100 % for every method, logits within 3e-6, except int8 uniform: up to 9e-4,
in QDQ and exact form alike -- its 256-level grids have thresholds so dense that ORT's float32
MatMul (another summation order than torch's) moves a few activations across one.
ResNet-20: argmax >= 99.3 % (abc), logits max |diff| up to 0.6 (pow2) from a few activation
codes that flip where a float32 conv sum lands next to a threshold in another summation order
(torch vs ORT; the same happens between any two float backends); without quantized activations
(twn, ttq) within 1.2e-6. QDQ and exact activations gave the same outputs on these inputs;
at the thresholds themselves and their float32 neighbours (``test_qdq_at_thresholds``) QDQ
differs from training on 100 + 28 of 765 probes (uniform int8: torch multiplies by 1/scale,
QuantizeLinear divides), lsq 0 + 8 of 45, qnet 2 + 2 of 9, dorefa 0. Default ORT options on
LeNet300: xnor 89 %, bnn 90 %, abc 91 %, lsq 98.7 %, twn 99.7 % argmax; the others 100 %.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

import lowbit
from lowbit.exporter import ExportError, build, frozen_copy
from lowbit.exporter.onnx import TYPES, _dq_weight, _Graph, _quantize, export_onnx, to_onnx
from lowbit.models import build_model
from lowbit.quantizers.binary import ABCAct
from lowbit.runtime.records import Codebook, decode, read_grid

ort = pytest.importorskip("onnxruntime")

EXACT_CONFIG = {"session.qdq_matmulnbits_accuracy_level": "0", "session.disable_quant_qdq": "1"}
METHODS = [("uniform", 8, 8), ("ivan", 4, 4), ("dorefa", 2, 2), ("lsq", 4, 4), ("xnor", 1, 1),
           ("bnn", 1, 1), ("twn", 2, 32), ("ttq", 2, 32), ("pow2", 4, 4), ("abc", 2, 2),
           ("qnet", 2, 2)]
SHAPES = {"lenet300": (1, 28, 28), "resnet20": (3, 32, 32)}
SAMPLES = {"lenet300": 300, "resnet20": 200}
_CACHE: dict = {}


def session(model: onnx.ModelProto, config: dict | None = EXACT_CONFIG):
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    for k, v in (config or {}).items():
        so.add_session_config_entry(k, v)
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


def quantized(arch: str, method: str, w_bits: int, a_bits: int, **recipe):
    """A small net with random weights, calibrated on random data (one train-mode pass)."""
    key = (arch, method, w_bits, a_bits, tuple(sorted(recipe.items())))
    if key not in _CACHE:
        torch.manual_seed(0)
        shape = SHAPES[arch]
        net = build_model(arch, shape[0], shape[1], 10, 0.5, 0.25)
        act = method if a_bits < 32 else "ivan"
        net = lowbit.quantize(net, lowbit.Recipe(weight=method, act=act, w_bits=w_bits,
                                                 a_bits=a_bits, **recipe))
        net.train()
        with torch.no_grad():
            net(torch.rand(64, *shape))
        _CACHE[key] = net.eval()
    return _CACHE[key]


def compare(arch, net, activations="qdq", config=EXACT_CONFIG):
    """(onnx model, argmax agreement, max |logit diff|) on random inputs in [-0.1, 1.1]."""
    shape = SHAPES[arch]
    m = to_onnx(net, input_shape=shape, activations=activations)
    x = torch.rand(SAMPLES[arch], *shape, generator=torch.Generator().manual_seed(1)) * 1.2 - 0.1
    with torch.no_grad():
        want = frozen_copy(net)(x).numpy()
    got = session(m, config).run(None, {"input": x.numpy()})[0]
    return m, float((want.argmax(1) == got.argmax(1)).mean()), float(np.abs(want - got).max())


def forms(m: onnx.ModelProto) -> dict:
    return json.loads({p.key: p.value for p in m.metadata_props}["lowbit.forms"])


def init_types(m: onnx.ModelProto) -> dict:
    return {t.name: onnx.TensorProto.DataType.Name(t.data_type) for t in m.graph.initializer}


@pytest.mark.parametrize("arch", ["lenet300", "resnet20"])
@pytest.mark.parametrize("method,w_bits,a_bits", METHODS)
def test_matches_torch(arch, method, w_bits, a_bits):
    net = quantized(arch, method, w_bits, a_bits)
    m, agree, diff = compare(arch, net)
    onnx.checker.check_model(m, full_check=True)
    assert agree >= 0.99, (agree, diff, forms(m))
    if arch == "lenet300":  # no deep chains of thresholds: float32 rounding only
        assert diff < (2e-3 if method == "uniform" else 1e-5), (diff, forms(m))


def test_exact_activations_match_on_lenet():
    for method, wb, ab in METHODS:
        _, agree, diff = compare("lenet300", quantized("lenet300", method, wb, ab), "exact")
        assert agree == 1.0 and diff < (2e-3 if method == "uniform" else 1e-5), (method, diff)


def test_initializer_types():
    lsq = to_onnx(quantized("lenet300", "lsq", 4, 4), input_shape=SHAPES["lenet300"])
    assert init_types(lsq)["fc2.weight.codes"] == "INT4"
    assert lsq.opset_import[0].version == 21
    for method in ("xnor", "twn"):
        wb = 1 if method == "xnor" else 2
        m = to_onnx(quantized("lenet300", method, wb, wb if method == "xnor" else 32),
                    input_shape=SHAPES["lenet300"])
        assert init_types(m)["fc2.weight.codes"] == "INT2", method
        assert m.opset_import[0].version == 25
    ttq = to_onnx(quantized("lenet300", "ttq", 2, 32), input_shape=SHAPES["lenet300"])
    assert init_types(ttq)["fc2.weight.codes"] == "UINT2"
    ivan = to_onnx(quantized("lenet300", "ivan", 4, 4), input_shape=SHAPES["lenet300"])
    assert init_types(ivan)["fc2.weight.codes"] == "UINT4"  # +-1..+-8 need 5 bits: a table
    assert forms(ivan)["fc2.weight"] == "UINT4 codes + Gather"
    forced = to_onnx(quantized("lenet300", "twn", 2, 32), opset=21,
                     input_shape=SHAPES["lenet300"])
    assert init_types(forced)["fc2.weight.codes"] == "INT4"


def test_size_4bit_lenet(tmp_path):
    net = quantized("lenet300", "lsq", 4, 4, keep_first=False, keep_last=False)
    small = export_onnx(net, tmp_path / "q.onnx", input_shape=SHAPES["lenet300"])
    big = export_onnx(net, tmp_path / "f.onnx", input_shape=SHAPES["lenet300"],
                      weights="float")
    onnx.checker.check_model(str(small), full_check=True)
    assert small.stat().st_size <= big.stat().st_size / 6, (small.stat().st_size,
                                                            big.stat().st_size)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.onnx", "q.onnx"]  # no tmp left


@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_per_group_block_size(kind):
    rng = np.random.default_rng(0)
    shape = (6, 10) if kind == "linear" else (6, 2, 3, 3)
    row, gs = int(np.prod(shape[1:])), 4
    groups = -(-row // gs)
    cb = Codebook("integer", 4, 16, levels=np.arange(-8, 8), zero_point=0, group_size=gs,
                  scale=rng.uniform(0.01, 1, (shape[0], groups)).astype(np.float32))
    codes = rng.integers(0, 16, shape)
    g = _Graph(21)
    int4 = next(t for t in TYPES if t[0] == "INT4")
    w = _dq_weight(g, "w", kind, cb, codes, (int4, cb.levels[codes], None))
    graph = onnx.helper.make_graph(g.nodes, "g", [], [onnx.helper.make_tensor_value_info(
        w, onnx.TensorProto.FLOAT, list(shape) if kind == "conv2d" else shape[::-1])],
        initializer=g.inits)
    m = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 21)])
    onnx.checker.check_model(m, full_check=True)
    got = session(m).run(None, {})[0]
    want = decode(cb, codes)
    assert np.array_equal(got, want.T if kind == "linear" else want)


def test_bad_input():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU())
    with pytest.raises(ExportError, match="GELU"):
        to_onnx(net, input_shape=(4,))
    with pytest.raises(ExportError, match="opset 19"):
        to_onnx(quantized("lenet300", "lsq", 4, 4), opset=19)
    with pytest.raises(ValueError, match="activations"):
        to_onnx(quantized("lenet300", "lsq", 4, 4), activations="float")


def test_report(capsys):
    """Argmax agreement / max logit diff of QDQ vs exact activations, exact vs default ORT."""
    lines = []
    for method, wb, ab in METHODS:
        net = quantized("lenet300", method, wb, ab)
        row = [method]
        for mode, cfg in (("qdq", EXACT_CONFIG), ("exact", EXACT_CONFIG), ("qdq", None)):
            _, agree, diff = compare("lenet300", net, mode, cfg)
            row.append(f"{mode}{'' if cfg else '/default-ort'} {agree:.3f} {diff:.2g}")
        lines.append("  ".join(row))
    with capsys.disabled():
        print("\nlenet300 argmax agreement, max |logit diff|:\n" + "\n".join(lines))


def _quantize_graph(op, sections, mode):
    g = _Graph(25)
    out = _quantize(g, "x", op, sections, mode)
    graph = onnx.helper.make_graph(
        g.nodes, "q", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None])],
        [onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, [None])],
        initializer=g.inits)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 25)]), g


def test_qdq_at_thresholds(capsys):
    """QuantizeLinear (round half to even of x / scale) against each method's own thresholds,
    on every threshold and its two float32 neighbours; the exact form has no mismatch."""
    lines = []
    for method, wb, ab in [*METHODS, ("hwgq", 1, 2)]:
        if ab == 32:
            continue
        net = _hwgq() if method == "hwgq" else quantized("lenet300", method, wb, ab)
        ops, sections = build(frozen_copy(net))
        for op in (o for o in ops if o["op"] == "quantize"):
            grid = read_grid(op["grid"], sections, op["name"])
            t = grid.thresholds
            x = np.concatenate([t, np.nextafter(t, -np.inf), np.nextafter(t, np.inf)])
            want = grid.values[grid.rank(x)]
            for mode in ("qdq", "exact"):
                m, g = _quantize_graph(op, sections, mode)
                got = session(m).run(None, {"x": x.astype(np.float32)})[0]
                bad = int((got != want).sum())
                if mode == "exact":
                    assert bad == 0, (method, op["name"])
                else:
                    lines.append(f"{method} {op['name']}: {g.forms[op['name']]}, "
                                 f"{bad} of {x.size} probes differ")
    with capsys.disabled():
        print("\nQDQ at the thresholds:\n" + "\n".join(lines))


def _hwgq():
    if "hwgq" not in _CACHE:
        torch.manual_seed(0)
        net = build_model("lenet300", 1, 28, 10, 0.5, 0.25)
        net = lowbit.quantize(net, lowbit.Recipe(weight="xnor", act="hwgq", w_bits=1, a_bits=2))
        net.train()
        with torch.no_grad():
            net(torch.rand(64, *SHAPES["lenet300"]))
        _CACHE["hwgq"] = net.eval()
    return _CACHE["hwgq"]


def test_a_non_monotone_grid_takes_the_exact_form():
    """ABC-Net activations with a negative beta (values not increasing along x, grid
    ``monotone: false``) on LeNet-5 (max pooling after them): QDQ mode gives them the exact
    threshold search, and ORT computes the frozen model."""
    torch.manual_seed(0)
    net = lowbit.quantize(build_model("lenet5", 1, 28, 10, 0.5, 0.25),
                          lowbit.Recipe(weight="abc", act="abc", w_bits=2, a_bits=2))
    net.train()
    with torch.no_grad():
        net(torch.rand(64, 1, 28, 28))
        for m in net.modules():
            if isinstance(m, ABCAct):
                m.betas.copy_(torch.tensor([0.6, -0.3]))
    net.eval()
    ops, sections = build(frozen_copy(net))
    grids = [read_grid(op["grid"], sections, op["name"]) for op in ops if op["op"] == "quantize"]
    assert grids and not any(g.monotone for g in grids)
    m = to_onnx(net, input_shape=(1, 28, 28))
    onnx.checker.check_model(m, full_check=True)
    assert all(forms(m)[g.name].startswith("exact") for g in grids), forms(m)
    x = torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = frozen_copy(net)(x).numpy()
    got = session(m).run(None, {"input": x.numpy()})[0]
    assert (want.argmax(1) == got.argmax(1)).mean() >= 0.99
    assert np.median(np.abs(want - got)) < 1e-5
