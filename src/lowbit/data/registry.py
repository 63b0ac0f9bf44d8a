"""``load_dataset(name, split, data_dir)``: one call from a dataset name to tensors in memory."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lowbit.data.cifar import NUM_CLASSES as CIFAR_CLASSES
from lowbit.data.cifar import load_cifar10
from lowbit.data.digits import NUM_CLASSES as DIGITS_CLASSES
from lowbit.data.digits import load_digits
from lowbit.data.mnist import NUM_CLASSES as MNIST_CLASSES
from lowbit.data.mnist import load_mnist
from lowbit.data.paths import require_dir, resolve_data_dir

DATASETS = ("mnist", "cifar10", "digits")
SPLITS = ("train", "test")

# Per-channel mean/std of the train pixels scaled to [0, 1] (see /work/shared/data/README.md).
# CIFAR-10's are fixed; an IDX ("mnist") dataset's are computed from its own train images.
_KNOWN_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.49139968, 0.48215841, 0.44653091), (0.24703223, 0.24348513, 0.26158784)),
}
_NUM_CLASSES = {"mnist": MNIST_CLASSES, "cifar10": CIFAR_CLASSES, "digits": DIGITS_CLASSES}


@dataclass(frozen=True)
class Dataset:
    """One split of a dataset, decoded into memory.

    ``images``: uint8 tensor (N, C, H, W); ``labels``: int64 tensor (N,); ``mean``/``std``: per
    channel, of the *train* pixels scaled to [0, 1]. Loads are cached, so the tensors are shared
    between calls: do not modify them in place.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.labels)


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images (N, C, H, W) scaled to [0, 1]."""
    x = images.astype(np.float64) / 255.0
    return tuple(x.mean(axis=(0, 2, 3)).tolist()), tuple(x.std(axis=(0, 2, 3)).tolist())


def load_dataset(name: str, split: str = "train", data_dir: str | Path | None = None) -> Dataset:
    """Load split "train" or "test" of "mnist", "cifar10" or "digits" (digits ignores data_dir).

    The data directory is found by ``resolve_data_dir``. Raises DataError (naming the path) for
    a missing directory or file or a corrupt file, ValueError for an unknown name or split.
    Results are cached per (name, split, directory) for the life of the process.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if name == "digits":
        return _load_cached(name, split, "")
    path = resolve_data_dir(name, data_dir).resolve()
    return _load_cached(name, split, str(path))


@functools.lru_cache(maxsize=16)
def _load_cached(name: str, split: str, directory: str) -> Dataset:
    if name == "digits":
        images, labels = load_digits(split)
        mean, std = _digits_stats()
    else:
        path = require_dir(name, Path(directory))
        loader = load_mnist if name == "mnist" else load_cifar10
        images, labels = loader(path, split)
        mean, std = _KNOWN_STATS[name] if name == "cifar10" else _idx_stats(directory)
    return Dataset(
        name=name,
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels),
        num_classes=_NUM_CLASSES[name],
        mean=mean,
        std=std,
    )


@functools.lru_cache(maxsize=8)
def _idx_stats(directory: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std of the train images of the IDX dataset in ``directory``, rounded to 4 decimals:
    the real MNIST gives its usual 0.1307 / 0.3081, any other set in the layout its own."""
    images = load_mnist(Path(directory), "train")[0]
    mean = float(np.mean(images, dtype=np.float64)) / 255.0
    std = float(np.std(images, dtype=np.float64)) / 255.0
    return (round(mean, 4),), (round(std, 4),)


@functools.lru_cache(maxsize=1)
def _digits_stats() -> tuple[tuple[float, ...], tuple[float, ...]]:
    return channel_stats(load_digits("train")[0])
