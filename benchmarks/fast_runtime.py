"""Issue 11, measured: the fast runtime (``lowbit.runtime.load(path, fast=True)``) against
torch fp32, torch dynamic int8, ONNX Runtime fp32 / int8 and lowbit's reference runtime on
whole networks, the raw kernels against torch fp32 matmul, the per-layer time breakdown and
the cold start -- all through ``lowbit bench`` (:mod:`lowbit.bench`), one run, interleaved.

Models: LeNet300 trained 1 epoch on MNIST per method (seeded; seconds at one thread);
ResNet-20 from the committed float model (benchmarks/results/zoo_table2/float/model.pt),
quantized and its BatchNorm / observers updated on 256 CIFAR-10 training images without
fine-tuning (speed does not depend on training; the agreement column compares engines on
the same inputs). int8 rows are static PTQ (minmax, 512 calibration images).

    python benchmarks/fast_runtime.py                       # everything, one thread
    python benchmarks/fast_runtime.py --only kernels --threads 2

Writes benchmarks/results/fast_runtime/: ``<arch>-<config>.{json,md,png}`` (network bench),
``breakdown.{json,md}`` (per-layer seconds at batch 64, reference vs fast), ``kernels.{json,md}``
(``lowbit bench --kernels``), ``cold_start.{json,md}``, and ``summary.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parent / "results" / "fast_runtime"
FLOAT_RESNET = Path(__file__).resolve().parent / "results" / "zoo_table2" / "float" / "model.pt"
# name -> (weight method, act method, w_bits, a_bits); "ptq" = static int8 PTQ
CONFIGS = {
    "xnor-w1a1": ("xnor", "xnor", 1, 1),
    "uniform-int8-ptq": ("ptq", "ptq", 8, 8),
    "ivan-w4a4": ("ivan", "ivan", 4, 4),
    "dorefa-w2a2": ("dorefa", "dorefa", 2, 2),
    "twn-w2-bnn-a1": ("twn", "bnn", 2, 1),
    "ivan-w4-float-a": ("ivan", None, 4, 32),
}
BATCHES = {"lenet300": (1, 64, 1024), "resnet20": (1, 64)}
SPEC = {"lenet300": ("mnist", (1, 28, 28)), "resnet20": ("cifar10", (3, 32, 32))}


def _data(arch, data_dir):
    from lowbit.data import load_dataset

    name = "mnist" if arch == "lenet300" else "cifar10"
    return load_dataset(name, "train", data_dir), load_dataset(name, "test", data_dir)


def _model(arch, cfg, train, work: Path, seed=0):
    import lowbit
    from lowbit.experiment import default_config, load_model
    from lowbit.models import build_model
    from lowbit.ptq import PTQConfig
    from lowbit.ptq import quantize as ptq_quantize
    from lowbit.ptq.run import calibration_batches
    from lowbit.train import fit

    w, a, wb, ab = cfg
    if arch == "resnet20":
        net = load_model(FLOAT_RESNET)[0]
    else:
        torch.manual_seed(seed)
        net = build_model(arch, 1, 28, 10, 0.1307, 0.3081)
    if w == "ptq":
        if arch == "lenet300":
            fit(net, (train.images, train.labels), (train.images[:500], train.labels[:500]),
                default_config(arch, epochs=1, seed=seed), work / "float", progress=False)
        calib = calibration_batches(train.images, 512, 128, seed=seed)
        return ptq_quantize(copy.deepcopy(net), calib, PTQConfig())[0].eval()
    net = lowbit.quantize(net, lowbit.Recipe(weight=w, act=a or w, w_bits=wb, a_bits=ab))
    if arch == "lenet300":
        fit(net, (train.images, train.labels), (train.images[:500], train.labels[:500]),
            default_config(arch, epochs=1, seed=seed), work / "qat", progress=False)
    else:  # running statistics and observed ranges, no fine-tune
        net.train()
        with torch.no_grad():
            for i in range(0, 256, 64):
                net(train.images[i:i + 64].float() / 255)
    return net.eval()


def breakdown(path: Path, x: np.ndarray, repeat: int) -> dict:
    """Per node: median seconds of the reference and the fast runtime at batch ``len(x)``."""
    import lowbit.runtime as rt
    from lowbit.runtime.fast import kernels

    ref, fast = rt.load(path), rt.load(path, fast=True)
    names = {n.name: n.op for n in ref.nodes}
    paths = {ly.name: ly.path for ly in ref.layers}
    ker = kernels(fast)
    ref(x), fast(x)  # warm-up (numba compiles or loads its cache)
    samples = {"reference": [], "fast": []}
    for _ in range(repeat):  # interleaved
        for key, m in (("reference", ref), ("fast", fast)):
            t: dict = {}
            m(x, times=t)
            samples[key].append(t)
    rows = []
    for name, op in names.items():
        if op in ("input", "output"):
            continue
        med = {k: float(np.median([s.get(name, 0.0) for s in v])) for k, v in samples.items()}
        rows.append({"node": name, "op": op, "path": paths.get(name), "kernel": ker.get(name),
                     "reference_s": med["reference"], "fast_s": med["fast"]})
    total = {k: float(np.median([sum(s.values()) for s in v])) for k, v in samples.items()}
    return {"batch": int(len(x)), "rows": rows, "total": total}


def _breakdown_md(name: str, b: dict) -> str:
    lines = [f"### {name}, batch {b['batch']}: reference {1e3 * b['total']['reference']:.1f} "
             f"ms, fast {1e3 * b['total']['fast']:.1f} ms", "",
             "| node | op | path | kernel | reference ms | fast ms | fast share |",
             "|---|---|---|---|---|---|---|"]
    for r in b["rows"]:
        share = r["fast_s"] / b["total"]["fast"] if b["total"]["fast"] else 0
        if r["reference_s"] < 1e-4 and r["fast_s"] < 1e-4:
            continue
        lines.append(f"| {r['node']} | {r['op']} | {r['path'] or ''} | {r['kernel'] or ''} | "
                     f"{1e3 * r['reference_s']:.2f} | {1e3 * r['fast_s']:.2f} | "
                     f"{100 * share:.0f} % |")
    by_op: dict = {}
    for r in b["rows"]:
        by_op[r["op"]] = by_op.get(r["op"], 0.0) + r["fast_s"]
    lines += ["", "fast runtime by operator: " + ", ".join(
        f"{op} {1e3 * s:.1f} ms" for op, s in sorted(by_op.items(), key=lambda kv: -kv[1])
        if s >= 1e-4)]
    return "\n".join(lines)


def ratio_table(out: Path, batch: int = 64) -> str:
    """The fast runtime against every contender at ``batch``, from the ``<arch>-<config>.json``
    files in ``out`` (samples/s; ratios of one run's medians)."""
    others = [("torch_fp32", "torch fp32"), ("ort_fp32", "ORT fp32"),
              ("ort_int8_qdq", "ORT int8"), ("lowbit_reference", "lowbit reference")]
    lines = [f"| net | config | fast /s | {' | '.join('x ' + n for _, n in others)} |",
             "|---|---|---:|" + "---:|" * len(others)]
    for arch in BATCHES:
        for name in CONFIGS:
            path = out / f"{arch}-{name}.json"
            if not path.exists():
                continue
            rows = {r["contender"]: r for r in json.loads(path.read_text())["rows"]
                    if r["batch"] == batch}
            if "lowbit_fast" not in rows:
                continue
            fast = rows["lowbit_fast"]["samples_per_s"]
            cells = [f"{fast / rows[c]['samples_per_s']:.2f}" if c in rows else "-"
                     for c, _ in others]
            lines.append(f"| {arch} | {name} | {fast:,.0f} | {' | '.join(cells)} |")
    return "\n".join(lines)


def relabel_kernels(r: dict) -> dict:
    """``lowbit bench --kernels`` results with each row's unit, ceiling and fraction of it
    recomputed by the current :mod:`lowbit.bench.kernels` (the measurements unchanged)."""
    from lowbit.bench.kernels import ceiling_fields

    for row in r["rows"]:
        row.update(ceiling_fields(row["kernel"], row["macs_per_s"], r["cpu_kind"],
                                  r["threads"]["requested"]))
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", nargs="+", default=list(BATCHES), choices=list(BATCHES))
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--only", choices=["nets", "kernels", "cold", "report"], nargs="+",
                   default=["nets", "kernels", "cold"],
                   help="report: only rewrite ratios.md and kernels.md from the JSONs in --out "
                        "(kernel units and ceiling fractions recomputed; runs nothing)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--data-dir")
    p.add_argument("--work", default="/tmp/lowbit-fast-runtime")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    from lowbit.bench.coldstart import cold_start
    from lowbit.bench.kernels import bench_kernels
    from lowbit.bench.net import bench_file
    from lowbit.bench.report import cold_table, kernel_table, net_table, write
    from lowbit.bench.timing import threads_set
    from lowbit.exporter import export

    torch.set_num_threads(args.threads)
    out, work = Path(args.out), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    done = []
    if "nets" in args.only:
        parts, bds = [], {}
        for arch in args.archs:
            train, test = _data(arch, args.data_dir)
            for name in args.configs:
                t0 = time.time()
                net = _model(arch, CONFIGS[name], train, work / f"{arch}-{name}")
                path = export(net, work / f"{arch}-{name}.lowbit", input_shape=SPEC[arch][1],
                              model_info={"dataset": SPEC[arch][0]})
                r = bench_file(path, batches=BATCHES[arch], repeat=args.repeat,
                               threads=args.threads, data_dir=args.data_dir, progress=True)
                write(r, out, f"{arch}-{name}", net_table(r), with_plot=True)
                x = (test.images[:64].float() / 255).numpy()
                with threads_set(args.threads):
                    bds[f"{arch}-{name}"] = breakdown(path, x, args.repeat)
                parts.append(f"## {arch} {name}\n\n" + net_table(r))
                print(f"{arch} {name}: {time.time() - t0:.0f} s", flush=True)
        (out / "breakdown.json").write_text(json.dumps(bds, indent=1) + "\n")
        (out / "breakdown.md").write_text("# Per-layer time, reference vs fast runtime\n\n"
                                          + "\n\n".join(_breakdown_md(k, v)
                                                        for k, v in bds.items()) + "\n")
        done += parts
    if "kernels" in args.only:
        r = bench_kernels(repeat=args.repeat, threads=args.threads, progress=True)
        write(r, out, "kernels", kernel_table(r))
        done.append("## Kernels\n\n" + kernel_table(r))
    if "cold" in args.only:
        path = work / "lenet300-xnor-w1a1.lowbit"
        if not path.exists():
            train, _ = _data("lenet300", args.data_dir)
            path = export(_model("lenet300", CONFIGS["xnor-w1a1"], train, work / "cold"), path,
                          input_shape=SPEC["lenet300"][1])
        r = cold_start(path)
        write(r, out, "cold_start", cold_table(r))
        done.append("## Cold start (LeNet300 W1A1)\n\n" + cold_table(r))
    if "report" in args.only and (out / "kernels.json").exists():
        r = relabel_kernels(json.loads((out / "kernels.json").read_text()))
        write(r, out, "kernels", kernel_table(r))
    if "nets" in args.only or "report" in args.only:
        (out / "ratios.md").write_text(
            f"# lowbit fast runtime at batch 64, x each contender (from the JSONs here)\n\n"
            f"{ratio_table(out)}\n")
    if done:
        (out / f"summary-{'-'.join(args.only)}.md").write_text(
            "# lowbit bench results\n\n" + "\n\n".join(done) + "\n")


if __name__ == "__main__":
    main()
