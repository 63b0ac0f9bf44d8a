"""The plain training loop: fit(), evaluate() and the batch iterator they share.

Exact resume: the shuffle order of epoch ``e`` comes from a fresh ``torch.Generator`` seeded
from ``(config.seed, e)``, and the checkpoint written after every epoch holds the model,
optimizer and scheduler states plus the global torch RNG state (dropout, stochastic quantizers).
The lr schedule is stepped after every optimizer step (:mod:`lowbit.train.optim`); a checkpoint
says so (``schedule_stepped``), and one written when the schedule was stepped per epoch is
refused on resume rather than continued under the other schedule.
Training 2 epochs, stopping and resuming to 4 gives the same weights, bit for bit, as 4 epochs
in one go (tests/train/test_train_fit.py::test_resume_is_bit_exact).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from lowbit.data.augment import augment_batch
from lowbit.data.batches import iterate_batches
from lowbit.errors import CheckpointError
from lowbit.quantizers.base import Quantizer, WeightQuantizer
from lowbit.report.console import epoch_line
from lowbit.threads import configure_threads
from lowbit.train.checkpoint import atomic_save, load_checkpoint, make_checkpoint
from lowbit.train.config import TrainConfig
from lowbit.train.metrics import append_jsonl, rewrite_jsonl
from lowbit.train.optim import STEPPED, make_optimizer, make_scheduler, schedule_record

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
Dataset = tuple[Tensor, Tensor]


def as_dataset(data: tuple[Any, Any], name: str) -> Dataset:
    """Check ``(images uint8 (N, C, H, W), labels int (N,))``; return tensors, labels int64."""
    images, labels = (torch.as_tensor(part) for part in data)
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"{name} images must be uint8 (N, C, H, W), "
                         f"got {images.dtype} {tuple(images.shape)}")
    if labels.dim() != 1 or labels.dtype.is_floating_point or len(labels) != len(images):
        raise ValueError(f"{name} labels must be integers of shape ({len(images)},), "
                         f"got {labels.dtype} {tuple(labels.shape)}")
    if len(images) == 0:
        raise ValueError(f"{name} set is empty")
    return images, labels.long()


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def evaluate(
    model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1000
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (0..1) of ``model`` on uint8 ``images``.

    Runs under ``torch.no_grad()`` in eval mode; the model's previous mode is restored.
    """
    images, labels = as_dataset((images, labels), "evaluate")
    device, was_training = _device(model), model.training
    total_loss, correct = 0.0, 0
    model.eval()
    try:
        with torch.no_grad():
            for x, y in iterate_batches(images, labels, batch_size, shuffle=False):
                x, y = x.to(device), y.to(device)
                logits = model(x)
                total_loss += F.cross_entropy(logits, y, reduction="sum").item()
                correct += int((logits.argmax(dim=1) == y).sum())
    finally:
        model.train(was_training)
    return total_loss / len(labels), correct / len(labels)


def quantizer_hooks(model: nn.Module) -> tuple[list[nn.Module], list[tuple[nn.Module, Tensor]]]:
    """Quantizers whose ``regularization()`` is added to the loss (e.g. PACT's L2 on alpha), and
    (weight quantizer, weight) pairs whose ``after_step(weight)`` runs after every optimizer step
    (e.g. BinaryConnect's clipping of the real-valued weights to [-1, 1]): the protocols of
    :mod:`lowbit.quantizers.base`, asked only of the methods that define them."""
    regularized = [m for m in model.modules() if isinstance(m, Quantizer) and m.regularized]
    after = [(m.weight_quant, m.weight) for m in model.modules()
             if isinstance(getattr(m, "weight_quant", None), WeightQuantizer)
             and m.weight_quant.has_after_step]
    return regularized, after


def shuffle_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch``'s shuffle: a 32-bit hash of (seed, epoch). torch's CPU generator
    draws ``randperm`` from a Mersenne Twister seeded with the low 32 bits of its seed, so a
    seed such as ``(seed << 20) + epoch`` (what this was) gave seeds s and s + 4096 the same
    orders; hashed, runs with any two seeds (and seeds s, s+1 one epoch apart) do not share
    shuffles, except by a 2^-32 chance."""
    digest = hashlib.blake2b(f"lowbit-shuffle:{seed}:{epoch}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def train_epoch(
    model: nn.Module,
    data: Dataset,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    epoch: int,
    progress: bool = True,
    on_batch_start: Callable[[int, int, int, nn.Module], None] | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> tuple[float, float]:
    """One pass over ``data`` (0-based ``epoch``); returns mean training loss and accuracy.

    ``scheduler`` (if given) is stepped after every optimizer step (the per-batch schedule).

    Raises ``FloatingPointError`` naming the epoch and batch (1-based) on a NaN/Inf loss.
    The epoch's generator draws the shuffle, then each batch's augmentation (``config.augment``).
    ``on_batch_start(epoch, batch, num_batches, model)`` (0-based epoch and batch) runs before
    each batch's forward pass (e.g. a per-step temperature schedule).
    """
    images, labels = data
    device, num_batches = _device(model), math.ceil(len(labels) / config.batch_size)
    generator = torch.Generator().manual_seed(shuffle_seed(config.seed, epoch))
    batches = tqdm(iterate_batches(images, labels, config.batch_size, True, generator),
                   total=num_batches, disable=not progress, leave=False,
                   desc=f"epoch {epoch + 1}/{config.epochs}")
    total_loss, correct = 0.0, 0
    regularized, after_step = quantizer_hooks(model)
    fmt = torch.channels_last if config.channels_last else torch.contiguous_format
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=config.precision == "bf16")
    model.train()
    for batch, (x, y) in enumerate(batches, start=1):
        if on_batch_start is not None:
            on_batch_start(epoch, batch - 1, num_batches, model)
        x = augment_batch(x, config.augment, generator)
        x, y = x.to(device, memory_format=fmt), y.to(device)
        with autocast:
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
            for module in regularized:
                loss = loss + module.regularization()
        if not torch.isfinite(loss):
            batches.close()
            raise FloatingPointError(f"training loss is {loss.item()} at epoch {epoch + 1}, "
                                     f"batch {batch} of {num_batches}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        for module, weight in after_step:
            module.after_step(weight)
        total_loss += loss.item() * len(y)
        correct += int((logits.detach().argmax(dim=1) == y).sum())
        batches.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    batches.close()
    return total_loss / len(labels), correct / len(labels)


def _config_diff(stored: dict[str, Any], config: TrainConfig) -> list[str]:
    """Fields that differ; a field the stored config predates counts as its default."""
    current, defaults = asdict(config), asdict(TrainConfig())
    stored = {**{k: v for k, v in defaults.items() if k not in stored}, **stored}
    keys = (set(stored) | set(current)) - {"num_threads"}
    return sorted(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}"
                  for k in keys if stored.get(k) != current.get(k))


def _restore(path: Path, model: nn.Module, optimizer, scheduler, config: TrainConfig) -> list:
    """Load the checkpoint at ``path`` into the training objects; return its metrics history."""
    state = load_checkpoint(path)
    if state.get("schedule_stepped") != STEPPED:
        raise CheckpointError(f"{path} was written when the lr schedule was stepped per epoch; "
                              f"this lowbit steps it {STEPPED}: start a fresh run")
    diff = _config_diff(state["config"], config)
    if diff:
        raise CheckpointError(f"{path} was written with a different TrainConfig ({'; '.join(diff)})"
                              "; resume with the same config or start a fresh run")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng_state"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"checkpoint {path} does not fit this model/optimizer: {exc}"
        ) from exc
    history = list(state["history"])
    if state["epoch"] != len(history):
        raise CheckpointError(f"checkpoint {path} is inconsistent: epoch {state['epoch']} "
                              f"but {len(history)} metrics records")
    return history


def _start(model, optimizer, scheduler, config: TrainConfig, out_dir: Path, resume: bool) -> list:
    """Restore from ``out_dir`` if asked and possible; (re)write metrics.jsonl to match."""
    path, history = out_dir / CHECKPOINT_NAME, []
    if resume and path.exists():
        history = _restore(path, model, optimizer, scheduler, config)
        log.info("resuming from %s after epoch %d of %d", path, len(history), config.epochs)
        if len(history) >= config.epochs:
            log.info("all %d epochs were already trained; nothing left to train", config.epochs)
    elif resume:
        log.info("resume requested but %s does not exist; starting from scratch", path)
    rewrite_jsonl(history, out_dir / METRICS_NAME)
    return history


def _summary(history: list[dict[str, Any]], schedule: dict[str, Any]) -> dict[str, Any]:
    last = history[-1]
    return {
        "test_accuracy": last["test_accuracy"],
        "test_loss": last["test_loss"],
        "epochs": len(history),
        "wall_seconds": sum(record["epoch_seconds"] for record in history),
        "schedule": schedule,
        "history": history,
    }


def _last_lr(scheduler) -> float:
    """The lr the scheduler's most recent step trained with (factor at step last_epoch - 1)."""
    return scheduler.base_lrs[0] * scheduler.lr_lambdas[0](max(0, scheduler.last_epoch - 1))


def fit(
    model: nn.Module,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    on_epoch_start: Callable[[int, nn.Module], None] | None = None,
    on_batch_start: Callable[[int, int, int, nn.Module], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` on uint8 ``train`` images for ``config.epochs`` epochs.

    After every epoch, writes ``out_dir/checkpoint.pt`` atomically and appends one line to
    ``out_dir/metrics.jsonl`` (epoch (1-based), train/test loss and accuracy, lr of the epoch's
    first and last batch (``lr``, ``lr_last``), epoch_seconds).
    ``resume=True`` continues from the checkpoint (from scratch, logged, if there is none);
    the config must match the checkpoint's (``num_threads`` excepted). ``on_epoch_start`` is
    called with the 0-based epoch index and the model before each epoch, ``on_batch_start``
    as :func:`train_epoch` says before each batch. Seeds torch with
    ``config.seed`` first; model initialization is the caller's. Returns the summary:
    test_accuracy, test_loss, epochs, wall_seconds (all epochs, resumed ones too), schedule
    (:func:`lowbit.train.optim.schedule_record`: name, "per batch", steps), history.
    """
    data, test_data = as_dataset(train, "train"), as_dataset(test, "test")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    configure_threads(config.num_threads, model, data[0][:1], config.batch_size)
    torch.manual_seed(config.seed)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config)
    batches = math.ceil(len(data[1]) / config.batch_size)
    scheduler = make_scheduler(optimizer, config, batches)
    history = _start(model, optimizer, scheduler, config, out_dir, resume)
    for epoch in range(len(history), config.epochs):
        if on_epoch_start is not None:
            on_epoch_start(epoch, model)
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_accuracy = train_epoch(model, data, optimizer, config, epoch, progress,
                                                 on_batch_start, scheduler)
        test_loss, test_accuracy = evaluate(model, *test_data)
        record = {"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_accuracy,
                  "test_loss": test_loss, "test_accuracy": test_accuracy, "lr": lr,
                  "lr_last": _last_lr(scheduler), "epoch_seconds": time.perf_counter() - started}
        history.append(record)
        atomic_save(make_checkpoint(
            epoch=epoch + 1, model=model.state_dict(), optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(), torch_rng_state=torch.get_rng_state(),
            history=history, config=asdict(config), schedule_stepped=STEPPED),
            out_dir / CHECKPOINT_NAME)
        append_jsonl(record, out_dir / METRICS_NAME)
        log.info("%s", epoch_line(record, config.epochs, history))
    return _summary(history, schedule_record(config, batches))
