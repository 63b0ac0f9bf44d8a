"""The runtime's weight layers (linear, conv2d): the computation each codebook allows.

A layer's input is float32 or *coded*: the ranks of an activation quantizer's grid
(:class:`lowbit.runtime.records.Grid`). The path is chosen once, at load, from the two
codebooks (``Layer.path``; ``lowbit inspect`` prints it):

- ``integer``: integer weight codes x integer activation codes (``levels - zero_point``),
  accumulated exactly, then the float epilogue ``acc * (s_a * s_w) + bias``, BatchNorm.
  Per-group weight scales take one accumulator per group.
- ``xnor``: ±1 activations x ±1 weights as bits, ``dot = K - 2 popcount(a XOR w)``
  (XNOR-Net, Rastegari et al. 2016, sec. 3.2; BNN); ``binary01``: {0,1} activations x ±1
  weights, ``dot = 2 popcount(a AND w+) - popcount(a)``; ``ternary``: {-1,0,1} weights as two
  bit-planes ``w = p - n`` with either activation kind. Training pads a convolution's input
  with 0, which is not a ±1 code: the bits treat a pad as -1 and the layer adds back
  ``sum_pad w`` for every output position (what Larq Compute Engine does).
- ``bitplanes``: ABC-Net weights ``sum_m alpha_m B_m`` (Lin et al. 2017, eq. 3) as M integer
  convolutions of the ±1 planes; with ABC-Net activations ``sum_n beta_n A_n`` too, M x N
  convolutions of ±1 planes (``bitplanes2``).
- ``lookup``: a table codebook (TTQ, k-means, power-of-two tables): for each table entry j
  the exact integer sum of the activations whose weight has code j, then ``sum_j T_j S_j``.
- ``float``: the decoded weight (bit for bit training's) times float (or decoded) inputs.

Every path reads each rank's code, integer or value from the grid, so none depends on the
order of a grid's values: a non-monotone grid (``Grid.monotone`` false, ABC-Net with a
negative beta) takes the same paths.

Exactness: every accumulator is an exact integer. Products are summed by BLAS in float32 when
``K * max|a| * max|w| < 2^24`` and in float64 when it is < 2^53 (both then exact: every partial
sum is an integer below the type's exact range), else in int64; tests/runtime/test_layers.py
checks them against torch's float64 convolution of the integers. The float epilogue is then
computed in float64 and rounded once to float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lowbit.runtime import ops
from lowbit.runtime.records import Grid, Weight, integers

_F32_EXACT, _F64_EXACT = 2**24, 2**53


def exact_matmul(a: np.ndarray, b: np.ndarray, a_max: int | None = None,
                 b_max: int | None = None) -> np.ndarray:
    """``a @ b`` of matrices holding integers (in any dtype), exact, as int64 (module doc:
    BLAS where it is exact). ``a_max``/``b_max``: bounds of their absolute values, when known
    (else measured)."""
    k = a.shape[1]
    a_max = int(np.abs(a).max(initial=0)) if a_max is None else a_max
    b_max = int(np.abs(b).max(initial=0)) if b_max is None else b_max
    bound = k * max(a_max, 1) * max(b_max, 1)
    if bound < _F32_EXACT:
        return (a.astype(np.float32, copy=False) @ b.astype(np.float32, copy=False)).astype(
            np.int64)
    if bound < _F64_EXACT:
        return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)
    return a.astype(np.int64) @ b.astype(np.int64)


def pack_rows(bits: np.ndarray) -> np.ndarray:
    """Boolean (R, K) -> (R, ceil(K/64)) uint64 words, bit k of the row at bit k % 64 of word
    k // 64; the bits past K are 0."""
    r, k = bits.shape
    by = np.packbits(bits, axis=1, bitorder="little")
    words = -(-k // 64)
    out = np.zeros((r, words * 8), np.uint8)
    out[:, :by.shape[1]] = by
    return out.view(np.uint64)


def popcount_matmul(a: np.ndarray, w: np.ndarray, op: str) -> np.ndarray:
    """(R, W) x (C, W) uint64 words -> (R, C) int64 of ``popcount(a op w)``, op xor / and."""
    fn = np.bitwise_xor if op == "xor" else np.bitwise_and
    out = np.empty((a.shape[0], w.shape[0]), np.int64)
    step = max(1, (1 << 22) // max(1, w.size))
    for i in range(0, a.shape[0], step):
        out[i:i + step] = np.bitwise_count(fn(a[i:i + step, None, :], w[None])).sum(
            -1, dtype=np.int64)
    return out


@dataclass(eq=False)
class Part:
    """One convolution group's weight rows (Cout_g, K) in the forms its path needs."""

    ints: np.ndarray | None = None     # integer weights
    ints_f: np.ndarray | None = None   # the same integers as float32 (exact) for BLAS
    bound: int = 0                     # max |weight integer| (or 1 for planes and masks)
    floats: np.ndarray | None = None   # decoded float32 weights
    planes: list = field(default_factory=list)  # ±1 int8 planes (bitplanes) / codes==j masks
    words: dict = field(default_factory=dict)   # packed bit rows for the bit paths
    corr: dict = field(default_factory=dict)    # pad mask id -> its per-position sum_pad w


@dataclass
class Layer:
    name: str
    kind: str                      # "linear" or "conv2d"
    weight: Weight
    bias: np.ndarray | None
    bn: dict | None
    grid: Grid | None              # the input grid (None: float input)
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    path: str = "float"
    parts: list = field(default_factory=list)
    order: str = "hwc"             # im2col column order (ops.im2col)
    fast: object = None            # a fast kernel for the whole layer (lowbit.runtime.fast)
    _pads: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = choose_path(self.weight, self.grid)
        cb = self.weight.codebook
        if cb is not None and cb.kind == "integer" and cb.scale.ndim == 2:
            self.order = "chw"  # scales grouped along weight.reshape(out, -1)
        c = self.weight.shape[0]
        g = self.groups
        for i in range(g):
            self.parts.append(_part(self, slice(i * c // g, (i + 1) * c // g)))

    # -- running -----------------------------------------------------------------------
    def __call__(self, x, trace: dict | None = None) -> np.ndarray:
        """``x``: float32 array, or (ranks, grid) when coded. Returns float32 (N, C[, H, W])."""
        if self.fast is not None:
            return self.fast(self, x, trace)
        n = x[0].shape[0] if isinstance(x, tuple) else x.shape[0]
        cin = self.weight.shape[1] * (self.groups if self.kind == "conv2d" else 1)
        ys, accs = [], []
        for i, part in enumerate(self.parts):
            rows, hw, pad = self._rows(x, i, cin // self.groups)
            y, acc = _RUN[self.path](self, part, rows, pad, n)
            ys.append(y)
            accs.append(acc)
        y = np.concatenate(ys, axis=1) if len(ys) > 1 else ys[0]
        if trace is not None:
            trace[self.name] = {"path": self.path, "acc": accs}
        y = self._epilogue(y)
        if self.kind == "conv2d":
            return ops.rows_to_nchw(y, n, hw)
        return y

    def _epilogue(self, y: np.ndarray) -> np.ndarray:
        if self.bias is not None:
            y = y + self.bias
        if self.bn is not None:
            y = ops.batchnorm(y, self.bn["affine"])
        return y.astype(np.float32, copy=False)

    def _rows(self, x, i: int, cin_g: int):
        """The (R, K) input rows of group ``i`` in the form of the path, and the conv's
        pad mask (1 where a pad entered the row; None without padding)."""
        form = _FORM[self.path]
        if isinstance(x, tuple):
            ranks, grid = x
            if form == "ints":
                img = grid.ints_f[ranks]
            elif form == "planes":
                img = _act_planes(grid, ranks)
            else:
                img = grid.values[ranks]
        else:
            img = x
        if self.kind == "linear":
            if form == "planes":
                return [p.reshape(p.shape[0], -1) for p in img], None, None
            return img.reshape(img.shape[0], -1), None, None
        sl = slice(i * cin_g, (i + 1) * cin_g)
        k, geo = self.weight.shape[2:], (self.stride, self.padding, self.dilation)
        if form == "planes":
            cols = [ops.im2col(p[:, sl], k, *geo, order=self.order)[0] for p in img]
            hw_in = img[0].shape[2:]
        else:
            cols = ops.im2col(img[:, sl], k, *geo, order=self.order)[0]
            hw_in = img.shape[2:]
        hw = ops.out_hw(hw_in, k, *geo)
        pad = None
        if any(self.padding):
            key = (cin_g, *hw_in)
            if key not in self._pads:  # 1 where a pad entered the window, per position
                ones = np.ones((1, cin_g, *hw_in), np.int8)
                self._pads[key] = 1 - ops.im2col(ones, k, *geo, order=self.order)[0]
            pad = self._pads[key]
        return cols, hw, pad


def _act_planes(grid: Grid, ranks: np.ndarray) -> list[np.ndarray]:
    """ABC-Net activation planes A_n = ±1 (int8) from the codes of the ranks."""
    codes = grid.codes[ranks]
    return [(((codes >> n) & 1) * 2 - 1).astype(np.int8) for n in range(grid.codebook.bits)]


def _is_subset(a: np.ndarray, allowed) -> bool:
    return bool(np.isin(np.unique(a), list(allowed)).all())


def choose_path(weight: Weight, grid: Grid | None) -> str:
    cb = weight.codebook
    if cb is None or cb.kind == "half" or grid is None:
        return "float"
    act_ints = grid.ints
    if cb.kind == "integer" and act_ints is not None:
        w = np.unique(integers(cb, weight.codes))
        if _is_subset(w, (-1, 1)) and _is_subset(act_ints, (-1, 1)):
            return "xnor"
        if _is_subset(w, (-1, 1)) and _is_subset(act_ints, (0, 1)):
            return "binary01"
        if _is_subset(w, (-1, 0, 1)) and (_is_subset(act_ints, (-1, 1)) or _is_subset(
                act_ints, (0, 1))):
            return "ternary"
        return "integer"
    if cb.kind == "bitplanes" and act_ints is not None:
        return "bitplanes"
    if cb.kind == "bitplanes" and grid.codebook.kind == "bitplanes":
        return "bitplanes2"
    if cb.kind == "table" and act_ints is not None and cb.num_codes <= 16:
        return "lookup"
    return "float"


def _part(layer: Layer, rows: slice) -> Part:
    w = layer.weight
    part = Part()

    def cols(a: np.ndarray) -> np.ndarray:
        return ops.weight_columns(a[rows], layer.order)

    if layer.path == "float":
        part.floats = cols(w.decoded())
        return part
    cb, codes = w.codebook, cols(w.codes)
    if cb.kind == "integer":
        part.ints = cols(integers(cb, w.codes))
        part.ints_f = part.ints.astype(np.float32)
        part.bound = int(np.abs(part.ints).max(initial=0))
        if layer.path in ("xnor", "binary01"):
            part.words["pos"] = pack_rows(part.ints > 0)
        elif layer.path == "ternary":
            part.words["pos"] = pack_rows(part.ints > 0)
            part.words["neg"] = pack_rows(part.ints < 0)
    elif cb.kind == "bitplanes":
        part.planes = [(((codes >> m) & 1) * 2 - 1).astype(np.float32) for m in range(cb.bits)]
        part.bound = 1
    elif cb.kind == "table":
        part.planes = [(codes == j).astype(np.float32) for j in range(cb.num_codes)]
        part.bound = 1
    return part


def _pad_correction(layer: Layer, part: Part, pad, n: int) -> np.ndarray | int:
    """``sum_pad w`` per output position and channel, tiled over the batch (bit paths whose
    pad bit stands for -1); the per-position sums are computed once per input size."""
    if pad is None:
        return 0
    key = id(pad)  # pad masks live in layer._pads for the layer's lifetime: ids are stable
    if key not in part.corr:
        part.corr[key] = exact_matmul(pad, part.ints.T, 1, part.bound)
    return np.tile(part.corr[key], (n, 1))


def _scale_rows(layer: Layer, acc: np.ndarray, part_rows: slice | None = None) -> np.ndarray:
    cb = layer.weight.codebook
    sw = cb.scale.astype(np.float64)
    if sw.ndim == 1:
        sw = sw[part_rows]
    return (acc * (layer.grid.scale * sw)).astype(np.float32)


def _part_slice(layer: Layer, part: Part) -> slice:
    i = layer.parts.index(part) if part in layer.parts else len(layer.parts)
    c = layer.weight.shape[0] // layer.groups
    return slice(i * c, (i + 1) * c)


def _run_float(layer, part, rows, pad, n):
    return rows.astype(np.float32, copy=False) @ part.floats.T, None


def _run_integer(layer, part, rows, pad, n):
    cb = layer.weight.codebook
    sl = _part_slice(layer, part)
    if cb.scale.ndim == 2:  # one accumulator per group of the weight's row
        gs, sw = cb.group_size, cb.scale[sl].astype(np.float64)
        g_max = layer.grid.int_bound
        accs = [exact_matmul(rows[:, j:j + gs], part.ints_f[:, j:j + gs].T, g_max, part.bound)
                for j in range(0, rows.shape[1], gs)]
        y = sum(a * sw[:, g] for g, a in enumerate(accs)) * layer.grid.scale
        return y.astype(np.float32), accs
    acc = exact_matmul(rows, part.ints_f.T, layer.grid.int_bound, part.bound)
    return _scale_rows(layer, acc, sl), acc


def _run_bits(layer, part, rows, pad, n):
    """xnor / binary01 / ternary through popcounts of packed rows."""
    k = rows.shape[1]
    a = pack_rows(rows > 0)
    if layer.path == "xnor":
        acc = k - 2 * popcount_matmul(a, part.words["pos"], "xor")
    elif layer.path == "binary01":
        acc = 2 * popcount_matmul(a, part.words["pos"], "and") - np.bitwise_count(a).sum(
            -1, dtype=np.int64)[:, None]
    else:
        p, m = part.words["pos"], part.words["neg"]
        acc = popcount_matmul(a, p, "and") - popcount_matmul(a, m, "and")
        if _is_subset(layer.grid.ints, (-1, 1)):  # a = 2b - 1
            cnt = (np.bitwise_count(p).sum(-1) - np.bitwise_count(m).sum(-1)).astype(np.int64)
            acc = 2 * acc - cnt[None, :]
    if layer.path != "binary01" and (layer.path == "xnor" or _is_subset(layer.grid.ints,
                                                                          (-1, 1))):
        acc = acc + _pad_correction(layer, part, pad, n)
    return _scale_rows(layer, acc, _part_slice(layer, part)), acc


def _plane_sum(coef: np.ndarray, accs: list, scale: float, dtype=np.float32) -> np.ndarray:
    """sum_m coef[:, m] * accs[m] (coef (M,) or (C, M)) times ``scale``, in float64, returned
    as ``dtype``."""
    coef = coef.astype(np.float64)
    y = sum((coef[..., m] if coef.ndim == 1 else coef[:, m]) * a for m, a in enumerate(accs))
    return (y * scale).astype(dtype)


def _alphas(layer, part):
    al = layer.weight.codebook.alphas
    return al if al.ndim == 1 else al[_part_slice(layer, part)]


def _run_bitplanes(layer, part, rows, pad, n):
    accs = [exact_matmul(rows, b.T, layer.grid.int_bound, 1) for b in part.planes]
    return _plane_sum(_alphas(layer, part), accs, layer.grid.scale), accs


def _run_bitplanes2(layer, part, rows, pad, n):
    beta = layer.grid.codebook.alphas.astype(np.float64)
    alphas = _alphas(layer, part).astype(np.float64)
    y, accs = 0.0, []
    for i, a_n in enumerate(rows):
        acc_n = [exact_matmul(a_n, b.T, 1, 1) for b in part.planes]
        accs.append(acc_n)
        y = y + beta[i] * _plane_sum(alphas, acc_n, 1.0, np.float64)
    return np.asarray(y, np.float32), accs


def _run_lookup(layer, part, rows, pad, n):
    values = layer.weight.codebook.values
    values = values if values.ndim == 1 else values[_part_slice(layer, part)]
    sums = [exact_matmul(rows, m.T, layer.grid.int_bound, 1) for m in part.planes]
    return _plane_sum(values, sums, layer.grid.scale), sums


_RUN = {"float": _run_float, "integer": _run_integer, "xnor": _run_bits,
        "binary01": _run_bits, "ternary": _run_bits, "bitplanes": _run_bitplanes,
        "bitplanes2": _run_bitplanes2, "lookup": _run_lookup}
_FORM = {"float": "values", "integer": "ints", "xnor": "ints", "binary01": "ints",
         "ternary": "ints", "bitplanes": "ints", "bitplanes2": "planes", "lookup": "ints"}
