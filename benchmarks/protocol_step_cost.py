"""Did the typed-codebook protocol (issue 8) make training slower? One training step of
quantized ResNet-20 (CIFAR-10, batch 128) and LeNet300 (MNIST) against the same float model,
with the code of a base revision and with the current tree, in alternating subprocesses.

Each subprocess measures its own quantized/float step ratio interleaved in one run (robust to
the load of the machine); the report compares those ratios, new / old, per recipe. One thread
(the default; ``--threads``) so that a busy second core disturbs less.

    python benchmarks/protocol_step_cost.py --base 04f2be4
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "protocol_step_cost"
# (label, model, dataset, weight, w_bits, act, a_bits): every layer quantized (no keep_bits in
# the old code), so the old and new recipes mean the same
CASES = [
    ("ivan W4A4", "resnet20", "cifar10", "ivan", 4, "ivan", 4),
    ("dorefa W2A2", "resnet20", "cifar10", "dorefa", 2, "dorefa", 2),
    ("lsq W2A2", "resnet20", "cifar10", "lsq", 2, "lsq", 2),
    ("xnor W1A1", "resnet20", "cifar10", "xnor", 1, "xnor", 1),
    ("uniform W8A8", "resnet20", "cifar10", "uniform", 8, "uniform", 8),
    ("qnet W3 (soft)", "resnet20", "cifar10", "qnet", 3, "qnet", 32),
    ("pow2 W4", "resnet20", "cifar10", "pow2", 4, "pow2", 32),
    ("ivan W4A4", "lenet300", "mnist", "ivan", 4, "ivan", 4),
    ("twn W2", "lenet300", "mnist", "twn", 2, "twn", 32),
]


def worker(case: list, rounds: int, steps: int, threads: int) -> dict:
    """Runs inside a subprocess with either revision's ``lowbit`` on the path."""
    import torch

    import lowbit
    from lowbit.data import load_dataset
    from lowbit.experiment import model_kwargs
    from lowbit.models import build_model
    from lowbit.report.timing import interleaved, train_step

    torch.set_num_threads(threads)
    _, model, dataset, weight, w_bits, act, a_bits = case
    data = load_dataset(dataset, "train")
    x, y = data.images[:128].float() / 255, data.labels[:128]
    torch.manual_seed(0)
    net = build_model(**model_kwargs(model, data))
    recipe = lowbit.Recipe(weight, w_bits, act, a_bits, keep_first=False, keep_last=False)
    q = lowbit.quantize(copy.deepcopy(net), recipe)
    r = interleaved(train_step(net, x, y), train_step(q, x, y), rounds, steps)
    return {"float_ms": 1e3 * r["base_s"], "quant_ms": 1e3 * r["other_s"], "ratio": r["ratio"]}


def _run(src: Path, case: list, args) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(src)!r}); "
            f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); "
            "from protocol_step_cost import worker; "
            f"print(json.dumps(worker({case!r}, {args.rounds}, {args.steps}, {args.threads})))")
    env = dict(os.environ)
    shared = ROOT.parent / "shared" / "data"  # the old tree lives elsewhere: same data
    if "LOWBIT_DATA" not in env and shared.is_dir():
        env["LOWBIT_DATA"] = str(shared)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=env)
    if out.returncode:
        raise RuntimeError(f"worker failed for {case[0]} {case[1]} ({src}):\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="04f2be4", help="the revision before the change")
    p.add_argument("--repeats", type=int, default=2, help="old/new subprocess pairs per case")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    from lowbit.report.provenance import provenance, provenance_line

    meta = provenance()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(old), args.base],
                       cwd=ROOT, check=True)
        try:
            for case in CASES:
                runs = {"old": [], "new": []}
                for _ in range(args.repeats):  # alternate: old, new, old, new
                    runs["old"].append(_run(old / "src", list(case), args))
                    runs["new"].append(_run(ROOT / "src", list(case), args))
                med = {k: {f: statistics.median(r[f] for r in v) for f in v[0]}
                       for k, v in runs.items()}
                rows.append({"case": case[0], "model": case[1], "old": med["old"],
                             "new": med["new"], "runs": runs,
                             "new_over_old": med["new"]["ratio"] / med["old"]["ratio"]})
                print(f"{case[1]:9s} {case[0]:15s} old {med['old']['ratio']:.2f}x  new "
                      f"{med['new']['ratio']:.2f}x  new/old {rows[-1]['new_over_old']:.2f}",
                      flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"base": args.base, "threads": args.threads, "provenance": meta, "rows": rows}
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Training-step cost before / after the typed-codebook protocol (issue 8)", "",
             provenance_line(meta) + f"; base revision `{args.base}`; {args.threads} thread(s); "
             f"{args.repeats} old/new subprocess pairs per case, alternating.", "",
             "quantized / float step time, each measured interleaved in its own process "
             "(median over the pairs); new/old > 1 means the new code is slower.", "",
             "| model | recipe | float ms (old / new) | quantized / float, old | new | new/old |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['case']} | {r['old']['float_ms']:.1f} / "
                     f"{r['new']['float_ms']:.1f} | {r['old']['ratio']:.2f} | "
                     f"{r['new']['ratio']:.2f} | {r['new_over_old']:.2f} |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
