"""One intra-op thread for the PTQ tests (other jobs share the CPU; the timings in the task
are at one thread), restored after each test."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def float_model(tmp_path_factory):
    """A float LeNet300 trained 2 epochs on the bundled digits (shared by the PTQ CLI tests)."""
    from lowbit.cli import main

    out = tmp_path_factory.mktemp("float") / "run"
    assert main(["train", "--model", "lenet300", "--dataset", "digits", "--epochs", "2",
                 "--batch-size", "64", "--no-progress", "--out", str(out)]) == 0
    return out / "model.pt"
