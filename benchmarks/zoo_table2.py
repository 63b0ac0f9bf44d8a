"""The shape of yang2019's Table 2 at the scale this machine allows: every registered method
fine-tuned from one float model at W/A = 1/32, 2/32, 3/32, 4/32, 1/1, 1/2, 2/2, 4/4 (wherever the
method applies), test accuracy, drop from float, and the training-step cost relative to float.

Model/dataset: ResNet-20 on CIFAR-10 when ``load_dataset("cifar10")`` works, else LeNet-5 on
MNIST (the fallback is printed and written in the results); ``--model/--dataset`` override.

1. A float model is trained once (``--float-epochs``, default 30 for resnet20) into
   ``WORK/float`` (an interrupted run resumes), or taken from ``--float-model DIR``.
2. Every cell fine-tunes from it (``Job.init``) with the same budget of ``--epochs`` epochs
   (default 3), the dataset's default augmentation (CIFAR-10: pad-4 crop + flip) and the fast
   path of ``benchmarks/fast_path.py`` (``--precision bf16 --channels-last`` by default;
   evaluation is fp32). Procedures with stages split the budget: qnet's three phases (sec. 4.1;
   one phase when activations stay float) and INQ's three retraining steps get
   ``max(1, epochs // 3)`` epochs each; the table shows the epochs actually run. qnet's T ramps
   per step by default (``--temperature-per-step``), so a 1-epoch cell is not trained at one
   constant T. Fine-tuning lr: the model's default lr / 10 unless ``--lr``.
   First and last layers stay in float (keep_first/keep_last with keep_bits=32, as when the
   committed results were made; lowbit's default since is 8-bit kept layers).
   Activation-only methods are paired with a weight method and only get settings with quantized
   activations: pact with dorefa weights (Choi et al. 2018), hwgq with xnor weights (Cai et al.
   2017). Weight-only methods get the x/32 settings only. qnet at 3 bits is the paper's 3(+-4).
3. Step ratio: one training step (forward, backward, SGD) of the cell's quantized model over the
   float model on 128 real training images, both in the cells' precision and memory format,
   interleaved rounds in one process, median ratio.

4. Seeds: ``--seeds S [S ...]`` runs every cell once per seed (the fine-tune's TrainConfig.seed:
   shuffle, augmentation, stochastic quantizers), labelled ``<label>_s<S>``; without it a cell
   runs once at seed 0 with the plain label (the committed cells). results.md shows each
   setting's mean, and [min, max] and n when it has several seeds.
5. Schedule: lowbit.train steps the lr schedule per batch (cosine over the cell's steps); each
   cell's JSON records the schedule that ran (``schedule``); cells from before per-batch
   stepping carry none and are reported as stepped per epoch (a flat lr in a 1-epoch cell).
6. PACT cells fine-tune, so PACTAct gets ``alpha_from="mse"`` (alpha from the first batch's
   pre-activation, lowbit.quantizers.learned) unless ``--pact-alpha-init``: the paper's 10.

Provenance: every cell's JSON holds the exact command line (``command``), the git commit and
whether the tree was dirty (``git_commit``, ``git_dirty``, ``git_dirty_files``), the seed, the
schedule and the lowbit/torch versions (``versions``); older JSONs without them still load.

Resumable: each finished cell is ``OUT/cells/<label>.json`` and is skipped on a rerun; an
interrupted cell resumes from its epoch checkpoint in ``WORK/cells/<label>``.
Cost (resnet20, 67 cells, bf16 + channels-last, 1 thread per job): about 2 min per cell-epoch.

    .venv/bin/python benchmarks/zoo_table2.py --jobs 2 --epochs 1 \
        --float-model benchmarks/results/zoo_table2/float_aug
    .venv/bin/python benchmarks/zoo_table2.py --model lenet5 --dataset digits --float-epochs 1 \
        --epochs 1 --methods ivan twn qnet --out /tmp/zt2 --work /tmp/zt2w   # smoke test
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETTINGS = ((1, 32), (2, 32), (3, 32), (4, 32), (1, 1), (1, 2), (2, 2), (4, 4))
PAIRED_WEIGHT = {"pact": "dorefa", "hwgq": "xnor"}  # activation-only method -> weight method
STAGED = {"qnet": 3, "inq": 3}  # qnet's phases, INQ's retraining steps (portions .5 .75 .875)
# qnet without quantized activations runs its weight phase only (lowbit.train.qnet.fit_qnet)
STE_BASED = ("dorefa", "ivan", "xnor", "bnn", "binaryconnect", "twn", "ttq", "abc", "lsq",
             "uniform", "pow2", "stochastic", "wu", "dorefa+pact", "xnor+hwgq")
MAX_STEP_RATIO = 1.5


# ---------------------------------------------------------------- which cells (pure helpers)

def setting_name(w: int, a: int, method: str = "") -> str:
    return f"3(±4)/{a}" if method == "qnet" and w == 3 else f"{w}/{a}"


def applies(method, w: int, a: int) -> bool:
    """Can registry Method ``method`` (paired as the module doc says) run at W/A = w/a?"""
    from lowbit.errors import LowbitError
    from lowbit.quantizers.registry import validate

    weight = method.name if method.weight is not None else PAIRED_WEIGHT.get(method.name)
    if weight is None or (method.act is None and a != 32) or (method.weight is None and a == 32):
        return False
    try:
        validate(weight, "weight", w)
        validate(method.name, "activation", a)
    except LowbitError:
        return False
    return True


def cell_specs(names: list[str], settings=SETTINGS, seeds: list[int] | None = None
               ) -> list[dict]:
    """One dict per (method, setting) that applies, and per seed of ``seeds`` (label suffix
    ``_s<seed>``; None: one cell at seed 0, plain label): label, method label, weight/act, bits
    and seed."""
    from lowbit.quantizers.registry import get_method

    specs = []
    for name in names:
        m = get_method(name)
        weight = name if m.weight is not None else PAIRED_WEIGHT[name]
        label = name if weight == name else f"{weight}+{name}"
        for w, a in settings:
            if not applies(m, w, a):
                continue
            for seed in (seeds if seeds is not None else [None]):
                suffix = "" if seed is None else f"_s{seed}"
                specs.append({"label": f"{label}_w{w}a{a}{suffix}", "method": label,
                              "weight": weight, "w_bits": w, "act": name, "a_bits": a,
                              "seed": 0 if seed is None else seed})
    return specs


def stage_epochs(spec: dict, epochs: int) -> int:
    """Epochs per fit() so staged procedures (qnet, INQ) spend about ``epochs`` in total."""
    stages = 1 if spec["weight"] == "qnet" and spec["a_bits"] == 32 else STAGED.get(
        spec["weight"], 1)
    return max(1, epochs // stages)


# ---------------------------------------------------------------- training

def pick_task(model: str | None, dataset: str | None) -> tuple[str, str, str]:
    """(model, dataset, note): ResNet-20/CIFAR-10 if CIFAR-10 loads, else LeNet-5/MNIST."""
    from lowbit.data import load_dataset

    if model and dataset:
        return model, dataset, "chosen with --model/--dataset"
    try:
        load_dataset("cifar10", "train")
        return model or "resnet20", dataset or "cifar10", "CIFAR-10 available"
    except Exception as exc:  # DataError, OSError: any reason the data is not there
        note = f"CIFAR-10 not loadable ({type(exc).__name__}: {exc}); fell back to LeNet-5/MNIST"
        print(note)
        return model or "lenet5", dataset or "mnist", note


def finetune_config(task: dict, epochs: int, seed: int = 0):
    """The model's default config for the dataset (CIFAR: crop-flip augmentation), lr / 10 unless
    ``task["lr"]``, in the task's precision and memory format (the fast path, fast_path.py)."""
    from lowbit.experiment import default_config

    lr = task["lr"] if task["lr"] is not None else default_config(task["model"]).lr / 10
    return default_config(task["model"], task["dataset"], epochs=epochs,
                          num_threads=task["threads"], lr=lr, precision=task["precision"],
                          channels_last=task["channels_last"], seed=seed)


def cell_recipe(spec: dict, pact_alpha_init: bool = False):
    """The cell's Recipe: first/last layers float; PACT fine-tunes with alpha from the observed
    activations (``alpha_from="mse"``) unless ``pact_alpha_init`` (the paper's 10)."""
    from lowbit.recipe import Recipe

    act_options = {"alpha_from": "mse"} if spec["act"] == "pact" and not pact_alpha_init else {}
    return Recipe(spec["weight"], spec["w_bits"], spec["act"], spec["a_bits"],
                  keep_first=True, keep_last=True, keep_bits=32, act_options=act_options,
                  weight_options=spec.get("weight_options", {}))


#: ``--ttq-region-mean``: TTQ cells with lowbit's former defaults (scales initialised at the
#: region means, mean scale gradient), labelled apart, to compare with the paper's
TTQ_REGION_MEAN = {"init": "mean", "scale_grad": "mean"}


def _relabel(specs: list[dict], which, old: str, new: str, **extra) -> list[dict]:
    """``specs`` with the ones ``which`` selects relabelled: ``old`` -> ``new`` in the label,
    and in the method name without the "+" / "_" delimiters; plus ``extra`` fields."""
    name_old, name_new = old.strip("+_"), new.strip("+_")
    return [s | {"label": s["label"].replace(old, new, 1),
                 "method": s["method"].replace(name_old, name_new, 1), **extra}
            if which(s) else s for s in specs]


def ttq_region_mean(specs: list[dict]) -> list[dict]:
    """The TTQ cells of ``specs`` as ``ttq-mean`` cells (:data:`TTQ_REGION_MEAN`)."""
    return _relabel(specs, lambda s: s["weight"] == "ttq", "ttq_", "ttq-mean_",
                    weight_options=dict(TTQ_REGION_MEAN))


def pact_init_labels(specs: list[dict]) -> list[dict]:
    """The PACT cells of ``specs`` labelled ``dorefa+pact10`` (alpha starting at the paper's
    10, ``--pact-alpha-init``), so they sit beside the default alpha_from="mse" cells."""
    return _relabel(specs, lambda s: s["act"] == "pact", "+pact_", "+pact10_")


def qnet_linear_labels(specs: list[dict]) -> list[dict]:
    """The qnet cells with quantized activations labelled ``qnet-linear``
    (``--qnet-act-init linear``: evenly spaced activation steps)."""
    return _relabel(specs, lambda s: s["weight"] == "qnet" and s["a_bits"] != 32, "qnet_",
                    "qnet-linear_")


def schedule_of(summary: dict, config, train_size: int, stages: int) -> dict:
    """The lr schedule a cell ran: fit()'s own record, or (INQ / qnet, whose summaries do not
    carry it) the same record rebuilt from the config, per stage (each stage restarts it)."""
    import math

    from lowbit.train.optim import schedule_record

    rec = summary.get("schedule") or schedule_record(
        config, math.ceil(train_size / config.batch_size))
    return rec | {"stages": stages}


def cell_provenance(task: dict, seed: int) -> dict:
    """What made a cell: command line, commit and dirty state, seed, lowbit/torch versions."""
    import torch

    import lowbit

    return {"command": task["command"], "git_commit": task["commit"],
            "git_dirty": task.get("dirty"), "git_dirty_files": task.get("dirty_files"),
            "seed": seed, "versions": {"lowbit": lowbit.__version__, "torch": torch.__version__}}


def train_float(model: str, dataset: str, epochs: int, work: Path,
                saved: Path | None = None) -> dict:
    """Train the float model into WORK/float (resumable), or copy a saved one (``saved``: a
    directory holding the model.pt and summary.json of an earlier float run) there."""
    from lowbit.experiment import Job, default_config, run
    from lowbit.recipe import Recipe

    if saved is not None:
        (work / "float").mkdir(parents=True, exist_ok=True)
        for name in ("model.pt", "summary.json"):
            shutil.copyfile(saved / name, work / "float" / name)
        return json.loads((saved / "summary.json").read_text())
    job = Job(model, dataset, Recipe(), default_config(model, dataset, epochs=epochs))
    return run(job, work / "float", resume=True, progress=True)


def step_ratio(init: Path, dataset: str, recipe, config, rounds: int = 5,
               batch: int = 128) -> dict:
    """Median over interleaved rounds of (quantized step time / float step time), both in the
    precision and memory format the cells train with (``config``)."""
    import lowbit
    from lowbit.data import load_dataset
    from lowbit.experiment import load_model
    from lowbit.report.timing import interleaved, seconds_per_call, train_step

    data = load_dataset(dataset, "train")
    x, y = data.images[:batch].float() / 255, data.labels[:batch]
    net, _ = load_model(init)
    q = lowbit.quantize(copy.deepcopy(net), recipe)
    fast = config.precision, config.channels_last
    f_step, q_step = train_step(net, x, y, *fast), train_step(q, x, y, *fast)
    steps = max(1, int(0.5 / seconds_per_call(f_step, 1)))  # ~0.5 s of float steps per round
    r = interleaved(f_step, q_step, rounds, steps)
    return {"step_ratio": r["ratio"], "step_ratio_min": r["ratio_min"],
            "step_ratio_max": r["ratio_max"], "float_step_ms": 1e3 * r["base_s"],
            "timing_steps": steps, "timing_rounds": rounds}


def write_atomic(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def run_cell(spec: dict, task: dict, work: Path, cells: Path) -> dict:
    import torch

    if task["threads"]:
        torch.set_num_threads(task["threads"])
    from lowbit.data import load_dataset
    from lowbit.experiment import Job, run

    seed = spec.get("seed", 0)
    recipe = cell_recipe(spec, task.get("pact_alpha_init", False))
    epochs = stage_epochs(spec, task["epochs"])
    config = finetune_config(task, epochs, seed)
    init = work / "float" / "model.pt"
    job = Job(task["model"], task["dataset"], recipe, config, init=str(init),
              temperature_factor=task["temperature_factor"],
              temperature_per_step=task["temperature_per_step"],
              final_temperature=task.get("final_temperature") or None,
              qnet_bn_batches=task.get("qnet_bn_batches", 0),
              qnet_act_init=task.get("qnet_act_init", "kmeans"))
    s = run(job, work / "cells" / spec["label"], resume=True, progress=False)
    cell = spec | {k: s[k] for k in ("test_accuracy", "test_loss", "epochs", "wall_seconds",
                                     "float_bytes", "packed_bytes") if k in s}
    cell |= {"model": task["model"], "dataset": task["dataset"], "lr": config.lr,
             "epochs_per_stage": config.epochs, "precision": config.precision,
             "channels_last": config.channels_last, "augment": config.augment}
    train_size = len(load_dataset(task["dataset"], "train").labels)
    stages = max(1, round(s.get("epochs", epochs) / epochs))
    cell["schedule"] = schedule_of(s, config, train_size, stages)
    cell |= step_ratio(init, task["dataset"], recipe, config)
    cell |= {"trained_by": task["command"], "trained_at_commit": task["commit"],
             **{k: task.get(k) for k in ("cpu", "cpu_kind", "cpu_isa")}}
    cell |= cell_provenance(task, seed)
    if spec["weight"] == "qnet":  # the temperature schedule and BN re-estimation that ran
        cell["qnet"] = {"final_temperature": task.get("final_temperature") or None,
                        "act_init": task.get("qnet_act_init", "kmeans"),
                        "temperature_factor": task["temperature_factor"],
                        "bn_batches": task.get("qnet_bn_batches", 0), **s.get("qnet", {})}
    if spec["act"] == "pact":
        cell["pact_alpha_from"] = "init" if task.get("pact_alpha_init") else "mse"
    write_atomic(cell, cells / f"{spec['label']}.json")
    return cell


def remeasure_steps(cells_dir: Path, init: Path, dataset: str, methods: list[str]) -> None:
    """Re-time the step ratio of every finished cell of ``methods`` (names as in --methods;
    a paired cell such as dorefa+pact counts under its activation method) with the code as it
    is now."""
    from types import SimpleNamespace

    for path in sorted(cells_dir.glob("*.json")):
        cell = json.loads(path.read_text())
        if cell["act"] not in methods:
            continue
        recipe = cell_recipe(cell, cell.get("pact_alpha_from", "init") == "init")
        config = SimpleNamespace(precision=cell.get("precision", "fp32"),
                                 channels_last=cell.get("channels_last", False))
        from lowbit.report.provenance import command

        cell |= step_ratio(init, dataset, recipe, config) | {"step_commit": git_commit(),
                                                             "step_command": command()}
        write_atomic(cell, path)
        print(f"{cell['label']}: step x{cell['step_ratio']:.2f}", flush=True)


def run_cells(todo: list[dict], task: dict, work: Path, cells: Path, jobs: int) -> None:
    if jobs <= 1:
        for i, spec in enumerate(todo, 1):
            c = run_cell(spec, task, work, cells)
            print(f"[{i}/{len(todo)}] {c['label']}: {100 * c['test_accuracy']:.2f} %, "
                  f"step x{c['step_ratio']:.2f}", flush=True)
        return
    with ProcessPoolExecutor(jobs) as pool:
        futures = {pool.submit(run_cell, s, task, work, cells): s for s in todo}
        for i, f in enumerate(as_completed(futures), 1):
            try:
                c = f.result()
            except Exception as exc:  # one failed cell must not hide the others' progress
                print(f"[{i}/{len(todo)}] {futures[f]['label']}: FAILED "
                      f"({type(exc).__name__}: {exc}); rerun to retry", flush=True)
                continue
            print(f"[{i}/{len(todo)}] {c['label']}: {100 * c['test_accuracy']:.2f} %, "
                  f"step x{c['step_ratio']:.2f}", flush=True)


# ---------------------------------------------------------------- report (pure helpers)

def add_drops(cells: list[dict], float_acc: float) -> list[dict]:
    rows = [c | {"drop_points": 100 * (float_acc - c["test_accuracy"])} for c in cells]
    order = {s: i for i, s in enumerate(SETTINGS)}
    return sorted(rows, key=lambda r: (r["method"], order[(r["w_bits"], r["a_bits"])]))


def _acc(rows: list[dict], method: str, w: int, a: int) -> float | None:
    """Mean test accuracy of the (method, w/a) cells (one per seed), None without any."""
    hits = _accs(rows, method, w, a)
    return sum(hits) / len(hits) if hits else None


def seed_stats(values: list[float]) -> dict:
    """mean, min, max and n of one setting's per-seed accuracies."""
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values),
            "n": len(values)}


def _mean_range(values: list[float]) -> str:
    """'mean' for one seed, 'mean [min, max] n=k' for several (percent)."""
    st = seed_stats(values)
    if st["n"] == 1:
        return f"{100 * st['mean']:.2f}"
    return f"{100 * st['mean']:.2f} [{100 * st['min']:.2f}, {100 * st['max']:.2f}] n={st['n']}"


def _matrix_cell(rows: list[dict], float_acc: float) -> str:
    """:func:`_mean_range` of the rows' accuracies and the mean's change from float."""
    values = [r["test_accuracy"] for r in rows]
    change = 100 * (sum(values) / len(values) - float_acc)
    return f"{_mean_range(values)} ({change:+.2f})"


def target_qnet_3bit(rows: list[dict], float_acc: float) -> dict:
    acc = _acc(rows, "qnet", 3, 32)
    if acc is None:
        return {"status": "not measured", "detail": "no qnet 3(±4)/32 cell"}
    gap = 100 * (float_acc - acc)
    seeds = _accs(rows, "qnet", 3, 32)
    spread = (f" (seeds: {', '.join(f'{100 * (float_acc - v):.2f}' for v in seeds)})"
              if len(seeds) > 1 else "")
    return {"status": "met" if gap <= 1.0 else "MISSED", "gap_points": gap,
            "detail": f"qnet {100 * acc:.2f} % vs float {100 * float_acc:.2f} %: drop "
                      f"{gap:.2f} points{spread} (target <= 1, on the mean)"}


def _accs(rows: list[dict], method: str, w: int, a: int) -> list[float]:
    """The test accuracies of the (method, w/a) cells, one per seed."""
    return [r["test_accuracy"] for r in rows
            if (r["method"], r["w_bits"], r["a_bits"]) == (method, w, a)]


def target_qnet_vs_ste(rows: list[dict], w: int) -> dict:
    """QN against every STE method at w/32, over seeds: a method is "better" than another
    only when all its seeds are (min above the other's max; single-seed noise is about +-0.5
    points, issue 12 item 8). MISSED: an STE method beats QN so; met: QN beats every one of
    at least 3 STE methods so; else undecided (means and ranges given)."""
    q = _accs(rows, "qnet", w, 32)
    others = {m: v for m in STE_BASED if (v := _accs(rows, m, w, 32))}
    if not q or not others:
        return {"status": "not measured", "detail": f"need qnet and an STE method at {w}/32"}

    better = sorted(m for m, v in others.items() if min(v) > max(q))
    worse = sorted(m for m, v in others.items() if max(v) < min(q))
    ties = sorted(set(others) - set(better) - set(worse))
    status = ("MISSED" if better else "met" if not ties and len(others) >= 3
              else "undecided")
    parts = ", ".join(f"{m} {_mean_range(v)}" for m, v in sorted(others.items()))
    detail = f"qnet {_mean_range(q)} % vs {parts}"
    if better:
        detail += f"; better than qnet at every seed: {', '.join(better)}"
    if ties:
        detail += f"; within the seeds' spread of qnet: {', '.join(ties)}"
    if status == "undecided" and not ties:
        detail += "; fewer than 3 STE methods in this run"
    return {"status": status, "qnet": sum(q) / len(q),
            "others": {m: sum(v) / len(v) for m, v in others.items()},
            "better_than_qnet": better, "ties": ties, "detail": detail}


def target_step_cost(rows: list[dict]) -> dict:
    timed_rows = [r for r in rows if r.get("step_ratio") is not None]
    if not timed_rows:
        return {"status": "not measured", "detail": "no timed cells"}
    slow = [r for r in timed_rows if r["step_ratio"] > MAX_STEP_RATIO]
    worst = max(timed_rows, key=lambda r: r["step_ratio"])
    detail = f"worst {worst['label']} x{worst['step_ratio']:.2f}"
    if slow:
        detail += "; over 1.5x: " + ", ".join(f"{r['label']} x{r['step_ratio']:.2f}"
                                              for r in slow)
    return {"status": "MISSED" if slow else "met", "worst": worst["step_ratio"],
            "slow": [r["label"] for r in slow], "detail": detail}


def check_targets(rows: list[dict], float_acc: float) -> dict[str, dict]:
    return {"Quantization Networks at 3(±4)/32 within 1 point of float":
            target_qnet_3bit(rows, float_acc),
            "QN better than every STE-based method at 1/32": target_qnet_vs_ste(rows, 1),
            "QN better than every STE-based method at 2/32": target_qnet_vs_ste(rows, 2),
            "no method's training step slower than 1.5x float": target_step_cost(rows)}


def matrix_lines(rows: list[dict], float_acc: float) -> list[str]:
    """Table 2's shape: methods x settings, 'accuracy (change)', over seeds: mean [min, max] n."""
    lines = ["| method | " + " | ".join(f"{w}/{a}" for w, a in SETTINGS) + " |",
             "|---|" + "---:|" * len(SETTINGS)]
    for method in sorted({r["method"] for r in rows}):
        by: dict[tuple[int, int], list[dict]] = {}
        for r in rows:
            if r["method"] == method:
                by.setdefault((r["w_bits"], r["a_bits"]), []).append(r)
        cells = [_matrix_cell(by[s], float_acc) if s in by else "-" for s in SETTINGS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def detail_lines(rows: list[dict]) -> list[str]:
    lines = ["| cell | W/A | seed | test acc % | drop (points) | step ratio [min, max] | epochs | "
             "train s |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {setting_name(r['w_bits'], r['a_bits'], r['method'])} "
                     f"| {r.get('seed', 0)} "
                     f"| {100 * r['test_accuracy']:.2f} | {r['drop_points']:.2f} "
                     f"| {r['step_ratio']:.2f} [{r['step_ratio_min']:.2f}, "
                     f"{r['step_ratio_max']:.2f}]{_retimed(r)} | {r['epochs']} "
                     f"| {r['wall_seconds']:.1f} |")
    return lines


def _qnet_schedule_text(meta: dict) -> str:
    if meta.get("final_temperature"):
        bn = meta.get("qnet_bn_batches", 0)
        return (f"qnet's T ramps per step to {meta['final_temperature']:g} in each phase "
                "(restarted per phase), BatchNorm statistics "
                + (f"re-estimated under the hard weights ({bn} batches)" if bn else
                   "as trained (soft weights)")
                + "; qnet's quantized activations (cells from commit c4e7ca4 on): alpha fitted "
                "to the calibration activations by least squares and their backward at T = 1 "
                "(lowbit.train.qnet, issue 12 item 3; the paper's alpha = 1/beta and backward "
                "at T collapse to chance)")
    return (f"qnet's T = epoch x {meta.get('temperature_factor', 5):g}"
            f"{' ramped per step' if meta.get('temperature_per_step') else ''}")


def schedule_text(row: dict) -> str:
    """The lr schedule a cell ran, in words; a cell without a record predates per-batch
    stepping (its schedule was stepped per epoch: a flat lr within each epoch)."""
    rec = row.get("schedule")
    if not rec:
        return "stepped per epoch (cell predates per-batch stepping: flat lr within an epoch)"
    stages = f", restarted in each of {rec['stages']} stages" if rec.get("stages", 1) > 1 else ""
    return f"{rec['name']} stepped {rec['stepped']} over {rec['total_steps']} steps{stages}"


def schedule_lines(rows: list[dict]) -> list[str]:
    """One line per distinct schedule the rows ran, with the cells that ran it."""
    by: dict[str, list[str]] = {}
    for r in rows:
        by.setdefault(schedule_text(r), []).append(r["label"])
    return [f"- {text}: {len(labels)} cell(s)"
            + (f" ({', '.join(labels)})" if len(labels) <= 12 else "")
            for text, labels in by.items()]


def _retimed(row: dict) -> str:
    """Marks a step ratio re-timed by --remeasure-steps (and at which commit)."""
    return f" (re-timed at {row['step_commit']})" if row.get("step_commit") else ""


def markdown(rows: list[dict], targets: dict, meta: dict) -> str:
    from lowbit.report.provenance import meta_header

    head = [f"# yang2019 Table 2, in shape: {meta['model']} on {meta['dataset']}\n",
            f"Report: {meta_header(meta)}  ",
            *[f"Cells trained by: `{c}` at commit `{k}`  " for c, k in _trainers(rows)],
            f"Task: {meta['task_note']}; torch threads {meta['threads']}, "
            f"{meta['jobs']} parallel cell(s).  ",
            f"Float model: {meta['float_epochs']} epochs{_float_origin(meta)}, test accuracy "
            f"**{100 * meta['float_accuracy']:.2f} %**. Each cell fine-tunes from it for "
            f"{meta['epochs']} epoch(s) at base lr {meta['lr']:g} (schedule: below), augmentation "
            f"{meta.get('augment', 'none')}, "
            f"{'bf16 autocast' if meta.get('precision') == 'bf16' else 'fp32'}"
            f"{', channels-last' if meta.get('channels_last') else ''} (evaluation in fp32); "
            "qnet with quantized activations and inq run 3 stages of that budget each (qnet "
            f"weights-only: one phase); {_qnet_schedule_text(meta)}; first/last layers "
            "float. The paper trains ResNet-18 on ImageNet for 55 epochs: numbers here are the "
            "shape at a small budget, not a reproduction of its values.\n",
            "## Test accuracy % (change from float, points)\n",
            "qnet's 3/32 is the paper's 3(±4)/32; `dorefa+pact` = PACT activations with DoReFa "
            "weights, `xnor+hwgq` = HWGQ activations with XNOR weights.\n"]
    lines = head + ["Learning-rate schedule actually run (per cell JSON ``schedule``):\n",
                    *schedule_lines(rows), "",
                    "Cells with several seeds show mean [min, max] n=seeds (change of the mean "
                    "from float).\n"]
    lines += matrix_lines(rows, meta["float_accuracy"])
    if meta.get("float_history"):
        lines += ["\nHow the float model was built:\n",
                  *[f"- {line}" for line in meta["float_history"]]]
    lines += ["\n## Per cell (step ratio = quantized / float training step, batch 128, median "
              "of interleaved rounds)\n"] + detail_lines(rows) + _retimed_lines(rows)
    lines.append("\n## Targets (the paper's claims)\n")
    for name, t in targets.items():
        status = t["status"] if t["status"] != "MISSED" else "**MISSED**"
        lines.append(f"- {name}: {status} — {t['detail']}")
    return "\n".join(lines) + "\n"


def _trainers(rows: list[dict]) -> list[tuple[str, str]]:
    """The distinct (command, commit) pairs that trained the rows' cells, in first-seen order."""
    seen = {(r.get("trained_by", "?"), r.get("trained_at_commit", "?")): None for r in rows}
    return list(seen)


def _float_origin(meta: dict) -> str:
    if not meta.get("float_init"):
        return ""
    c = meta.get("float_config", {})
    return (f" (fine-tuned from `{meta['float_init']}`, lr {c.get('lr')}, augmentation "
            f"{c.get('augment', 'none')}, {c.get('precision', 'fp32')})")


def float_history(saved: Path | None) -> list[str]:
    """The lines of ``COMMAND.md`` in a saved float model's directory and in the directory of
    the model it was fine-tuned from (its summary's ``init``): how they were built."""
    lines, seen = [], set()
    while saved is not None and saved not in seen and (saved / "COMMAND.md").exists():
        seen.add(saved)
        name = saved.relative_to(HERE.parent) if saved.is_relative_to(HERE.parent) else saved
        lines.append(f"`{name.as_posix()}`: " + " ".join((saved / "COMMAND.md").read_text()
                                                         .split()))
        init = json.loads((saved / "summary.json").read_text()).get("init")
        saved = (HERE.parent / init).parent if init else None
    return lines


def _retimed_lines(rows: list[dict]) -> list[str]:
    """The commands that re-timed step ratios (--remeasure-steps), with their commits."""
    seen = {(r.get("step_command") or "not recorded", r["step_commit"]): None
            for r in rows if r.get("step_commit")}
    return [f"- step ratios re-timed at `{k}` by: `{c}`" for c, k in seen]


def plot(rows: list[dict], meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({r["method"] for r in rows})
    colors = plt.get_cmap("tab20")
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(SETTINGS)), 5))
    for k, m in enumerate(methods):
        drops: dict[tuple[int, int], list[float]] = {}
        for r in rows:
            if r["method"] == m:
                drops.setdefault((r["w_bits"], r["a_bits"]), []).append(r["drop_points"])
        by = {k: sum(v) / len(v) for k, v in drops.items()}  # mean over seeds
        xs = [i + (k - (len(methods) - 1) / 2) * width for i, s in enumerate(SETTINGS) if s in by]
        ax.bar(xs, [by[s] for s in SETTINGS if s in by], width, label=m, color=colors(k % 20))
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(SETTINGS)), [f"{w}/{a}" for w, a in SETTINGS])
    ax.set(xlabel="W/A bits (qnet 3/32 = 3(±4)/32)", ylabel="accuracy drop from float (points)",
           title=f"{meta['model']} / {meta['dataset']}: drop from float "
                 f"{100 * meta['float_accuracy']:.2f} %, {meta['epochs']}-epoch fine-tune")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- main

def git_commit() -> str | None:
    from lowbit.report.provenance import git_state

    return git_state(HERE)["commit"]


def parse_args() -> argparse.Namespace:
    from lowbit.quantizers.registry import METHODS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model")
    p.add_argument("--dataset")
    p.add_argument("--float-epochs", type=int, default=30)
    p.add_argument("--float-model", type=Path, help="directory with model.pt + summary.json of "
                   "a float run to start from instead of training one (e.g. OUT/float)")
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning budget per cell")
    p.add_argument("--lr", type=float, help="fine-tuning lr (default: model default / 10)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--settings", nargs="+", default=[f"{w}/{a}" for w, a in SETTINGS],
                   help="W/A settings to run, e.g. 2/32 3/32 (default: all eight)")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (1: "
                   "no oversubscription when the machine is shared; --jobs 2 uses both cores)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16",
                   help="training precision of every run (bf16 autocast: fast_path.py)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--final-temperature", type=float, default=275.0,
                   help="qnet: T ramps per step to this in each phase, restarted per phase "
                   "(the paper's ResNet end point 5 x 55; lowbit.train.qnet); 0: the factor "
                   "schedule of --temperature-factor")
    p.add_argument("--qnet-bn-batches", type=int, default=100, help="qnet: batches of "
                   "BatchNorm re-estimation under the hard weights at the end (0: off)")
    p.add_argument("--temperature-factor", type=float, default=5.0,
                   help="qnet with --final-temperature 0: T = epoch x factor")
    p.add_argument("--temperature-per-step", action=argparse.BooleanOptionalAction,
                   default=True, help="qnet: ramp T within each epoch (default: yes, since a "
                   "cell has few epochs)")
    p.add_argument("--seeds", type=int, nargs="+", help="run every cell at each seed (labels "
                   "<cell>_s<seed>); default: one run at seed 0 with the plain label")
    p.add_argument("--ttq-region-mean", action="store_true", help="TTQ cells with the scales "
                   "initialised at the region means and the mean gradient (lowbit's former "
                   "defaults), labelled ttq-mean, beside the paper's defaults")
    p.add_argument("--pact-alpha-init", action="store_true", help="PACT cells start alpha at "
                   "the paper's from-scratch 10 instead of the observed range (alpha_from=mse), "
                   "labelled dorefa+pact10")
    p.add_argument("--qnet-act-init", choices=("kmeans", "linear"), default="kmeans",
                   help="qnet activation steps: k-means midpoints (the paper's) or evenly "
                        "spaced; linear cells with quantized activations are labelled "
                        "qnet-linear")
    p.add_argument("--remeasure-steps", action="store_true",
                   help="train nothing: re-time the step ratio of the finished cells of "
                   "--methods with the current code (after a speed-up), rewrite the report")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: rewrite the report from the finished cells")
    p.add_argument("--out", type=Path, default=HERE / "results" / "zoo_table2")
    p.add_argument("--work", type=Path, default=HERE.parent / "runs" / "zoo_table2")
    return p.parse_args()


def main() -> None:
    import torch

    a = parse_args()
    torch.set_num_threads(a.threads)
    model, dataset, note = pick_task(a.model, a.dataset)
    from lowbit.report.provenance import provenance

    prov = provenance(root=HERE)
    print(f"task: {model} on {dataset} ({note})", flush=True)
    float_summary = train_float(model, dataset, a.float_epochs, a.work, a.float_model)
    float_acc = float_summary["test_accuracy"]
    print(f"float: {100 * float_acc:.2f} %", flush=True)
    cells_dir = a.out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    task = {"model": model, "dataset": dataset, "epochs": a.epochs, "lr": a.lr,
            "threads": a.threads, "precision": a.precision, "channels_last": a.channels_last,
            "temperature_factor": a.temperature_factor,
            "temperature_per_step": a.temperature_per_step,
            "final_temperature": a.final_temperature, "qnet_bn_batches": a.qnet_bn_batches,
            "command": prov["command"], "commit": prov["commit"], "dirty": prov["dirty"],
            "dirty_files": prov["dirty_files"], "pact_alpha_init": a.pact_alpha_init,
            "cpu": prov["cpu"], "cpu_kind": prov["cpu_kind"], "cpu_isa": prov["cpu_isa"],
            "qnet_act_init": a.qnet_act_init}
    settings = [tuple(int(b) for b in s.split("/")) for s in a.settings]
    specs = cell_specs(a.methods, [s for s in SETTINGS if s in settings], a.seeds)
    if a.ttq_region_mean:
        specs = ttq_region_mean(specs)
    if a.pact_alpha_init:
        specs = pact_init_labels(specs)
    if a.qnet_act_init == "linear":
        specs = qnet_linear_labels(specs)
    if a.remeasure_steps:
        remeasure_steps(cells_dir, a.work / "float" / "model.pt", dataset, a.methods)
    if a.remeasure_steps or a.report_only:
        specs = []
    todo = [s for s in specs if not (cells_dir / f"{s['label']}.json").exists()]
    todo.sort(key=lambda s: settings.index((s["w_bits"], s["a_bits"])))  # in --settings order
    print(f"{len(specs)} cells, {len(specs) - len(todo)} done, {len(todo)} to run", flush=True)
    run_cells(todo, task, a.work, cells_dir, a.jobs)
    cells = [json.loads(f.read_text()) for f in sorted(cells_dir.glob("*.json"))]
    rows = add_drops([c for c in cells if (c["model"], c["dataset"]) == (model, dataset)],
                     float_acc)
    targets = check_targets(rows, float_acc)
    meta = {"command": prov["command"], "commit": prov["commit"], "provenance": prov,
            "model": model, "dataset": dataset, "task_note": note,
            "float_epochs": float_summary["epochs"], "float_accuracy": float_acc,
            "float_init": float_summary.get("init"),
            "float_config": float_summary.get("config", {}),
            "float_history": float_history(a.float_model.resolve() if a.float_model else None),
            "epochs": a.epochs, "lr": finetune_config(task, 1).lr,
            "threads": a.threads, "jobs": a.jobs, "precision": a.precision,
            "channels_last": a.channels_last, "augment": finetune_config(task, 1).augment,
            "temperature_factor": a.temperature_factor,
            "temperature_per_step": a.temperature_per_step,
            "final_temperature": a.final_temperature, "qnet_bn_batches": a.qnet_bn_batches}
    write_atomic({"meta": meta, "targets": targets, "rows": rows}, a.out / "results.json")
    (a.out / "results.md").write_text(markdown(rows, targets, meta))
    plot(rows, meta, a.out / "table2.png")
    print(markdown(rows, targets, meta))


if __name__ == "__main__":
    main()
