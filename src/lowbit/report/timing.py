"""Side-by-side timing of training steps: the one way benchmarks compare a quantized model with
its float twin on a shared, noisy machine (interleaved rounds, medians, ratios)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str = "fp32",
               channels_last: bool = False) -> Callable[[], None]:
    """One SGD step (forward, cross-entropy, backward, update) of ``model`` on ``(x, y)``,
    optionally under bf16 autocast and/or in channels-last format, as ``TrainConfig`` trains."""
    model.train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3,
                          momentum=0.9)
    bf16 = precision == "bf16"

    def step() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def seconds_per_call(fn: Callable[[], None], n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def interleaved_many(fns: dict[str, Callable[[], None]], rounds: int, calls: int,
                     warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of every function, ``rounds`` times: each round runs ``calls`` of each
    in turn (the first key first), after ``warmup`` calls of each."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(seconds_per_call(fn, calls))
    return times


def interleaved(base: Callable[[], None], other: Callable[[], None], rounds: int,
                calls: int, warmup: int = 2) -> dict:
    """Alternate ``calls`` of ``base`` and of ``other`` for ``rounds`` rounds; medians (s per
    call) and the ratio other/base: median of the per-round ratios and their min/max."""
    t = interleaved_many({"base": base, "other": other}, rounds, calls, warmup)
    ratios = [o / b for b, o in zip(t["base"], t["other"], strict=True)]
    return {"base_s": statistics.median(t["base"]), "other_s": statistics.median(t["other"]),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios),
            "ratio_max": max(ratios)}
