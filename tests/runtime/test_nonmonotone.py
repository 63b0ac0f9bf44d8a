"""Non-monotone activation grids (docs/format.md, "Activation grid records", ``monotone``):
ABC-Net activations with a negative beta (what a short fine-tune can leave) export as grids
whose values are in x-order, and ``lowbit.runtime`` reproduces the frozen fake-quantized model:
each quantizer and each max pooling on its codes exactly on torch's own inputs, the logits to
float rounding (LeNet-5 with max pooling, ResNet-20). A damaged ``monotone`` field is refused.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import lowbit
import lowbit.runtime as rt
from lowbit.exporter import export, frozen_copy
from lowbit.exporter.thresholds import float_key, key_float
from lowbit.models import build_model
from lowbit.quantizers.binary import ABCAct
from lowbit.runtime.container import read_container, write_container
from lowbit.runtime.integer_only import _affine
from lowbit.runtime.model import _float, _run
from lowbit.runtime.records import Codebook, Grid

SHAPES = {"lenet5": (1, 28, 28), "resnet20": (3, 32, 32)}
BETAS = ([0.6, -0.3], [0.5, -0.5])  # values (-0.3, 0.9, 0.3) and (0, 1, 0): a tie


def _abc_net(arch: str, seed: int = 0) -> torch.nn.Module:
    """An ABC-Net W2A2 model (running statistics from two passes) whose activations have a
    negative beta, set by hand (alternately the two rows of BETAS)."""
    torch.manual_seed(seed)
    c, h, w = SHAPES[arch]
    net = build_model(arch, c, h, 10, 0.45, 0.25)
    net = lowbit.quantize(net, lowbit.Recipe(weight="abc", act="abc", w_bits=2, a_bits=2))
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.rand(32, c, h, w))
        for i, m in enumerate(m for m in net.modules() if isinstance(m, ABCAct)):
            m.betas.copy_(torch.tensor(BETAS[i % 2]))
    return net.eval()


@pytest.fixture(scope="module", params=sorted(SHAPES))
def exported(request, tmp_path_factory):
    arch = request.param
    net = _abc_net(arch)
    path = export(net, tmp_path_factory.mktemp(arch) / "abc.lowbit")
    return arch, net, path


def _inputs(arch: str, n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, *SHAPES[arch], generator=torch.Generator().manual_seed(seed))


def _torch_io(ref, x):
    """{node name: (module, input, output)} of every ABC-Net activation (its QuantAct's name,
    as the exporter names the quantize node) and max pooling of ``ref``."""
    seen, hooks = {}, []

    def hook(name):
        def keep(m, args, out):
            seen[name] = (m, args[0], out)
        return keep

    for name, m in ref.named_modules():
        if isinstance(m, (ABCAct, torch.nn.MaxPool2d)):
            hooks.append(m.register_forward_hook(hook(name.removesuffix(".quant"))))
    with torch.no_grad():
        ref(x)
    for h in hooks:
        h.remove()
    return seen


def test_the_file_holds_non_monotone_grids(exported):
    arch, net, path = exported
    meta, sections = read_container(path)
    grids = [op["grid"] for op in meta["graph"] if op["op"] == "quantize"]
    flagged = [g for g in grids if g.get("monotone") is False]
    assert flagged and all(g["monotone"] is False for g in flagged)
    for g in flagged:
        v = sections[g["values"]]
        assert np.any(np.diff(v) < 0) and np.all(np.diff(sections[g["thresholds"]]) > 0)
    model = rt.load(path)
    assert {ly.path for ly in model.layers} >= {"bitplanes2"}


def test_each_quantizer_equals_torch_s_exactly(exported):
    arch, net, path = exported
    model, ref = rt.load(path), frozen_copy(net)
    seen = _torch_io(ref, _inputs(arch))
    nodes = {n.name: n for n in model.nodes if n.op == "quantize"}
    checked = 0
    for name, (quant, xin, out) in seen.items():
        if name not in nodes:
            continue
        grid = nodes[name].grid
        assert not grid.monotone
        x = xin.numpy()
        np.testing.assert_array_equal(grid.values[grid.rank(x)], out.numpy())
        # every threshold and its float32 neighbours, as the torch quantizer sees them
        t = grid.thresholds
        probe = np.concatenate([t, key_float(float_key(t) - 1), key_float(float_key(t) + 1)])
        with torch.no_grad():
            want = quant(torch.from_numpy(probe)).numpy()
        np.testing.assert_array_equal(grid.values[grid.rank(probe)], want)
        checked += 1
    assert checked >= (2 if arch == "lenet5" else 10)


def test_max_pooling_on_codes_equals_torch_s_exactly(tmp_path):
    net = _abc_net("lenet5")
    ref = frozen_copy(net)
    model = rt.load(export(net, tmp_path / "p.lowbit"))
    seen = _torch_io(ref, _inputs("lenet5", 32))
    by_name = {n.name: n for n in model.nodes}
    for pool, act in (("pool1", "relu1"), ("pool2", "relu2")):
        grid = by_name[act].grid
        ranks = grid.rank(seen[act][1].numpy())
        got = _run(by_name[pool], [(ranks, grid)], None)
        assert isinstance(got, tuple) and got[1] is grid  # still coded: conv2 takes codes
        np.testing.assert_array_equal(_float(got), seen[pool][2].numpy())


def test_the_runtime_equals_the_fake_quantized_model(exported):
    arch, net, path = exported
    x = _inputs(arch, 32)
    with torch.no_grad():
        want = frozen_copy(net)(x).numpy()
    trace = {}
    got = rt.load(path)(x.numpy(), trace=trace)
    assert "bitplanes2" in {v["path"] for v in trace.values()}
    # float rounding of the plane sums, amplified where a code flips at a threshold
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9
    assert np.median(np.abs(got - want)) <= 1e-4 * max(1.0, float(np.abs(want).max()))
    if arch == "lenet5":
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(rt.load(path, fast=True)(x.numpy()), got)


def _edited(path, tmp_path, edit):
    meta, sections = read_container(path)
    meta = copy.deepcopy(meta)
    grid = next(op["grid"] for op in meta["graph"] if op["op"] == "quantize"
                and op["grid"].get("monotone") is False)
    edit(grid)
    out = tmp_path / "edited.lowbit"
    write_container(out, {k: np.asarray(v) for k, v in sections.items()}, meta)
    return out


@pytest.mark.parametrize("edit,message", [
    (lambda g: g.update(monotone="false"), "'monotone' must be"),
    (lambda g: g.update(monotone=0), "'monotone' must be"),
    (lambda g: g.update(monotone=None), "'monotone' must be"),
    (lambda g: g.update(monotone=True), "values must increase strictly"),
    (lambda g: g.pop("monotone"), "values must increase strictly"),
    (lambda g: g.update(monotone=False, ordered=True), "does not know"),
])
def test_a_damaged_monotone_field_is_refused(exported, tmp_path, edit, message):
    bad = _edited(exported[2], tmp_path, edit)
    with pytest.raises(rt.FormatError, match=message):
        rt.load(bad)


def test_monotone_false_on_a_monotone_grid_is_read_and_runs_alike(tmp_path):
    torch.manual_seed(0)
    net = lowbit.quantize(build_model("lenet5", 1, 28, 10, 0.45, 0.25),
                          lowbit.Recipe(weight="ivan", act="ivan", w_bits=4, a_bits=4))
    net.train()
    with torch.no_grad():
        net(torch.rand(32, 1, 28, 28))
    path = export(net.eval(), tmp_path / "m.lowbit")
    meta, sections = read_container(path)
    for op in meta["graph"]:
        if op["op"] == "quantize":
            op["grid"]["monotone"] = False
    flagged = tmp_path / "f.lowbit"
    write_container(flagged, {k: np.asarray(v) for k, v in sections.items()}, meta)
    x = _inputs("lenet5").numpy()
    np.testing.assert_array_equal(rt.load(flagged)(x), rt.load(path)(x))


def test_integer_only_takes_monotone_affine_grids_only():
    levels = np.arange(0, 4, dtype=np.int64)
    cb = Codebook("integer", 2, 4, levels=levels, scale=np.float32(0.5), zero_point=0)
    t = np.array([0.25, 0.75, 1.25], np.float32)
    up = Grid("up", t, levels * np.float32(0.5), levels, cb, levels, 0.5)
    assert _affine(up)
    down_cb = Codebook("integer", 2, 4, levels=levels, scale=np.float32(-0.5), zero_point=0)
    down = Grid("down", t, levels * np.float32(-0.5), levels, down_cb, levels, -0.5,
                monotone=False)
    assert not _affine(down)
