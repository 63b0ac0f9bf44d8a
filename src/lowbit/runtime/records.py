"""The codebook records of a ``.lowbit`` file, read back as numpy (docs/format.md, "Weights",
"Activation grids"): :class:`Weight` for a layer's weight and :class:`Grid` for an activation
quantizer. Decoding follows lowbit.functional.codebook operation for operation in float32, so
a decoded weight equals the training quantizer's output bit for bit
(tests/runtime/test_model.py). Every field is checked; a bad one is a FormatError naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowbit.runtime.errors import FormatError
from lowbit.runtime.pack import unpack_codes


class _Reader:
    """Typed access to one record's fields and sections, failing with the record's name."""

    def __init__(self, rec, sections: dict[str, np.ndarray], where: str) -> None:
        if not isinstance(rec, dict):
            raise FormatError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        self.rec, self.sections, self.where = rec, sections, where

    def fail(self, msg: str):
        raise FormatError(f"{self.where}: {msg}")

    def get(self, key: str, types, default=...):
        if key not in self.rec:
            if default is ...:
                self.fail(f"missing field {key!r}")
            return default
        v = self.rec[key]
        if isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            self.fail(f"field {key!r} must be {types}, got {v!r}")
        if not isinstance(v, types):
            self.fail(f"field {key!r} must be {types}, got {type(v).__name__}")
        return v

    def int(self, key: str, lo: int, hi: int, default=...) -> int:
        v = self.get(key, int, default)
        if not lo <= v <= hi:
            self.fail(f"field {key!r} = {v} outside {lo}..{hi}")
        return v

    def section(self, key: str, kinds: str, shape=None, default=...) -> np.ndarray:
        if default is not ... and self.rec.get(key) is None:
            return None  # an optional tensor, absent or null
        name = self.get(key, str)
        if name not in self.sections:
            self.fail(f"field {key!r} names section {name!r}, which the file does not have")
        a = self.sections[name]
        if a.dtype.kind not in kinds:
            self.fail(f"section {name!r} has dtype {a.dtype}, expected kind {kinds!r}")
        if shape is not None and tuple(a.shape) != tuple(shape):
            self.fail(f"section {name!r} has shape {a.shape}, expected {tuple(shape)}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            self.fail(f"section {name!r} holds NaN or Inf")
        return a


@dataclass
class Codebook:
    """A typed codebook: ``kind`` integer (``levels`` int64 table of every code, ``scale``,
    ``zero_point``, ``group_size``), bitplanes (``alphas``), table (``values``) or half."""

    kind: str
    bits: int
    num_codes: int
    levels: np.ndarray | None = None
    scale: np.ndarray | None = None
    zero_point: np.ndarray | int = 0
    group_size: int | None = None
    alphas: np.ndarray | None = None
    values: np.ndarray | None = None
    fmt: str = "float16"


RECORD_FIELDS = {  # kind -> the fields of its codebook record
    "integer": {"bits", "levels", "scale", "zero_point", "group_size"},
    "bitplanes": {"bits", "alphas"}, "table": {"bits", "values", "vector"},
    "half": {"bits", "format"}, "float": {"data"},
}
WEIGHT_FIELDS = {"kind", "shape", "count", "codes"}
GRID_FIELDS = {"thresholds", "values", "codes", "codebook", "monotone"}


def _known(r: _Reader, allowed: set[str]) -> None:
    unknown = set(r.rec) - allowed
    if unknown:
        r.fail(f"fields this runtime does not know: {sorted(unknown)}")


def read_codebook(rec, sections, where: str, weight: bool = False) -> Codebook:
    r = _Reader(rec, sections, where)
    kind = r.get("kind", str)
    if kind in RECORD_FIELDS:
        _known(r, RECORD_FIELDS[kind] | {"kind"} | (WEIGHT_FIELDS if weight else set()))
    if kind == "integer":
        bits = r.int("bits", 1, 32)
        lv = r.get("levels", dict)
        if "range" in lv:
            rng = lv["range"]
            if (not isinstance(rng, list) or len(rng) != 3 or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in rng[:2])
                    or not isinstance(rng[2], bool) or rng[1] < rng[0]
                    or rng[1] - rng[0] >= 2**bits + 1 or abs(rng[0]) > 2**31):
                r.fail(f"bad level range {rng!r}")
            levels = np.arange(rng[0], rng[1] + 1, dtype=np.int64)
            if rng[2]:
                levels = levels[levels != 0]
        else:
            levels = _Reader(lv, sections, where).section("table", "i").astype(np.int64)
            if levels.ndim != 1 or not levels.size:
                r.fail("levels must be a non-empty 1-d table")
        if len(levels) > 2**bits:
            r.fail(f"{len(levels)} levels do not fit {bits} bits")
        scale = r.section("scale", "f")
        if scale.ndim > 2:
            r.fail("scale must be (), (C,) or (C, G)")
        zp = r.rec.get("zero_point", 0)
        zp = zp if isinstance(zp, int) and not isinstance(zp, bool) else r.section(
            "zero_point", "i", scale.shape).astype(np.int64)
        if np.any(np.abs(np.asarray(zp, dtype=object)) >= 2**31):
            r.fail("zero_point outside int32")
        gs = r.get("group_size", (int, type(None)), None)
        if (scale.ndim == 2) != (gs is not None) or (gs is not None and gs < 1):
            r.fail("a (C, G) scale needs group_size >= 1, and group_size a (C, G) scale")
        return Codebook("integer", bits, len(levels), levels=levels, scale=scale,
                        zero_point=zp, group_size=gs)
    if kind == "bitplanes":
        alphas = r.section("alphas", "f")
        if alphas.ndim not in (1, 2) or not 1 <= alphas.shape[-1] <= 8:
            r.fail("alphas must be (M,) or (C, M) with 1 <= M <= 8")
        m = alphas.shape[-1]
        return Codebook("bitplanes", m, 2**m, alphas=alphas.astype(np.float32))
    if kind == "table":
        bits = r.int("bits", 1, 16)
        values = r.section("values", "f")
        if r.get("vector", bool, False):
            r.fail("vector tables are not supported by this runtime yet")
        if values.ndim not in (1, 2) or values.shape[-1] > 2**bits or not values.size:
            r.fail(f"table values of shape {values.shape} do not fit {bits}-bit codes")
        return Codebook("table", bits, values.shape[-1], values=values.astype(np.float32))
    if kind == "half":
        fmt = r.get("format", str)
        if fmt not in ("float16", "bfloat16"):
            r.fail(f"unknown half format {fmt!r}")
        return Codebook("half", 16, 2**16, fmt=fmt)
    r.fail(f"unknown codebook kind {kind!r}")


def _blocked(block: np.ndarray, shape, group_size) -> np.ndarray:
    """lowbit.functional.codebook._blocked in numpy: per tensor, channel or group."""
    if block.ndim == 0:
        return block
    c = shape[0]
    if block.ndim == 1:
        return block.reshape(c, *([1] * (len(shape) - 1)))
    row = int(np.prod(shape[1:]))
    return block[:, np.arange(row) // group_size].reshape(shape)


def integers(cb: Codebook, codes: np.ndarray) -> np.ndarray:
    """``levels[codes] - zero_point`` (int64), per tensor / channel / group."""
    q = cb.levels[codes]
    zp = cb.zero_point
    return q - (_blocked(zp, q.shape, cb.group_size) if np.ndim(zp) else zp)


def plane_table(alphas: np.ndarray) -> np.ndarray:
    """``sum_i alpha_i B_i`` for every code, summed in the order i = 0..M-1 (as training)."""
    m = alphas.shape[-1]
    codes = np.arange(2**m)
    signs = (((codes[:, None] >> np.arange(m)) & 1) * 2 - 1).astype(np.float32)
    out = alphas[..., None, 0] * signs[:, 0]
    for i in range(1, m):
        out = out + alphas[..., None, i] * signs[:, i]
    return out.astype(np.float32)


def _gather(table: np.ndarray, codes: np.ndarray) -> np.ndarray:
    if table.ndim == 1:
        return table[codes]
    flat = codes.reshape(codes.shape[0], -1)
    return np.take_along_axis(table, flat, axis=1).reshape(codes.shape)


def decode(cb: Codebook, codes: np.ndarray) -> np.ndarray:
    """The float32 values of ``codes``, computed as lowbit.functional.codebook does."""
    if cb.kind == "integer":
        q = integers(cb, codes).astype(np.float32)
        return q * _blocked(cb.scale.astype(np.float32), q.shape, cb.group_size)
    if cb.kind == "bitplanes":
        return _gather(plane_table(cb.alphas), codes)
    if cb.kind == "table":
        return _gather(cb.values, codes)
    signed = np.where(codes >= 2**15, codes - 2**16, codes).astype(np.int16)
    if cb.fmt == "float16":
        return signed.view(np.float16).astype(np.float32)
    return (signed.astype(np.int32) << 16).astype(np.int32).view(np.float32)


@dataclass
class Weight:
    """A layer's weight: float (``codes`` None) or codes of shape ``shape`` and a codebook."""

    shape: tuple[int, ...]
    codebook: Codebook | None
    codes: np.ndarray | None
    data: np.ndarray | None = None

    def decoded(self) -> np.ndarray:
        if self.data is None:
            self.data = decode(self.codebook, self.codes)
        return self.data


def read_weight(rec, sections, where: str) -> Weight:
    r = _Reader(rec, sections, where)
    shape = r.get("shape", list)
    if not 1 <= len(shape) <= 4 or not all(isinstance(s, int) and 0 < s < 2**31
                                           for s in shape):
        r.fail(f"bad weight shape {shape!r}")
    shape = tuple(shape)
    if r.get("kind", str) == "float":
        _known(r, {"kind", "shape", "data"})
        return Weight(shape, None, None, r.section("data", "f", shape).astype(np.float32))
    cb = read_codebook(rec, sections, where, weight=True)
    count = r.int("count", 1, 2**40)
    if count != int(np.prod(shape)):
        r.fail(f"count {count} is not the product of shape {shape}")
    bits = cb.bits
    raw = r.section("codes", "u")
    try:
        codes = unpack_codes(raw, bits, count).astype(np.int64).reshape(shape)
    except (ValueError, TypeError) as e:
        r.fail(f"codes: {e}")
    if codes.size and codes.max() >= cb.num_codes:
        r.fail(f"codes reach {codes.max()}, the codebook has {cb.num_codes}")
    _check_blocks(cb, shape, r)
    return Weight(shape, cb, codes)


def _check_blocks(cb: Codebook, shape, r: _Reader) -> None:
    c, row = shape[0], int(np.prod(shape[1:]))
    for name, a in (("scale", cb.scale), ("alphas", cb.alphas), ("values", cb.values),
                    ("zero_point", cb.zero_point)):
        if a is None or np.ndim(a) == 0:
            continue
        per_tensor = name in ("alphas", "values") and a.ndim == 1
        if not per_tensor and a.shape[0] != c:
            r.fail(f"{name} has {a.shape[0]} channels, the weight {c}")
        if name in ("scale", "zero_point") and a.ndim == 2 and (
                a.shape[1] != -(-row // cb.group_size)):
            r.fail(f"{name} has {a.shape[1]} groups, a row of {row} in groups of "
                   f"{cb.group_size} has {-(-row // cb.group_size)}")


@dataclass
class Grid:
    """An activation quantizer: ``rank(x) = searchsorted(thresholds, x, "right")``, value
    ``values[rank]``, code ``codes[rank]`` of ``codebook``; ``ints[rank]`` the integer of an
    integer grid (``levels[code] - zero_point``) with ``scale``, else None. ``monotone``: the
    values increase with the rank, so the largest rank holds the largest value (max pooling
    on ranks); else ``by_value`` orders the ranks by value (ties by rank) and ``value_rank``
    is each rank's place in that order."""

    name: str
    thresholds: np.ndarray
    values: np.ndarray
    codes: np.ndarray
    codebook: Codebook
    ints: np.ndarray | None
    scale: float | None
    monotone: bool = True

    def __post_init__(self) -> None:
        self.ints_f = None if self.ints is None else self.ints.astype(np.float32)
        self.int_bound = 0 if self.ints is None else int(np.abs(self.ints).max())
        if self.ints is not None and self.int_bound >= 2**24:
            self.ints_f = None  # not exact in float32: such a grid takes the float path
            self.ints = None
        self.by_value = np.argsort(self.values, kind="stable").astype(np.int32)
        self.value_rank = np.argsort(self.by_value, kind="stable").astype(np.int32)

    def rank(self, x: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.thresholds, x, side="right").astype(np.int16)


def read_grid(rec, sections, where: str) -> Grid:
    r = _Reader(rec, sections, where)
    _known(r, GRID_FIELDS)
    t = r.section("thresholds", "f").astype(np.float32)
    values = r.section("values", "f").astype(np.float32)
    codes = r.section("codes", "i").astype(np.int64)
    monotone = r.get("monotone", bool, True)
    if t.ndim != 1 or values.shape != (len(t) + 1,) or codes.shape != values.shape:
        r.fail("thresholds, values and codes must be 1-d of lengths L-1, L, L")
    if np.any(np.diff(t) <= 0) or (monotone and np.any(np.diff(values) <= 0)) or len(
            values) > 2**16:
        r.fail("thresholds and values must increase strictly (at most 65536 values; values "
               "in any order with \"monotone\": false)")
    cb = read_codebook(r.get("codebook", dict), sections, f"{where} codebook")
    per_tensor = {"integer": lambda: cb.scale.ndim == 0 and np.ndim(cb.zero_point) == 0,
                  "bitplanes": lambda: cb.alphas.ndim == 1, "table": lambda: cb.values.ndim == 1,
                  "half": lambda: True}
    if not per_tensor[cb.kind]():
        r.fail("an activation grid's codebook must be per tensor")
    if codes.min() < 0 or codes.max() >= cb.num_codes:
        r.fail("grid codes outside its codebook")
    if cb.kind in ("integer", "bitplanes", "table") and not np.array_equal(
            decode(cb, codes), values):
        r.fail("grid values are not its codebook's values")
    ints = scale = None
    if cb.kind == "integer" and cb.scale.ndim == 0 and np.ndim(cb.zero_point) == 0:
        ints, scale = integers(cb, codes), float(cb.scale)
    return Grid(where, t, values, codes, cb, ints, scale, monotone)
