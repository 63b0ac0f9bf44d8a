"""The cost of quantizing: one training step (forward, backward, Adam/SGD update) with Ivan's
Q_b/A_b at 4 bits on every layer, against the same float model, measured interleaved in one
run (rounds alternate float and quantized; medians and their ratio). Batch 128, real data.

    .venv/bin/python benchmarks/qat_step_cost.py
Targets (issue 2): LeNet300 <= 1.3x, ResNet-20 <= 1.15x.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

import lowbit
from lowbit.data import load_dataset
from lowbit.experiment import model_kwargs
from lowbit.models import build_model
from lowbit.report.provenance import meta_header, provenance
from lowbit.report.timing import interleaved, train_step

OUT = Path(__file__).resolve().parent / "results" / "qat_step_cost"
CASES = {"lenet300": ("mnist", 1.3), "resnet20": ("cifar10", 1.15)}


def measure(name: str, rounds: int, steps: int, batch: int) -> dict:
    dataset, target = CASES[name]
    data = load_dataset(dataset, "train")
    x = data.images[:batch].float() / 255
    y = data.labels[:batch]
    torch.manual_seed(0)
    net = build_model(**model_kwargs(name, data))
    recipe = lowbit.Recipe("ivan", 4, "ivan", 4, keep_first=False, keep_last=False)
    q = lowbit.quantize(copy.deepcopy(net), recipe)
    r = interleaved(train_step(net, x, y), train_step(q, x, y), rounds, steps)
    return {"model": name, "batch": batch, "float_ms": 1e3 * r["base_s"],
            "quant_ms": 1e3 * r["other_s"], "ratio": r["ratio"], "ratio_min": r["ratio_min"],
            "ratio_max": r["ratio_max"], "float_samples_per_s": batch / r["base_s"],
            "target": target, "met": r["ratio"] <= target}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--models", nargs="+", default=list(CASES))
    a = p.parse_args()
    rows = []
    for name in a.models:
        steps = 30 if name == "lenet300" else 3
        rows.append(measure(name, a.rounds, steps, a.batch))
        print(rows[-1])
    OUT.mkdir(parents=True, exist_ok=True)
    prov = provenance()
    meta = {"command": prov["command"], "threads": torch.get_num_threads(),
            "load_average_1min": prov["load_average"][0], "commit": prov["commit"],
            "torch": torch.__version__, "machine": prov["cpu"], "provenance": prov}
    (OUT / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["# Training-step cost of Q_b/A_b at 4 bits vs float (median of interleaved rounds)",
             "", f"{meta_header(meta)}.  ", "Torch threads "
             f"{meta['threads']}; load average "
             f"{meta['load_average_1min']:.1f} when it finished (2 cores).", "",
             "| model | batch | float ms/step | W4A4 ms/step | ratio [min, max] | target | met |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['float_ms']:.2f} | {r['quant_ms']:.2f} "
                     f"| {r['ratio']:.2f} [{r['ratio_min']:.2f}, {r['ratio_max']:.2f}] "
                     f"| {r['target']} | {'yes' if r['met'] else '**no**'} |")
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
