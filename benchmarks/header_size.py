"""Format version 2's pooled small tensors, measured: one ResNet-20 DoReFa W2A2 model (seeded,
BatchNorm statistics and ranges from 2 random batches) written with every tensor its own section
(``pool_below=0``, the version 1 layout) and with tensors under 1 KiB pooled (the default), and
``lowbit inspect``'s accounting of each.

    python benchmarks/header_size.py
Writes benchmarks/results/header_size/{results.json,results.md}.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "results" / "header_size"


def main() -> None:
    import lowbit
    from lowbit.exporter.lowbit_file import GRAPH_VERSION, build, frozen_copy
    from lowbit.models import build_model
    from lowbit.report.provenance import provenance, provenance_line
    from lowbit.runtime.container import POOL_BELOW, write_container
    from lowbit.runtime.inspect import summary

    torch.manual_seed(0)
    net = lowbit.quantize(build_model("resnet20", 3, 32, 10, 0.45, 0.25),
                          lowbit.Recipe(weight="dorefa", act="dorefa", w_bits=2, a_bits=2))
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.rand(32, 3, 32, 32))
    ops, sections = build(frozen_copy(net.eval()))
    meta = {"lowbit": GRAPH_VERSION, "graph": ops, "input": {"shape": [3, 32, 32],
                                                             "dtype": "float32"}, "model": {}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pool in (0, POOL_BELOW):
            path = Path(tmp) / f"pool{pool}.lowbit"
            write_container(path, sections, meta, pool_below=pool)
            s = summary(path)
            rows.append({"pool_below": pool, **{k: s[k] for k in (
                "file_bytes", "header_bytes", "padding_bytes", "code_bytes", "codebook_bytes",
                "float_bytes", "grid_bytes")}})
    OUT.mkdir(parents=True, exist_ok=True)
    prov = provenance()
    (OUT / "results.json").write_text(json.dumps({"provenance": prov, "rows": rows}, indent=1))
    lines = [provenance_line(prov), "", "| pool_below | file B | header B | padding B | codes B "
             "| codebooks B | float B | grids B |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['pool_below']} | {r['file_bytes']} | {r['header_bytes']} | "
              f"{r['padding_bytes']} | {r['code_bytes']} | {r['codebook_bytes']} | "
              f"{r['float_bytes']} | {r['grid_bytes']} |" for r in rows]
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
