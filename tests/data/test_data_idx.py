"""IDX reader: the real MNIST files (if present) and synthetic good and bad files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from idx_helpers import SHARED, idx_bytes, write_idx

from lowbit.data.idx import parse_idx, read_idx, read_idx_pair
from lowbit.data.mnist import load_mnist
from lowbit.errors import DataError

MNIST = SHARED / "mnist"
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist_train():
    if not MNIST.is_dir():
        pytest.skip(f"MNIST not available at {MNIST}")
    return load_mnist(MNIST, "train")


def test_real_mnist_train(mnist_train):
    images, labels = mnist_train
    assert images.shape == (60000, 1, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    assert np.bincount(labels, minlength=10).tolist() == TRAIN_COUNTS
    counts = np.bincount(images.ravel(), minlength=256)  # exact stats without a float copy
    values = np.arange(256) / 255.0
    mean = (counts * values).sum() / counts.sum()
    std = np.sqrt((counts * (values - mean) ** 2).sum() / counts.sum())
    assert round(mean, 4) == 0.1307 and round(std, 4) == 0.3081


def test_real_mnist_test_labels():
    if not MNIST.is_dir():
        pytest.skip(f"MNIST not available at {MNIST}")
    labels = read_idx(MNIST / "t10k-labels-idx1-ubyte.gz", magic=2049)
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == TEST_COUNTS


def test_raw_and_gzip_read_the_same(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = read_idx(write_idx(tmp_path / "a-idx3-ubyte", array))
    gz = read_idx(write_idx(tmp_path / "b-idx3-ubyte.gz", array, gz=True))
    np.testing.assert_array_equal(raw, array)
    np.testing.assert_array_equal(gz, array)


@pytest.mark.parametrize(
    ("code", "dtype"), [(0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32), (0x0D, np.float32)]
)
def test_other_idx_dtypes_are_big_endian(code, dtype):
    array = np.array([[1, -2, 3], [4, 5, -6]], dtype=dtype)
    out = parse_idx(idx_bytes(array, dtype_code=code))
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, array)


def test_truncated_idx_names_the_file(tmp_path):
    path = tmp_path / "short-images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((4, 5, 5), np.uint8))[:-7])
    with pytest.raises(DataError, match="short-images-idx3-ubyte.*truncated"):
        read_idx(path)


def test_truncated_gzip_names_the_file(tmp_path):
    data = gzip.compress(idx_bytes(np.arange(600, dtype=np.uint8).reshape(6, 10, 10)))
    path = tmp_path / "cut-idx3-ubyte.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut-idx3-ubyte.gz"):
        read_idx(path)


def test_wrong_magic_names_the_file(tmp_path):
    labels = write_idx(tmp_path / "labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="labels-idx1-ubyte.*magic"):
        read_idx(labels, magic=2051)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(DataError, match="junk.bin"):
        read_idx(junk)


def test_label_count_mismatch(tmp_path):
    images = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((5, 2, 2), np.uint8))
    labels = write_idx(tmp_path / "y-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="y-idx1-ubyte.*4 labels.*5 images"):
        read_idx_pair(images, labels)


def test_missing_file_is_data_error(tmp_path):
    with pytest.raises(DataError, match="nothere-idx3-ubyte"):
        read_idx(tmp_path / "nothere-idx3-ubyte")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_mnist(tmp_path, "test")
