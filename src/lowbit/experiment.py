"""One training run from names to files: build the model for a dataset, quantize it with a
recipe, train it, and write ``model.pt`` and ``summary.json``. The CLI's ``train`` and ``eval``
call :func:`run` and :func:`evaluate_file`; benchmarks call them too.

``model.pt`` is a plain dict (loadable with ``torch.load(weights_only=True)``):
``format``/``version``, the model name and constructor arguments, the recipe, the state dict.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.convert import LayerPlan, add_input_quantizers, plan, quantize
from lowbit.data import load_dataset
from lowbit.errors import CheckpointError, LowbitError
from lowbit.fold import fold_batchnorm
from lowbit.functional.checks import FLOAT_BITS
from lowbit.models import build_model
from lowbit.nn.layers import QUANT_LAYERS
from lowbit.recipe import LayerRule, Recipe
from lowbit.report.console import plan_lines, size_line
from lowbit.size import model_bytes
from lowbit.slots import apply_specs, quantizer_slots
from lowbit.train import TrainConfig, atomic_save, evaluate, fit
from lowbit.train.files import atomic_write_text, load_verified
from lowbit.train.inq import fit_inq, inq_layers
from lowbit.train.qnet import (
    ACT_ALPHA,
    ACT_GRAD_TEMPERATURE,
    ACT_INIT,
    BN_BATCHES,
    FINAL_TEMPERATURE,
    fit_qnet,
    qnet_config,
    set_hard,
    soft_quantizers,
)

MODEL_FORMAT, MODEL_VERSION = "lowbit-model", 1
JOB_NAME = "job.json"  # what a run directory was started for; --resume checks it
log = logging.getLogger(__name__)

# Defaults per (model, dataset): chosen to reach the paper's float accuracy on this machine
# (benchmarks/ivan_fig5.py measures it); any field can be overridden from the CLI.
DEFAULT_CONFIGS: dict[str, TrainConfig] = {
    "lenet300": TrainConfig(epochs=20, batch_size=100, lr=1e-3, optimizer="adam",
                            schedule="cosine"),
    "lenet5": TrainConfig(epochs=15, batch_size=100, lr=1e-3, optimizer="adam",
                          schedule="cosine"),
    "resnet20": TrainConfig(epochs=30, batch_size=128, lr=0.1, optimizer="sgd", momentum=0.9,
                            weight_decay=1e-4, schedule="cosine"),
    "resnet18": TrainConfig(epochs=30, batch_size=128, lr=0.1, optimizer="sgd", momentum=0.9,
                            weight_decay=5e-4, schedule="cosine"),
}


@dataclass(frozen=True)
class Job:
    """What to train: model and dataset names, the recipe and the training config."""

    model: str
    dataset: str
    recipe: Recipe = field(default_factory=Recipe)
    config: TrainConfig = field(default_factory=TrainConfig)
    data_dir: str | None = None
    init: str | None = None  # a float model.pt to start from (fine-tuning, INQ, qnet)
    # qnet temperature: a per-step ramp to final_temperature in each phase (default: the paper's
    # ResNet end point, T = 5 x 55 epochs = 275; lowbit.train.qnet); None: the factor schedule
    # T = epoch x temperature_factor (yang2019 sec. 4.1), ramped per step if temperature_per_step
    temperature_factor: float = 5.0
    temperature_per_step: bool = False
    final_temperature: float | None = FINAL_TEMPERATURE
    qnet_bn_batches: int = BN_BATCHES  # qnet: BatchNorm re-estimation under eq. (11); 0: off
    # qnet activations (lowbit.train.qnet.fit_qnet, issue 12 item 3): alpha "fit" (least
    # squares) or "reciprocal" (the paper's 1/beta); backward temperature (None: at the forward T)
    qnet_act_alpha: str = ACT_ALPHA
    qnet_act_init: str = ACT_INIT  # activation steps: "auto" (by bit width), "kmeans", "linear"
    qnet_act_grad_temperature: float | None = ACT_GRAD_TEMPERATURE


# Augmentation per dataset: He et al. 2016's pad-crop-flip for CIFAR; none for digits (a mirrored
# digit is another class or no digit).
DEFAULT_AUGMENT: dict[str, str] = {"cifar10": "crop-flip"}


def default_config(model: str, dataset: str | None = None, **overrides: Any) -> TrainConfig:
    """The default TrainConfig of ``model`` (with ``dataset``'s default augmentation) and the
    non-None ``overrides`` applied."""
    base = DEFAULT_CONFIGS.get(model, TrainConfig())
    base = replace(base, augment=DEFAULT_AUGMENT.get(dataset or "", "none"))
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def build(job: Job) -> tuple[nn.Module, dict[str, Any], list[LayerPlan]]:
    """Job's model sized for its dataset, started from ``job.init`` if given, quantized; with
    the model's constructor arguments and the plan quantize() followed."""
    train = load_dataset(job.dataset, "train", job.data_dir)
    kwargs = model_kwargs(job.model, train)
    net = build_model(**kwargs)
    if job.init is not None:
        start, blob = load_model(job.init)
        if any(isinstance(m, QUANT_LAYERS) for m in start.modules()):
            raise CheckpointError(f"--init {job.init} is a quantized model; give a float one")
        if blob["model_kwargs"] != kwargs:
            raise CheckpointError(f"--init {job.init} is a {blob['model_kwargs']['name']} for "
                                  "other inputs/classes than this job's")
        net.load_state_dict(start.state_dict())
    layers = plan(net, job.recipe)
    return quantize(net, job.recipe), kwargs, layers


class Procedure(Enum):
    """How a model trains, chosen by the quantizer types it holds (:func:`procedure`)."""

    FIT = "fit"    # lowbit.train.fit: every quantizer trains through its forward
    INQ = "inq"    # lowbit.train.inq.fit_inq: partition steps for the INQWeight layers
    QNET = "qnet"  # lowbit.train.qnet.fit_qnet: phases and temperature for SoftWeight/SoftAct


def procedure(net: nn.Module) -> Procedure:
    """The training procedure ``net``'s quantizers need: INQ if any layer has an INQWeight,
    Quantization Networks if any SoftWeight/SoftAct is present (set by the recipe or by a
    LayerRule alike), else plain fit(). Both at once is refused: INQ's partition steps and
    qnet's phases are separate schedules over the same epochs, and no paper defines their mix."""
    inq = [name for name, _, _ in inq_layers(net)]
    soft = [name for name, _ in soft_quantizers(net)]
    if inq and soft:
        raise LowbitError(
            f"the model holds INQ layers ({', '.join(inq)}) and Quantization Networks quantizers "
            f"({', '.join(soft)}); their training procedures (INQ's partition steps, qnet's "
            "phases) cannot run in one job: quantize those layers with one of the two methods")
    return Procedure.INQ if inq else Procedure.QNET if soft else Procedure.FIT


def _train(job: Job, net: nn.Module, train, test, out_dir: Path, resume: bool, progress: bool):
    """fit(), or the procedure the model's quantizers need (INQ's steps, qnet's phases)."""
    data = (train.images, train.labels), (test.images, test.labels)
    kind, config = procedure(net), effective_config(job, net)
    if kind is Procedure.INQ:
        r = fit_inq(net, *data, config, out_dir, resume=resume, progress=progress)
        steps = [s["summary"] for s in r["steps"] if s.get("summary")]
        return {"test_accuracy": r["test_accuracy"], "test_loss": r["test_loss"],
                "epochs": sum(s["epochs"] for s in steps),
                "wall_seconds": sum(s["wall_seconds"] for s in steps)}
    if kind is Procedure.QNET:
        final = job.final_temperature
        r = fit_qnet(net, *data, config, out_dir, None if final else job.temperature_factor,
                     resume=resume, progress=progress, per_step=job.temperature_per_step,
                     final_temperature=final, bn_batches=job.qnet_bn_batches,
                     act_alpha=job.qnet_act_alpha, act_init=job.qnet_act_init,
                     act_grad_temperature=job.qnet_act_grad_temperature)
        return {"test_accuracy": r["hard_test_accuracy"], "test_loss": r["hard_test_loss"],
                "epochs": sum(s["epochs"] for s in r["phases"]),
                "wall_seconds": sum(s["wall_seconds"] for s in r["phases"]),
                "qnet": {k: v for k, v in r.items() if k != "phases"}}
    return fit(net, *data, config, out_dir, resume=resume, progress=progress)


def model_kwargs(model: str, data) -> dict[str, Any]:
    _, c, h, w = data.images.shape
    return {"name": model, "in_channels": c, "image_size": [h, w] if h != w else h,
            "num_classes": data.num_classes, "mean": list(data.mean), "std": list(data.std)}


def effective_config(job: Job, net: nn.Module) -> TrainConfig:
    """The TrainConfig ``job`` really trains the quantized ``net`` with: qnet's gradient clip
    (5 unless set) when ``net`` holds SoftWeight/SoftAct quantizers, wherever they were set."""
    return qnet_config(job.config) if procedure(net) is Procedure.QNET else job.config


def job_record(job: Job, kwargs: dict[str, Any], net: nn.Module) -> dict[str, Any]:
    """What identifies a run: model (with its input statistics), dataset, recipe, effective
    training config of the quantized ``net`` (thread count excepted), init model and qnet
    schedule. Written to ``job.json``."""
    config = {k: v for k, v in asdict(effective_config(job, net)).items() if k != "num_threads"}
    return {"model": job.model, "model_kwargs": kwargs, "dataset": job.dataset,
            "recipe": job.recipe.to_dict(), "config": config, "init": job.init,
            "temperature_factor": job.temperature_factor,
            "temperature_per_step": job.temperature_per_step,
            "final_temperature": job.final_temperature, "qnet_bn_batches": job.qnet_bn_batches,
            "qnet_act_alpha": job.qnet_act_alpha, "qnet_act_init": job.qnet_act_init,
            "qnet_act_grad_temperature": job.qnet_act_grad_temperature}


def _record_diff(stored: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _record_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


# Files and sub-run directories a run writes (INQ: step<i>/, qnet: phase<k>-<name>/).
RUN_FILES = ("checkpoint.pt", "metrics.jsonl", "model.pt", "summary.json", JOB_NAME)


def _lowbit_entries(out_dir: Path) -> list[Path]:
    return [p for p in sorted(out_dir.iterdir())
            if p.name in RUN_FILES or (p.is_dir() and any((p / f).exists() for f in RUN_FILES))]


def prepare_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to train into a file, or into a non-empty directory unless resuming; with
    ``overwrite``, remove the files an earlier run left there (others are kept)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise LowbitError(f"output {out_dir} is a file, not a directory; give a directory")
    if not out_dir.exists() or resume:
        return
    entries = sorted(out_dir.iterdir())
    if entries and not overwrite:
        names = ", ".join(p.name for p in entries[:5]) + (" ..." if len(entries) > 5 else "")
        raise LowbitError(f"output directory {out_dir} is not empty ({names}); use --resume to "
                          "continue its run or --overwrite to start it again")
    for p in _lowbit_entries(out_dir):
        log.info("--overwrite: removing %s", p)
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def _check_resume(out_dir: Path, record: dict[str, Any]) -> None:
    path = out_dir / JOB_NAME
    if not path.exists():
        if (out_dir / "checkpoint.pt").exists():
            log.warning("%s predates job.json: its recipe/model/dataset cannot be checked", out_dir)
        return
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    diff = _record_diff(stored, json.loads(json.dumps(record, default=str)))
    if diff:
        raise CheckpointError(f"{out_dir} holds a run of another job ({'; '.join(diff)}); "
                              "resume it with the same settings, or use another --out")


def _export_run(net, out_dir, kwargs, dataset):
    from lowbit.deploy import export_run  # deploy imports this module

    return export_run(net, out_dir, kwargs, dataset)


def run(job: Job, out_dir: str | Path, resume: bool = False, progress: bool = True,
        overwrite: bool = False) -> dict:
    """Train ``job``; write ``out_dir/model.pt`` and ``out_dir/summary.json``; return summary.

    A non-empty ``out_dir`` is refused unless ``resume`` (which continues the run there, and
    refuses one of another job: ``job.json``) or ``overwrite`` (which starts it again)."""
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, resume, overwrite)
    train = load_dataset(job.dataset, "train", job.data_dir)
    test = load_dataset(job.dataset, "test", job.data_dir)
    torch.manual_seed(job.config.seed)  # model initialisation is part of the seeded run
    net, kwargs, layers = build(job)
    record = job_record(job, kwargs, net)
    if resume:
        _check_resume(out_dir, record)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, out_dir / JOB_NAME)
    sizes = model_bytes(net)
    log.info("%s %s on %s, plan:\n%s", job.model, describe(job.recipe), job.dataset,
             "\n".join(plan_lines(layers)))
    log.info("%s", size_line(sizes))
    result = _train(job, net, train, test, out_dir, resume, progress)
    save_model(net, kwargs, job, out_dir / "model.pt")
    summary = {
        "test_accuracy": result["test_accuracy"], "test_loss": result["test_loss"],
        "epochs": result["epochs"], "wall_seconds": result["wall_seconds"],
        "w_bits": job.recipe.w_bits, "a_bits": job.recipe.a_bits,
        "g_bits": job.recipe.g_bits if any(getattr(m, "output_grad_quant", None) is not None
                                           for m in net.modules()) else 32,
        "method": describe(job.recipe, bits=False),
        "model": job.model, "dataset": job.dataset, **(sizes := model_bytes(net)),
        "size_ratio": sizes["packed_bytes"] / sizes["float_bytes"],  # of the trained model
        "layers": [asdict(p) for p in layers],
        "recipe": job.recipe.to_dict(), "config": asdict(effective_config(job, net)),
        "procedure": procedure(net).value, "init": job.init,
    }
    if "qnet" in result:  # soft / hard / hard after BatchNorm re-estimation, labelled
        summary["qnet"] = result["qnet"]
    if "schedule" in result:  # the lr schedule that ran (lowbit.train.optim.schedule_record)
        summary["schedule"] = result["schedule"]
    summary["packed_bytes_estimate"] = summary["packed_bytes"]
    summary.update(_export_run(net, out_dir, kwargs, job.dataset))  # the real file's size
    summary["size_ratio"] = summary["packed_bytes"] / summary["float_bytes"]
    write_json_atomic(summary, out_dir / "summary.json")
    log.info("test accuracy %.2f %%, %s", 100 * summary["test_accuracy"], size_line(summary))
    return summary


def describe(recipe: Recipe, bits: bool = True) -> str:
    """``ivan W4A4`` / ``dorefa+pact W2A4`` / ``float``: the method(s), and the bits."""
    method = recipe.weight if recipe.weight == recipe.act else f"{recipe.weight}+{recipe.act}"
    if not bits:
        return method
    if recipe.is_float:
        return "float"
    grad = f"G{recipe.g_bits}" if recipe.g_bits != 32 else ""
    return f"{method} W{recipe.w_bits}A{recipe.a_bits}{grad}"


def save_model(net: nn.Module, kwargs: dict, job: Job, path: Path) -> None:
    save_model_file(path, net, kwargs, job.recipe.to_dict(), job.dataset)


def save_model_file(path: Path, net: nn.Module, kwargs: dict, recipe: dict, dataset: str | None,
                    edits: dict[str, Any] | None = None, extra: dict[str, Any] | None = None
                    ) -> None:
    """Write model.pt atomically: architecture (``kwargs``), every quantizer slot as a spec,
    the structural ``edits`` made to the float architecture before quantizing (``{"fold_batch
    norm": [[layer, bn], ...], "add_bias": [layer, ...]}``, replayed by :func:`load_model`),
    the recipe as the record of intent, the state dict and ``extra`` records (e.g. "ptq")."""
    atomic_save({"format": MODEL_FORMAT, "version": MODEL_VERSION, "model_kwargs": kwargs,
                 "recipe": recipe, "dataset": dataset, "edits": edits or {},
                 "layers": quantizer_slots(net), "state_dict": net.state_dict(),
                 **(extra or {})}, path)


def _replay_edits(net: nn.Module, edits: dict[str, Any], path: Path) -> None:
    """The structural changes recorded by :func:`save_model_file`, on a fresh float model."""
    want = [list(p) for p in edits.get("fold_batchnorm", [])]
    if want:
        net.eval()
        got = [list(p) for p in fold_batchnorm(net)]
        if got != want:
            raise CheckpointError(f"{path}: its BatchNorm folding ({want}) does not match the "
                                  f"architecture's ({got})")
    for name in edits.get("add_bias", []):
        layer = net.get_submodule(name)
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0]))


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the model saved by :func:`run` (architecture, recipe, weights) in eval mode."""
    path = Path(path)
    blob = load_verified(path, what="model file")
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{path} is not a lowbit model file")
    if blob.get("version") != MODEL_VERSION:
        raise CheckpointError(f"{path} has model format version {blob.get('version')}, "
                              f"this lowbit reads version {MODEL_VERSION}")
    if blob.get("layers") is not None:  # every quantizer slot as a spec (options included)
        net = build_model(**blob["model_kwargs"])
        _replay_edits(net, blob.get("edits") or {}, path)
        net = apply_specs(net, blob["layers"])
        inputs = []
    else:  # files written before the specs: rebuilt from the recipe and the input list
        net = quantize(build_model(**blob["model_kwargs"]), Recipe.from_dict(blob["recipe"]))
        inputs = blob.get("inputs") or []
    if inputs:
        add_input_quantizers(net, inputs[0]["method"], FLOAT_BITS, skip_first=False, rules=[
            LayerRule(i["name"], act=i["method"], a_bits=i["bits"]) for i in inputs])
    try:
        net.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the saved architecture: {exc}") from exc
    if not any(k.endswith(".hard") for k in blob["state_dict"]) and set_hard(net, True):
        # written before the hard flag was saved: fit_qnet always ends on eq. (11), as the
        # summary of such a run measured it
        log.info("%s predates the saved qnet hard flag; using the hard quantizers", path)
    return net.eval(), blob


def evaluate_file(path: str | Path, dataset: str | None = None,
                  data_dir: str | None = None) -> dict:
    """Test loss and accuracy of the saved model at ``path`` on ``dataset``'s test split
    (default: the dataset the model was trained on, which model.pt records)."""
    net, blob = load_model(path)
    dataset = dataset or blob.get("dataset")
    if not dataset:
        raise CheckpointError(f"{path} does not record its dataset; give --dataset")
    test = load_dataset(dataset, "test", data_dir)
    _check_fits(blob["model_kwargs"], test, path, blob.get("dataset"))
    started = time.perf_counter()
    loss, acc = evaluate(net, test.images, test.labels)
    return {"test_accuracy": acc, "test_loss": loss, "dataset": dataset, "model_file": str(path),
            "recipe": blob["recipe"], "seconds": time.perf_counter() - started}


def _check_fits(kwargs: dict[str, Any], data, path, trained_on: str | None) -> None:
    """A clear error when ``data``'s images or classes are not what the model takes."""
    _, c, h, w = data.images.shape
    size = kwargs["image_size"]
    size = list(size) if isinstance(size, (list, tuple)) else [size, size]
    want, got = (kwargs["in_channels"], *size, kwargs["num_classes"]), (c, h, w, data.num_classes)
    if tuple(want) != got:
        raise LowbitError(
            f"{path} takes {want[0]}x{want[1]}x{want[2]} images in {want[3]} classes"
            f"{f' (trained on {trained_on})' if trained_on else ''}; {data.name} has "
            f"{c}x{h}x{w} images in {data.num_classes} classes")


def write_json_atomic(obj: Any, path: Path) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(obj, indent=2, default=str) + "\n", path)
