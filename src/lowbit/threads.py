"""How many threads training uses when the user did not say: sized to the model's work per step,
the cores this process may really use and what else is running on them.

Why: torch's intra-op pool is OpenMP; every parallel op ends at a barrier that waits for all its
threads. When another process holds one of two cores, the second thread is off-core for a
scheduler slice (4-8 ms) at many barriers, and a 2 ms step becomes tens of ms (issue 7, item 2).

Rule (:func:`choose_threads`; numbers from benchmarks/results/threads_under_load):
1. An explicit count (``--threads``, ``TrainConfig.num_threads``) always wins; so does
   ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` in the environment (torch's count is left alone).
2. A step of less than ``SMALL_STEP_MACS`` = 5e8 forward multiply-accumulates (LeNet300 at batch
   100: 2.7e7; at batch 1000: 2.7e8) runs on 1 thread: its ops are too short for a 2nd thread.
3. Otherwise: the cores this process may use (CPU affinity, capped by the cgroup quota) minus
   those other processes keep busy right now (runnable tasks in ``/proc/loadavg``), at least 1.
   ResNet-20 at batch 128 (5.2e9) gets both cores of an idle 2-vCPU machine.

The numbers (benchmarks/threads_under_load, 2-vCPU Sapphire Rapids, torch 2.13 with its bundled
libgomp; other users kept the load average at 6-8 throughout, so "no competitor" is not quiet):
- libgomp's default wait (spin ~300k iterations, then sleep) is the disaster, and PASSIVE fixes
  it: with one competing busy loop, a LeNet300 quarter-epoch at 2 threads took 303 ms per step
  (142 s per epoch) spinning, 16.3 ms (10.6 s) passive, 14.3 ms (6.1 s) at 1 thread; ResNet-20
  7.8 s per step spinning, 1.36 s passive, 1.9-2.3 s at 1 thread. At 1 thread the wait policy
  does not matter (medians within the run's noise, 1.0-1.2x either way).
- LeNet300 batch 100 without a competitor: 1 thread 1.9-2.9 ms, 2 passive threads 2.9-5.3 ms
  (1.5-1.8x slower), hence rule 2; with one, 5.9-14 ms against 3.1-16 ms (no clear winner).
- Above the threshold 1 and 2 passive threads are within 1.2-1.7x of each other, the winner
  changing with the load (ResNet-20 without a competitor: 1.04 s at 1 thread, 1.47 s at 2;
  with one: 1.9-2.3 s against 1.36 s), hence rule 3 counts the cores that are free.
Not measured: a quiet machine (none was available), AMD Zen 4.

``lowbit/__init__.py`` also sets ``OMP_WAIT_POLICY=PASSIVE`` (unless the user set it) before
torch loads its OpenMP runtime: a thread that waits at a barrier sleeps instead of spinning, so it
gives its core to the thread it waits for. numba's parallel kernels (``kernels/fused.py``)
follow ``torch.get_num_threads()``, so the choice made here reaches them too.
Test: tests/core/test_threads.py.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

# Work per training step (forward multiply-accumulates x batch) below which one thread is
# fastest even on a quiet machine.
SMALL_STEP_MACS = 500e6
CGROUP_ROOT = Path("/sys/fs/cgroup")
USER_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class Machine:
    """What the policy looks at: ``cores`` this process may use (affinity, cgroup quota) and
    ``busy`` = how many of them other processes keep busy right now."""

    cores: float
    busy: float


def cgroup_cores(root: Path = CGROUP_ROOT) -> float | None:
    """The cgroup CPU quota in cores (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), None if none."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1"):
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def available_cores(root: Path = CGROUP_ROOT) -> float:
    """The cores this process may run on: its CPU affinity, capped by the cgroup quota."""
    cores = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                  else os.cpu_count() or 1)
    quota = cgroup_cores(root)
    return min(cores, quota) if quota else cores


def busy_cores(samples: int = 5, interval: float = 0.01) -> float:
    """How many cores other processes are using now: the median over ``samples`` reads of the
    runnable-task count in ``/proc/loadavg`` (minus this reading thread). The 1-minute load
    average is the fallback only: it lags a new competitor by a minute and counts this
    process's own earlier runs (``lowbit demo`` trains five models in a row)."""
    counts = []
    for i in range(samples):
        try:
            running = Path("/proc/loadavg").read_text().split()[3].split("/")[0]
            counts.append(max(int(running) - 1, 0))
        except (OSError, IndexError, ValueError):
            return max(os.getloadavg()[0] - 1.0, 0.0) if hasattr(os, "getloadavg") else 0.0
        if i + 1 < samples:
            time.sleep(interval)
    return float(statistics.median(counts))


def step_macs(model: nn.Module, example: torch.Tensor, batch_size: int) -> float:
    """Forward multiply-accumulates of one training step: Linear/Conv MACs of ``example`` (one
    sample) x ``batch_size``, counted on a float copy (quantization off) without its hooks, so
    that no quantizer state is touched and no caller's hook or quantizer sees this forward."""
    twin, total = copy.deepcopy(model), [0]
    for m in twin.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
        if hasattr(m, "quant_enabled"):  # the float computation: the same shapes, no
            m.quant_enabled = False       # quantizer runs (nor its first-call init)

    def count(module: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        total[0] += out.numel() * module.weight[0].numel()

    hooks = [m.register_forward_hook(count) for m in twin.modules()
             if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    twin.eval()
    with torch.no_grad():
        twin(example[:1].float())
    for hook in hooks:
        hook.remove()
    return float(total[0] * batch_size)


def choose_threads(machine: Machine, macs: float | None) -> int:
    """The thread count of the rule in the module docstring (a pure function)."""
    cores = max(int(math.floor(machine.cores)), 1)
    if macs is not None and macs < SMALL_STEP_MACS:
        return 1
    free = cores - machine.busy
    return max(1, min(cores, int(math.floor(free + 0.5))))


def configure_threads(requested: int | None, model: nn.Module | None = None,
                      example: torch.Tensor | None = None, batch_size: int = 1,
                      machine: Machine | None = None) -> int:
    """Set torch's intra-op thread count and return it. ``requested`` (``--threads``) always
    wins; so does ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` in the environment (torch's count is
    left alone). Otherwise :func:`choose_threads` on ``machine`` (measured if None) and the work
    of ``model`` on ``example`` inputs at ``batch_size`` (None/unknown: sized by cores only)."""
    if requested is not None:
        torch.set_num_threads(requested)
        return requested
    if any(os.environ.get(name) for name in USER_ENV):
        return torch.get_num_threads()
    macs = None
    on_cpu = model is not None and all(p.device.type == "cpu" for p in model.parameters())
    if on_cpu and example is not None:
        try:
            macs = step_macs(model, example, batch_size)
        except (RuntimeError, ValueError, TypeError) as error:  # training will say it better
            log.info("threads: could not size the model (%s); sizing by cores only", error)
    machine = machine or Machine(available_cores(), busy_cores())
    threads = choose_threads(machine, macs)
    torch.set_num_threads(threads)
    log.info("threads: %d (cores %.1f, busy %.1f, %s MACs per step)", threads, machine.cores,
             machine.busy, "unknown" if macs is None else f"{macs:.3g}")
    return threads
