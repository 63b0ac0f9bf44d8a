"""Bad dataset folders give a DataError naming the file at load time, never a raw traceback
(an IndexError after an epoch, a numpy warning and a NaN std, a KeyError, ...)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from idx_helpers import idx_bytes, write_idx

from lowbit.data import load_dataset
from lowbit.data.cifar import RECORD_BYTES
from lowbit.data.mnist import load_mnist
from lowbit.errors import DataError

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def write_idx_set(folder, n_train=6, n_test=4, train_labels=None):
    """A small MNIST-layout folder (4x4 images); returns it."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = FILES[split]
        write_idx(folder / images, rng.integers(0, 256, (n, 4, 4), dtype=np.uint8))
        values = rng.integers(0, 10, n) if split == "test" or train_labels is None else train_labels
        write_idx(folder / labels, np.asarray(values, dtype=np.uint8))
    return folder


def strict_load(*args):
    """load_dataset with every warning turned into an error (numpy's 'mean of empty slice')."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_dataset(*args)


@pytest.mark.parametrize("split", ["train", "test"])
def test_idx_label_outside_class_range_is_caught_at_load(tmp_path, split):
    write_idx_set(tmp_path, train_labels=[0, 9, 3, 10, 200, 1])
    with pytest.raises(DataError) as info:  # test split: its stats need the train set
        strict_load("mnist", split, tmp_path)
    message = str(info.value)
    assert "train-labels-idx1-ubyte" in message
    assert "label 10 of record 3" in message and "0..9" in message and "2 of 6" in message


def test_load_mnist_takes_the_class_count(tmp_path):
    write_idx_set(tmp_path, train_labels=[0, 1, 2, 0, 1, 2])
    assert load_mnist(tmp_path, "train", num_classes=3)[1].max() == 2
    with pytest.raises(DataError, match="label 2 of record 2 is outside 0..1"):
        load_mnist(tmp_path, "train", num_classes=2)


@pytest.mark.parametrize("split", ["train", "test"])
def test_empty_idx_train_set_says_so(tmp_path, split):
    write_idx_set(tmp_path, n_train=0)
    with pytest.raises(DataError, match="train set is empty.*train-images-idx3-ubyte"):
        strict_load("mnist", split, tmp_path)


def test_empty_idx_test_set_says_so(tmp_path):
    write_idx_set(tmp_path, n_test=0)
    assert len(strict_load("mnist", "train", tmp_path)) == 6
    with pytest.raises(DataError, match="test set is empty.*t10k-images-idx3-ubyte"):
        strict_load("mnist", "test", tmp_path)


@pytest.mark.parametrize("missing", [name for pair in FILES.values() for name in pair])
def test_folder_missing_one_idx_file_names_it(tmp_path, missing):
    write_idx_set(tmp_path)
    (tmp_path / missing).unlink()
    split = "train" if missing.startswith("train") else "test"
    with pytest.raises(DataError, match=f"{missing}.*lowbit data download mnist"):
        strict_load("mnist", split, tmp_path)


def _cut(path):
    path.write_bytes(path.read_bytes()[:-5])


def _swap_magic(path):
    path.write_bytes(idx_bytes(np.zeros((6, 4, 4), np.uint8)))  # an images file


def _fewer_labels(path):
    write_idx(path, np.zeros(5, np.uint8))


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (_cut, "train-labels-idx1-ubyte.*truncated"),
        (_swap_magic, "train-labels-idx1-ubyte.*wrong IDX magic number 2051.*expected 2049"),
        (_fewer_labels, "train-labels-idx1-ubyte: 5 labels but .*train-images-idx3-ubyte has 6"),
    ],
    ids=["truncated", "wrong-magic", "count-mismatch"],
)
def test_damaged_idx_file_through_load_dataset(tmp_path, damage, match):
    write_idx_set(tmp_path)
    damage(tmp_path / "train-labels-idx1-ubyte")
    with pytest.raises(DataError, match=match):
        strict_load("mnist", "train", tmp_path)


def write_cifar_set(folder, records=2):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name in names:
        data = rng.integers(0, 256, (records, RECORD_BYTES), dtype=np.uint8)
        data[:, 0] %= 10
        (folder / name).write_bytes(data.tobytes())
    return folder


def test_cifar_folder_missing_one_batch_names_it(tmp_path):
    complete, broken = (write_cifar_set(tmp_path / d) for d in ("complete", "broken"))
    assert len(strict_load("cifar10", "train", complete)) == 10
    (broken / "data_batch_3.bin").unlink()
    with pytest.raises(DataError, match="data_batch_3.bin.*lowbit data download cifar10"):
        strict_load("cifar10", "train", broken)


def test_empty_cifar_batch_says_empty(tmp_path):
    write_cifar_set(tmp_path)
    (tmp_path / "test_batch.bin").write_bytes(b"")
    with pytest.raises(DataError, match="test_batch.bin.*empty"):
        strict_load("cifar10", "test", tmp_path)
