"""``lowbit inspect net.lowbit``: what each layer of a packed file stores, and where the bytes go.

Per weight layer: the op, the runtime path (:mod:`lowbit.runtime.layers`), the bits, the
codebook kind and granularity, the bytes of its packed codes (``ceil(n * bits / 8)``), of its
codebook record (scales, levels, tables), of its float tensors (bias, folded BatchNorm), and the
input grid. Per activation grid: levels and bytes. Whole file: the sum of the sections, the
header (JSON + 48-byte preamble), the alignment padding, and the file size (which equals their
sum: :func:`summary` checks it).
"""

from __future__ import annotations

import os
from pathlib import Path

from lowbit.runtime.container import read_container, read_header, tensor_bytes
from lowbit.runtime.model import Model

PREAMBLE = 48  # magic + header length + header digest (docs/format.md)


def _section_bytes(sections_meta: dict, names) -> int:
    return sum(sections_meta[n]["length"] for n in names if n in sections_meta)


def _names(rec) -> list[str]:
    """Every section named anywhere inside a record (string values ending a known key)."""
    out = []
    if isinstance(rec, dict):
        for k, v in rec.items():
            if isinstance(v, str) and k not in ("kind", "op", "name", "output", "format"):
                out.append(v)
            elif isinstance(v, (dict, list)):
                out += _names(v)
    elif isinstance(rec, list):
        for v in rec:
            out += _names(v)
    return out


def summary(path: str | Path) -> dict:
    """The per-layer and whole-file byte accounting of ``path`` (a JSON-ready dict)."""
    header = read_header(path)
    secs = {k: {"length": v} for k, v in tensor_bytes(header).items()}
    meta, sections = read_container(path)
    model = Model(meta, sections, str(path))
    layers, grids = [], []
    for node, rec in zip(model.nodes, meta["graph"], strict=True):
        if node.layer is not None:
            w = rec["weight"]
            code = secs[w["codes"]]["length"] if "codes" in w else 0
            weight_names = [n for n in _names(w) if n != w.get("codes")]
            cb = node.layer.weight.codebook
            layers.append({
                "name": node.name, "op": node.op, "path": node.layer.path,
                "shape": list(node.layer.weight.shape),
                "kind": w["kind"], "bits": w.get("bits", 32),
                "granularity": _granularity(cb),
                "code_bytes": code,
                "codebook_bytes": _section_bytes(secs, weight_names) if cb else 0,
                "float_bytes": _section_bytes(secs, weight_names if cb is None else [])
                + _section_bytes(secs, _names({"b": rec.get("bias")}) + _names(
                    rec.get("bn") or {})),
                "input_grid": (rec.get("input") or {}).get("grid"),
                "leaves_grid": (rec.get("input") or {}).get("leaves_grid"),
            })
        elif node.grid is not None:
            grids.append({"name": node.name, "levels": len(node.grid.values),
                          "bytes": _section_bytes(secs, _names(rec["grid"]))})
    data = sum(s["length"] for s in header["sections"].values())
    size = os.path.getsize(path)
    raw_header = len(_header_bytes(path))
    return {"file": str(path), "file_bytes": size, "sections_bytes": data,
            "header_bytes": PREAMBLE + raw_header,
            "padding_bytes": size - data - PREAMBLE - raw_header,
            "code_bytes": sum(r["code_bytes"] for r in layers),
            "codebook_bytes": sum(r["codebook_bytes"] for r in layers),
            "float_bytes": data - sum(r["code_bytes"] + r["codebook_bytes"] for r in layers)
            - sum(g["bytes"] for g in grids),
            "grid_bytes": sum(g["bytes"] for g in grids),
            "layers": layers, "grids": grids}


def _granularity(cb) -> str | None:
    if cb is None or cb.kind == "half":
        return None
    if cb.kind == "integer":
        return ("tensor", "channel", "group")[cb.scale.ndim]
    table = cb.alphas if cb.kind == "bitplanes" else cb.values
    return "tensor" if table.ndim == 1 else "channel"


def _header_bytes(path) -> bytes:
    with open(path, "rb") as f:
        f.seek(8)
        n = int.from_bytes(f.read(8), "little")
        f.seek(PREAMBLE)
        return f.read(n)


def table(s: dict) -> str:
    """``summary`` as a plain-text table."""
    rows = [f"{'layer':<28} {'op':<7} {'path':<10} {'bits':>4} {'kind':<9} {'gran':<7} "
            f"{'codes B':>9} {'codebook B':>10} {'float B':>8}  input grid"]
    for r in s["layers"]:
        grid = r["input_grid"] or (f"float ({r['leaves_grid']})" if r["leaves_grid"]
                                   else "float")
        rows.append(f"{r['name']:<28} {r['op']:<7} {r['path']:<10} {r['bits']:>4} "
                    f"{r['kind']:<9} {r['granularity'] or '-':<7} {r['code_bytes']:>9} "
                    f"{r['codebook_bytes']:>10} {r['float_bytes']:>8}  {grid}")
    rows.append(f"activation grids: {len(s['grids'])}, {s['grid_bytes']} B")
    rows.append(f"total: {s['file_bytes']} B = codes {s['code_bytes']} + codebooks "
                f"{s['codebook_bytes']} + float {s['float_bytes']} + grids {s['grid_bytes']} "
                f"+ header {s['header_bytes']} + padding {s['padding_bytes']}")
    return "\n".join(rows)
