"""``lowbit demo``: LeNet300 on the bundled 8x8 digits (no download), in float and with Ivan's
Q_b/A_b at 8, 4, 2 and 1 bits; a table of accuracy, packed size and time, and a plot."""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from lowbit.experiment import Job, default_config, run, write_json_atomic
from lowbit.recipe import Recipe
from lowbit.report.table import markdown_table

DEMO_BITS = (32, 8, 4, 2, 1)
COLUMNS = (("setting", "setting", ""), ("test_accuracy", "test accuracy", ".4f"),
           ("packed_bytes", "packed bytes", ",d"), ("ratio", "size vs float", ".3f"),
           ("wall_seconds", "train seconds", ".1f"))


def run_demo(out_dir: str | Path, epochs: int = 40, seed: int = 0) -> list[dict]:
    """Train the demo grid into ``out_dir``; write results.json, results.md, demo.png."""
    out_dir = Path(out_dir)
    config = default_config("lenet300", epochs=epochs, batch_size=32, seed=seed)
    rows = []
    for bits in tqdm(DEMO_BITS, desc="demo settings"):
        recipe = Recipe(weight="ivan", w_bits=bits, act="ivan", a_bits=bits,
                        keep_first=False, keep_last=False)
        s = run(Job("lenet300", "digits", recipe, config), out_dir / f"w{bits}a{bits}",
                progress=False)
        s["setting"] = "float" if bits == 32 else f"Q_b/A_b W{bits}A{bits}"
        s["ratio"] = s["packed_bytes"] / s["float_bytes"]
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
    ax1.bar(labels, [100 * r["test_accuracy"] for r in rows], color="tab:blue")
    ax1.set(xlabel="bits (weights = activations)", ylabel="test accuracy (%)",
            title="LeNet300 on 8x8 digits", ylim=(0, 100))
    ax2.bar(labels, [r["packed_bytes"] / 1024 for r in rows], color="tab:orange")
    ax2.set(xlabel="bits (weights = activations)", ylabel="model size (KiB)",
            title="weights packed at their bit width")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
