"""``lowbit ptq``: a saved float model.pt quantized after training, written as ``lowbit train``
writes its results (``model.pt`` that ``lowbit eval`` and later tools read, ``summary.json``
with ``test_accuracy``, ``float_bytes``, ``packed_bytes``, the mode, observer, bits, the
calibration set size and the seconds each step took).

Calibration samples: ``calib`` images drawn without replacement from the *train* split with a
fixed ``seed`` (never the test split), in batches of ``batch_size`` (a set smaller than a batch
is one batch). The float model's test accuracy is measured in the same run, so the summary
holds the drop.
Test: tests/ptq/test_run.py.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from lowbit.data import load_dataset
from lowbit.errors import CheckpointError, LowbitError
from lowbit.experiment import (
    _check_fits,
    load_model,
    prepare_out_dir,
    save_model_file,
    write_json_atomic,
)
from lowbit.nn.layers import QUANT_LAYERS
from lowbit.ptq.driver import PTQConfig, PTQReport, quantize
from lowbit.report.console import plan_lines, size_line
from lowbit.size import model_bytes
from lowbit.train import evaluate

log = logging.getLogger(__name__)


def calibration_batches(images: torch.Tensor, n: int, batch_size: int,
                        seed: int = 0) -> list[torch.Tensor]:
    """``n`` images drawn without replacement (fixed ``seed``), as float batches in [0, 1]."""
    if n < 1:
        raise LowbitError(f"--calib must be >= 1 sample, got {n}")
    if batch_size < 1:
        raise LowbitError(f"--batch-size must be >= 1, got {batch_size}")
    if n > images.shape[0]:
        raise LowbitError(f"--calib {n}: the train split has only {images.shape[0]} images")
    idx = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    idx = idx.sort().values
    return [images[idx[i:i + batch_size]].float().div_(255.0) for i in range(0, n, batch_size)]


def load_float(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    net, blob = load_model(path)
    if any(isinstance(m, QUANT_LAYERS) for m in net.modules()):
        raise LowbitError(f"{path} holds a quantized model; PTQ takes a float model (train one "
                          "with 'lowbit train' without --w-bits/--a-bits)")
    return net, blob


def open_float(model_file: str | Path, dataset: str | None, data_dir: str | None):
    """The float model of ``model_file`` and its dataset's train and test splits:
    ``(net, blob, dataset, train, test)``; clear errors for a quantized model, a file without
    its dataset, or data the model does not take."""
    net, blob = load_float(model_file)
    dataset = dataset or blob.get("dataset")
    if not dataset:
        raise CheckpointError(f"{model_file} does not record its dataset; give --dataset")
    train = load_dataset(dataset, "train", data_dir)
    test = load_dataset(dataset, "test", data_dir)
    _check_fits(blob["model_kwargs"], test, model_file, blob.get("dataset"))
    return net, blob, dataset, train, test


def run_ptq(model_file: str | Path, out_dir: str | Path, config: PTQConfig,
            dataset: str | None = None, data_dir: str | None = None, calib: int = 1000,
            batch_size: int = 128, seed: int = 0, overwrite: bool = False,
            progress: bool = False) -> dict[str, Any]:
    """Quantize the float model in ``model_file`` post-training; write ``out_dir/model.pt``
    and ``out_dir/summary.json``; return the summary."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, resume=False, overwrite=overwrite)
    net, blob, dataset, train, test = open_float(model_file, dataset, data_dir)
    batches = (calibration_batches(train.images, calib, batch_size, seed)
               if config.needs_calibration else [])
    float_loss, float_acc = evaluate(net, test.images, test.labels)
    qnet, report = quantize(net, batches, config, progress=progress)
    log.info("ptq %s W%dA%d on %s, plan:\n%s", config.mode, config.w_bits, config.a_bits,
             dataset, "\n".join(plan_lines(report.layers)))
    t = time.perf_counter()
    loss, acc = evaluate(qnet, test.images, test.labels)
    eval_seconds = time.perf_counter() - t
    out_dir.mkdir(parents=True, exist_ok=True)
    edits = {"fold_batchnorm": report.folded, "add_bias": report.added_bias}
    save_model_file(out_dir / "model.pt", qnet, blob["model_kwargs"],
                    config.recipe().to_dict(), dataset, edits,
                    extra={"ptq": config.to_dict(), "float_model": str(model_file)})
    sizes = model_bytes(qnet)
    summary = summary_of(report, config, acc, loss, float_acc, float_loss, sizes)
    summary.update(model=blob["model_kwargs"].get("name"), dataset=dataset,
                   float_model=str(model_file), calibration_seed=seed,
                   eval_seconds=eval_seconds, wall_seconds=time.perf_counter() - started)
    from lowbit.deploy import export_run  # deploy imports the experiment module

    summary["packed_bytes_estimate"] = summary["packed_bytes"]
    summary.update(export_run(qnet, out_dir, blob["model_kwargs"], dataset))
    summary["size_ratio"] = summary["packed_bytes"] / summary["float_bytes"]
    write_json_atomic(summary, out_dir / "summary.json")
    log.info("test accuracy %.2f %% (float %.2f %%), %s", 100 * acc, 100 * float_acc,
             size_line(sizes))
    return summary


def summary_of(report: PTQReport, config: PTQConfig, acc: float, loss: float,
               float_acc: float, float_loss: float, sizes: dict[str, int]) -> dict[str, Any]:
    r = report.to_dict()
    return {
        "test_accuracy": acc, "test_loss": loss, "float_test_accuracy": float_acc,
        "float_test_loss": float_loss, "accuracy_drop": float_acc - acc,
        "mode": config.mode, "observer": config.observer if config.mode == "static" else None,
        "w_observer": config.w_observer, "w_bits": config.w_bits,
        "a_bits": config.a_bits, "calibration_samples": report.calibration_samples,
        "ptq_seconds": report.seconds.get("total", 0.0), "step_seconds": report.seconds,
        **sizes, "size_ratio": sizes["packed_bytes"] / sizes["float_bytes"],
        "steps": {"fold_bn": r["folded"], "equalized": r["equalized"],
                  "equalize_skipped": r["equalize_skipped"], "adaround": r["adaround"],
                  "bias_correction": r["bias"], "added_bias": r["added_bias"]},
        "layers": r["layers"], "config": r["config"],
    }
