"""The lr schedule is stepped per batch (issue 12, item 5): closed forms, exact resume."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from train_synthetic import make_data, make_model

from lowbit.errors import CheckpointError
from lowbit.train import TrainConfig, fit, load_checkpoint
from lowbit.train.optim import make_optimizer, make_scheduler


class Interrupt(Exception):
    pass


def _lrs_seen(config: TrainConfig, batches: int) -> list[float]:
    opt = make_optimizer(nn.Linear(2, 2), config)
    sched = make_scheduler(opt, config, batches)
    out = []
    for _ in range(config.epochs * batches):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_is_per_batch_closed_form() -> None:
    config = TrainConfig(epochs=2, lr=0.1, optimizer="sgd", schedule="cosine")
    got = _lrs_seen(config, 5)
    total = 10
    assert got == pytest.approx([0.05 * (1 + math.cos(math.pi * t / total))
                                 for t in range(total)], rel=1e-12, abs=1e-15)
    assert got[4] > got[5]  # the lr falls inside an epoch, not only between epochs


def test_step_schedule_keeps_the_epoch_boundaries() -> None:
    config = TrainConfig(epochs=4, lr=1.0, optimizer="sgd", schedule="step")
    got = _lrs_seen(config, 3)  # milestones at epochs 2 and 3 -> steps 6 and 9
    assert got == pytest.approx([1.0] * 6 + [0.1] * 3 + [0.01] * 3)
    assert _lrs_seen(TrainConfig(epochs=2, lr=0.3, schedule="none"), 4) == [0.3] * 8


def _run(tmp, config, stop_at=None, resume=False):
    model = make_model(seed=5 if not resume else 77)  # a resumed run's weights come from disk
    train, test = make_data(48, seed=1), make_data(16, seed=2)

    def stop(epoch, m):
        if epoch == stop_at:
            raise Interrupt

    summary = fit(model, train, test, config, tmp, resume=resume, progress=False,
                  on_epoch_start=stop)
    return model, summary


def test_two_epochs_equal_one_plus_resume_and_lr_is_cosine(tmp_path) -> None:
    config = TrainConfig(epochs=2, batch_size=16, lr=0.05, optimizer="sgd", schedule="cosine",
                         seed=3)
    straight, full = _run(tmp_path / "a", config)
    with pytest.raises(Interrupt):
        _run(tmp_path / "b", config, stop_at=1)
    resumed, summary = _run(tmp_path / "b", config, resume=True)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    hist = summary["history"]
    assert [h["lr"] for h in hist] == [h["lr"] for h in full["history"]]
    total = 2 * 3  # 48 images / 16 per batch
    cos = [0.025 * (1 + math.cos(math.pi * t / total)) for t in range(total)]
    assert [h["lr"] for h in hist] == pytest.approx([cos[0], cos[3]])
    assert [h["lr_last"] for h in hist] == pytest.approx([cos[2], cos[5]])
    assert summary["schedule"] == {"name": "cosine", "stepped": "per batch",
                                   "batches_per_epoch": 3, "total_steps": 6, "base_lr": 0.05}
    state = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert state["scheduler"]["last_epoch"] == total


def test_checkpoint_from_per_epoch_stepping_is_refused(tmp_path) -> None:
    config = TrainConfig(epochs=2, batch_size=16, seed=3)
    with pytest.raises(Interrupt):
        _run(tmp_path, config, stop_at=1)
    path = tmp_path / "checkpoint.pt"
    state = load_checkpoint(path)
    del state["schedule_stepped"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="per epoch"):
        _run(tmp_path, config, resume=True)
