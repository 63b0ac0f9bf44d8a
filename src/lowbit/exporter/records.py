"""Codebook records (lowbit.functional.codebook) -> the JSON + sections of a ``.lowbit`` file.

One function per direction of the format (docs/format.md, "Weights" and "Activation grids"):
:func:`weight_record` turns a layer's ``(codes, codebook)`` into a JSON record whose tensors
are named sections (codes packed at exactly ``bits``: ``ceil(n * bits / 8)`` bytes);
:func:`grid_record` does the same for an activation quantizer's frozen grid, the
:class:`~lowbit.exporter.thresholds.StepGrid` of its thresholds (``"monotone": false`` when its
values do not increase along x, e.g. ABC-Net's with a negative beta). Integer levels are stored
at the narrowest of int8/16/32 (or as a ``[lo, hi, skip_zero]`` range), scales and tables as
float32: the storage that ``Codebook.overhead_bytes`` counts.
"""

from __future__ import annotations

import numpy as np
import torch

from lowbit.errors import LowbitError
from lowbit.exporter.thresholds import StepGrid
from lowbit.functional.codebook import BitPlanes, HalfFloat, IntegerGrid, LevelRange, Table
from lowbit.runtime.pack import pack_codes

Sections = dict[str, np.ndarray]


def _narrow(t: torch.Tensor) -> np.ndarray:
    a = t.detach().cpu().numpy().astype(np.int64)
    for dtype in (np.int8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if a.size == 0 or (a.min() >= info.min and a.max() <= info.max):
            return a.astype(dtype)
    raise LowbitError(f"integer levels {a.min()}..{a.max()} do not fit int32")


def _f32(t: torch.Tensor) -> np.ndarray:
    return np.array(t.detach().cpu().float().numpy(), order="C")


def _levels(levels, key: str, sections: Sections):
    if isinstance(levels, LevelRange):
        return {"range": [levels.lo, levels.hi, levels.skip_zero]}
    sections[key] = _narrow(levels)
    return {"table": key}


def codebook_record(cb, key: str, sections: Sections) -> dict:
    """The JSON of a typed codebook, its tensors added to ``sections`` under ``key.*``."""
    if isinstance(cb, IntegerGrid):
        rec = {"kind": "integer", "bits": cb.bits,
               "levels": _levels(cb.levels, f"{key}.levels", sections),
               "scale": f"{key}.scale", "group_size": cb.group_size}
        sections[f"{key}.scale"] = _f32(cb.scale)
        if bool(cb.zero_point.any()):
            sections[f"{key}.zero_point"] = _narrow(cb.zero_point)
            rec["zero_point"] = f"{key}.zero_point"
        else:
            rec["zero_point"] = 0
        return rec
    if isinstance(cb, BitPlanes):
        sections[f"{key}.alphas"] = _f32(cb.alphas)
        return {"kind": "bitplanes", "bits": cb.bits, "alphas": f"{key}.alphas"}
    if isinstance(cb, Table):
        sections[f"{key}.values"] = _f32(cb.values)
        return {"kind": "table", "bits": cb.bits, "values": f"{key}.values",
                "vector": cb.vector}
    if isinstance(cb, HalfFloat):
        return {"kind": "half", "bits": 16, "format": cb.format}
    raise LowbitError(f"no file record for codebook {type(cb).__name__}")


def weight_record(weight: torch.Tensor, quant, key: str, sections: Sections) -> dict:
    """A layer's weight: float32 when ``quant`` is None, else its codes packed at their bits and
    its codebook. Checks that the record decodes to the quantized weight bit for bit."""
    shape = list(weight.shape)
    if quant is None:
        sections[f"{key}.data"] = _f32(weight)
        return {"kind": "float", "shape": shape, "data": f"{key}.data"}
    with torch.no_grad():
        codes, cb = quant.encode(weight)
        if not torch.equal(cb.decode(codes), quant(weight)):
            raise LowbitError(f"{key}: the codebook does not decode to the quantized weight; "
                              "freeze() the model before export")
    rec = codebook_record(cb, key, sections)
    flat = codes.detach().cpu().numpy().reshape(-1)
    sections[f"{key}.codes"] = pack_codes(flat, rec["bits"])
    rec.update(shape=shape, codes=f"{key}.codes", count=int(flat.size))
    return rec


def grid_record(quant, grid: StepGrid, key: str, sections: Sections) -> dict:
    """An activation quantizer's frozen grid (:func:`lowbit.exporter.thresholds.step_grid`):
    thresholds (float32, one per reachable value after the first), the values in x-order
    (increasing unless ``monotone`` is false), each one's code in the quantizer's codebook, and
    the codebook record. ``"monotone": false`` is written only for a non-monotone grid."""
    cb = quant.codebook()
    sections[f"{key}.thresholds"] = np.ascontiguousarray(grid.thresholds, dtype=np.float32)
    sections[f"{key}.values"] = np.ascontiguousarray(grid.values, dtype=np.float32)
    sections[f"{key}.codes"] = np.asarray(grid.codes).astype(
        np.int32 if cb.num_codes > 2**15 else np.int16)
    rec = {"thresholds": f"{key}.thresholds", "values": f"{key}.values",
           "codes": f"{key}.codes", "codebook": codebook_record(cb, f"{key}.cb", sections)}
    if not grid.monotone:
        rec["monotone"] = False
    return rec
