"""``lowbit.runtime.load("net.lowbit")`` -> a :class:`Model`; ``model(x) -> logits``.

Loading reads the container (every section's SHA-256 checked, nothing executed), then checks
the operator graph: known operators, every input defined before use, every tensor a section
of the right kind and shape; a fault is a :class:`~lowbit.runtime.errors.FormatError` naming
the node. Running walks the graph once per call: values are float32 arrays or, after a
``quantize`` node, *coded* -- the ranks of the quantizer's grid, which max pooling and
flattening keep and weight layers consume on their integer / binary / lookup path
(:mod:`lowbit.runtime.layers`); max pooling takes the largest value's rank (the largest rank
of a monotone grid, else found by the grid's value order). Anything else decodes them to the
grid's float32 values, the training quantizer's outputs bit for bit.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from lowbit.runtime import ops
from lowbit.runtime.container import read_container
from lowbit.runtime.errors import FormatError
from lowbit.runtime.layers import Layer
from lowbit.runtime.records import _Reader, read_grid, read_weight

GRAPH_VERSION = 1
POOL_KEYS = ("kernel", "stride", "padding")
OPS = ("input", "output", "normalize", "linear", "conv2d", "batchnorm", "quantize",
       "maxpool2d", "avgpool2d", "adaptive_avgpool2d", "flatten", "add", *ops.ACTIVATIONS)


_LAYER = {"weight", "bias", "bn", "input", "spec"}
FIELDS: dict[str, set[str]] = {  # op -> its fields besides op, name, inputs, output
    "input": set(), "output": set(), "normalize": {"mean", "std"}, "linear": _LAYER,
    "conv2d": _LAYER | {"stride", "padding", "dilation", "groups"},
    "batchnorm": {"eps", "running_mean", "running_var", "weight", "bias"},
    "quantize": {"grid", "spec"}, "relu": set(), "relu6": set(), "sigmoid": set(),
    "tanh": set(), "hardtanh": {"min", "max"}, "leaky_relu": {"slope"},
    "maxpool2d": {"kernel", "stride", "padding", "dilation", "ceil_mode"},
    "avgpool2d": {"kernel", "stride", "padding", "ceil_mode", "count_include_pad"},
    "adaptive_avgpool2d": {"size"}, "flatten": {"start", "end"}, "add": set(),
}
COMMON = {"op", "name", "inputs", "output"}


def _pair(r: _Reader, key: str, lo: int, default=...) -> tuple[int, int]:
    v = r.get(key, list, default)
    if v is default:
        return v
    if len(v) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) and lo <= i < 2**16
                              for i in v):
        r.fail(f"{key} must be two integers >= {lo}, got {v!r}")
    return tuple(v)


class Node:
    """One operator, checked and with its tensors read (``run`` computes it)."""

    def __init__(self, rec: dict, sections, grids: dict, where: str) -> None:
        r = _Reader(rec, sections, where)
        self.op = r.get("op", str)
        if self.op not in OPS:
            r.fail(f"unknown operator {self.op!r}; this runtime runs {', '.join(OPS)}")
        unknown = set(rec) - COMMON - FIELDS[self.op]
        if unknown:
            r.fail(f"{self.op} has fields this runtime does not know: {sorted(unknown)}")
        self.name = r.get("name", str)
        self.inputs = r.get("inputs", list)
        self.output = r.get("output", str)
        if not all(isinstance(v, str) for v in self.inputs):
            r.fail("inputs must be value names")
        arity = {"input": 0, "add": 2}.get(self.op, 1)
        if len(self.inputs) != arity:
            r.fail(f"{self.op} takes {arity} inputs, got {len(self.inputs)}")
        self.rec, self.layer, self.grid, self.fast = rec, None, None, None
        getattr(self, f"_read_{self.op}", lambda r, g: None)(r, grids)

    def _read_normalize(self, r, grids):
        self.mean = r.section("mean", "f").astype(np.float32)
        self.std = r.section("std", "f").astype(np.float32)
        if self.mean.shape != self.std.shape or self.mean.ndim != 3 or (self.std <= 0).any():
            r.fail("mean and std must be (C, 1, 1), std > 0")

    def _read_batchnorm(self, r, grids):
        self.bn = _bn(r.rec, r.sections, r.where)

    def _read_quantize(self, r, grids):
        self.grid = read_grid(r.get("grid", dict), r.sections, self.name)
        grids[self.name] = self.grid

    def _read_linear(self, r, grids):
        self._read_layer(r, grids)

    def _read_conv2d(self, r, grids):
        self._read_layer(r, grids)

    def _read_layer(self, r, grids):
        weight = read_weight(r.get("weight", dict), r.sections, f"{self.name}.weight")
        kw = {}
        if self.op == "conv2d":
            if len(weight.shape) != 4:
                r.fail(f"conv2d weight must be 4-d, got {weight.shape}")
            kw = {"stride": _pair(r, "stride", 1), "padding": _pair(r, "padding", 0),
                  "dilation": _pair(r, "dilation", 1), "groups": r.int("groups", 1, 2**16)}
            if weight.shape[0] % kw["groups"]:
                r.fail("out channels are not a multiple of groups")
        elif len(weight.shape) != 2:
            r.fail(f"linear weight must be 2-d, got {weight.shape}")
        bias = r.section("bias", "f", (weight.shape[0],), None)
        bn = r.get("bn", (dict, type(None)), None)
        bn = _bn(bn, r.sections, f"{self.name}.bn", weight.shape[0]) if bn else None
        src = r.get("input", dict, {"grid": None})
        gname = src.get("grid")
        if not isinstance(gname, (str, type(None))):
            r.fail(f"input grid must be a quantize node's name or null, got {gname!r}")
        if gname is not None and gname not in grids:
            r.fail(f"input grid {gname!r} is not a quantize node before this layer")
        self.layer = Layer(self.name, self.op, weight, bias, bn,
                           grids.get(gname), **kw)

    def _read_maxpool2d(self, r, grids):
        self.pool = {k: _pair(r, k, 1 if k != "padding" else 0) for k in POOL_KEYS}
        self.pool["dilation"] = _pair(r, "dilation", 1)
        if r.get("ceil_mode", bool, False):
            r.fail("ceil_mode pooling is not supported by this runtime")

    def _read_avgpool2d(self, r, grids):
        self.pool = {k: _pair(r, k, 1 if k != "padding" else 0) for k in POOL_KEYS}
        self.include_pad = r.get("count_include_pad", bool, True)
        if r.get("ceil_mode", bool, False):
            r.fail("ceil_mode pooling is not supported by this runtime")

    def _read_adaptive_avgpool2d(self, r, grids):
        self.size = _pair(r, "size", 1)

    def _read_flatten(self, r, grids):
        self.start, self.end = r.int("start", -8, 8), r.int("end", -8, 8)


def _bn(rec, sections, where: str, channels: int | None = None) -> dict:
    r = _Reader(rec, sections, where)
    out = {"eps": float(r.get("eps", (int, float)))}
    if not 0 < out["eps"] < 1:
        r.fail("eps must lie in (0, 1)")
    for part in ("running_mean", "running_var", "weight", "bias"):
        a = r.section(part, "f")
        if a.ndim != 1 or (channels is not None and a.shape[0] != channels):
            r.fail(f"{part} must be ({channels or 'C'},), got {a.shape}")
        out[part] = a.astype(np.float32)
    if (out["running_var"] < 0).any():
        r.fail("running_var must be >= 0")
    out["affine"] = ops.bn_affine(out["running_mean"], out["running_var"], out["weight"],
                                  out["bias"], out["eps"])
    return out


class Model:
    """A loaded ``.lowbit`` file: ``model(x)`` runs it on a float32 numpy batch."""

    def __init__(self, meta: dict, sections, path: str = "<memory>",
                 integer_only: str | None = None) -> None:
        where = f"{path}: graph"
        got = meta.get("lowbit") if isinstance(meta, dict) else None
        if got != GRAPH_VERSION:
            raise FormatError(f"{path}: not a lowbit model graph of version {GRAPH_VERSION} "
                              f"(meta 'lowbit' = {got!r})")
        graph = meta.get("graph")
        if not isinstance(graph, list) or not graph:
            raise FormatError(f"{where}: 'graph' must be a non-empty list of operators")
        self.meta, self.path, self.nodes, grids, defined = meta, path, [], {}, set()
        for i, rec in enumerate(graph):
            node = Node(rec, sections, grids, f"{where} node {i}")
            missing = [v for v in node.inputs if v not in defined]
            if missing:
                raise FormatError(f"{where} node {i} ({node.name}): input {missing[0]!r} is "
                                  "not computed before it")
            defined.add(node.output)
            self.nodes.append(node)
        self.rounding, self.chains = None, {}
        if integer_only is not None:
            from lowbit.runtime.integer_only import Rounding, find_chains

            self.rounding = Rounding(integer_only)
            self.chains = find_chains(self.nodes)
        kinds = [n.op for n in self.nodes]
        if kinds.count("input") != 1 or kinds[0] != "input" or kinds[-1] != "output" or \
                kinds.count("output") != 1:
            raise FormatError(f"{where}: it must start with its one input and end with its "
                              "one output")

    @property
    def layers(self) -> list[Layer]:
        return [n.layer for n in self.nodes if n.layer is not None]

    def __call__(self, x: np.ndarray, trace: dict | None = None,
                 times: dict | None = None) -> np.ndarray:
        """Logits (float32) of the batch ``x`` (N, ...) of float32 inputs. ``trace``: a dict
        that receives each weight layer's path and integer accumulators; ``times``: a dict
        that receives each node's wall time in seconds (the per-layer breakdown of
        ``lowbit bench``), keyed by node name."""
        x = np.asarray(x)
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise ValueError("the input holds NaN or Inf")
        env: dict = {}
        skip_to = -1
        for i, node in enumerate(self.nodes):
            if i <= skip_to:
                continue
            args = [env[v] for v in node.inputs]
            if node.op == "output":
                return _float(args[0])
            t0 = time.perf_counter() if times is not None else 0.0
            if i in self.chains and isinstance(args[0], tuple) and \
                    args[0][1] is node.layer.grid:
                from lowbit.runtime.integer_only import run_chain

                j, relu = self.chains[i]
                q = self.nodes[j]
                env[q.output] = run_chain(node.layer, args[0], q.grid, relu, self.rounding)
                if trace is not None:
                    trace[node.name] = {"path": f"integer-only ({self.rounding.value})"}
                skip_to = j
                if times is not None:
                    times[node.name] = time.perf_counter() - t0
                continue
            env[node.output] = x if node.op == "input" else _run(node, args, trace)
            if times is not None:
                times[node.name] = time.perf_counter() - t0
        raise AssertionError("unreachable: the graph ends with its output")


def _float(v) -> np.ndarray:
    if isinstance(v, tuple):
        ranks, grid = v
        return grid.values[ranks]
    return v


def _run(node: Node, args: list, trace):
    op, x = node.op, args[0]
    if op in ("linear", "conv2d"):
        if not isinstance(x, tuple) or node.layer.grid is not x[1]:
            x = _float(x)
        return node.layer(x, trace)
    if op == "quantize":
        return node.grid.rank(_float(x)), node.grid
    if node.fast is not None:  # a fast kernel (lowbit.runtime.fast); None: not served
        y = node.fast(args)
        if y is not None:
            return y
    if op == "flatten":
        if isinstance(x, tuple):
            return ops.flatten(x[0], node.start, node.end), x[1]
        return ops.flatten(x, node.start, node.end)
    if op == "maxpool2d":
        p = node.pool
        if isinstance(x, tuple):  # the max of values, on ranks: in value order
            ranks, grid = x
            key = ranks if grid.monotone else grid.value_rank[ranks]
            out = ops.maxpool2d(key, p["kernel"], p["stride"], p["padding"], p["dilation"], -1)
            return (out if grid.monotone else grid.by_value[out].astype(np.int16)), grid
        return ops.maxpool2d(x, p["kernel"], p["stride"], p["padding"], p["dilation"],
                             -np.inf)
    x = _float(x)
    if op == "normalize":
        return (x - node.mean) / node.std
    if op == "add":
        return x + _float(args[1])
    if op == "batchnorm":
        return ops.batchnorm(x, node.bn["affine"])
    if op == "avgpool2d":
        p = node.pool
        return ops.avgpool2d(x, p["kernel"], p["stride"], p["padding"], node.include_pad)
    if op == "adaptive_avgpool2d":
        return ops.adaptive_avgpool2d(x, node.size)
    return ops.activation(x, node.rec)


def load(path: str | Path, verify: bool = True, mmap: bool = False,
         integer_only: str | None = None, fast: bool = False) -> Model:
    """Read and check a ``.lowbit`` file (docs/format.md); returns the runnable Model.
    ``integer_only``: None (the reference paths) or a rounding convention of
    :mod:`lowbit.runtime.integer_only` ("half_even", "single", "gemmlowp") for its uint8 /
    int8 layers. ``fast``: run the weight layers with the numba kernels of
    :mod:`lowbit.runtime.fast` (same outputs; exact on the integer and binary paths)."""
    meta, sections = read_container(path, verify=verify, mmap=mmap)
    model = Model(meta, sections, str(path), integer_only=integer_only)
    if fast:  # numba kernels (lowbit.runtime.fast); imported only when asked for
        from lowbit.runtime.fast import accelerate

        accelerate(model)
    return model
