"""load_dataset, resolve_data_dir precedence, the in-memory cache and iterate_batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from idx_helpers import write_idx

import lowbit.data.paths as paths
from lowbit.data import Dataset, iterate_batches, load_dataset, resolve_data_dir
from lowbit.errors import DataError


def test_resolve_precedence(tmp_path, monkeypatch):
    fake_root = tmp_path / "checkout" / "main"
    (fake_root.parent / "shared" / "data" / "cifar-10").mkdir(parents=True)
    monkeypatch.setattr(paths, "repo_root", lambda: fake_root)
    monkeypatch.delenv("LOWBIT_DATA", raising=False)
    repo_default = fake_root.parent / "shared" / "data" / "cifar-10"
    assert resolve_data_dir("cifar10") == repo_default
    monkeypatch.setenv("LOWBIT_DATA", str(tmp_path / "env"))
    assert resolve_data_dir("cifar10") == tmp_path / "env" / "cifar-10"
    assert resolve_data_dir("mnist") == tmp_path / "env" / "mnist"
    assert resolve_data_dir("cifar10", tmp_path / "mine") == tmp_path / "mine"
    assert resolve_data_dir("mnist", str(tmp_path)) == tmp_path


def test_resolve_falls_back_to_user_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "repo_root", lambda: None)
    monkeypatch.delenv("LOWBIT_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_data_dir("mnist") == tmp_path / ".cache" / "lowbit" / "data" / "mnist"


def test_unknown_names():
    with pytest.raises(ValueError, match="imagenet"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="val"):
        load_dataset("digits", "val")


def test_missing_directory_says_how_to_get_data(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere.*lowbit data download mnist.*--data-dir"):
        load_dataset("mnist", data_dir=missing)


def test_idx_layout_dataset_in_a_folder(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 7, dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, gz=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):  # stats need the train set
        load_dataset("mnist", "test", data_dir=tmp_path)
    train = rng.integers(0, 64, (5, 28, 28), dtype=np.uint8)  # darker than MNIST
    write_idx(tmp_path / "train-images-idx3-ubyte", train)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels[:5])
    ds = load_dataset("mnist", "test", data_dir=tmp_path)
    assert isinstance(ds, Dataset) and len(ds) == 7 and ds.num_classes == 10
    assert ds.images.shape == (7, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64
    np.testing.assert_array_equal(ds.images[:, 0].numpy(), images)
    # normalisation statistics are this dataset's own (train split), not MNIST's
    assert ds.mean == (round(float(train.mean()) / 255, 4),)
    assert ds.std == (round(float(train.std()) / 255, 4),)
    assert ds.mean != (0.1307,)
    assert load_dataset("mnist", "test", data_dir=str(tmp_path)) is ds  # cached


def test_digits():
    train, test = load_dataset("digits"), load_dataset("digits", "test")
    assert train.images.shape == (1437, 1, 8, 8) and test.images.shape == (360, 1, 8, 8)
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255
    assert set(train.labels.tolist()) == set(range(10))
    x = train.images.double() / 255
    assert train.mean[0] == pytest.approx(x.mean().item())
    assert train.std[0] == pytest.approx(x.std(unbiased=False).item())
    assert test.mean == train.mean
    from sklearn.datasets import load_digits

    sk = load_digits()
    both = torch.cat([train.images, test.images]).reshape(-1, 64).numpy()
    assert sorted(map(bytes, both)) == sorted(
        map(bytes, np.rint(sk.data * 255 / 16).astype(np.uint8))
    )


def _dummy(n=10):
    images = torch.arange(n * 4, dtype=torch.uint8).reshape(n, 1, 2, 2)
    return images, torch.arange(n)


def test_iterate_batches_in_order():
    images, labels = _dummy()
    batches = list(iterate_batches(images, labels, 4, shuffle=False))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    x, y = batches[0]
    assert x.dtype == torch.float32 and y.tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(x, images[:4].float() / 255)
    assert len(list(iterate_batches(images, labels, 4, False, drop_last=True))) == 2


def test_iterate_batches_shuffle_is_deterministic():
    images, labels = _dummy()

    def order(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.cat([y for _, y in iterate_batches(images, labels, 3, True, g)]).tolist()

    assert order(1) == order(1)
    assert sorted(order(1)) == list(range(10))
    assert order(1) != order(2)
    for x, y in iterate_batches(images, labels, 3, True, torch.Generator().manual_seed(0)):
        torch.testing.assert_close(x, images[y].float() / 255)


def test_iterate_batches_checks_arguments_eagerly():
    images, labels = _dummy()
    with pytest.raises(ValueError, match="batch_size"):
        iterate_batches(images, labels, 0, False)
    with pytest.raises(ValueError, match="labels"):
        iterate_batches(images, labels[:3], 2, False)
    with pytest.raises(TypeError, match="uint8"):
        iterate_batches(images.float(), labels, 2, False)


def test_repo_root_is_this_checkout():
    root = paths.repo_root()
    assert root is not None and (root / "pyproject.toml").is_file()
    assert Path(paths.__file__).resolve().is_relative_to(root)
