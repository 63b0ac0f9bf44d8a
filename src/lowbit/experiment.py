"""One training run from names to files: build the model for a dataset, quantize it with a
recipe, train it, and write ``model.pt`` and ``summary.json``. The CLI's ``train`` and ``eval``
call :func:`run` and :func:`evaluate_file`; benchmarks call them too.

``model.pt`` is a plain dict (loadable with ``torch.load(weights_only=True)``):
``format``/``version``, the model name and constructor arguments, the recipe, the state dict.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.convert import quantize
from lowbit.data import load_dataset
from lowbit.errors import CheckpointError
from lowbit.models import build_model
from lowbit.nn.layers import QUANT_LAYERS
from lowbit.recipe import Recipe
from lowbit.size import model_bytes
from lowbit.train import TrainConfig, atomic_save, evaluate, fit
from lowbit.train.checkpoint import atomic_write_text
from lowbit.train.inq import fit_inq
from lowbit.train.qnet import fit_qnet

MODEL_FORMAT, MODEL_VERSION = "lowbit-model", 1

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
    temperature_factor: float = 5.0  # qnet: T = epoch x factor (yang2019 sec. 4.1, ResNet)
    temperature_per_step: bool = False  # qnet: ramp T within each epoch (short budgets)


# Augmentation per dataset: He et al. 2016's pad-crop-flip for CIFAR; none for digits (a mirrored
# digit is another class or no digit).
DEFAULT_AUGMENT: dict[str, str] = {"cifar10": "crop-flip"}


def default_config(model: str, dataset: str | None = None, **overrides: Any) -> TrainConfig:
    """The default TrainConfig of ``model`` (with ``dataset``'s default augmentation) and the
    non-None ``overrides`` applied."""
    base = DEFAULT_CONFIGS.get(model, TrainConfig())
    base = replace(base, augment=DEFAULT_AUGMENT.get(dataset or "", "none"))
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def build(job: Job):
    """Job's model sized for its dataset, started from ``job.init`` if given, quantized."""
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
    return quantize(net, job.recipe), kwargs


def _train(job: Job, net: nn.Module, train, test, out_dir: Path, resume: bool, progress: bool):
    """fit(), or the method's own training procedure (INQ's steps, qnet's phases)."""
    data = (train.images, train.labels), (test.images, test.labels)
    if job.recipe.weight == "inq" and job.recipe.w_bits != 32:
        r = fit_inq(net, *data, job.config, out_dir, resume=resume, progress=progress)
        steps = [s["summary"] for s in r["steps"] if s.get("summary")]
        return {"test_accuracy": r["test_accuracy"], "test_loss": r["test_loss"],
                "epochs": sum(s["epochs"] for s in steps),
                "wall_seconds": sum(s["wall_seconds"] for s in steps)}
    if "qnet" in (job.recipe.weight, job.recipe.act) and not job.recipe.is_float:
        config = job.config if job.config.grad_clip else replace(job.config, grad_clip=5.0)
        r = fit_qnet(net, *data, config, out_dir, job.temperature_factor, resume=resume,
                     progress=progress, per_step=job.temperature_per_step)
        return {"test_accuracy": r["hard_test_accuracy"], "test_loss": r["hard_test_loss"],
                "epochs": sum(s["epochs"] for s in r["phases"]),
                "wall_seconds": sum(s["wall_seconds"] for s in r["phases"])}
    return fit(net, *data, job.config, out_dir, resume=resume, progress=progress)


def model_kwargs(model: str, data) -> dict[str, Any]:
    _, c, h, w = data.images.shape
    return {"name": model, "in_channels": c, "image_size": [h, w] if h != w else h,
            "num_classes": data.num_classes, "mean": list(data.mean), "std": list(data.std)}


def run(job: Job, out_dir: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Train ``job``; write ``out_dir/model.pt`` and ``out_dir/summary.json``; return summary."""
    out_dir = Path(out_dir)
    train = load_dataset(job.dataset, "train", job.data_dir)
    test = load_dataset(job.dataset, "test", job.data_dir)
    torch.manual_seed(job.config.seed)  # model initialisation is part of the seeded run
    net, kwargs = build(job)
    result = _train(job, net, train, test, out_dir, resume, progress)
    save_model(net, kwargs, job, out_dir / "model.pt")
    summary = {
        "test_accuracy": result["test_accuracy"], "test_loss": result["test_loss"],
        "epochs": result["epochs"], "wall_seconds": result["wall_seconds"],
        "w_bits": job.recipe.w_bits, "a_bits": job.recipe.a_bits, "g_bits": job.recipe.g_bits,
        "method": job.recipe.weight if job.recipe.weight == job.recipe.act
        else f"{job.recipe.weight}+{job.recipe.act}",
        "model": job.model, "dataset": job.dataset, **model_bytes(net),
        "recipe": job.recipe.to_dict(), "config": job.config.__dict__, "init": job.init,
    }
    write_json_atomic(summary, out_dir / "summary.json")
    return summary


def save_model(net: nn.Module, kwargs: dict, job: Job, path: Path) -> None:
    atomic_save({"format": MODEL_FORMAT, "version": MODEL_VERSION, "model_kwargs": kwargs,
                 "recipe": job.recipe.to_dict(), "dataset": job.dataset,
                 "state_dict": net.state_dict()}, path)


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the model saved by :func:`run` (architecture, recipe, weights) in eval mode."""
    path = Path(path)
    from lowbit.train.files import load_verified  # checks zip CRCs and the content digest

    blob = load_verified(path, what="model file")
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{path} is not a lowbit model file")
    if blob.get("version") != MODEL_VERSION:
        raise CheckpointError(f"{path} has model format version {blob.get('version')}, "
                              f"this lowbit reads version {MODEL_VERSION}")
    net = quantize(build_model(**blob["model_kwargs"]), Recipe.from_dict(blob["recipe"]))
    try:
        net.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the saved architecture: {exc}") from exc
    return net.eval(), blob


def evaluate_file(path: str | Path, dataset: str, data_dir: str | None = None) -> dict:
    """Test loss and accuracy of the saved model at ``path`` on ``dataset``'s test split."""
    net, blob = load_model(path)
    test = load_dataset(dataset, "test", data_dir)
    started = time.perf_counter()
    loss, acc = evaluate(net, test.images, test.labels)
    return {"test_accuracy": acc, "test_loss": loss, "dataset": dataset, "model_file": str(path),
            "recipe": blob["recipe"], "seconds": time.perf_counter() - started}


def write_json_atomic(obj: Any, path: Path) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(obj, indent=2, default=str) + "\n", path)
