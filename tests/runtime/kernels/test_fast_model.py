"""The keystone for the fast runtime: ``load(path, fast=True)`` computes what the reference
runtime computes -- the same logits bit for bit and the same accumulators -- for every path,
over seeds (layers a kernel serves with a stated rounding bound are compared with it)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lowbit.runtime as rt
from lowbit.exporter import export
from lowbit.runtime.fast import kernels

sys.path.insert(0, str(Path(__file__).parents[1]))
from test_model import CASES, SHAPES, _model  # noqa: E402


def _pair(arch, case, seed, tmp_path):
    path = export(_model(arch, case, seed), tmp_path / f"{arch}-{case}-{seed}.lowbit")
    return rt.load(path), rt.load(path, fast=True)


# LeNet300 over 2 seeds; ResNet-20 (its export dominates the suite's time) over one
RUNS = [("lenet300", s) for s in (0, 1)] + [("resnet20", 0)]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("arch,seed", RUNS)
def test_fast_equals_reference(arch, case, seed, tmp_path):
    ref, fast = _pair(arch, case, seed, tmp_path)
    n = 3 if arch == "resnet20" else 17
    x = torch.rand(n, *SHAPES[arch], generator=torch.Generator().manual_seed(seed)).numpy()
    t_ref, t_fast = {}, {}
    want, got = ref(x, trace=t_ref), fast(x, trace=t_fast)
    inexact = [ly for ly in fast.layers if ly.fast is not None
               and not getattr(ly.fast, "exact", True)]
    if inexact:  # float-activation kernels: their own bound is tested with the kernel
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    else:
        assert np.array_equal(got, want), kernels(fast)
    for name, rec in t_fast.items():
        if rec.get("acc") is not None and t_ref[name].get("acc") is not None:
            for a, b in zip(rec["acc"], t_ref[name]["acc"], strict=True):
                assert np.array_equal(np.asarray(a), np.asarray(b)), name
