"""The ``lowbit`` command line. Each subcommand parses its flags and calls one library function."""

from __future__ import annotations

import argparse
import json
import sys

from lowbit.errors import LowbitError

_EPILOG = "Data directory: --data-dir, else $LOWBIT_DATA/<dataset>, else ../shared/data/<dataset>."


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a (quantized) model; writes model.pt, summary.json")
    p.add_argument("--model", required=True, help="lenet300, lenet5, resnet20, resnet18")
    p.add_argument("--dataset", required=True, help="mnist, cifar10, digits")
    p.add_argument("--method", default="ivan", help="quantization method for weights and acts")
    p.add_argument("--w-method", help="weight method (default: --method)")
    p.add_argument("--a-method", help="activation method (default: --method)")
    p.add_argument("--w-bits", type=int, default=32, help="weight bits, 1..32 (32 = float)")
    p.add_argument("--a-bits", type=int, default=32, help="activation bits, 1..32 (32 = float)")
    p.add_argument("--g-bits", type=int, default=32, help="gradient bits (DoReFa), 32 = float")
    p.add_argument("--g-method", default="dorefa", help="gradient quantization method")
    p.add_argument("--init", help="start from this float model.pt (fine-tuning, INQ, qnet)")
    p.add_argument("--grad-clip", type=float, help="clip the gradient L2 norm (qnet: 5)")
    p.add_argument("--temperature-factor", type=float, default=5.0,
                   help="qnet: T = epoch x factor (yang2019 sec. 4.1)")
    p.add_argument("--temperature-per-step", action="store_true",
                   help="qnet: ramp T linearly within each epoch (for budgets of few epochs)")
    p.add_argument("--keep-first", action=argparse.BooleanOptionalAction, default=True,
                   help="keep the first weight layer in float (default: yes)")
    p.add_argument("--keep-last", action=argparse.BooleanOptionalAction, default=True,
                   help="keep the last weight layer in float (default: yes)")
    for flag, typ in (("--epochs", int), ("--batch-size", int), ("--lr", float),
                      ("--weight-decay", float), ("--seed", int)):
        p.add_argument(flag, type=typ, help="default: the model's (lowbit.experiment)")
    p.add_argument("--optimizer", choices=("adam", "sgd"))
    p.add_argument("--schedule", choices=("cosine", "step", "none"))
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--augment", choices=("none", "crop-flip"),
                   help="training augmentation (default: crop-flip for cifar10, else none)")
    p.add_argument("--precision", choices=("fp32", "bf16"),
                   help="bf16: train under bf16 autocast (fast on AMX CPUs; eval stays fp32)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="train in channels-last (NHWC) memory format")
    p.add_argument("--data-dir")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    p.add_argument("--no-progress", action="store_true")


def _cmd_train(a) -> int:
    from lowbit.experiment import Job, default_config, run
    from lowbit.recipe import Recipe

    recipe = Recipe(weight=a.w_method or a.method, w_bits=a.w_bits, act=a.a_method or a.method,
                    a_bits=a.a_bits, keep_first=a.keep_first, keep_last=a.keep_last,
                    grad=a.g_method, g_bits=a.g_bits)
    config = default_config(a.model, dataset=a.dataset, epochs=a.epochs,
                            batch_size=a.batch_size, lr=a.lr,
                            weight_decay=a.weight_decay, seed=a.seed, optimizer=a.optimizer,
                            schedule=a.schedule, num_threads=a.threads, grad_clip=a.grad_clip,
                            augment=a.augment, precision=a.precision,
                            channels_last=a.channels_last)
    job = Job(a.model, a.dataset, recipe, config, a.data_dir, a.init, a.temperature_factor,
              a.temperature_per_step)
    s = run(job, a.out, resume=a.resume, progress=not a.no_progress)
    print(f"test accuracy {s['test_accuracy']:.4f}  loss {s['test_loss']:.4f}  "
          f"packed {s['packed_bytes']:,} B of {s['float_bytes']:,} B float  "
          f"{s['wall_seconds']:.1f} s  -> {a.out}/model.pt")
    return 0


def _cmd_eval(a) -> int:
    from lowbit.experiment import evaluate_file

    r = evaluate_file(a.model_file, a.dataset, a.data_dir)
    if a.json:
        print(json.dumps(r))
    else:
        print(f"test accuracy {r['test_accuracy']:.4f}  loss {r['test_loss']:.4f}")
    return 0


def _cmd_methods(a) -> int:
    from lowbit.quantizers import METHODS

    width = max(map(len, METHODS))
    for name, m in sorted(METHODS.items()):
        roles = "/".join(r for r, c in (("weights", m.weight), ("activations", m.act)) if c)
        print(f"{name:<{width}}  [{roles}] {m.description}")
    return 0


def _cmd_demo(a) -> int:
    from lowbit.demo import COLUMNS, run_demo
    from lowbit.report.table import markdown_table

    rows = run_demo(a.out, epochs=a.epochs)
    print(markdown_table(rows, COLUMNS))
    print(f"plot: {a.out}/demo.png  results: {a.out}/results.json")
    return 0


def _cmd_data(a) -> int:
    from lowbit.data.download import download

    path = download(a.name, cache_dir=a.cache_dir, base_url=a.base_url)
    print(f"{a.name}: verified files in {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lowbit", description=__doc__, epilog=_EPILOG)
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    p = sub.add_parser("eval", help="test accuracy of a saved model.pt")
    p.add_argument("model_file")
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-dir")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    sub.add_parser("methods", help="list the registered quantization methods")
    p = sub.add_parser("demo", help="float vs Q_b/A_b at 8/4/2/1 bits on the bundled digits")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=int, default=40)
    p = sub.add_parser("data", help="dataset utilities")
    dsub = p.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser("download", help="download and verify a dataset into the cache")
    p.add_argument("name", choices=("mnist", "cifar10"))
    p.add_argument("--cache-dir", help="default: $LOWBIT_DATA or ~/.cache/lowbit/data")
    p.add_argument("--base-url", help="mirror to fetch from instead of the canonical URL")
    return parser


COMMANDS = {"train": _cmd_train, "eval": _cmd_eval, "methods": _cmd_methods,
            "demo": _cmd_demo, "data": _cmd_data}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (LowbitError, ValueError, OSError) as exc:
        print(f"lowbit {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
