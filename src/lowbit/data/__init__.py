"""Datasets for lowbit: MNIST-style IDX files, CIFAR-10 (binary) and the bundled 8x8 digits.

``load_dataset(name, split, data_dir)`` decodes a split into uint8 tensors (cached per process),
``iterate_batches`` turns them into float batches, ``download`` fetches and verifies the files.
"""

from lowbit.data.batches import iterate_batches
from lowbit.data.download import download
from lowbit.data.paths import resolve_data_dir
from lowbit.data.registry import Dataset, load_dataset

__all__ = ["Dataset", "download", "iterate_batches", "load_dataset", "resolve_data_dir"]
