"""The keystone, measured (issue 10): a model exported with ``lowbit.export`` and run by the
numpy reference runtime (``lowbit.runtime``) against the frozen fake-quantized torch model, on
the full MNIST / CIFAR-10 test sets, for every method family, over seeds.

Per (architecture, method, seed): the runtime's argmax agreement with torch and the mismatch
count (as torchao reports prepare-vs-convert), both accuracies, the logit differences (max and
99.9th percentile of |delta| relative to the largest logit), the integer accumulators of every
integer / binary / lookup layer against an independent torch float64 computation of the same
integers (on 4 test images; mismatches must be 0), and the file size against theory
(codes + codebooks + float tensors + activation grids, computed from the torch model) + the
header that ``lowbit inspect`` reports.

Models: LeNet300 trained here 1 epoch on MNIST per method (seeded); ResNet-20 fine-tuned 1
epoch on a ``--subset`` of CIFAR-10 train from the committed float model
(benchmarks/results/zoo_table2/float/model.pt); int8 PTQ rows quantize the float model
(static, minmax, 1000 calibration images). Quantization Networks train with plain ``fit``
(no temperature ramp): the point here is equivalence, not accuracy.

    python benchmarks/runtime_equivalence.py --arch lenet300 --seeds 0 1 2
    python benchmarks/runtime_equivalence.py --arch resnet20 --seeds 0 --merge
Writes benchmarks/results/runtime_equivalence/{results.json,results.md} (rows saved after
every cell; ``--merge`` keeps the other architecture's rows).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as TF

OUT = Path(__file__).resolve().parent / "results" / "runtime_equivalence"
FLOAT_RESNET = Path(__file__).resolve().parent / "results" / "zoo_table2" / "float" / "model.pt"
# name -> (weight method, act method, w_bits, a_bits); "ptq" rows use lowbit.ptq
CONFIGS = {
    "uniform-int8-ptq": ("ptq", "ptq", 8, 8),
    "uniform-w8a8-qat": ("uniform", "uniform", 8, 8),
    "ivan-w4a4": ("ivan", "ivan", 4, 4), "ivan-w2a2": ("ivan", "ivan", 2, 2),
    "dorefa-w4a4": ("dorefa", "dorefa", 4, 4), "dorefa-w2a2": ("dorefa", "dorefa", 2, 2),
    "lsq-w4a4": ("lsq", "lsq", 4, 4), "lsq-w2a2": ("lsq", "lsq", 2, 2),
    "xnor-w1a1": ("xnor", "xnor", 1, 1), "bnn-w1a1": ("bnn", "bnn", 1, 1),
    "twn-w2": ("twn", None, 2, 32), "twn-w2-bnn-a1": ("twn", "bnn", 2, 1),
    "ttq-w2": ("ttq", None, 2, 32), "ttq-w2-dorefa-a4": ("ttq", "dorefa", 2, 4),
    "pow2-w4a4": ("pow2", "pow2", 4, 4), "abc-w2a2": ("abc", "abc", 2, 2),
    "qnet-w2a2": ("qnet", "qnet", 2, 2), "qnet-w1a2": ("qnet", "qnet", 1, 2),
}
SPEC = {"lenet300": ("mnist", (1, 28, 28)), "resnet20": ("cifar10", (3, 32, 32))}


def _float_model(arch: str, data, work: Path, seed: int):
    from lowbit.experiment import default_config, load_model
    from lowbit.models import build_model
    from lowbit.train import fit

    if arch == "resnet20":
        return load_model(FLOAT_RESNET)[0]
    path = work / f"float-{arch}-{seed}"
    net = build_model(arch, 1, 28, 10, 0.1307, 0.3081)
    fit(net, (data[0].images, data[0].labels), _small(data[1]),
        default_config(arch, epochs=1, seed=seed), path, progress=False)
    return net.eval()


def _small(test, n=1000):
    return test.images[:n], test.labels[:n]


def _train(arch, cfg, float_net, data, args, seed, work):
    import lowbit
    from lowbit.experiment import default_config
    from lowbit.ptq import PTQConfig
    from lowbit.ptq import quantize as ptq_quantize
    from lowbit.ptq.run import calibration_batches
    from lowbit.train import fit

    w, a, wb, ab = cfg
    train, test = data
    if w == "ptq":
        calib = calibration_batches(train.images, 1000, 128, seed=seed)
        net, _ = ptq_quantize(copy.deepcopy(float_net), calib, PTQConfig())
        return net.eval()
    net = lowbit.quantize(copy.deepcopy(float_net),
                          lowbit.Recipe(weight=w, act=a or w, w_bits=wb, a_bits=ab))
    n = len(train.labels) if arch == "lenet300" else args.subset
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(train.labels), generator=g)[:n]
    fit(net, (train.images[idx], train.labels[idx]), _small(test, 500),
        default_config(arch, epochs=1, seed=seed, lr=args.lr), work / "qat", progress=False)
    return net.eval()


def _logits_torch(net, images, bs=1000):
    out = []
    with torch.no_grad():
        for i in range(0, len(images), bs):
            out.append(net(images[i:i + bs].float() / 255).numpy())
    return np.concatenate(out)


def _logits_torch_other(net, images, kind: str, bs=1000):
    """The same frozen model with another summation order: ``nomkldnn`` runs torch's own
    non-oneDNN float32 convolution (another float32 sum order, as valid as the first);
    ``float64`` runs the model in double (frozen weights convert exactly; sums nearly exact)."""
    if kind == "float64":
        net64 = copy.deepcopy(net).double()
        out = []
        with torch.no_grad():
            for i in range(0, len(images), bs):
                out.append(net64(images[i:i + bs].double() / 255).numpy())
        return np.concatenate(out)
    with torch.backends.mkldnn.flags(enabled=False):
        return _logits_torch(net, images, bs)


def noise_floor(y_t, y_r, others: dict) -> dict:
    """Argmax disagreements between every pair of (torch, runtime, other orders)."""
    am = {"torch": y_t.argmax(1), "runtime": y_r.argmax(1)}
    am.update({k: v.argmax(1) for k, v in others.items()})
    names = list(am)
    return {f"{a}_vs_{b}": int((am[a] != am[b]).sum())
            for i, a in enumerate(names) for b in names[i + 1:]}


def _logits_runtime(model, images, bs=500):
    return np.concatenate([model(images[i:i + bs].float().numpy() / np.float32(255))
                           for i in range(0, len(images), bs)])


def _accumulators(ref, model, x) -> tuple[int, int, int]:
    """(layers checked, accumulators compared, mismatches): every non-float layer of the
    runtime, fed torch's own input to that layer, against torch's float64 conv/matmul of the
    integers (activation integers = value / scale, weight integers from its encode)."""
    layers, compared, bad = 0, 0, 0
    mods = dict(ref.named_modules())
    for layer in model.layers:
        if layer.path == "float" or layer.grid is None or layer.grid.ints is None:
            continue
        m, seen = mods[layer.name], {}
        h = m.register_forward_pre_hook(lambda mod, args, seen=seen: seen.setdefault(
            "x", args[0]))
        with torch.no_grad():
            ref(x)
        h.remove()
        xin = seen["x"]
        if getattr(m, "input_quant", None) is not None and m.quant_enabled:
            with torch.no_grad():  # the layer's own input quantizer (PTQ's static inputs)
                xin = m.input_quant(xin)
        ranks = np.searchsorted(layer.grid.values, xin.numpy())
        one = {}
        layer((ranks, layer.grid), trace=one)
        if layer.path in ("bitplanes", "lookup"):
            continue  # several accumulators per layer; covered by tests/runtime/test_model.py
        codes, cb = m.weight_quant.encode(m.weight)
        w_int = cb.integers(codes).double()
        a_int = torch.round(xin.double() / layer.grid.scale)
        if layer.kind == "conv2d":
            want = TF.conv2d(a_int, w_int, stride=layer.stride, padding=layer.padding,
                             dilation=layer.dilation, groups=layer.groups)
            want = want.permute(0, 2, 3, 1).reshape(-1, w_int.shape[0])
        else:
            want = a_int.reshape(a_int.shape[0], -1) @ w_int.T
        got = np.concatenate(one[layer.name]["acc"], axis=1) if layer.groups > 1 else \
            one[layer.name]["acc"][0]
        layers += 1
        compared += got.size
        bad += int((got != want.numpy().astype(np.int64)).sum())
    return layers, compared, bad


def _theory_bytes(ref) -> dict:
    """Codes + codebooks + float tensors + activation grids, from the torch model."""
    from lowbit.nn.layers import QuantAct, QuantConv2d, QuantLinear
    from lowbit.quantizers.base import ActQuantizer

    codes = books = floats = grids = 0
    for m in ref.modules():
        if isinstance(m, (QuantLinear, QuantConv2d)) and m.weight_quant is not None \
                and m.quant_enabled:
            c, cb = m.weight_quant.encode(m.weight)
            codes += cb.code_bytes(c.numel())
            books += cb.overhead_bytes()
            floats += 4 * m.bias.numel() if m.bias is not None else 0
        elif isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            floats += 4 * sum(p.numel() for p in m.parameters())
        elif isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            floats += 4 * 4 * m.num_features
        elif type(m).__name__ == "Normalize":
            floats += 4 * (m.mean.numel() + m.std.numel())
        if isinstance(m, ActQuantizer) or (isinstance(m, QuantAct)):
            q = m.quant if isinstance(m, QuantAct) else m
            if isinstance(m, QuantAct) or not any(q is getattr(p, "quant", None)
                                                  for p in ref.modules()):
                cb = q.codebook()
                n = cb.num_codes
                grids += 4 * (n - 1) + 4 * n + 2 * n + cb.overhead_bytes()
    return {"codes": codes, "codebooks": books, "floats": floats, "grids": grids,
            "total": codes + books + floats + grids}


def cell(arch, name, seed, float_net, data, args, work) -> dict:
    import lowbit.runtime as rt
    from lowbit.exporter import export, frozen_copy
    from lowbit.runtime.inspect import summary

    t0 = time.time()
    net = _train(arch, CONFIGS[name], float_net, data, args, seed, work)
    t1 = time.time()
    work.mkdir(parents=True, exist_ok=True)
    path = export(net, work / f"{arch}-{name}-{seed}.lowbit")
    ref, model = frozen_copy(net), rt.load(path)
    test = data[1]
    y_t = _logits_torch(ref, test.images)
    t2 = time.time()
    y_r = _logits_runtime(model, test.images)
    t3 = time.time()
    labels = test.labels.numpy()
    extra = {}
    if args.noise:  # how often torch flips against itself under another valid sum order
        others = {k: _logits_torch_other(ref, test.images, k) for k in ("nomkldnn", "float64")}
        extra["noise_floor"] = noise_floor(y_t, y_r, others)
        extra["acc_float64"] = float((others["float64"].argmax(1) == labels).mean())
    agree = y_t.argmax(1) == y_r.argmax(1)
    rel = np.abs(y_t - y_r).max(1) / np.maximum(np.abs(y_t).max(1), 1e-12)
    s = summary(path)
    theory = _theory_bytes(ref)
    layers, compared, bad = _accumulators(ref, model, test.images[:4].float() / 255)
    paths = sorted({f"{layer.path}" for layer in model.layers})
    body = s["file_bytes"] - s["header_bytes"]
    return {"arch": arch, "config": name, "seed": seed, "lr": args.lr, "paths": paths,
            "n": int(len(labels)), "mismatches": int((~agree).sum()),
            "agreement": float(agree.mean()),
            "acc_torch": float((y_t.argmax(1) == labels).mean()),
            "acc_runtime": float((y_r.argmax(1) == labels).mean()),
            "logit_rel_max": float(rel.max()),
            "logit_rel_p999": float(np.quantile(rel, 0.999)),
            "acc_layers": layers, "acc_compared": compared, "acc_mismatches": bad,
            "file_bytes": s["file_bytes"], "header_bytes": s["header_bytes"],
            "theory_bytes": theory["total"], "theory": theory,
            "body_minus_theory": body - theory["total"],
            "within_tolerance": abs(body - theory["total"]) <= 0.01 * theory["total"] + 16384,
            "float_bytes_fp32": int(4 * sum(p.numel() for p in float_net.parameters())),
            "seconds": {"train": round(t1 - t0, 1), "torch_eval": round(t2 - t1, 1),
                        "runtime_eval": round(t3 - t2, 1)}, **extra}


def write(rows, prov, out: Path = OUT) -> None:
    from lowbit.report.provenance import provenance_line

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps({"provenance": prov, "rows": rows}, indent=1))
    tmp.replace(out / "results.json")
    lines = ["# Reference runtime vs fake-quantized model (full test sets)", "",
             provenance_line(prov), "",
             "| arch | config | seed | paths | mismatches / n | agreement | acc torch | "
             "acc runtime | max rel. logit Δ | p99.9 | accumulators (layers, values, "
             "wrong) | file B | header B | theory B | body − theory | fp32 params B |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lr = f" (lr {r['lr']})" if r.get("lr") else ""
        lines.append(
            f"| {r['arch']} | {r['config']}{lr} | "
            f"{r['seed']} | {' '.join(r['paths'])} | "
            f"{r['mismatches']} / {r['n']} | {100 * r['agreement']:.2f} % | "
            f"{100 * r['acc_torch']:.2f} | {100 * r['acc_runtime']:.2f} | "
            f"{r['logit_rel_max']:.1e} | {r['logit_rel_p999']:.1e} | {r['acc_layers']}, "
            f"{r['acc_compared']}, {r['acc_mismatches']} | {r['file_bytes']} | "
            f"{r['header_bytes']} | {r['theory_bytes']} | {r['body_minus_theory']} | "
            f"{r['float_bytes_fp32']} |")
    noisy = [r for r in rows if "noise_floor" in r]
    if noisy:
        pairs = list(noisy[0]["noise_floor"])
        lines += ["", "## The float-rounding noise floor (`--noise`)", "",
                  "Argmax disagreements on the full test set between torch (oneDNN float32), "
                  "the runtime, torch with its non-oneDNN float32 convolution (`nomkldnn`) and "
                  "torch in float64:", "",
                  "| arch | config | seed | acc float64 | " + " | ".join(
                      p.replace("_vs_", " vs ") for p in pairs) + " |",
                  "|---|---|---|---|" + "---|" * len(pairs)]
        for r in noisy:
            lr = f" (lr {r['lr']})" if r.get("lr") else ""
            lines.append(f"| {r['arch']} | {r['config']}{lr} | {r['seed']} | "
                         f"{100 * r['acc_float64']:.2f} | " + " | ".join(
                             str(r["noise_floor"][p]) for p in pairs) + " |")
    provs = prov.get("parts", [prov])
    lines[2] = "\n\n".join(provenance_line(p) for p in provs)
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=sorted(SPEC), required=True)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--subset", type=int, default=5000, help="ResNet-20 fine-tuning images")
    p.add_argument("--lr", type=float, help="fine-tuning lr (default: the model's; the zoo "
                   "fine-tunes ResNet-20 at 0.01)")
    p.add_argument("--noise", action="store_true", help="also run torch with its "
                   "non-oneDNN float32 convolution and in float64, and count the argmax "
                   "flips between every pair (the float-rounding noise floor)")
    p.add_argument("--data-dir")
    p.add_argument("--work", default="/tmp/lowbit-equivalence")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--merge", action="store_true", help="keep rows of other runs")
    p.add_argument("--out", default=str(OUT), help="results directory")
    p.add_argument("--combine", nargs="+", metavar="DIR",
                   help="only merge the results.json of these directories into --out")
    args = p.parse_args()
    if args.combine:
        return combine([Path(d) for d in args.combine], Path(args.out))
    torch.set_num_threads(args.threads)
    from lowbit.data import load_dataset
    from lowbit.report.provenance import provenance

    dataset, _ = SPEC[args.arch]
    data = (load_dataset(dataset, "train", args.data_dir),
            load_dataset(dataset, "test", args.data_dir))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows, out = [], Path(args.out)
    if args.merge and (out / "results.json").exists():
        rows = [r for r in json.loads((out / "results.json").read_text())["rows"]
                if r["arch"] != args.arch]
    prov = provenance()
    for seed in args.seeds:
        float_net = _float_model(args.arch, data, work, seed)
        for name in args.configs:
            try:
                row = cell(args.arch, name, seed, float_net, data, args, work / name)
            except Exception as e:  # a failing cell is a result too: say what failed
                row = {"arch": args.arch, "config": name, "seed": seed,
                       "error": f"{type(e).__name__}: {e}"}
                print(row, flush=True)
                continue
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("arch", "config", "seed", "mismatches",
                                                   "agreement", "acc_torch", "acc_runtime",
                                                   "acc_mismatches", "within_tolerance",
                                                   "seconds")} | {
                "noise_floor": row.get("noise_floor")}), flush=True)
            write([r for r in rows if "error" not in r], prov, out)


def combine(dirs: list[Path], out: Path) -> None:
    """One results file from several runs (each part's provenance kept)."""
    rows, parts = [], []
    for d in dirs:
        blob = json.loads((d / "results.json").read_text())
        rows += blob["rows"]
        parts += blob["provenance"].get("parts", [blob["provenance"]])
    order = {name: i for i, name in enumerate(CONFIGS)}
    rows.sort(key=lambda r: (r["arch"] != "lenet300", r.get("lr") or 0, r["seed"],
                             order.get(r["config"], 99)))
    write(rows, {"parts": parts}, out)


if __name__ == "__main__":
    main()
