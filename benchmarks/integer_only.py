"""Integer-only inference (Jacob et al. 2018) vs the reference runtime vs the fake-quantized
model, on int8 PTQ models (static, minmax, 1000 calibration images): accuracy and argmax
mismatches for each rounding convention of lowbit.runtime.requant.

    python benchmarks/integer_only.py --eval-resnet 2000
Writes benchmarks/results/integer_only/{results.json,results.md}. LeNet300 is trained 1 epoch
here (seed 0); ResNet-20 is the committed float model (benchmarks/results/zoo_table2/float).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runtime_equivalence as eq  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "integer_only"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eval-resnet", type=int, default=2000, help="CIFAR-10 test images")
    p.add_argument("--work", default="/tmp/lowbit-integer-only")
    p.add_argument("--data-dir")
    args = p.parse_args()
    torch.set_num_threads(1)
    import lowbit.runtime as rt
    from lowbit.data import load_dataset
    from lowbit.exporter import export, frozen_copy
    from lowbit.report.provenance import provenance, provenance_line

    prov, rows = provenance(), []
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for arch, n_eval in (("lenet300", None), ("resnet20", args.eval_resnet)):
        dataset, _ = eq.SPEC[arch]
        data = (load_dataset(dataset, "train", args.data_dir),
                load_dataset(dataset, "test", args.data_dir))
        float_net = eq._float_model(arch, data, work, 0)
        net = eq._train(arch, eq.CONFIGS["uniform-int8-ptq"], float_net, data, args, 0, work)
        path = export(net, work / f"{arch}.lowbit")
        images, labels = data[1].images[:n_eval], data[1].labels[:n_eval].numpy()
        y_t = eq._logits_torch(frozen_copy(net), images)
        y_ref = eq._logits_runtime(rt.load(path), images)
        row = {"arch": arch, "n": int(len(labels)),
               "acc_torch": float((y_t.argmax(1) == labels).mean()),
               "acc_reference": float((y_ref.argmax(1) == labels).mean()),
               "reference_vs_torch": int((y_ref.argmax(1) != y_t.argmax(1)).sum())}
        for rounding in ("half_even", "single", "gemmlowp"):
            model = rt.load(path, integer_only=rounding)
            y = eq._logits_runtime(model, images)
            row[rounding] = {"chains": len(model.chains),
                             "acc": float((y.argmax(1) == labels).mean()),
                             "vs_torch": int((y.argmax(1) != y_t.argmax(1)).sum()),
                             "vs_reference": int((y.argmax(1) != y_ref.argmax(1)).sum())}
        rows.append(row)
        print(json.dumps(row), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps({"provenance": prov, "rows": rows}, indent=1))
    lines = ["# Integer-only int8 inference (Jacob et al. 2018) vs reference vs fake-quant", "",
             provenance_line(prov), "",
             "| arch | n | acc torch | acc reference | rounding | fused chains | acc | "
             "argmax ≠ torch | argmax ≠ reference |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for rounding in ("half_even", "single", "gemmlowp"):
            v = r[rounding]
            lines.append(f"| {r['arch']} | {r['n']} | {100 * r['acc_torch']:.2f} | "
                         f"{100 * r['acc_reference']:.2f} | {rounding} | {v['chains']} | "
                         f"{100 * v['acc']:.2f} | {v['vs_torch']} | {v['vs_reference']} |")
    (OUT / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
