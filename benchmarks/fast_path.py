"""The fastest training path on this CPU, measured: one ResNet-20 training step (batch 128, real
CIFAR-10 images, forward + backward + SGD) in fp32, channels-last, bf16 autocast (AMX) and both,
for the float model and quantized recipes, interleaved in one run (median per-round speed-ups
over fp32 of the same model). ``--compile`` adds ``torch.compile`` for the float model (its
compile time reported separately). ``--accuracy-epochs N`` then fine-tunes one quantized recipe
from ``--init`` for N epochs in fp32 and in the fastest path, same seed, and reports both test
accuracies (does the fast path keep accuracy?).

    .venv/bin/python benchmarks/fast_path.py --compile \
        --init benchmarks/results/zoo_table2/float/model.pt --accuracy-epochs 1
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

import lowbit
from lowbit.data import load_dataset
from lowbit.experiment import model_kwargs
from lowbit.models import build_model
from lowbit.report.provenance import meta_header, provenance, write_provenance
from lowbit.report.table import markdown_table
from lowbit.report.timing import interleaved_many, train_step

OUT = Path(__file__).resolve().parent / "results" / "fast_path"
VARIANTS = {"fp32": ("fp32", False), "channels_last": ("fp32", True), "bf16": ("bf16", False),
            "bf16+channels_last": ("bf16", True)}
# first/last layers float (keep_bits=32), as the committed results were measured
RECIPES = {
    "float": None,
    "dorefa W2/A32": lowbit.Recipe("dorefa", 2, "dorefa", 32, keep_bits=32),
    "ivan W4/A4": lowbit.Recipe("ivan", 4, "ivan", 4, keep_bits=32),
    "lsq W2/A2": lowbit.Recipe("lsq", 2, "lsq", 2, keep_bits=32),
    "xnor W1/A1": lowbit.Recipe("xnor", 1, "xnor", 1, keep_bits=32),
}


def _net(data, init: str | None):
    if init:
        from lowbit.experiment import load_model

        return load_model(init)[0]
    torch.manual_seed(0)
    return build_model(**model_kwargs("resnet20", data))


def speedups(data, init, rounds: int, batch: int, compile_float: bool) -> list[dict]:
    x, y = data.images[:batch].float() / 255, data.labels[:batch]
    net, rows = _net(data, init), []
    for name, recipe in RECIPES.items():
        steps = {}
        for variant, (precision, cl) in VARIANTS.items():
            model = copy.deepcopy(net) if recipe is None else lowbit.quantize(copy.deepcopy(net),
                                                                              recipe)
            steps[variant] = train_step(model, x, y, precision, cl)
        compile_s: dict[str, float] = {}
        if compile_float and recipe is None:
            for variant, fast in (("compile", ("fp32", False)),
                                  ("compile+bf16+channels_last", ("bf16", True))):
                steps[variant] = train_step(torch.compile(copy.deepcopy(net)), x, y, *fast)
                started = time.perf_counter()
                steps[variant]()  # the first call compiles
                compile_s[variant] = time.perf_counter() - started
        times = interleaved_many(steps, rounds, 2)
        for k in steps:
            ratios = [b / t for b, t in zip(times["fp32"], times[k], strict=True)]
            rows.append({"recipe": name, "variant": k,
                         "step_ms": 1e3 * statistics.median(times[k]),
                         "speedup": statistics.median(ratios), "speedup_min": min(ratios),
                         "speedup_max": max(ratios),
                         "compile_seconds": compile_s.get(k)})
            print(rows[-1], flush=True)
    return rows


def accuracy(init: str, epochs: int, recipe_name: str, precision: str, cl: bool,
             work: Path) -> dict:
    from lowbit.experiment import Job, default_config, run

    recipe = RECIPES[recipe_name]
    config = default_config("resnet20", "cifar10", epochs=epochs, lr=0.01, precision=precision,
                            channels_last=cl)
    out = work / f"{recipe_name.replace(' ', '_').replace('/', '-')}_{precision}_{int(cl)}"
    reused = (out / "summary.json").exists()  # a finished run in --work: resume trains nothing
    s = run(Job("resnet20", "cifar10", recipe, config, init=init), out, resume=True)
    record = out / "provenance.json"
    if not reused:
        write_provenance(out)
    trained = json.loads(record.read_text()) if record.exists() else {}
    return {"recipe": recipe_name, "precision": precision, "channels_last": cl,
            "epochs": epochs, "test_accuracy": s["test_accuracy"],
            "seconds_per_epoch": s["wall_seconds"] / s["epochs"], "reused": reused,
            "trained_at": trained.get("commit"), "trained_command": trained.get("command")}


def markdown(rows: list[dict], acc: list[dict], meta: dict) -> str:
    lines = ["# Fastest training path: ResNet-20 step, batch 128 (CIFAR-10)", "",
             f"{meta_header(meta)}.  ",
             f"Threads: {meta['threads']}, load average {meta['load_average_1min']:.2f} at start.",
             "Speed-up = fp32 step time / variant step time of the same model, median of the "
             "per-round ratios (interleaved rounds; min..max in brackets).", ""]
    shown = [{**r, "range": f"{r['speedup']:.2f}x [{r['speedup_min']:.2f}..{r['speedup_max']:.2f}]",
              "compile": "" if r["compile_seconds"] is None else f"{r['compile_seconds']:.0f}"}
             for r in rows]
    lines.append(markdown_table(shown, [("recipe", "recipe", ""), ("variant", "variant", ""),
                                        ("step_ms", "step ms", ".0f"),
                                        ("range", "speed-up vs fp32", ""),
                                        ("compile", "compile s", "")]))
    if acc:
        lines += ["", "## Does the fast path keep accuracy?", "",
                  "Same recipe, same seed and data order, fine-tuned from the same float model; "
                  "test accuracy in fp32 evaluation. \"trained at\": the commit of the run "
                  "that trained the row (a finished run in --work is reused, not retrained, and "
                  "keeps its commit, which can be older than the header's).", ""]
        shown = [{**r, "acc": 100 * r["test_accuracy"],
                  "at": (r.get("trained_at") or "not recorded")
                  + (" (reused)" if r.get("reused") else "")} for r in acc]
        lines.append(markdown_table(shown, [
            ("recipe", "recipe", ""), ("precision", "precision", ""),
            ("channels_last", "channels-last", ""), ("epochs", "epochs", ""),
            ("acc", "test acc %", ".2f"), ("seconds_per_epoch", "s / epoch", ".0f"),
            ("at", "trained at", "")]))
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Grouped bars: speed-up over fp32 per recipe and variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(9, 4))
    for k, v in enumerate(variants):
        xs = [i + (k - (len(variants) - 1) / 2) * width for i, name in enumerate(recipes)
              if any(r["recipe"] == name and r["variant"] == v for r in rows)]
        ys = [r["speedup"] for name in recipes for r in rows
              if r["recipe"] == name and r["variant"] == v]
        ax.bar(xs, ys, width, label=v)
    ax.axhline(1, color="k", lw=0.8)
    ax.set_xticks(range(len(recipes)), recipes)
    ax.set(ylabel="training-step speed-up over fp32", title="ResNet-20, batch 128, CIFAR-10")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init", help="float ResNet-20 model.pt (default: a fresh random one)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also measure torch.compile (float)")
    p.add_argument("--accuracy-epochs", type=int, default=0)
    p.add_argument("--accuracy-recipe", default="dorefa W2/A32", choices=list(RECIPES))
    p.add_argument("--work", type=Path, default=Path("runs") / "fast_path")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--plot-only", action="store_true", help="redraw OUT/speedups.png from "
                   "OUT/results.json")
    a = p.parse_args()
    if a.plot_only:
        plot(json.loads((a.out / "results.json").read_text())["speedups"], a.out / "speedups.png")
        return
    torch.set_num_threads(a.threads)
    data = load_dataset("cifar10", "train")
    prov = provenance()
    meta = {"command": prov["command"], "commit": prov["commit"], "threads": a.threads,
            "load_average_1min": prov["load_average"][0], "torch": torch.__version__,
            "provenance": prov}
    rows = speedups(data, a.init, a.rounds, a.batch, a.compile)
    acc = []
    if a.accuracy_epochs:
        if not a.init:
            p.error("--accuracy-epochs needs --init (a trained float model)")
        for precision, cl in (("fp32", False), ("bf16", True)):
            acc.append(accuracy(a.init, a.accuracy_epochs, a.accuracy_recipe, precision, cl,
                                a.work))
            print(acc[-1], flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps({"meta": meta, "speedups": rows,
                                                    "accuracy": acc}, indent=1) + "\n")
    (a.out / "results.md").write_text(markdown(rows, acc, meta))
    plot(rows, a.out / "speedups.png")
    print((a.out / "results.md").read_text())


if __name__ == "__main__":
    main()
