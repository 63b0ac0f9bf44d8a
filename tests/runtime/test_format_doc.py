"""docs/format.md, "The model", against the code: the operator table and the record tables
are what the runtime accepts, a file written by ``lowbit.export`` follows them, and a graph that
breaks them is refused with a FormatError naming the fault."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import lowbit
import lowbit.runtime as rt
from lowbit.exporter import export
from lowbit.models import build_model
from lowbit.runtime.container import read_container, write_container
from lowbit.runtime.model import COMMON, FIELDS
from lowbit.runtime.records import GRID_FIELDS, RECORD_FIELDS, WEIGHT_FIELDS

DOC = (Path(__file__).parents[2] / "docs" / "format.md").read_text(encoding="utf-8")


def _table(title: str) -> list[list[str]]:
    part = DOC[DOC.index(title):]
    rows = []
    for line in part.splitlines()[2:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if set(cells[0]) <= {"-"}:
            continue
        rows.append(cells)
    return rows[1:]  # without the header row


def _ticks(cell: str) -> set[str]:
    return set(re.findall(r"`([a-z_0-9]+)`", cell))


def test_operator_table_is_the_runtime_s():
    documented = {}
    for op_cell, n_inputs, fields in _table("`torch.fx`; anything else"):
        for op in _ticks(op_cell):
            documented[op] = (int(n_inputs), _ticks(fields) - {"false"})
    assert set(documented) == set(FIELDS)
    for op, (_, fields) in documented.items():
        assert fields == FIELDS[op], op  # the doc names every field the runtime accepts


def test_weight_record_table_is_the_runtime_s():
    rows = _table("### Weight records")
    kinds = {next(iter(_ticks(r[0]))): _ticks(r[1]) for r in rows}
    assert set(kinds) == set(RECORD_FIELDS)
    for kind, fields in kinds.items():
        allowed = RECORD_FIELDS[kind] | WEIGHT_FIELDS | {"shape"}
        assert fields - {"float16", "bfloat16", "false"} <= allowed, kind


def test_grid_record_table_is_the_runtime_s():
    fields = [next(iter(_ticks(r[0]))) for r in _table("### Activation grid records")]
    assert len(fields) == len(set(fields)) and set(fields) == GRID_FIELDS


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    torch.manual_seed(0)
    net = lowbit.quantize(build_model("resnet20", 3, 32, 10, 0.5, 0.25),
                          lowbit.Recipe(weight="ivan", act="ivan", w_bits=3, a_bits=3))
    net.train()
    with torch.no_grad():
        net(torch.rand(16, 3, 32, 32))
    return export(net.eval(), tmp_path_factory.mktemp("fmt") / "r.lowbit", input_shape=(3, 32, 32))


def test_a_written_file_follows_the_document(resnet_file):
    meta, sections = read_container(resnet_file)
    assert meta["lowbit"] == 1 and meta["input"]["shape"] == [3, 32, 32]
    for op in meta["graph"]:
        assert set(op) <= COMMON | FIELDS[op["op"]], op["name"]
        w = op.get("weight")
        if w and w["kind"] != "float":
            assert w["count"] == math.prod(w["shape"])
            assert sections[w["codes"]].nbytes == math.ceil(w["count"] * w["bits"] / 8)
            assert sections[w["codes"]].dtype == np.uint8
        if op["op"] == "quantize":
            g = op["grid"]
            t, v = sections[g["thresholds"]], sections[g["values"]]
            assert t.dtype == v.dtype == np.float32 and len(v) == len(t) + 1
            assert np.all(np.diff(t) > 0) and np.all(np.diff(v) > 0)
    layers = [op for op in meta["graph"] if op["op"] == "conv2d"]
    assert layers[1]["input"] == {"grid": "relu1"}
    fc = next(op for op in meta["graph"] if op["op"] == "linear")
    assert fc["input"]["grid"] is None and "pool" in fc["input"]["leaves_grid"]
    assert sum(op["op"] == "batchnorm" for op in meta["graph"]) == 0  # all folded
    assert all(op["bn"] for op in layers)


def _rewrite(path: Path, tmp: Path, edit) -> Path:
    meta, sections = read_container(path)
    meta = copy.deepcopy(meta)
    edit(meta, sections)
    out = tmp / "edited.lowbit"
    write_container(out, {k: np.asarray(v) for k, v in sections.items()}, meta)
    return out


def _layer(meta, i=1):
    return [op for op in meta["graph"] if op["op"] == "conv2d"][i]


EDITS = {
    "unknown operator": lambda m, s: m["graph"].insert(1, {
        "op": "softmax", "name": "s", "inputs": ["x"], "output": "s"}),
    "does not know": lambda m, s: _layer(m).update(extra=1),
    "not computed before": lambda m, s: m["graph"].reverse(),
    "does not have": lambda m, s: _layer(m)["weight"].update(scale="nope"),
    "codes reach": lambda m, s: _layer(m)["weight"].update(levels={"range": [-2, 1, False]}),
    "not a lowbit model graph": lambda m, s: m.update(lowbit=2),
    "input grid": lambda m, s: _layer(m)["input"].update(grid="missing"),
    "must increase": lambda m, s: s.__setitem__(
        next(op for op in m["graph"] if op["op"] == "quantize")["grid"]["thresholds"],
        np.zeros_like(s[next(op for op in m["graph"] if op["op"] == "quantize")["grid"][
            "thresholds"]])),
    "takes 2 inputs": lambda m, s: next(op for op in m["graph"] if op["op"] == "add")[
        "inputs"].pop(),
}


@pytest.mark.parametrize("fault", sorted(EDITS))
def test_a_broken_graph_is_refused_by_name(resnet_file, tmp_path, fault):
    bad = _rewrite(resnet_file, tmp_path, EDITS[fault])
    with pytest.raises(rt.FormatError, match=fault):
        rt.load(bad)


def test_fuzz_model_loader():
    """A short campaign of tests/runtime/fuzz_model.py (the long one: its results file)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    import fuzz_model

    r = fuzz_model.campaign(300, seed=1)
    assert not r["failures"], r["failures"][:3]
    assert r["outcomes"].get("refused", 0) > 100 and r["outcomes"].get("ran", 0) > 5
