"""The ``lowbit`` command line. Each subcommand parses its flags and calls one library function."""

from __future__ import annotations

import argparse
import json
import sys

from lowbit.errors import LowbitError

_EPILOG = "Data directory: --data-dir, else $LOWBIT_DATA/<dataset>, else ../shared/data/<dataset>."


def _per_model(field: str) -> str:
    from lowbit.experiment import DEFAULT_CONFIGS

    return "default per model: " + ", ".join(f"{m} {getattr(c, field)}"
                                             for m, c in DEFAULT_CONFIGS.items())


def _recipe_flags(p) -> None:
    """The flags that build a Recipe, shared by train and demo (the same flags mean the same)."""
    p.add_argument("--keep-first", action=argparse.BooleanOptionalAction, default=True,
                   help="keep the first weight layer at --keep-bits (default: yes); "
                        "--no-keep-first quantizes it like the others")
    p.add_argument("--keep-last", action=argparse.BooleanOptionalAction, default=True,
                   help="keep the last weight layer at --keep-bits (default: yes); "
                        "--no-keep-last quantizes it like the others")
    p.add_argument("--keep-bits", type=int,
                   help="bits of the kept first/last layers (default: 8; 32 keeps them in "
                        "float, XNOR-Net's practice)")
    p.add_argument("--w-option", action="append", metavar="NAME=VALUE",
                   help="an option of the weight method, e.g. per_channel=true for lsq "
                        "(repeatable; 'lowbit methods --json' lists each method's options)")
    p.add_argument("--a-option", action="append", metavar="NAME=VALUE",
                   help="an option of the activation method, e.g. momentum=0.05 (repeatable)")


def _recipe(a, **fields):
    from lowbit.quantizers.options import parse_assignments
    from lowbit.recipe import Recipe

    keep = {} if a.keep_bits is None else {"keep_bits": a.keep_bits}
    return Recipe(keep_first=a.keep_first, keep_last=a.keep_last, **keep,
                  weight_options=parse_assignments(a.w_option),
                  act_options=parse_assignments(a.a_option), **fields)


def _final_temperature(a) -> float | None:
    """qnet's final T: --final-temperature (0: none), else the paper's end point unless the
    factor schedule was asked for (--temperature-factor / --temperature-per-step)."""
    from lowbit.train.qnet import FINAL_TEMPERATURE

    if a.final_temperature is not None:
        return a.final_temperature or None
    factor_asked = a.temperature_factor is not None or a.temperature_per_step
    return None if factor_asked else FINAL_TEMPERATURE


def _train_parser(sub) -> None:
    from lowbit.data.registry import DATASETS
    from lowbit.models import MODELS
    from lowbit.train.qnet import (
        ACT_ALPHA,
        ACT_GRAD_TEMPERATURE,
        ACT_INIT,
        ACT_INITS,
        AUTO_KMEANS_MAX_BITS,
        BN_BATCHES,
    )

    p = sub.add_parser("train", help="train a (quantized) model; writes model.pt, summary.json",
                       description="Train a model, float or quantized, and write DIR/model.pt, "
                       "DIR/summary.json, DIR/metrics.jsonl and DIR/checkpoint.pt (every "
                       "epoch). The plan (which layer at which bits, and why) and the size "
                       "are printed at the start and the end.", epilog=_EPILOG)
    p.add_argument("--model", required=True, choices=sorted(MODELS), help="the architecture")
    p.add_argument("--dataset", required=True, choices=DATASETS,
                   help="the dataset (digits: bundled 8x8 digits, no download)")
    p.add_argument("--method", default="ivan",
                   help="quantization method of weights and activations (default: ivan; "
                        "'lowbit methods' lists them)")
    p.add_argument("--w-method", help="weight method (default: --method)")
    p.add_argument("--a-method", help="activation method (default: --method)")
    p.add_argument("--w-bits", type=int, default=32, help="weight bits, 1..32 (32 = float)")
    p.add_argument("--a-bits", type=int, default=32, help="activation bits, 1..32 (32 = float)")
    p.add_argument("--g-bits", type=int, default=32,
                   help="bits of the gradients flowing into the quantized weight layers "
                        "(DoReFa-Net), 32 = float")
    p.add_argument("--g-method", default="dorefa", help="gradient quantization method "
                   "(default: dorefa)")
    _recipe_flags(p)
    p.add_argument("--recipe", help="a JSON file of per-layer rules ({'rules': [{'pattern': "
                   "..., 'w_bits': ...}]}, e.g. recipe.json of 'lowbit ptq --sensitivity'), "
                   "applied after the flags")
    p.add_argument("--init", help="start from this float model.pt (fine-tuning, INQ, qnet)")
    p.add_argument("--grad-clip", type=float,
                   help="clip the gradients' global L2 norm to this value (default: none; "
                        "qnet: 5)")
    p.add_argument("--final-temperature", type=float,
                   help="qnet: ramp T per step to this value in each phase (default 275, the "
                        "end of yang2019's ResNet schedule T = 5 x 55 epochs; 0 or "
                        "--temperature-factor: the factor schedule instead)")
    p.add_argument("--temperature-factor", type=float,
                   help="qnet: temperature T = epoch x factor (yang2019 sec. 4.1; default 5), "
                        "instead of --final-temperature")
    p.add_argument("--temperature-per-step", action="store_true",
                   help="qnet, with --temperature-factor: ramp T linearly within each epoch")
    p.add_argument("--qnet-bn-batches", type=int, default=BN_BATCHES,
                   help=f"qnet: re-estimate BatchNorm statistics under the hard quantizers over "
                        f"this many training batches at the end (default {BN_BATCHES}; 0: off)")
    p.add_argument("--qnet-act-alpha", choices=("fit", "reciprocal"), default=ACT_ALPHA,
                   help="qnet activations: alpha fitted to the calibration activations by least "
                        "squares (default) or the paper's 1/beta (which collapses: "
                        "lowbit.train.qnet.fit_qnet)")
    p.add_argument("--qnet-act-init", choices=ACT_INITS, default=ACT_INIT,
                   help=f"qnet activations: steps at the k-means midpoints (the paper's), evenly "
                        f"spaced (linear) or auto (default: k-means up to "
                        f"{AUTO_KMEANS_MAX_BITS}-bit activations, linear above; measured in "
                        f"lowbit.train.qnet.fit_qnet)")
    p.add_argument("--qnet-act-grad-temperature", type=float, default=ACT_GRAD_TEMPERATURE,
                   help=f"qnet activations: the backward's temperature (default "
                        f"{ACT_GRAD_TEMPERATURE:g}; 0: at the forward's T, as the paper writes "
                        "eq. 7-10)")
    for flag, typ, field, what in (("--epochs", int, "epochs", "epochs"),
                                   ("--batch-size", int, "batch_size", "batch size"),
                                   ("--lr", float, "lr", "learning rate"),
                                   ("--weight-decay", float, "weight_decay", "weight decay"),
                                   ("--seed", int, "seed", "random seed")):
        p.add_argument(flag, type=typ, help=f"{what} ({_per_model(field)})")
    p.add_argument("--optimizer", choices=("adam", "sgd"), help=_per_model("optimizer"))
    p.add_argument("--schedule", choices=("cosine", "step", "none"),
                   help="learning-rate schedule, stepped per epoch (" + _per_model("schedule")
                   + ")")
    p.add_argument("--threads", type=int,
                   help="CPU threads (default: chosen for the model and the machine's free "
                        "cores)")
    p.add_argument("--augment", choices=("none", "crop-flip"),
                   help="training augmentation (default: crop-flip for cifar10, else none)")
    p.add_argument("--precision", choices=("fp32", "bf16"),
                   help="bf16: train under bf16 autocast (fast on AMX CPUs; eval stays fp32)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="train in channels-last (NHWC) memory format")
    p.add_argument("--data-dir", help="directory of the dataset's files (see below)")
    p.add_argument("--out", required=True, help="output directory (must be new or empty, "
                   "unless --resume or --overwrite)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last epoch checkpoint (the same "
                        "job only)")
    p.add_argument("--overwrite", action="store_true",
                   help="start the run in --out again, removing what an earlier run left")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (there is none when stderr is not a terminal)")


def _cmd_train(a) -> int:
    from lowbit.experiment import Job, default_config, run
    from lowbit.report.console import progress_wanted

    recipe = _recipe(a, weight=a.w_method or a.method, w_bits=a.w_bits,
                     act=a.a_method or a.method, a_bits=a.a_bits, grad=a.g_method,
                     g_bits=a.g_bits, rules=_rules_file(a.recipe))
    config = default_config(a.model, dataset=a.dataset, epochs=a.epochs,
                            batch_size=a.batch_size, lr=a.lr,
                            weight_decay=a.weight_decay, seed=a.seed, optimizer=a.optimizer,
                            schedule=a.schedule, num_threads=a.threads, grad_clip=a.grad_clip,
                            augment=a.augment, precision=a.precision,
                            channels_last=a.channels_last)
    job = Job(a.model, a.dataset, recipe, config, a.data_dir, a.init,
              5.0 if a.temperature_factor is None else a.temperature_factor,
              a.temperature_per_step, _final_temperature(a), a.qnet_bn_batches,
              qnet_act_alpha=a.qnet_act_alpha, qnet_act_init=a.qnet_act_init,
              qnet_act_grad_temperature=a.qnet_act_grad_temperature or None)
    s = run(job, a.out, resume=a.resume, progress=progress_wanted(not a.no_progress),
            overwrite=a.overwrite)
    print(f"test accuracy {100 * s['test_accuracy']:.2f} %  loss {s['test_loss']:.4f}  "
          f"packed {s['packed_bytes']:,} B of {s['float_bytes']:,} B float "
          f"({s['size_ratio']:.3f} x)  {s['wall_seconds']:.1f} s  -> {a.out}/model.pt")
    return 0


def _ptq_parser(sub) -> None:
    from lowbit.data.registry import DATASETS
    from lowbit.ptq.driver import MODES
    from lowbit.quantizers.histogram import OBSERVERS, WEIGHT_OBSERVERS

    p = sub.add_parser(
        "ptq", help="quantize a trained float model.pt without retraining",
        description="Post-training quantization of a float model.pt (written by 'lowbit "
        "train'): static (full integer, calibrated), dynamic (activations quantized per "
        "batch) or float16/bfloat16 weights; writes DIR/model.pt (read by 'lowbit eval') and "
        "DIR/summary.json.", epilog=_EPILOG)
    p.add_argument("model_file", help="a float model.pt")
    p.add_argument("--out", required=True, help="output directory (must be new or empty, "
                   "unless --overwrite)")
    p.add_argument("--dataset", choices=DATASETS,
                   help="calibration (train split) and test data (default: the model's)")
    p.add_argument("--data-dir", help="directory of the dataset's files (see below)")
    p.add_argument("--mode", default="static", choices=MODES, help="default: static")
    p.add_argument("--bits", type=int, help="weight and activation bits (sets both)")
    p.add_argument("--w-bits", type=int, help="weight bits, 2..16 (default: 8)")
    p.add_argument("--a-bits", type=int, help="activation bits, 2..16 or 32 = float "
                   "(default: 8)")
    p.add_argument("--observer", default="minmax", choices=sorted(OBSERVERS),
                   help="activation range observer of static mode (default: minmax)")
    p.add_argument("--w-observer", default="minmax", choices=WEIGHT_OBSERVERS,
                   help="weight clipping observer (default: minmax)")
    p.add_argument("--per-tensor", action="store_true",
                   help="one weight scale per tensor (default: per output channel)")
    p.add_argument("--per-row", action="store_true",
                   help="dynamic mode: one activation range per row of each batch")
    p.add_argument("--calib", type=int, default=1000,
                   help="calibration samples from the train split (default: 1000)")
    p.add_argument("--batch-size", type=int, default=128, help="calibration batch size")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration draw")
    p.add_argument("--fold-bn", action=argparse.BooleanOptionalAction, default=True,
                   help="fold BatchNorm into the preceding layer first (default: yes)")
    p.add_argument("--equalize", action="store_true",
                   help="cross-layer equalization (Nagel et al. 2019)")
    p.add_argument("--bias-correction", action="store_true",
                   help="empirical bias correction (Nagel et al. 2019)")
    p.add_argument("--adaround", action="store_true",
                   help="adaptive rounding of the weights (Nagel et al. 2020)")
    p.add_argument("--adaround-iters", type=int, default=1000,
                   help="AdaRound iterations per layer (default: 1000)")
    p.add_argument("--keep-first", action=argparse.BooleanOptionalAction, default=True,
                   help="keep the first weight layer at --keep-bits (default: yes)")
    p.add_argument("--keep-last", action=argparse.BooleanOptionalAction, default=True,
                   help="keep the last weight layer at --keep-bits (default: yes)")
    p.add_argument("--keep-bits", type=int, default=8, help="bits of kept layers (default 8)")
    p.add_argument("--recipe", help="a JSON file of per-layer rules ({'rules': [{'pattern': "
                   "..., 'w_bits': ..., 'a_bits': ...}]}, e.g. from --sensitivity)")
    p.add_argument("--sensitivity", action="store_true",
                   help="instead of one PTQ run: the accuracy drop of quantizing ONE layer at "
                        "a time (weights; inputs) at each of --sens-bits; writes "
                        "DIR/sensitivity.{json,md,png} (no model.pt)")
    p.add_argument("--size-kb", type=float,
                   help="with --sensitivity: suggest per-layer weight bits within this packed "
                        "size (1 kB = 1000 B), verify them with PTQ, write DIR/recipe.json")
    p.add_argument("--sens-bits", type=int, nargs="+", default=[8, 6, 4, 3, 2],
                   help="with --sensitivity: the bits probed (default: 8 6 4 3 2)")
    p.add_argument("--sens-eval", type=int, default=2000,
                   help="with --sensitivity: test images the drops are measured on (a "
                        "seeded draw; default: 2000)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what an earlier run left in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _rules_file(path: str | None) -> tuple:
    """The LayerRules of a recipe JSON file's "rules" list (none without a file)."""
    from lowbit.recipe import LayerRule

    if not path:
        return ()
    with open(path) as f:
        return tuple(LayerRule(**r) for r in json.load(f).get("rules", ()))


def _ptq_config(a):
    from lowbit.ptq.driver import PTQConfig

    w_bits = a.w_bits if a.w_bits is not None else (a.bits if a.bits is not None else 8)
    a_bits = a.a_bits if a.a_bits is not None else (a.bits if a.bits is not None else 8)
    rules = _rules_file(a.recipe)
    return PTQConfig(mode=a.mode, w_bits=w_bits, a_bits=a_bits, observer=a.observer,
                     w_observer=a.w_observer, per_channel=not a.per_tensor, per_row=a.per_row,
                     fold_bn=a.fold_bn, equalize=a.equalize, bias_correction=a.bias_correction,
                     adaround=a.adaround, adaround_iters=a.adaround_iters,
                     keep_first=a.keep_first, keep_last=a.keep_last, keep_bits=a.keep_bits,
                     rules=rules)


def _cmd_ptq(a) -> int:
    from lowbit.ptq.run import run_ptq
    from lowbit.report.console import progress_wanted

    if a.sensitivity:
        from lowbit.ptq.sensitivity import run_sensitivity, short_table

        r = run_sensitivity(a.model_file, a.out, _ptq_config(a), a.dataset, a.data_dir,
                            a.calib, a.batch_size, a.seed, a.sens_bits, a.sens_eval,
                            a.size_kb, a.overwrite)
        print(short_table(r) + f"\n-> {a.out}/sensitivity.json")
        return 0
    if a.size_kb is not None:
        raise LowbitError("--size-kb goes with --sensitivity")
    s = run_ptq(a.model_file, a.out, _ptq_config(a), a.dataset, a.data_dir, a.calib,
                a.batch_size, a.seed, a.overwrite, progress_wanted(not a.no_progress))
    print(f"test accuracy {100 * s['test_accuracy']:.2f} % (float "
          f"{100 * s['float_test_accuracy']:.2f} %)  packed {s['packed_bytes']:,} B of "
          f"{s['float_bytes']:,} B float ({s['size_ratio']:.3f} x)  PTQ "
          f"{s['ptq_seconds']:.1f} s  -> {a.out}/model.pt")
    return 0


def _cmd_eval(a) -> int:
    if a.model_file.endswith((".lowbit", ".onnx")):
        from lowbit.deploy import evaluate_exported

        r = evaluate_exported(a.model_file, a.dataset, a.data_dir)
        if a.json:
            print(json.dumps(r))
        else:
            print(f"{r['dataset']} test accuracy {100 * r['test_accuracy']:.2f} % through "
                  f"{r['engine']} ({r['file_bytes']:,} B)")
        return 0
    from lowbit.experiment import evaluate_file

    r = evaluate_file(a.model_file, a.dataset, a.data_dir)
    if a.json:
        print(json.dumps(r))
    else:
        print(f"{r['dataset']} test accuracy {100 * r['test_accuracy']:.2f} %  "
              f"loss {r['test_loss']:.4f}")
    return 0


def _cmd_export(a) -> int:
    from lowbit.deploy import export_file

    r = export_file(a.model_file, a.out, onnx=a.onnx)
    if a.json:
        print(json.dumps({k: v for k, v in r.items() if k != "summary"}))
    else:
        print(f"{r['format']}: {r['bytes']:,} B -> {r['file']}")
    return 0


def _cmd_inspect(a) -> int:
    from lowbit.runtime.inspect import summary, table

    s = summary(a.file)
    print(json.dumps(s, indent=1) if a.json else table(s))
    return 0


def _cmd_methods(a) -> int:
    from lowbit.quantizers import METHODS

    if a.json:
        print(json.dumps([_method_record(m) for _, m in sorted(METHODS.items())], indent=2))
        return 0
    width = max(map(len, METHODS))
    for name, m in sorted(METHODS.items()):
        roles = "/".join(r for r, c in (("weights", m.weight), ("activations", m.act)) if c)
        print(f"{name:<{width}}  [{roles}] {m.description}")
    return 0


def _method_record(m) -> dict:
    """A registered method as JSON: name, description, roles and accepted bit widths."""
    from lowbit.quantizers.options import signature_options

    def opts(cls):
        return {name: {"type": kind.__name__, "default": getattr(d, "name", d)}
                for name, (kind, d) in signature_options(cls).items()} if cls else None

    return {"name": m.name, "description": m.description,
            "weight_bits": list(m.weight.BITS) if m.weight else None,
            "activation_bits": list(m.act.BITS) if m.act else None,
            "weight_options": opts(m.weight), "activation_options": opts(m.act),
            "gradient": m.grad is not None}


def _cmd_demo(a) -> int:
    from lowbit.demo import COLUMNS, run_demo
    from lowbit.report.table import markdown_table

    rows = run_demo(a.out, epochs=a.epochs, recipe=_recipe(a), overwrite=a.overwrite)
    print(markdown_table(rows, COLUMNS))
    print(f"plot: {a.out}/demo.png  results: {a.out}/results.json")
    return 0


def _cmd_data(a) -> int:
    from lowbit.data.download import download

    path = download(a.name, cache_dir=a.cache_dir, base_url=a.base_url)
    print(f"{a.name}: verified files in {path}")
    return 0


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None


def _bench_parser(sub) -> None:
    p = sub.add_parser(
        "bench", help="time a .lowbit file in torch, ONNX Runtime and lowbit's runtimes",
        description="Time one exported network, interleaved in one run at one thread count, "
        "in torch fp32, torch dynamic int8, ONNX Runtime fp32 and int8 (static QDQ), lowbit's "
        "reference and fast runtimes: file size, batch-1 latency, throughput at the other "
        "batches, argmax agreement with the reference. --kernels times the fast runtime's "
        "GEMM kernels against torch's fp32 matmul; --cold-start measures import + load + first "
        "prediction in fresh processes without torch.", epilog=_EPILOG)
    p.add_argument("file", nargs="?", help="a .lowbit file (not needed with --kernels)")
    p.add_argument("--kernels", action="store_true", help="time the raw kernels instead")
    p.add_argument("--cold-start", action="store_true",
                   help="cold start of the runtime on FILE (numpy, fast compile, fast cached)")
    p.add_argument("--batches", type=_ints, default=[1, 64, 1024],
                   help="batch sizes (default: 1,64,1024)")
    p.add_argument("--repeat", type=int, default=5,
                   help="interleaved rounds; with --cold-start processes per setting (default: 5)")
    p.add_argument("--threads", type=int, default=1,
                   help="threads of torch, numba and ONNX Runtime (default: 1)")
    p.add_argument("--sizes", help="--kernels: GEMM shapes, S (M=N=K) or MxNxK, comma-"
                   "separated (default: 1024,2048,4096,1x4096x4096,64x4096x4096)")
    p.add_argument("--quick", action="store_true", help="--kernels: small shapes (tests)")
    p.add_argument("--input-shape", type=_ints,
                   help="the input without the batch, e.g. 1,28,28 (default: from the file)")
    p.add_argument("--data-dir", help="directory of the dataset's files (see below)")
    p.add_argument("--json", action="store_true", help="print the JSON record instead")
    p.add_argument("-o", "--out", help="also write DIR/bench.{json,md,png} (kernels.*, "
                   "cold_start.*)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _cmd_bench(a) -> int:
    from lowbit.bench import report
    from lowbit.report.console import progress_wanted

    progress = progress_wanted(not a.no_progress)
    if a.repeat < 1 or a.threads < 1 or not a.batches or min(a.batches) < 1:
        raise LowbitError("--repeat, --threads and every batch must be >= 1")
    if a.kernels:
        from lowbit.bench.kernels import bench_kernels

        r = bench_kernels(a.sizes, a.quick, a.repeat, a.threads, progress=progress)
        name, table, with_plot = "kernels", report.kernel_table(r), False
    elif not a.file:
        raise LowbitError("give a .lowbit file (or --kernels)")
    elif a.cold_start:
        from lowbit.bench.coldstart import cold_start

        r = cold_start(a.file, a.input_shape, runs=a.repeat)
        name, table, with_plot = "cold_start", report.cold_table(r), False
    else:
        from lowbit.bench.net import bench_file

        r = bench_file(a.file, a.batches, a.repeat, a.threads, a.data_dir, a.input_shape,
                       progress=progress)
        name, table, with_plot = "bench", report.net_table(r), True
    print(json.dumps(r, indent=1) if a.json else table)
    if a.out:
        report.write(r, a.out, name, table, with_plot)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from lowbit import __version__

    parser = argparse.ArgumentParser(prog="lowbit", description=__doc__, epilog=_EPILOG)
    parser.add_argument("--version", action="version", version=f"lowbit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _ptq_parser(sub)
    p = sub.add_parser("eval", help="test accuracy of a saved model.pt", epilog=_EPILOG)
    p.add_argument("model_file", help="a model.pt written by 'lowbit train', or a .lowbit "
                   "(run by lowbit's runtime) or .onnx file (run by ONNX Runtime)")
    p.add_argument("--dataset", help="test split to evaluate on (default: the dataset the "
                   "model was trained on, as model.pt / .lowbit record)")
    p.add_argument("--data-dir", help="directory of the dataset's files (see below)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p = sub.add_parser("export", help="write a model.pt as a packed .lowbit file (or ONNX)")
    p.add_argument("model_file", help="a model.pt written by 'lowbit train' or 'lowbit ptq'")
    p.add_argument("-o", "--out", required=True, help="the file to write (.lowbit or .onnx)")
    p.add_argument("--onnx", action="store_true", help="write ONNX (QDQ) instead")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p = sub.add_parser("inspect", help="per layer: bits, codebook, bytes, runtime path")
    p.add_argument("file", help="a .lowbit file")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    _bench_parser(sub)
    p = sub.add_parser("methods", help="list the registered quantization methods")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list (name, description, accepted bit widths)")
    p = sub.add_parser("demo", help="float vs Q_b/A_b at 8/4/2/1 bits on the bundled digits",
                       description="LeNet300 on the bundled 8x8 digits in float and with "
                       "Ivan's Q_b/A_b at 8, 4, 2 and 1 bits, with the same recipe flags as "
                       "'lowbit train'; writes a table and a plot.")
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--epochs", type=int, default=40, help="epochs per setting (default: 40)")
    _recipe_flags(p)
    p.add_argument("--overwrite", action="store_true",
                   help="train every setting again (default: finished settings are reused)")
    p = sub.add_parser("data", help="dataset utilities")
    dsub = p.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser("download", help="download and verify a dataset into the cache")
    p.add_argument("name", choices=("mnist", "cifar10"), help="the dataset")
    p.add_argument("--cache-dir", help="default: $LOWBIT_DATA or ~/.cache/lowbit/data")
    p.add_argument("--base-url", help="mirror to fetch from instead of the canonical URL")
    return parser


COMMANDS = {"train": _cmd_train, "ptq": _cmd_ptq, "eval": _cmd_eval, "export": _cmd_export,
            "inspect": _cmd_inspect, "bench": _cmd_bench, "methods": _cmd_methods,
            "demo": _cmd_demo, "data": _cmd_data}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lowbit.report.console import configure_logging

    configure_logging()
    try:
        return COMMANDS[args.command](args)
    except (LowbitError, ValueError, OSError) as exc:
        print(f"lowbit {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
