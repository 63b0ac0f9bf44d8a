"""The speed cost of exact kernels (issue 7, item 1): lowbit.kernels.fused as it is against
the fast-math version of an older revision (arcp/ninf/contract in the soft quantizer's sigmoid
and exp, reassoc in the float64 sums), on ResNet-20-sized activations, one thread, interleaved
in one run (rounds alternate old and new; medians and their ratio new / old), as wall time
and as the thread's CPU time (less sensitive to a busy machine's scheduling).

    PYTHONPATH=src .venv/bin/python benchmarks/kernel_exactness_cost.py --old 04f2be4
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
import torch  # noqa: E402

from lowbit.kernels import fused as kernels  # noqa: E402
from lowbit.report.provenance import meta_header, provenance  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "kernel_exactness_cost"
ROOT = Path(__file__).resolve().parents[1]


def load_old(rev: str):
    """kernels.py at git revision ``rev`` as its own module (own numba cache beside it)."""
    git = ["git", "-C", str(ROOT), "show", f"{rev}:src/lowbit/functional/kernels.py"]
    src = subprocess.run(git, check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "kernels_old.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("kernels_old", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["kernels_old"] = mod
    spec.loader.exec_module(mod)
    return mod


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, calls: int
                ) -> dict[str, dict[str, list[float]]]:
    """Seconds per call (wall and thread CPU time) of each function, rounds alternating them."""
    for fn in fns.values():
        fn()
    out = {k: {"wall": [], "cpu": []} for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            w, c = time.perf_counter(), time.thread_time()
            for _ in range(calls):
                fn()
            out[k]["cpu"].append((time.thread_time() - c) / calls)
            out[k]["wall"].append((time.perf_counter() - w) / calls)
    return out


def cases(k, x, g):
    """The measured calls of kernels module ``k``: soft (ACT_LEVELS["2"], T = 5) and LSQ."""
    t = torch.tensor
    steps, bt = [1.0, 1.0, 1.0], t([0.5, 1.5, 2.5]) * 5
    return {"soft forward": lambda: k.soft_forward(x, t(5.0), bt, steps, 0.0, t(0.9)),
            "soft backward": lambda: k.soft_backward(g, x, t(5.0), bt, None, steps, 0.0, t(4.5)),
            "soft backward, no bias grad": lambda: k.soft_backward(
                g, x, t(5.0), bt, None, steps, 0.0, t(4.5), need_b=False),
            "lsq forward": lambda: k.lsq_forward(x, t(0.02), t(50.0), 0, 15),
            "lsq backward": lambda: k.lsq_backward(g, x, t(50.0), 0, 15)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--old", default="04f2be4", help="git revision of the fast-math kernels")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--shape", type=int, nargs=4, default=[128, 16, 32, 32])
    args = p.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.shape, generator=gen) * 4 - 0.5
    g = torch.randn(args.shape, generator=gen)
    old, new = cases(load_old(args.old), x, g), cases(kernels, x, g)
    rows = []
    for name in new:
        times = interleaved({"old": old[name], "new": new[name]}, args.rounds, args.calls)
        row = {"case": name}
        for clock in ("cpu", "wall"):
            mo, mn = (statistics.median(times[v][clock]) * 1e3 for v in ("old", "new"))
            row |= {f"old_{clock}_ms": mo, f"new_{clock}_ms": mn, f"ratio_{clock}": mn / mo,
                    f"runs_{clock}_ms": {v: [t * 1e3 for t in times[v][clock]]
                                         for v in ("old", "new")}}
        rows.append(row)
        print(f"{name:28s} cpu old {row['old_cpu_ms']:7.2f} new {row['new_cpu_ms']:7.2f} ms "
              f"x{row['ratio_cpu']:.2f}   wall x{row['ratio_wall']:.2f}", flush=True)
    prov = provenance(root=ROOT)
    meta = {"command": prov["command"], "old": args.old,
            "new": f"{prov['commit']} (working tree)", "shape": args.shape,
            "threads": 1, "rounds": args.rounds, "calls": args.calls,
            "cpu": prov["cpu"], "torch": torch.__version__,
            "load_average": prov["load_average"], "provenance": prov}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"# Exact kernels vs fast-math kernels ({args.old}), {tuple(args.shape)} float32, "
             "1 thread", "", f"{meta_header(meta)}; load average at the end "
             f"{meta['load_average'][0]:.1f} (shared machine). Medians of {args.rounds} "
             f"interleaved rounds of {args.calls} calls.", "",
             "| case | old CPU ms | new CPU ms | new / old (CPU) | new / old (wall) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['old_cpu_ms']:.2f} | {r['new_cpu_ms']:.2f} | "
              f"{r['ratio_cpu']:.2f} | {r['ratio_wall']:.2f} |" for r in rows]
    (OUT / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
