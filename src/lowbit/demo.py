"""``lowbit demo``: LeNet300 on the bundled 8x8 digits (no download), in float and with Ivan's
Q_b/A_b at 8, 4, 2 and 1 bits; a table of accuracy, packed size and time, and a plot.

Each setting is the run ``lowbit train --model lenet300 --dataset digits --method ivan
--w-bits B --a-bits B`` would make with the same recipe flags (first/last layers kept at the
recipe's ``keep_bits`` unless told otherwise), so the demo and train mean the same."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from lowbit.experiment import Job, default_config, run, write_json_atomic
from lowbit.recipe import Recipe
from lowbit.report.table import markdown_table

DEMO_BITS = (32, 8, 4, 2, 1)
COLUMNS = (("setting", "setting", ""), ("accuracy_pct", "test accuracy %", ".2f"),
           ("packed_bytes", "packed bytes", ",d"), ("ratio", "size vs float", ".3f"),
           ("wall_seconds", "train seconds", ".1f"))


def run_demo(out_dir: str | Path, epochs: int = 40, seed: int = 0, recipe: Recipe | None = None,
             overwrite: bool = False) -> list[dict]:
    """Train the demo grid into ``out_dir``; write results.json, results.md, demo.png.
    ``recipe`` gives the keep_first/keep_last/keep_bits policy (method and bits are the
    demo's). Finished settings are reused (their job must match) unless ``overwrite``."""
    out_dir = Path(out_dir)
    config = default_config("lenet300", epochs=epochs, batch_size=32, seed=seed)
    base = recipe or Recipe()
    rows = []
    for bits in tqdm(DEMO_BITS, desc="demo settings"):
        r = replace(base, weight="ivan", w_bits=bits, act="ivan", a_bits=bits)
        s = run(Job("lenet300", "digits", r, config), out_dir / f"w{bits}a{bits}",
                resume=not overwrite, overwrite=overwrite, progress=False)
        s["setting"] = "float" if bits == 32 else f"Q_b/A_b W{bits}A{bits}"
        s["ratio"] = s["packed_bytes"] / s["float_bytes"]
        s["accuracy_pct"] = 100 * s["test_accuracy"]
        rows.append(s)
    write_json_atomic(rows, out_dir / "results.json")
    table = markdown_table(rows, COLUMNS)
    (out_dir / "results.md").write_text(table + "\n")
    plot_demo(rows, out_dir / "demo.png")
    return rows


def plot_demo(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    labels = ["float" if r["w_bits"] == 32 else f"{r['w_bits']}" for r in rows]
    acc = [100 * r["test_accuracy"] for r in rows]
    bars = ax1.bar(labels, acc, color="tab:blue")
    ax1.bar_label(bars, labels=[f"{a:.1f}" for a in acc], padding=2, fontsize=8)
    low = min(acc)  # zoomed: the differences are what the plot is for
    ax1.set(xlabel="bits (weights = activations)", ylabel="test accuracy (%)",
            title="LeNet300 on 8x8 digits", ylim=(max(0.0, low - 0.15 * (100 - low) - 2), 100.5))
    kib = [r["packed_bytes"] / 1024 for r in rows]
    bars = ax2.bar(labels, kib, color="tab:orange")
    ax2.bar_label(bars, labels=[f"{k:.0f}" for k in kib], padding=2, fontsize=8)
    ax2.set(xlabel="bits (weights = activations)", ylabel="model size (KiB)",
            title="weights packed at their bit width", ylim=(0, 1.12 * max(kib)))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
