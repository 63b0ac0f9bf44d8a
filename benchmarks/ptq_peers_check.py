"""Smoke run of the PTQ peers (benchmarks/ptq_peers.py): one float model, N calibration images
from the train split (fixed seed), then on the test split: float accuracy (torch and the
exported ONNX model in onnxruntime), torch.ao int8 (FX, x86) and ONNX Runtime int8 (QDQ,
MinMax / Entropy / Percentile), with the seconds of every step. Prints a table, writes JSON.
Trains nothing, except a float LeNet-300-100 for ``--epochs`` (1) when no --float-model is given.

    PYTHONPATH=src LOWBIT_DATA=/work/shared/data .venv/bin/python benchmarks/ptq_peers_check.py
    PYTHONPATH=src LOWBIT_DATA=/work/shared/data .venv/bin/python benchmarks/ptq_peers_check.py \
        --model resnet20 --dataset cifar10 --float-model benchmarks/results/zoo_table2/float_aug
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ptq_peers as peers  # noqa: E402  (the sibling module, also when run from elsewhere)


def float_model(args, work: Path):
    """The float model: ``--float-model`` (a model.pt or the run directory holding it), else a
    float ``--model`` trained for ``--epochs`` with lowbit's own training run."""
    from lowbit.experiment import Job, default_config, load_model, run
    from lowbit.recipe import Recipe

    if args.float_model is None:
        config = default_config(args.model, args.dataset, epochs=args.epochs,
                                num_threads=args.threads)
        run(Job(args.model, args.dataset, Recipe(), config), work / "float", progress=False,
            overwrite=True)
        path = work / "float" / "model.pt"
    else:
        path = Path(args.float_model)
        path = path / "model.pt" if path.is_dir() else path
    net, blob = load_model(path)
    if blob["model_kwargs"]["name"] != args.model:
        raise SystemExit(f"{path} is a {blob['model_kwargs']['name']}, not a {args.model}")
    return net, str(path)


def run_peers(args) -> dict:
    from lowbit.data import load_dataset

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train = load_dataset(args.dataset, "train", args.data_dir)
    test = load_dataset(args.dataset, "test", args.data_dir)
    net, source = float_model(args, work)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))
    calib = train.images[order[:args.calib]]
    images, labels, times = test.images, test.labels, {}
    reduce_range = {"auto": peers.ort_reduce_range(), "on": True, "off": False}[args.reduce_range]
    rows = {"float (torch)": peers.torch_evaluate(net, images, labels, args.batch)}

    int8 = peers.torch_ao_ptq(net, calib, images[:1], args.calib_batch, times)
    rows["torch.ao int8 (FX, x86)"] = peers.torch_evaluate(int8, images, labels, args.batch)
    rows["torch.ao int8 (FX, x86)"]["build_seconds"] = times["torch_ao_ptq"]

    onnx_path = peers.onnx_export_float(net, images[:1], work / "float.onnx",
                                        dynamo=not args.legacy_export, times=times)
    rows["float (onnxruntime)"] = peers.ort_float_evaluate(onnx_path, net, images, labels,
                                                           args.batch, args.threads)
    rows["float (onnxruntime)"]["build_seconds"] = times["onnx_export_float"]
    for method in args.methods:
        options = None if method != "Entropy" else {"num_bins": args.entropy_bins[0],
                                                    "num_quantized_bins": args.entropy_bins[1]}
        path = peers.ort_quantize_static(onnx_path, calib, work / f"int8_{method}.onnx", method,
                                         per_channel=True, calib_batch=args.calib_batch,
                                         reduce_range=reduce_range, calib_options=options,
                                         times=times)
        key = f"ORT int8 QDQ {method}"
        rows[key] = peers.ort_evaluate(path, images, labels, args.batch, args.threads)
        rows[key]["build_seconds"] = times[f"ort_quantize_static/{method}"]
    return {"model": args.model, "dataset": args.dataset, "float_model": source,
            "calib": args.calib, "calib_batch": args.calib_batch, "seed": args.seed,
            "threads": args.threads, "exporter": "legacy" if args.legacy_export else "dynamo",
            "ort_reduce_range": reduce_range, "cpu_vnni": peers.cpu_has_vnni(),
            "ort_entropy_bins": args.entropy_bins, "torch": torch.__version__,
            "versions": versions(), "rows": rows}


def versions() -> dict:
    import onnx
    import onnxruntime
    import onnxscript

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "onnxscript": onnxscript.__version__}


def table(result: dict) -> str:
    lines = [f"{result['model']} on {result['dataset']}, {result['calib']} calibration images, "
             f"{result['threads']} thread(s)",
             f"{'':26} {'acc %':>7} {'build s':>8} {'eval s':>7}"]
    for name, r in result["rows"].items():
        build = f"{r['build_seconds']:8.2f}" if "build_seconds" in r else f"{'':8}"
        lines.append(f"{name:26} {100 * r['accuracy']:7.2f} {build} {r['seconds']:7.2f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="lenet300")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--float-model", help="a float model.pt, or the run directory holding it")
    p.add_argument("--epochs", type=int, default=1, help="float training without --float-model")
    p.add_argument("--calib", type=int, default=1000)
    p.add_argument("--calib-batch", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=1000, help="evaluation batch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--methods", nargs="+", default=list(peers.ORT_METHODS),
                   choices=peers.ORT_METHODS)
    entropy = peers.ORT_CALIB_OPTIONS["Entropy"]
    p.add_argument("--entropy-bins", type=int, nargs=2, metavar=("BINS", "QUANTIZED_BINS"),
                   default=[entropy["num_bins"], entropy["num_quantized_bins"]],
                   help="ORT Entropy histogram (ORT's own default 128 128 equals MinMax)")
    p.add_argument("--reduce-range", choices=("auto", "on", "off"), default="auto",
                   help="ORT 7-bit weights; auto: on without VNNI (ptq_peers.ort_reduce_range)")
    p.add_argument("--legacy-export", action="store_true", help="TorchScript ONNX exporter")
    p.add_argument("--data-dir")
    p.add_argument("--work", default="runs/ptq_peers", help="ONNX files, trained float model")
    p.add_argument("--out", help="JSON file (default WORK/ptq_peers_<model>.json)")
    args = p.parse_args(argv)
    started = time.perf_counter()
    result = run_peers(args)
    result["total_seconds"] = time.perf_counter() - started
    print(table(result))
    out = Path(args.out or Path(args.work) / f"ptq_peers_{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
