"""Fuzzing the model loader (lowbit/runtime/model.py, records.py) past the container's digests.

``mutants`` takes a real exported model (LeNet-5 with 2-bit Ivan weights and activations,
xnor and ttq layers: every record kind) and yields *re-sealed* files -- the JSON graph edited
(a value replaced by another type or an extreme number, a key removed or added, a node
duplicated, dropped or moved, an input renamed) or a section replaced by an array of another
dtype, shape or content, then written again with valid digests -- so the damage reaches the
graph and record checks. ``check`` is the oracle: loading gives a FormatError or a Model, and
running a loaded Model on a small batch gives logits or a FormatError / ValueError -- never
another exception, and within the time limit.

Run as a script for a campaign: ``python tests/runtime/fuzz_model.py --n 20000``; the test
suite runs a short one (tests/runtime/test_format_doc.py::test_fuzz_model_loader).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lowbit.runtime import FormatError, load, read_container, write_container

WEIRD = [None, True, False, 0, -1, 1, 2, 3, 2**31, -(2**63), 2**64, 1e308, -0.5, 0.5, "", "x",
         "fc1", [], [0], [1, 1], [2**40, 1], {}, {"range": [0, 3, False]}, [[1]], "relu1"]


def sample_model(path: Path) -> None:
    """The model fuzzed: LeNet-5 with ttq, xnor and ivan layers (needs torch)."""
    import torch

    import lowbit
    from lowbit.exporter import export
    from lowbit.models import build_model
    from lowbit.recipe import LayerRule

    torch.manual_seed(0)
    net = lowbit.quantize(build_model("lenet5", 1, 12, 10, 0.5, 0.25), lowbit.Recipe(
        weight="ivan", act="ivan", w_bits=2, a_bits=2, rules=(
            LayerRule("conv2", weight="ttq", w_bits=2), LayerRule("fc2", weight="xnor",
                                                                  w_bits=1))))
    net.train()
    with torch.no_grad():
        net(torch.rand(8, 1, 12, 12))
    export(net.eval(), path)


def _paths(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,), v
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield prefix + (i,), v
            yield from _paths(v, prefix + (i,))


def _set(obj, path, value):
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


def _delete(obj, path):
    for p in path[:-1]:
        obj = obj[p]
    del obj[path[-1]]


def mutate(rng: random.Random, meta: dict, sections: dict) -> tuple[dict, dict]:
    meta, sections = copy.deepcopy(meta), dict(sections)
    graph = meta["graph"]
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        kind = rng.random()
        paths = [p for p, _ in _paths(meta)]
        if kind < 0.45:
            _set(meta, rng.choice(paths), rng.choice(WEIRD))
        elif kind < 0.55:
            p = rng.choice(paths)
            if len(p) > 1:
                _delete(meta, p)
        elif kind < 0.62 and graph:
            node = rng.choice(graph)
            if isinstance(node, dict):
                node[rng.choice(("extra", "bits", "scale", "grid", "weight"))] = rng.choice(
                    WEIRD)
        elif kind < 0.72 and graph:
            i, j = rng.randrange(len(graph)), rng.randrange(len(graph))
            op = rng.choice(("dup", "drop", "move"))
            if op == "dup":
                graph.insert(j, copy.deepcopy(graph[i]))
            elif op == "drop" and len(graph) > 1:
                graph.pop(i)
            else:
                graph.insert(j, graph.pop(i))
        else:
            name = rng.choice(sorted(sections))
            a = sections[name]
            choice = rng.random()
            if choice < 0.3:
                new = np.asarray(a).reshape(-1)[: rng.randrange(a.size + 1)]
            elif choice < 0.5:
                new = np.asarray(a).astype(rng.choice((np.float32, np.int8, np.uint8,
                                                       np.int32, np.float64)))
            elif choice < 0.7:
                new = np.full(np.shape(a), rng.choice((np.nan, np.inf, -1, 0, 255, 1e30)),
                              dtype=np.asarray(a).dtype if np.asarray(a).dtype.kind == "f"
                              else np.float32)
            else:
                new = np.random.default_rng(rng.randrange(2**31)).integers(
                    0, 256, rng.randrange(1, 64)).astype(np.uint8)
            sections[name] = new
    return meta, sections


def check(path: Path, x: np.ndarray, limit: float = 10.0) -> str:
    """'refused', 'ran' or 'refused-at-run'; raises AssertionError on an oracle failure."""
    t = time.perf_counter()
    try:
        model = load(path)
    except FormatError:
        return "refused"
    try:
        y = model(x)
        assert isinstance(y, np.ndarray), type(y)
        outcome = "ran"
    except (FormatError, ValueError):
        outcome = "refused-at-run"
    assert time.perf_counter() - t < limit, "too slow"
    return outcome


def campaign(n: int, seed: int = 0, workdir: Path | None = None) -> dict:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(workdir or tmp)
        original = tmp / "model.lowbit"
        sample_model(original)
        meta, sections = read_container(original)
        sections = {k: np.array(v) for k, v in sections.items()}
        x = np.random.default_rng(0).random((2, 1, 12, 12), dtype=np.float32)
        counts: dict[str, int] = {}
        failures = []
        for i in range(n):
            m, s = mutate(rng, meta, sections)
            p = tmp / "m.lowbit"
            try:
                write_container(p, s, m)
            except (ValueError, TypeError):
                counts["unwritable"] = counts.get("unwritable", 0) + 1
                continue
            try:
                out = check(p, x)
            except Exception as e:  # the oracle failed: keep the case
                failures.append({"case": i, "error": f"{type(e).__name__}: {e}"[:300]})
                bad = tmp / f"failure-{i}.json"
                bad.write_text(json.dumps(m)[:100000])
                continue
            counts[out] = counts.get(out, 0) + 1
    return {"inputs": n, "seed": seed, "outcomes": counts, "failures": failures}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the campaign's JSON here")
    a = p.parse_args()
    t = time.perf_counter()
    r = campaign(a.n, a.seed)
    r["seconds"] = round(time.perf_counter() - t, 1)
    text = json.dumps(r, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 1 if r["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
