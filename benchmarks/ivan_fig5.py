"""Ivan's Figure 5 on the real MNIST: LeNet300 test accuracy for weight bits x activation bits
{1, 2, 4, 8, 16, 32}^2 with Q_b/A_b on every layer (the paper quantizes all layers), 3 seeds per
cell; mean and min/max; JSON + markdown + heatmap.

Resumable: each finished (w, a, seed) run is saved as one JSON under ``--out``/cells and skipped
on a rerun; an interrupted run continues from its last epoch checkpoint (``--work``).

    .venv/bin/python benchmarks/ivan_fig5.py --jobs 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

BITS = (1, 2, 4, 8, 16, 32)
HERE = Path(__file__).resolve().parent
TARGETS = {"float >= 98.2 %": None, "W4A4 within 0.3 points of float": None,
           "W1A32 within 0.5 points of float": None}


def run_cell(w: int, a: int, seed: int, epochs: int, work: Path, cells: Path) -> dict:
    import torch

    torch.set_num_threads(1)
    from lowbit.experiment import Job, default_config, run
    from lowbit.recipe import Recipe

    recipe = Recipe("ivan", w, "ivan", a, keep_first=False, keep_last=False)
    job = Job("lenet300", "mnist", recipe, default_config("lenet300", epochs=epochs, seed=seed))
    from lowbit.report.provenance import git_state

    s = run(job, work / f"w{w}a{a}s{seed}", resume=True, progress=False)
    git = git_state(HERE)
    cell = {k: s[k] for k in ("w_bits", "a_bits", "test_accuracy", "test_loss", "epochs",
                              "wall_seconds", "float_bytes", "packed_bytes")} | {
        "seed": seed, "commit": git["commit"], "dirty": git["dirty"]}
    tmp = cells / f".w{w}a{a}s{seed}.json.tmp"
    tmp.write_text(json.dumps(cell))
    os.replace(tmp, cells / f"w{w}a{a}s{seed}.json")
    return cell


def aggregate(cells: list[dict]) -> list[dict]:
    rows = []
    for w, a in itertools.product(BITS, BITS):
        accs = [c["test_accuracy"] for c in cells if c["w_bits"] == w and c["a_bits"] == a]
        if accs:
            rows.append({"w_bits": w, "a_bits": a, "n": len(accs), "mean": statistics.mean(accs),
                         "min": min(accs), "max": max(accs)})
    return rows


def check_targets(rows: list[dict]) -> dict[str, dict]:
    by = {(r["w_bits"], r["a_bits"]): r["mean"] for r in rows}
    f = by.get((32, 32))
    out = {}
    if f is not None:
        out["float >= 98.2 %"] = {"value": 100 * f, "met": f >= 0.982}
        for (w, a), tol in (((4, 4), 0.3), ((1, 32), 0.5)):
            if (w, a) in by:
                gap = 100 * (f - by[(w, a)])
                out[f"W{w}A{a} within {tol} points of float"] = {"gap_points": gap,
                                                                 "met": gap <= tol}
    return out


def trained_at(cells: list[dict], history: str = "") -> list[str]:
    """Markdown lines saying which commit trained how many cells: from each cell's ``commit``
    (written since issue 12), and for cells without one, ``history`` (the text of
    ``cells/HISTORY.md``, the record of how the earlier cells ran) or "not recorded"."""
    counts: dict[str, int] = {}
    for c in cells:
        key = c.get("commit") or ""
        key += " + uncommitted changes" if key and c.get("dirty") else ""
        counts[key] = counts.get(key, 0) + 1
    lines = [f"- `{k}`: {n} cell(s)" for k, n in sorted(counts.items()) if k]
    if counts.get(""):
        lines.append(f"- {counts['']} cell(s) without a recorded commit: "
                     + (history.strip() or "not recorded"))
    return lines


def markdown(rows: list[dict], targets: dict, meta: dict) -> str:
    by = {(r["w_bits"], r["a_bits"]): r for r in rows}
    from lowbit.report.provenance import meta_header

    head = "| act bits \\ weight bits | " + " | ".join(map(str, BITS)) + " |"
    lines = ["# Ivan Figure 5 reproduction: LeNet300 on MNIST, test accuracy (%)\n",
             f"{meta_header(meta)}  ",
             f"{meta['epochs']} epochs per run, seeds {meta['seeds']}; mean [min, max]. The "
             "header's commit wrote this report; the cells were trained at:\n",
             *meta.get("trained_at", []), "", head, "|---|" + "---:|" * len(BITS)]
    for a in reversed(BITS):
        cells = []
        for w in BITS:
            r = by.get((w, a))
            cells.append(f"{100 * r['mean']:.2f} [{100 * r['min']:.2f}, {100 * r['max']:.2f}]"
                         if r else "-")
        lines.append(f"| **{a}** | " + " | ".join(cells) + " |")
    lines.append("\n## Targets (the paper's claims)\n")
    for name, t in targets.items():
        val = t.get("value", t.get("gap_points"))
        lines.append(f"- {name}: {'met' if t['met'] else '**MISSED**'} ({val:.2f})")
    return "\n".join(lines) + "\n"


def heatmap(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.full((len(BITS), len(BITS)), np.nan)
    for r in rows:
        grid[BITS.index(r["a_bits"]), BITS.index(r["w_bits"])] = 100 * r["mean"]
    fig, ax = plt.subplots(figsize=(6, 5))
    lo = max(float(np.nanmin(grid)), float(np.nanmax(grid)) - 2.0)  # resolve the top 2 points
    im = ax.imshow(grid, origin="lower", cmap="viridis", vmin=lo, vmax=float(np.nanmax(grid)))
    for i, j in itertools.product(range(len(BITS)), repeat=2):
        if not np.isnan(grid[i, j]):
            color = "k" if grid[i, j] > lo + 0.6 * (np.nanmax(grid) - lo) else "w"
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(len(BITS)), BITS)
    ax.set_yticks(range(len(BITS)), BITS)
    ax.set(xlabel="weight bits", ylabel="activation bits",
           title="LeNet300 / MNIST test accuracy (%), Q_b / A_b")
    fig.colorbar(im, ax=ax, extend="min", label=f"accuracy (%), colours clipped below {lo:.1f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=HERE / "results" / "ivan_fig5")
    p.add_argument("--work", type=Path, default=HERE.parent / "runs" / "ivan_fig5")
    p.add_argument("--cells", nargs="+", metavar="W/A",
                   help="only these (weight bits/activation bits) cells, e.g. 32/32 4/4 1/32")
    a = p.parse_args()
    wanted = None if a.cells is None else {tuple(map(int, c.split("/"))) for c in a.cells}
    cells_dir = a.out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    todo = [(w, x, s) for s in a.seeds for w, x in itertools.product(BITS, BITS)
            if not (cells_dir / f"w{w}a{x}s{s}.json").exists()
            and (wanted is None or (w, x) in wanted)]
    with ProcessPoolExecutor(a.jobs) as pool:
        futures = [pool.submit(run_cell, w, x, s, a.epochs, a.work, cells_dir) for w, x, s in todo]
        for f in tqdm(as_completed(futures), total=len(futures), desc="fig5 cells"):
            f.result()
    cells = [json.loads(f.read_text()) for f in sorted(cells_dir.glob("w*.json"))]
    rows = aggregate(cells)
    targets = check_targets(rows)
    from lowbit.report.provenance import provenance

    prov = provenance()
    history = cells_dir / "HISTORY.md"
    meta = {"command": prov["command"], "commit": prov["commit"], "epochs": a.epochs,
            "seeds": a.seeds, "provenance": prov,
            "trained_at": trained_at(cells, history.read_text() if history.exists() else "")}
    (a.out / "results.json").write_text(json.dumps(
        {"meta": meta, "rows": rows, "targets": targets, "cells": cells}, indent=1))
    (a.out / "results.md").write_text(markdown(rows, targets, meta))
    heatmap(rows, a.out / "heatmap.png")
    print(markdown(rows, targets, meta))


if __name__ == "__main__":
    main()
