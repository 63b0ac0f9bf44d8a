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
