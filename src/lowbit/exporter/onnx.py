"""``export_onnx(model, "net.onnx")``: the runtime's operator graph as an ONNX model whose weights
keep their real width.

The graph is :func:`lowbit.exporter.build` of :func:`frozen_copy` (what ``.lowbit`` stores), not
``torch.onnx``: both torch exporters refuse 4-bit fake-quant ranges (shared ECOSYSTEM.md). Each
operator becomes standard ONNX (operator specs: https://onnx.ai/onnx/operators/):

Weights (:func:`_weight`), from the record of docs/format.md, "Weights":

- integer grid ``(levels[code] - zero_point) * scale``: an INT2/UINT2 (opset 25), INT4/UINT4
  (opset 21), INT8/UINT8 or INT16 initializer of ``levels[code]`` (or of the integers, when that
  is narrower) and a ``DequantizeLinear`` (y = (x - zero_point) * scale) with the scale per tensor,
  per channel (``axis``) or per group (``block_size``, opset 21, over the weight viewed as
  (C, row) -- the format's groups -- then ``Reshape``). The integers' width is that of the
  narrowest type holding them; when it is wider than the record's ``bits`` (Ivan's
  ``+-1..+-2^(b-1)`` needs 5 bits for 4-bit codes, DoReFa's odd levels 3 bits for 2) the codes
  are stored at their bits and looked up as a table instead (next item), unless the table would
  be large (per group, or per channel with > 16 codes): then the wider type is kept.
- tables, bit-planes (ABC-Net, ``sum_i alpha_i B_i`` tabulated per code) and such integer grids:
  UINT2/UINT4/UINT8 codes, ``Cast`` to int64 and ``Gather`` over the float32 table of every
  code's value (per channel: ``GatherElements`` over the (C, K) table).
- half: the FLOAT16 / BFLOAT16 bit patterns as an initializer and ``Cast`` to float.

Every form computes the runtime's ``decode`` (lowbit.runtime.records) in float32: DQ does one
rounding of ``(x - zp) * scale`` exactly as decode does, the tables hold decode's values, so
the weights equal training's bit for bit.

Activation quantizers (``activations=``):

- ``"exact"``: rank(x) = #{j : t_j <= x} over the exact thresholds (thresholds.py), by a binary
  search of log2(L) steps (``GreaterOrEqual``, ``Gather`` of the next threshold, ``Add``), then
  ``Gather(values, rank)``: training's quantizer bit for bit on every float32 input, any grid,
  monotone or not (``values`` in x-order: ABC-Net's with a negative beta).
  (A ``ReduceSum`` over all L-1 comparisons is the same function, with L-1 times the memory.)
- ``"qdq"`` (default): ``Clip`` (when the type is wider than the grid) + ``QuantizeLinear`` +
  ``DequantizeLinear`` with the narrowest type holding the grid's integers, for grids that are a
  contiguous per-tensor integer range whose thresholds lie at the midpoints (round to nearest);
  QuantizeLinear rounds ``x / scale`` half to even, which may differ from a method's formula at
  ties (tests/exporter/test_onnx.py counts it). Other grids (sign, power-of-two, bit-plane sums,
  Quantization Networks' learned steps) take the exact form.

Normalisation is Sub/Div; a folded BatchNorm is ``x * a + b`` (Mul/Add) with ``a``, ``b`` computed
as the runtime does; a standalone one is BatchNormalization; pooling, flatten (``Flatten`` for
start 1 .. end -1, else ``Reshape``), add and the activations are their ONNX operators.
The opset is 21, or 25 when a 2-bit type is used (``opset=`` forces one, >= 21).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lowbit.exporter.graph import ExportError
from lowbit.exporter.lowbit_file import build, frozen_copy
from lowbit.runtime import ops as rt_ops
from lowbit.runtime.records import decode, integers, plane_table, read_grid, read_weight

# name, TensorProto type, numpy/ml_dtypes type, lo, hi, bits, first opset
TYPES = [("INT2", TensorProto.INT2, ml_dtypes.int2, -2, 1, 2, 25),
         ("UINT2", TensorProto.UINT2, ml_dtypes.uint2, 0, 3, 2, 25),
         ("INT4", TensorProto.INT4, ml_dtypes.int4, -8, 7, 4, 21),
         ("UINT4", TensorProto.UINT4, ml_dtypes.uint4, 0, 15, 4, 21),
         ("INT8", TensorProto.INT8, np.int8, -128, 127, 8, 13),
         ("UINT8", TensorProto.UINT8, np.uint8, 0, 255, 8, 13),
         ("INT16", TensorProto.INT16, np.int16, -2**15, 2**15 - 1, 16, 21),
         ("UINT16", TensorProto.UINT16, np.uint16, 0, 2**16 - 1, 16, 21)]
MIN_OPSET = 21
ACTIVATION_MODES = ("qdq", "exact")
_SMALL_TABLE = 16  # per-channel tables up to this many codes (C * K floats) are worth it


def _int_type(lo: int, hi: int, opset: int):
    """The narrowest TYPES row holding lo..hi at ``opset``, unsigned first when lo >= 0
    (None if none does)."""
    fits = [t for t in TYPES if t[3] <= lo and hi <= t[4] and t[6] <= opset]
    return min(fits, key=lambda t: (t[5], (t[3] == 0) != (lo >= 0)), default=None)


def _code_type(bits: int, opset: int):
    """The unsigned type that stores ``bits``-bit codes."""
    return _int_type(0, 2**bits - 1, opset)


class _Graph:
    """Nodes and initializers under construction, with unique names."""

    def __init__(self, opset: int) -> None:
        self.opset, self.nodes, self.inits, self.forms = opset, [], [], {}
        self.used: set[str] = set()

    def name(self, base: str) -> str:
        n, i = base, 1
        while n in self.used:
            n, i = f"{base}_{i}", i + 1
        self.used.add(n)
        return n

    def const(self, base: str, a) -> str:
        """An initializer from ``a`` (packed raw data: 2 int4 / 4 int2 values per byte)."""
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(a), name))
        return name

    def node(self, op: str, inputs: list[str], base: str, **attrs) -> str:
        out = self.name(base)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


# -- weights ------------------------------------------------------------------------------------


def _matrix(a: np.ndarray, kind: str) -> np.ndarray:
    """The weight-shaped array in the graph's layout: linear weights transposed (K, C) for
    ``MatMul(x, W^T)``, conv weights as they are."""
    return np.ascontiguousarray(a.T) if kind == "linear" else a


def _integer_form(cb, codes: np.ndarray, opset: int):
    """``(type, stored, zero_point)``: the narrower of the integers ``levels[code] - zp`` with no
    zero point and ``levels[code]`` with the record's zero point (shaped like the scale)."""
    ints = integers(cb, codes)
    options = [(_int_type(int(ints.min()), int(ints.max()), opset), ints, None)]
    if np.any(cb.zero_point):
        q, zp = cb.levels[codes], np.broadcast_to(cb.zero_point, cb.scale.shape)
        lo, hi = min(int(q.min()), int(zp.min())), max(int(q.max()), int(zp.max()))
        options.append((_int_type(lo, hi, opset), q, zp))
    options = [o for o in options if o[0] is not None]
    if not options:
        raise ExportError("integer weights beyond 16 bits have no ONNX DequantizeLinear type")
    return min(options, key=lambda o: o[0][5])


def _dq_weight(g: _Graph, key: str, kind: str, cb, codes: np.ndarray, form) -> str:
    """DequantizeLinear of an integer grid, per tensor / channel / group (block_size)."""
    t, stored, zp = form
    shape, scale = codes.shape, cb.scale.astype(np.float32)
    attrs, post = {}, None
    if scale.ndim == 2:  # groups of the row (C, row): block_size along it
        stored = stored.reshape(shape[0], -1)
        if kind == "linear":
            stored, scale = stored.T, scale.T
            zp = None if zp is None else zp.T
            attrs = {"axis": 0, "block_size": int(cb.group_size)}
        else:
            attrs, post = {"axis": 1, "block_size": int(cb.group_size)}, shape
    else:
        stored = _matrix(stored, kind)
        if scale.ndim == 1:
            attrs = {"axis": 1 if kind == "linear" else 0}
    inputs = [g.const(f"{key}.codes", np.ascontiguousarray(stored).astype(t[2])),
              g.const(f"{key}.scale", scale)]
    if zp is not None:
        inputs.append(g.const(f"{key}.zero_point", np.asarray(zp).astype(t[2])))
    w = g.node("DequantizeLinear", inputs, f"{key}.dq", **attrs)
    if post is not None:
        w = g.node("Reshape", [w, g.const(f"{key}.shape", np.array(post, np.int64))],
                   f"{key}.w")
    g.forms[key] = f"DequantizeLinear {t[0]}" + (f" block_size {cb.group_size}"
                                                 if cb.group_size else "")
    return w


def _table(cb) -> np.ndarray:
    """Every code's float32 value: (K,) or per channel (C, K), as decode computes them."""
    if cb.kind == "bitplanes":
        return plane_table(cb.alphas)
    if cb.kind == "table":
        return cb.values.astype(np.float32)
    k = np.arange(cb.num_codes)
    if cb.scale.ndim == 0 and np.ndim(cb.zero_point) == 0:
        return decode(cb, k)
    c = cb.scale.shape[0] if cb.scale.ndim else np.shape(cb.zero_point)[0]
    return decode(cb, np.tile(k, (c, 1)))


def _gather_weight(g: _Graph, key: str, kind: str, cb, codes: np.ndarray) -> str:
    """Codes at their bits, Cast to int64, Gather over the table of their values."""
    t = _code_type(max(cb.bits, 2 if g.opset >= 25 else 4), g.opset)
    table = _table(cb)
    shape = codes.shape
    if table.ndim == 1:
        c = g.const(f"{key}.codes", _matrix(codes, kind).astype(t[2]))
        idx = g.node("Cast", [c], f"{key}.index", to=TensorProto.INT64)
        w = g.node("Gather", [g.const(f"{key}.table", table), idx], f"{key}.w")
    elif kind == "linear":  # (K, C) codes, table^T (Kc, C): out[k, c] = table[code, c]
        c = g.const(f"{key}.codes", codes.T.astype(t[2]))
        idx = g.node("Cast", [c], f"{key}.index", to=TensorProto.INT64)
        w = g.node("GatherElements", [g.const(f"{key}.table", table.T.copy()), idx],
                   f"{key}.w", axis=0)
    else:
        c = g.const(f"{key}.codes", codes.reshape(shape[0], -1).astype(t[2]))
        idx = g.node("Cast", [c], f"{key}.index", to=TensorProto.INT64)
        flat = g.node("GatherElements", [g.const(f"{key}.table", table), idx],
                      f"{key}.rows", axis=1)
        w = g.node("Reshape", [flat, g.const(f"{key}.shape", np.array(shape, np.int64))],
                   f"{key}.w")
    g.forms[key] = f"{t[0]} codes + {'Gather' if table.ndim == 1 else 'GatherElements'}"
    return w


def _half_weight(g: _Graph, key: str, kind: str, cb, codes: np.ndarray) -> str:
    dtype = np.float16 if cb.fmt == "float16" else ml_dtypes.bfloat16
    bits = _matrix(codes, kind).astype(np.uint16).view(dtype)
    g.forms[key] = cb.fmt.upper() + " + Cast"
    return g.node("Cast", [g.const(f"{key}.half", bits)], f"{key}.w", to=TensorProto.FLOAT)


def _weight(g: _Graph, op: dict, sections, floats: bool) -> str:
    """The float weight value of a linear (as W^T) or conv node (module doc, "Weights")."""
    key, kind = f"{op['name']}.weight", op["op"]
    w = read_weight(op["weight"], sections, key)
    cb = w.codebook
    if cb is None or floats:
        g.forms[key] = "FLOAT"
        return g.const(key, _matrix(w.decoded(), kind))
    if cb.kind == "half":
        return _half_weight(g, key, kind, cb, w.codes)
    if cb.kind != "integer":
        return _gather_weight(g, key, kind, cb, w.codes)
    form = _integer_form(cb, w.codes, g.opset)
    bits = _code_type(max(cb.bits, 2), g.opset)
    small = cb.group_size is None and (cb.scale.ndim == 0 or cb.num_codes <= _SMALL_TABLE)
    if bits is not None and form[0][5] > bits[5] and small:
        return _gather_weight(g, key, kind, cb, w.codes)
    return _dq_weight(g, key, kind, cb, w.codes, form)


# -- activation quantizers ----------------------------------------------------------------------


def _qdq_form(grid, opset: int):
    """``(type, zero_point, clip)`` when ``grid`` is QuantizeLinear's function: a contiguous
    per-tensor integer range, thresholds at the midpoints of its steps; else None."""
    if not grid.monotone or grid.ints is None or len(grid.values) < 2:
        return None  # QuantizeLinear is monotone: a non-monotone grid takes the exact form
    ints, s = grid.ints, grid.scale
    lo, hi = int(ints[0]), int(ints[-1])
    if not np.array_equal(ints, np.arange(lo, hi + 1)):
        return None
    mid = (ints[1:] - 0.5) * s
    if np.abs(grid.thresholds - mid).max() > 1e-3 * s:
        return None
    t, zp = _int_type(lo, hi, opset), 0
    if t is not None and t[5] < 4:  # ORT 1.32 fails on a 2-bit QDQ input of MatMul (QGemm)
        t = _int_type(lo, hi, 21)
    if t is None:  # a shifted range: the type's lowest value stands for lo
        t = next((t for t in TYPES if t[4] - t[3] >= hi - lo and t[6] <= opset), None)
        zp = None if t is None else t[3] - lo
    if t is None:
        return None
    return t, zp, (t[3] - zp, t[4] - zp) != (lo, hi)


def _exact(g: _Graph, x: str, grid, key: str) -> str:
    """rank by binary search over the thresholds padded with +inf to 2^m - 1, then values."""
    n = len(grid.values)
    p = 1 << max(0, (n - 1).bit_length())
    t = np.full(p - 1, np.inf, np.float32)
    t[:n - 1] = grid.thresholds
    values = g.const(f"{key}.values", grid.values.astype(np.float32))
    if n == 1:
        rank = g.node("Cast", [g.node("Less", [x, g.const(f"{key}.ninf", np.float32(-np.inf))],
                                      f"{key}.none")], f"{key}.rank", to=TensorProto.INT64)
        return g.node("Gather", [values, rank], f"{key}.q")
    tt = g.const(f"{key}.thresholds", t) if p > 2 else None
    step, rank = p // 2, None
    while step:
        if rank is None:
            th = g.const(f"{key}.t0", t[step - 1])
        else:
            idx = g.node("Add", [rank, g.const(f"{key}.k", np.int64(step - 1))], f"{key}.idx")
            th = g.node("Gather", [tt, idx], f"{key}.th")
        up = g.node("Cast", [g.node("GreaterOrEqual", [x, th], f"{key}.ge")], f"{key}.up",
                    to=TensorProto.INT64)
        inc = up if step == 1 else g.node("Mul", [up, g.const(f"{key}.step", np.int64(step))],
                                          f"{key}.inc")
        rank = inc if rank is None else g.node("Add", [rank, inc], f"{key}.rank")
        step //= 2
    return g.node("Gather", [values, rank], f"{key}.q")


def _quantize(g: _Graph, x: str, op: dict, sections, mode: str) -> str:
    key = op["name"]
    grid = read_grid(op["grid"], sections, key)
    form = _qdq_form(grid, g.opset) if mode == "qdq" else None
    if form is None:
        g.forms[key] = f"exact ({len(grid.values)} values)"
        return _exact(g, x, grid, key)
    t, zp, clip = form
    if clip:  # Max/Min, not Clip: ORT 1.32's Clip->QuantizeLinear fusion rejects 4-bit types
        x = g.node("Max", [x, g.const(f"{key}.lo", grid.values[0])], f"{key}.max")
        x = g.node("Min", [x, g.const(f"{key}.hi", grid.values[-1])], f"{key}.min")
    s = g.const(f"{key}.scale", np.float32(grid.scale))
    z = g.const(f"{key}.zero_point", np.array(zp).astype(t[2]))
    q = g.node("QuantizeLinear", [x, s, z], f"{key}.quant")
    g.forms[key] = f"QDQ {t[0]}" + (" + Max/Min" if clip else "")
    return g.node("DequantizeLinear", [q, s, z], f"{key}.q")


# -- layers and the other operators -------------------------------------------------------------


def _affine_bn(g: _Graph, y: str, rec: dict, sections, rank: int) -> str:
    """Eval BatchNorm as ``y * a + b`` with a, b as lowbit.runtime.ops.batchnorm computes them."""
    mean, var, w, b = (sections[rec[k]] for k in ("running_mean", "running_var", "weight",
                                                  "bias"))
    a = (w / np.sqrt(var + np.float32(rec["eps"]))).astype(np.float32)
    shift = (b - mean * a).astype(np.float32)
    shape = (-1,) + (1,) * (rank - 2)
    y = g.node("Mul", [y, g.const(f"{rec['name']}.a", a.reshape(shape))], f"{rec['name']}.mul")
    return g.node("Add", [y, g.const(f"{rec['name']}.b", shift.reshape(shape))], rec["name"])


def _layer(g: _Graph, x: str, op: dict, sections, floats: bool) -> str:
    w, name = _weight(g, op, sections, floats), op["name"]
    bias = g.const(f"{name}.bias", sections[op["bias"]]) if op.get("bias") else None
    if op["op"] == "linear":
        y = g.node("MatMul", [x, w], f"{name}.matmul")
        y = g.node("Add", [y, bias], name) if bias else y
        rank = 2
    else:
        ph, pw = op["padding"]
        y = g.node("Conv", [x, w] + ([bias] if bias else []), name, strides=op["stride"],
                   pads=[ph, pw, ph, pw], dilations=op["dilation"], group=op["groups"])
        rank = 4
    if op.get("bn"):
        y = _affine_bn(g, y, op["bn"], sections, rank)
    return y


def _pool(g: _Graph, x: str, op: dict) -> str:
    ph, pw = op["padding"]
    attrs = {"kernel_shape": op["kernel"], "strides": op["stride"], "pads": [ph, pw, ph, pw],
             "ceil_mode": int(op["ceil_mode"])}
    if op["op"] == "maxpool2d":
        return g.node("MaxPool", [x], op["name"], dilations=op["dilation"], **attrs)
    return g.node("AveragePool", [x], op["name"],
                  count_include_pad=int(op["count_include_pad"]), **attrs)


def _adaptive_pool(g: _Graph, x: str, op: dict, shape_of) -> str:
    """torch's bins (lowbit.runtime.ops.adaptive_avgpool2d): GlobalAveragePool for 1x1, else
    one ReduceMean per bin (AveragePool when the bins tile the input evenly)."""
    size, name = op["size"], op["name"]
    if size == [1, 1]:
        return g.node("GlobalAveragePool", [x], name)
    h, w = shape_of(x)[2:]
    if h % size[0] == 0 and w % size[1] == 0:
        k = [h // size[0], w // size[1]]
        return g.node("AveragePool", [x], name, kernel_shape=k, strides=k)
    rows = []
    for i in range(size[0]):
        h0, h1 = (i * h) // size[0], -((-(i + 1) * h) // size[0])
        cols = []
        for j in range(size[1]):
            w0, w1 = (j * w) // size[1], -((-(j + 1) * w) // size[1])
            sl = g.node("Slice", [x, g.const(f"{name}.s", np.array([h0, w0])),
                                  g.const(f"{name}.e", np.array([h1, w1])),
                                  g.const(f"{name}.ax", np.array([2, 3]))], f"{name}.bin")
            cols.append(g.node("ReduceMean", [sl, g.const(f"{name}.ax", np.array([2, 3]))],
                               f"{name}.mean", keepdims=1))
        rows.append(g.node("Concat", cols, f"{name}.row", axis=3))
    return g.node("Concat", rows, name, axis=2)


def _flatten(g: _Graph, x: str, op: dict, shape_of) -> str:
    start, end = op["start"], op["end"]
    if start == 1 and end == -1:
        return g.node("Flatten", [x], op["name"], axis=1)
    rank = len(shape_of(x)) if start < 0 or end != -1 else None
    start = start % rank if rank else start
    keep_after = 0 if end == -1 else rank - 1 - end % rank
    shape = np.array([0] * start + [-1] + [0] * keep_after, np.int64)
    return g.node("Reshape", [x, g.const(f"{op['name']}.shape", shape)], op["name"])


ACTIVATION_OPS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}


def _activation(g: _Graph, x: str, op: dict) -> str:
    kind, name = op["op"], op["name"]
    if kind in ACTIVATION_OPS:
        return g.node(ACTIVATION_OPS[kind], [x], name)
    if kind == "leaky_relu":
        return g.node("LeakyRelu", [x], name, alpha=float(op["slope"]))
    lo, hi = (0.0, 6.0) if kind == "relu6" else (op["min"], op["max"])
    return g.node("Clip", [x, g.const(f"{name}.min", np.float32(lo)),
                           g.const(f"{name}.max", np.float32(hi))], name)


# -- the model ----------------------------------------------------------------------------------


def _input_dims(ops: list[dict], sections, input_shape) -> list:
    """``["N", *input_shape]``, or the dims the first operator implies (normalize: (C, H, W);
    a first linear / conv: its input features / channels)."""
    if input_shape is not None:
        return ["N", *[int(d) for d in input_shape]]
    first = next(op for op in ops if op["op"] != "input")
    if first["op"] == "normalize":
        return ["N", int(sections[first["mean"]].shape[0]), "H", "W"]
    if first["op"] == "linear":
        return ["N", first["weight"]["shape"][1]]
    if first["op"] == "conv2d":
        return ["N", first["weight"]["shape"][1] * first["groups"], "H", "W"]
    raise ExportError(f"pass input_shape: the input's shape does not follow from the first "
                      f"operator ({first['op']} {first['name']})")


def _model(g: _Graph, inp, out: str) -> onnx.ModelProto:
    """The model of ``g`` with input ``inp`` and output ``out`` typed by shape inference."""
    final = helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)
    nodes = [*g.nodes, helper.make_node("Identity", [out], ["logits"], name="logits")]
    graph = helper.make_graph(nodes, "lowbit", [inp], [final], initializer=g.inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", g.opset)],
                          producer_name="lowbit", ir_version=11)
    inferred = onnx.shape_inference.infer_shapes(m)
    typed = {v.name: v for v in inferred.graph.value_info}
    if out in typed:
        m.graph.output[0].type.CopyFrom(typed[out].type)
    return m


def _shapes(g: _Graph, inp):
    """A function value -> its inferred dims (for the operators that need a rank or size)."""
    def shape_of(v: str) -> list:
        vi = {i.name: i for i in onnx.shape_inference.infer_shapes(_model(g, inp, v)).graph.output}
        dims = vi["logits"].type.tensor_type.shape.dim
        if not dims or any(not d.HasField("dim_value") for d in dims[1:]):
            raise ExportError(f"{v}: its shape is needed (adaptive pooling / flatten); pass "
                              "input_shape")
        return [d.dim_value for d in dims]
    return shape_of


def _emit(g: _Graph, op: dict, args: list[str], sections, mode: str, floats: bool, shape_of):
    kind = op["op"]
    x = args[0]
    if kind in ("linear", "conv2d"):
        return _layer(g, x, op, sections, floats)
    if kind == "quantize":
        return _quantize(g, x, op, sections, mode)
    if kind == "normalize":
        d = g.node("Sub", [x, g.const(f"{op['name']}.mean", sections[op["mean"]])],
                   f"{op['name']}.sub")
        return g.node("Div", [d, g.const(f"{op['name']}.std", sections[op["std"]])], op["name"])
    if kind == "batchnorm":
        parts = [g.const(f"{op['name']}.{k}", sections[op[k]])
                 for k in ("weight", "bias", "running_mean", "running_var")]
        return g.node("BatchNormalization", [x, *parts], op["name"], epsilon=op["eps"])
    if kind in ("maxpool2d", "avgpool2d"):
        return _pool(g, x, op)
    if kind == "adaptive_avgpool2d":
        return _adaptive_pool(g, x, op, shape_of)
    if kind == "flatten":
        return _flatten(g, x, op, shape_of)
    if kind == "add":
        return g.node("Add", args, op["name"])
    if kind in rt_ops.ACTIVATIONS:
        return _activation(g, x, op)
    raise ExportError(f"operator {kind!r} ({op['name']}) has no ONNX form here; supported: "
                      "input, normalize, linear, conv2d, batchnorm, quantize, maxpool2d, "
                      "avgpool2d, adaptive_avgpool2d, flatten, add, "
                      + ", ".join(rt_ops.ACTIVATIONS))


def _convert(ops: list[dict], sections, opset: int, mode: str, floats: bool, dims):
    g = _Graph(opset)
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)
    env, out, shape_of = {}, None, _shapes(g, inp)
    for op in ops:
        if op["op"] == "input":
            env[op["output"]] = "input"
            g.used.add("input")
        elif op["op"] == "output":
            out = env[op["inputs"][0]]
        else:
            env[op["output"]] = _emit(g, op, [env[v] for v in op["inputs"]], sections, mode,
                                      floats, shape_of)
    return g, _model(g, inp, out)


def _uses_2bit(g: _Graph) -> bool:
    two = {TensorProto.INT2, TensorProto.UINT2}
    return any(t.data_type in two for t in g.inits)


def to_onnx(model, *, opset: int | None = None, input_shape=None, activations: str = "qdq",
            weights: str = "packed") -> onnx.ModelProto:
    """The ONNX model of ``model`` (module doc), checked with ``onnx.checker`` (full check).

    ``weights="float"`` stores every weight decoded to float32 (the float ONNX of the same
    net, for size comparisons); ``activations`` is ``"qdq"`` or ``"exact"`` (module doc)."""
    if activations not in ACTIVATION_MODES:
        raise ValueError(f"activations must be one of {ACTIVATION_MODES}, got {activations!r}")
    if weights not in ("packed", "float"):
        raise ValueError(f"weights must be 'packed' or 'float', got {weights!r}")
    top = onnx.defs.onnx_opset_version()
    if opset is not None and not MIN_OPSET <= opset <= top:
        raise ExportError(f"opset {opset}: lowbit writes opsets {MIN_OPSET}..{top} (INT4 "
                          "DequantizeLinear and block_size need 21)")
    ops, sections = build(frozen_copy(model))
    dims = _input_dims(ops, sections, input_shape)
    floats = weights == "float"
    g, m = _convert(ops, sections, opset or 25, activations, floats, dims)
    if opset is None and not _uses_2bit(g):
        g, m = _convert(ops, sections, MIN_OPSET, activations, floats, dims)
    helper.set_model_props(m, {"lowbit.forms": json.dumps(g.forms)})
    onnx.checker.check_model(m, full_check=True)
    return m


def export_onnx(model, path: str | Path, *, opset: int | None = None, input_shape=None,
                activations: str = "qdq", weights: str = "packed") -> Path:
    """Write ``model`` (anything :func:`lowbit.export` takes) as ONNX at ``path``, atomically
    (a temporary file in the same directory, then ``os.replace``). ``input_shape`` (C, H, W)
    or (features,) without the batch; the batch dim is ``N``. Returns the path."""
    m = to_onnx(model, opset=opset, input_shape=input_shape, activations=activations,
                weights=weights)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        onnx.save_model(m, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def export_onnx_float(model, path: str | Path, **kw) -> Path:
    """:func:`export_onnx` with every weight decoded to float32: the same net, float storage."""
    return export_onnx(model, path, weights="float", **kw)


def forms_of(model: onnx.ModelProto | str | Path) -> dict[str, str]:
    """What :func:`to_onnx` chose for each weight and activation quantizer (the model's
    ``lowbit.forms`` metadata), e.g. ``{"fc2.weight": "DequantizeLinear INT4", ...}``."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    return json.loads(props.get("lowbit.forms", "{}"))
