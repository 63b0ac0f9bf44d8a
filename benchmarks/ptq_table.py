"""Post-training quantization against QAT and two peers, side by side in one run (issue 9).

On LeNet300/MNIST and ResNet-20/CIFAR-10 (the float ResNet-20 of
``benchmarks/results/zoo_table2/float_aug``): every activation observer x weight bits
{8, 6, 4, 3, 2} x activations {8, same as the weights} in static mode, dynamic mode, float16 and
bfloat16; at 4/3/2-bit weights (8-bit activations) the better-than-naive steps (CLE, bias
correction, AdaRound and their combinations); torch's own PTQ (torch.ao FX, x86 qconfig) and
ONNX Runtime's ``quantize_static`` (MinMax, Entropy, Percentile) on the same float model with
the same calibration images; QAT at the same bits (LeNet300: uniform QAT cells trained here
from the float model; ResNet-20: the zoo's uniform and LSQ cells, read from
``benchmarks/results/zoo_table2/results.json``). Every PTQ variant is timed (seconds) next to
QAT's training time. Writes results.json, results.md and accuracy_vs_bits.png to --out.

Targets (issue 9): int8 static within 0.3 points of float on both models and at least as
accurate as the best peer; ResNet-20 W4A8 with AdaRound + bias correction within 1.5 points;
LeNet300 W4 AdaRound within 0.5 points.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

OBSERVERS = ("minmax", "ema", "percentile", "mse", "kl")
BITS = (8, 6, 4, 3, 2)
ZOO = Path("benchmarks/results/zoo_table2")


def _evaluate(net, test, n: int | None) -> tuple[float, float]:
    from lowbit.train import evaluate

    t = time.perf_counter()
    images, labels = (test.images, test.labels) if n is None else (test.images[:n],
                                                                  test.labels[:n])
    _, acc = evaluate(net, images, labels)
    return acc, time.perf_counter() - t


def _grid(adaround_iters: int, steps_bits=(4, 3, 2), observers=OBSERVERS,
          dynamic_bits=BITS, steps=None) -> list[tuple[str, dict[str, Any]]]:
    """(name, PTQConfig fields) of every PTQ variant."""
    out = []
    for obs in observers:
        for w in BITS:
            for a in sorted({8, w}, reverse=True):
                out.append((f"static {obs} W{w}A{a}", {"mode": "static", "observer": obs,
                                                       "w_bits": w, "a_bits": a}))
    for w in dynamic_bits:
        for a in sorted({8, w}, reverse=True):
            out.append((f"dynamic W{w}A{a}", {"mode": "dynamic", "w_bits": w, "a_bits": a}))
    out += [("float16", {"mode": "float16"}), ("bfloat16", {"mode": "bfloat16"})]
    every = {"cle": {"equalize": True}, "bc": {"bias_correction": True},
             "adaround": {"adaround": True, "adaround_iters": adaround_iters},
             "adaround+bc": {"adaround": True, "bias_correction": True,
                             "adaround_iters": adaround_iters},
             "cle+adaround+bc": {"equalize": True, "adaround": True, "bias_correction": True,
                                 "adaround_iters": adaround_iters},
             "no-fold": {"fold_bn": False}}
    for w in steps_bits:
        for name, fields in every.items():
            if steps is not None and name not in steps:
                continue
            out.append((f"static minmax W{w}A8 {name}", {"mode": "static", "observer": "minmax",
                                                         "w_bits": w, "a_bits": 8, **fields}))
    return out


def _float_lenet(work: Path, epochs: int, data_dir: str | None) -> Path:
    from lowbit.cli import main

    out = work / "lenet300_float"
    if not (out / "model.pt").exists():
        assert main(["train", "--model", "lenet300", "--dataset", "mnist", "--epochs",
                     str(epochs), "--no-progress", "--out", str(out), "--overwrite",
                     *(["--data-dir", data_dir] if data_dir else [])]) == 0
    return out / "model.pt"


def _qat_lenet(work: Path, float_model: Path, epochs: int, data_dir: str | None) -> list[dict]:
    """Uniform QAT at the same bits, fine-tuned from the float model for ``epochs``."""
    from lowbit.cli import main

    rows = []
    for w in BITS:
        for a in sorted({8, w}, reverse=True):
            out = work / f"lenet300_qat_W{w}A{a}"
            if not (out / "summary.json").exists():
                assert main(["train", "--model", "lenet300", "--dataset", "mnist", "--method",
                             "uniform", "--w-bits", str(w), "--a-bits", str(a), "--epochs",
                             str(epochs), "--init", str(float_model), "--no-progress",
                             "--out", str(out), "--overwrite",
                             *(["--data-dir", data_dir] if data_dir else [])]) == 0
            s = json.loads((out / "summary.json").read_text())
            rows.append({"method": "uniform QAT", "w_bits": w, "a_bits": a,
                         "accuracy": s["test_accuracy"], "train_seconds": s["wall_seconds"],
                         "epochs": epochs, "source": str(out)})
    return rows


def _qat_resnet() -> list[dict]:
    """The zoo's uniform / LSQ cells (first/last layers float there), as committed."""
    r = json.loads((ZOO / "results.json").read_text())
    rows = []
    for row in r["rows"]:
        if row.get("method") in ("uniform", "lsq"):
            rows.append({"method": f"{row['method']} QAT", "w_bits": row["w_bits"],
                         "a_bits": row["a_bits"], "accuracy": row["test_accuracy"],
                         "train_seconds": row.get("wall_seconds"),
                         "epochs": row.get("epochs"), "source": str(ZOO / "results.json")})
    return rows


def _peers(net, calib, test, work: Path, n_eval: int | None, threads: int) -> list[dict]:
    import ptq_peers

    images = torch.cat(calib)
    rows = []
    t = time.perf_counter()
    tq = ptq_peers.torch_ao_ptq(net, images, images[:1])
    rows.append({"name": "torch.ao FX x86 (int8)", "seconds": time.perf_counter() - t,
                 "accuracy": _evaluate(tq, test, n_eval)[0]})
    onnx_path = work / f"{id(net)}_float.onnx"
    ptq_peers.onnx_export_float(net, images[:1], onnx_path)
    for method in ("MinMax", "Entropy", "Percentile"):
        t = time.perf_counter()
        out = ptq_peers.ort_quantize_static(onnx_path, images, work / f"ort_{method}.onnx",
                                            method=method)
        secs = time.perf_counter() - t
        x = test.images if n_eval is None else test.images[:n_eval]
        y = test.labels if n_eval is None else test.labels[:n_eval]
        acc = ptq_peers.ort_evaluate(out, x, y, threads=threads)["accuracy"]
        rows.append({"name": f"ONNX Runtime quantize_static {method} (int8, 7-bit weights "
                     f"without VNNI: {ptq_peers.ort_reduce_range()})",
                     "seconds": secs, "accuracy": acc})
    return rows


def run_model(name: str, float_model: Path, dataset: str, args, work: Path) -> dict:
    from tqdm.auto import tqdm

    from lowbit.data import load_dataset
    from lowbit.ptq import PTQConfig, quantize
    from lowbit.ptq.run import calibration_batches, load_float
    from lowbit.size import model_bytes

    net, _ = load_float(float_model)
    train = load_dataset(dataset, "train", args.data_dir)
    test = load_dataset(dataset, "test", args.data_dir)
    calib = calibration_batches(train.images, args.calib, 128, seed=0)
    float_acc, float_eval_s = _evaluate(net, test, args.eval)
    rows = []
    grid = [g for g in _grid(args.adaround_iters, args.steps_bits, args.observers,
                             args.dynamic_bits, args.steps)
            if args.only is None or args.only in g[0]]
    k, n = args.part
    grid = grid[k::n]  # this process's share; --merge joins the parts
    partial = Path(args.out) / f"partial_{name}.json"  # rows so far: a restart resumes
    if partial.exists():
        rows = json.loads(partial.read_text())
    done = {r["name"] for r in rows}
    for label, fields in tqdm(grid, desc=name, disable=not args.progress):
        if label in done:
            continue
        config = PTQConfig(**fields)
        t = time.perf_counter()
        q, report = quantize(net, calib, config)
        secs = time.perf_counter() - t
        acc, _ = _evaluate(q, test, args.eval)
        sizes = model_bytes(q)
        rows.append({"name": label, **fields, "accuracy": acc, "drop": float_acc - acc,
                     "seconds": secs, "step_seconds": report.seconds,
                     "size_ratio": sizes["packed_bytes"] / sizes["float_bytes"]})
        print(f"{name} {label}: {100 * acc:.2f} % ({100 * (acc - float_acc):+.2f}) "
              f"{secs:.1f} s", flush=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(rows, indent=1) + "\n")
    first = args.part[0] == 0
    peers = ([] if args.no_peers or not first
             else _peers(net, calib, test, work, args.eval, args.threads))
    qat = [] if not first else (_qat_lenet(work, float_model, args.qat_epochs, args.data_dir)
                                if name == "lenet300" else _qat_resnet())
    return {"model": name, "dataset": dataset, "float_model": str(float_model),
            "float_accuracy": float_acc, "float_eval_seconds": float_eval_s,
            "eval_samples": args.eval or len(test.labels), "calibration_samples": args.calib,
            "rows": rows, "peers": peers, "qat": qat}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def markdown(result: dict, meta_line: str) -> str:
    lines = ["# Post-training quantization vs QAT and peers", "", meta_line, ""]
    for m in result["models"]:
        f = m["float_accuracy"]
        lines += [f"## {m['model']} / {m['dataset']}: float {_pct(f)} %", "",
                  f"{m['calibration_samples']} calibration images (train split, seed 0); "
                  f"accuracy on {m['eval_samples']} test images.", "",
                  "### Static mode, accuracy % by observer (WxAy)", ""]
        by = {r["name"]: r for r in m["rows"]}
        cols = [f"W{w}A{a}" for w in BITS for a in sorted({8, w}, reverse=True)]
        lines += ["| observer | " + " | ".join(cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        for obs in OBSERVERS:
            cells = [_pct(by.get(f"static {obs} {c}", {}).get("accuracy")) for c in cols]
            lines.append(f"| {obs} | " + " | ".join(cells) + " |")
        cells = [_pct(by.get(f"dynamic {c}", {}).get("accuracy")) for c in cols]
        lines += ["| dynamic | " + " | ".join(cells) + " |", ""]
        lines += ["### Steps beyond round-to-nearest (minmax observer, 8-bit activations)", "",
                  "| variant | accuracy % | drop (points) | PTQ seconds |", "|---|---:|---:|---:|"]
        for r in m["rows"]:
            if r["name"].startswith(("static minmax W4A8", "static minmax W3A8",
                                     "static minmax W2A8", "float16", "bfloat16")):
                lines.append(f"| {r['name']} | {_pct(r['accuracy'])} | "
                             f"{100 * r['drop']:.2f} | {r['seconds']:.1f} |")
        lines += ["", "### Peers (same float model, same calibration images, int8)", "",
                  "| peer | accuracy % | drop (points) | seconds |", "|---|---:|---:|---:|"]
        for p in m["peers"]:
            lines.append(f"| {p['name']} | {_pct(p['accuracy'])} | "
                         f"{100 * (f - p['accuracy']):.2f} | {p['seconds']:.1f} |")
        lines += ["", "### QAT at the same bits", "",
                  "| method | W/A | accuracy % | drop (points) | train seconds | epochs |",
                  "|---|---|---:|---:|---:|---:|"]
        for q in m["qat"]:
            secs = q.get("train_seconds")
            lines.append(f"| {q['method']} | {q['w_bits']}/{q['a_bits']} | "
                         f"{_pct(q['accuracy'])} | {100 * (f - q['accuracy']):.2f} | "
                         f"{'-' if secs is None else f'{secs:.0f}'} | {q.get('epochs')} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = result["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    for ax, m in zip(axes[0], models, strict=True):
        for a_same, style in ((False, "-"), (True, "--")):
            best = []
            for w in BITS:
                a = w if a_same else 8
                accs = [r["accuracy"] for r in m["rows"] if r.get("w_bits") == w
                        and r.get("a_bits") == a and r["mode"] == "static"]
                best.append(max(accs) if accs else float("nan"))
            ax.plot(BITS, [100 * b for b in best], style + "o",
                    label=f"best PTQ W{{b}}A{'{b}' if a_same else 8}")
        for method in sorted({q["method"] for q in m["qat"]}):
            for kind, style in (("8", "s:"), ("32", "^:"), ("same", "v-.")):
                def fits(q, kind=kind):
                    same = q["a_bits"] == q["w_bits"]
                    return same if kind == "same" else (not same and str(q["a_bits"]) == kind)
                pts = sorted((q["w_bits"], q["accuracy"]) for q in m["qat"]
                             if q["method"] == method and fits(q))
                if pts:
                    label = f"{method} W{{b}}A{'{b}' if kind == 'same' else kind}"
                    ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], style,
                            label=label)
        ax.axhline(100 * m["float_accuracy"], color="k", lw=0.8, label="float")
        ax.set_xlabel("weight bits")
        ax.set_ylabel("test accuracy %")
        ax.set_title(f"{m['model']} / {m['dataset']}")
        ax.invert_xaxis()
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _part(d: Path, floats: dict | None = None) -> dict:
    """A part's results.json, or, for a part stopped before the end, its saved rows
    (``partial_<model>.json``; no peers rows) with the float accuracy of a finished part of
    the same model (``floats``), else the float model evaluated again."""
    if (d / "results.json").exists():
        return json.loads((d / "results.json").read_text())
    from lowbit.data import load_dataset
    from lowbit.ptq.run import load_float
    from lowbit.report.provenance import provenance

    models = []
    for f in sorted(d.glob("partial_*.json")):
        name = f.stem.removeprefix("partial_")
        float_model, dataset = ((ZOO / "float_aug" / "model.pt", "cifar10") if name == "resnet20"
                                else (Path("runs/ptq_table/lenet300_float/model.pt"), "mnist"))
        test = load_dataset(dataset, "test", None)
        if floats and name in floats:
            acc, secs = floats[name]
        else:
            acc, secs = _evaluate(load_float(float_model)[0], test, None)
        models.append({"model": name, "dataset": dataset, "float_model": str(float_model),
                       "float_accuracy": acc, "float_eval_seconds": secs,
                       "eval_samples": len(test.labels), "calibration_samples": 1000,
                       "rows": json.loads(f.read_text()), "peers": [],
                       "qat": _qat_resnet() if name == "resnet20" and d.name.endswith("0")
                       else [], "stopped_early": True})
    meta = provenance()
    meta["command"] = f"(rows saved in {d} by a run stopped before its end; its command: NOTE.md)"
    meta["commit"] = "(the run's: NOTE.md)"
    return {"provenance": meta, "models": models}


def merge(parts: list[str], out: Path, meta: dict) -> None:
    """Join part runs (same models, disjoint shares of the grid) into one result."""
    from lowbit.report.provenance import provenance_line

    done = [json.loads((Path(d) / "results.json").read_text()) for d in parts
            if (Path(d) / "results.json").exists()]
    floats = {m["model"]: (m["float_accuracy"], m["float_eval_seconds"])
              for r in done for m in r["models"]}
    loaded = [_part(Path(d), floats) for d in parts]
    models = []
    for i, m in enumerate(loaded[0]["models"]):
        joined = dict(m)
        for other in loaded[1:]:
            o = other["models"][i]
            if o["model"] != m["model"] or o["float_accuracy"] != m["float_accuracy"]:
                raise SystemExit(f"parts disagree on {m['model']}")
            for key in ("rows", "peers", "qat"):
                joined[key] = joined[key] + o[key]
        for key, ident in (("rows", lambda r: r["name"]), ("peers", lambda r: r["name"]),
                           ("qat", lambda r: (r["method"], r["w_bits"], r["a_bits"]))):
            seen, unique = set(), []
            for r in joined[key]:  # a variant run by two parts: the first part's row
                if ident(r) not in seen:
                    seen.add(ident(r))
                    unique.append(r)
            joined[key] = unique
        order = {name: k for k, (name, _) in enumerate(_grid(0, BITS))}
        joined["rows"].sort(key=lambda r: order.get(r["name"], len(order)))
        models.append(joined)
    result = {"provenance": meta, "parts": [r["provenance"] for r in loaded], "models": models}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [provenance_line(meta) + " (merge)"] + [
        "Part: " + provenance_line(r["provenance"]) for r in loaded]
    (out / "results.md").write_text(markdown(result, "  \n".join(lines)))
    plot(result, out / "accuracy_vs_bits.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["lenet300", "resnet20"])
    p.add_argument("--resnet-float", default=str(ZOO / "float_aug" / "model.pt"))
    p.add_argument("--lenet-float", help="a float LeNet300 model.pt (default: trained here)")
    p.add_argument("--lenet-epochs", type=int, default=10)
    p.add_argument("--qat-epochs", type=int, default=2)
    p.add_argument("--calib", type=int, default=1000)
    p.add_argument("--eval", type=int, help="test images evaluated (default: all)")
    p.add_argument("--adaround-iters", type=int, default=1000)
    p.add_argument("--steps-bits", type=int, nargs="+", default=[4, 3, 2],
                   help="weight bits at which CLE/BC/AdaRound variants run")
    p.add_argument("--observers", nargs="+", default=list(OBSERVERS),
                   help="static-mode activation observers of the grid")
    p.add_argument("--dynamic-bits", type=int, nargs="+", default=list(BITS),
                   help="weight bits of the dynamic-mode rows")
    p.add_argument("--steps", nargs="+", help="only these step variants (cle, bc, adaround, "
                   "adaround+bc, cle+adaround+bc, no-fold)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir")
    p.add_argument("--only", help="only the variants whose name contains this")
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--part", type=lambda v: tuple(map(int, v.split("/"))), default=(0, 1),
                   metavar="K/N", help="run the K-th of N interleaved shares of the grid "
                   "(peers and QAT in share 0); join the parts' --out dirs with --merge")
    p.add_argument("--merge", nargs="+", metavar="DIR",
                   help="join the results.json of these part directories into --out")
    p.add_argument("--work", default="runs/ptq_table")
    p.add_argument("--out", default="benchmarks/results/ptq_table")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from lowbit.report.provenance import provenance, provenance_line

    meta = provenance()
    if args.merge:
        merge(args.merge, Path(args.out), meta)
        return
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    models = []
    for name in args.models:
        if name == "lenet300":
            path = Path(args.lenet_float) if args.lenet_float else _float_lenet(
                work, args.lenet_epochs, args.data_dir)
            models.append(run_model(name, path, "mnist", args, work))
        else:
            models.append(run_model(name, Path(args.resnet_float), "cifar10", args, work))
        result = {"provenance": meta, "models": models}
        (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(markdown(result, provenance_line(meta)))
    plot(result, out / "accuracy_vs_bits.png")
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
