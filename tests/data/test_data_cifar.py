"""CIFAR-10 binary reader: real batch files (if present) and synthetic bad files."""

from __future__ import annotations

import numpy as np
import pytest
from idx_helpers import SHARED

from lowbit.data.cifar import RECORD_BYTES, load_cifar10, read_cifar_batch
from lowbit.errors import DataError

CIFAR = SHARED / "cifar-10"


def _need_cifar():
    if not CIFAR.is_dir():
        pytest.skip(f"CIFAR-10 not available at {CIFAR}")


def test_real_first_training_batch():
    _need_cifar()
    images, labels = read_cifar_batch(CIFAR / "data_batch_1.bin")
    assert images.shape == (10000, 3, 32, 32) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    assert labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert np.bincount(labels).tolist() == [1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981]
    # Record bytes per the README: the red plane begins 59, 43, 50; the blue one ends 140, 84, 72.
    assert images[0, 0, 0, :3].tolist() == [59, 43, 50]
    assert images[0, 2, -1, -3:].tolist() == [140, 84, 72]
    assert images[-1, 0, 0, :3].tolist() == [62, 61, 60]
    assert images[-1, 2, -1, -3:].tolist() == [130, 130, 131]


def test_real_test_split():
    _need_cifar()
    images, labels = load_cifar10(CIFAR, "test")
    assert images.shape == (10000, 3, 32, 32)
    assert labels[:16].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8]
    assert images[0, 0, 0, :9].tolist() == [158, 159, 165, 166, 160, 156, 162, 159, 158]
    assert np.bincount(labels).tolist() == [1000] * 10


def test_synthetic_planes_are_rgb(tmp_path):
    record = np.zeros(RECORD_BYTES, np.uint8)
    record[0] = 7
    record[1 : 1 + 1024] = 10  # red
    record[1025 : 1025 + 1024] = 20  # green
    record[2049:] = 30  # blue
    record[1 + 32] = 99  # red, row 1, col 0
    path = tmp_path / "one.bin"
    path.write_bytes(np.tile(record, 2).tobytes())
    images, labels = read_cifar_batch(path)
    assert labels.tolist() == [7, 7]
    assert images[0, :, 0, 0].tolist() == [10, 20, 30]
    assert images[1, 0, 1, 0] == 99


def test_bad_length_names_the_file(tmp_path):
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(bytes(RECORD_BYTES * 2 - 5))
    with pytest.raises(DataError, match="data_batch_1.bin.*3073"):
        read_cifar_batch(path)


def test_label_out_of_range(tmp_path):
    records = np.zeros((3, RECORD_BYTES), np.uint8)
    records[2, 0] = 10
    path = tmp_path / "test_batch.bin"
    path.write_bytes(records.tobytes())
    with pytest.raises(DataError, match="test_batch.bin.*label 10 of record 2"):
        read_cifar_batch(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="test_batch.bin.*lowbit data download cifar10"):
        load_cifar10(tmp_path, "test")
