"""The thread policy (lowbit.threads): a pure function of cores, load and work per step; the
explicit count always wins; the OpenMP wait policy is in the environment before torch loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lowbit import threads
from lowbit.models import build_model
from lowbit.threads import Machine, choose_threads, configure_threads
from lowbit.train import TrainConfig, fit

SRC = Path(__file__).resolve().parents[2] / "src"
LENET_MACS = 266_200 * 100  # LeNet300 on MNIST, batch 100 (forward)
RESNET_MACS = 40.8e6 * 128  # ResNet-20 on CIFAR-10, batch 128


@pytest.fixture(autouse=True)
def _keep_torch_threads(monkeypatch):
    for name in threads.USER_ENV:
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("cores", "busy", "macs", "expected"), [
    (2, 0, LENET_MACS, 1),     # a tiny model gains nothing from a 2nd thread, even quiet
    (2, 1, LENET_MACS, 1),
    (2, 0, RESNET_MACS, 2),    # quiet: both cores
    (2, 1, RESNET_MACS, 1),    # one core taken by another process
    (2, 3, RESNET_MACS, 1),    # never below 1
    (8, 2, RESNET_MACS, 6),
    (1.5, 0, RESNET_MACS, 1),  # a cgroup quota of 1.5 cores: 1 thread
    (4, 0, None, 4),           # unknown model: sized by cores and load only
])
def test_choose_threads(cores, busy, macs, expected):
    assert choose_threads(Machine(cores, busy), macs) == expected


def test_explicit_threads_always_win():
    quiet_big = Machine(cores=64, busy=0)
    assert configure_threads(1, machine=quiet_big) == 1 == torch.get_num_threads()
    net = _lenet()
    assert configure_threads(2, net, torch.zeros(1, 1, 28, 28), 100, Machine(2, 5)) == 2
    assert torch.get_num_threads() == 2


def test_user_omp_num_threads_is_left_alone(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    assert configure_threads(None, _lenet(), torch.zeros(1, 1, 28, 28), 100,
                             Machine(2, 1)) == 2


def test_step_macs_counts_linear_and_conv_without_touching_the_model():
    assert threads.step_macs(_lenet(), torch.zeros(1, 1, 28, 28), 100) == LENET_MACS
    resnet = build_model("resnet20", 3, 32, 10, [0.5] * 3, [0.25] * 3)
    state = {k: v.clone() for k, v in resnet.state_dict().items()}
    macs = threads.step_macs(resnet, torch.zeros(1, 3, 32, 32, dtype=torch.uint8), 1)
    assert 40e6 < macs < 42e6  # He et al. 2016: ~41M multiply-adds
    assert all(torch.equal(v, resnet.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize(("text", "cores"), [("max 100000\n", None), ("150000 100000\n", 1.5),
                                             ("200000 100000\n", 2.0)])
def test_cgroup_v2_quota(tmp_path, text, cores):
    (tmp_path / "cpu.max").write_text(text)
    assert threads.cgroup_cores(tmp_path) == cores


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cores(tmp_path) == 1.0
    assert threads.cgroup_cores(tmp_path / "none") is None
    assert threads.available_cores(tmp_path) == 1.0


def test_fit_picks_one_thread_for_lenet300_on_a_busy_two_core_machine(tmp_path, monkeypatch):
    """Regression (issue 7, item 2): fit() with num_threads=None left torch at 2 threads, and
    with one competing process a LeNet300 epoch took 156 s instead of 8.8 s."""
    monkeypatch.setattr(threads, "available_cores", lambda root=threads.CGROUP_ROOT: 2.0)
    monkeypatch.setattr(threads, "busy_cores", lambda *a, **k: 1.0)
    torch.set_num_threads(2)
    seen = []
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (200, 1, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (200,), generator=generator)
    fit(_lenet(), (images, labels), (images[:50], labels[:50]),
        TrainConfig(epochs=1, batch_size=100), tmp_path, progress=False,
        on_epoch_start=lambda epoch, model: seen.append(torch.get_num_threads()))
    assert seen == [1]


def test_numba_kernels_follow_the_choice(monkeypatch):
    """kernels/fused.py's _launch takes the serial compile when torch has one thread."""
    kernels = pytest.importorskip("lowbit.kernels.fused")
    if kernels.numba is None:
        pytest.skip("numba not installed")
    calls = []
    monkeypatch.setitem(kernels._KERNELS, "probe", (lambda *a: calls.append("serial"),
                                                    lambda *a: calls.append("parallel")))
    configure_threads(None, machine=Machine(2, 1))
    kernels._launch("probe", kernels.PARALLEL_MIN * 4)
    assert calls == ["serial"]


def _run_python(code: str, env: dict[str, str]) -> dict:
    env = {**{k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}, **env,
           "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


# Records OMP_WAIT_POLICY at the moment torch starts to import (its libgomp reads it then).
PROBE = """
import json, os, sys
seen = {}
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "at_torch" not in seen:
            seen["at_torch"] = os.environ.get("OMP_WAIT_POLICY")
        return None
sys.meta_path.insert(0, Spy())
import lowbit
assert "at_torch" not in seen  # lowbit's names are lazy: torch loads with the first of them
lowbit.quantize
print(json.dumps({**seen, "after": os.environ.get("OMP_WAIT_POLICY")}))
"""


def test_import_sets_passive_wait_before_torch():
    assert _run_python(PROBE, {}) == {"at_torch": "PASSIVE", "after": "PASSIVE"}


def test_import_keeps_the_users_wait_policy():
    got = _run_python(PROBE, {"OMP_WAIT_POLICY": "ACTIVE"})
    assert got == {"at_torch": "ACTIVE", "after": "ACTIVE"}


def _lenet() -> torch.nn.Module:
    return build_model("lenet300", 1, 28, 10, 0.1307, 0.3081)
