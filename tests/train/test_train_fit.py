"""fit(): determinism, exact resume, metrics file, checkpoints, NaN handling, learning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from train_synthetic import make_data, make_model

from lowbit.errors import CheckpointError
from lowbit.train import TrainConfig, evaluate, fit, load_checkpoint

CONFIG = TrainConfig(epochs=4, batch_size=16, lr=0.05, seed=3)


@pytest.fixture
def train_data() -> tuple[torch.Tensor, torch.Tensor]:
    return make_data(48, seed=1)


@pytest.fixture
def test_data() -> tuple[torch.Tensor, torch.Tensor]:
    return make_data(32, seed=2)


class Interrupt(Exception):
    pass


def _stop_at(stop_epoch: int):
    def callback(epoch: int, model: nn.Module) -> None:
        if epoch == stop_epoch:
            raise Interrupt
    return callback


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_seed_same_weights(tmp_path, train_data, test_data) -> None:
    a, b = make_model(), make_model()
    fit(a, train_data, test_data, CONFIG, tmp_path / "a", progress=False)
    fit(b, train_data, test_data, CONFIG, tmp_path / "b", progress=False)
    _assert_same_weights(a, b)
    c = make_model()
    fit(c, train_data, test_data, TrainConfig(epochs=4, batch_size=16, lr=0.05, seed=4),
        tmp_path / "c", progress=False)
    assert not torch.equal(a[1].weight, c[1].weight)


@pytest.mark.parametrize(("optimizer", "schedule"),
                         [("adam", "cosine"), ("sgd", "step"), ("sgd", "none")])
def test_resume_is_bit_exact(tmp_path, train_data, test_data, optimizer, schedule) -> None:
    config = TrainConfig(epochs=4, batch_size=16, lr=0.05, optimizer=optimizer,
                         schedule=schedule, weight_decay=1e-4, seed=3)
    straight = make_model()
    full = fit(straight, train_data, test_data, config, tmp_path / "a", progress=False)
    interrupted = make_model()
    with pytest.raises(Interrupt):
        fit(interrupted, train_data, test_data, config, tmp_path / "b", progress=False,
            on_epoch_start=_stop_at(2))
    assert len(_lines(tmp_path / "b" / "metrics.jsonl")) == 2
    resumed = make_model(seed=99)  # different init: the weights must come from the checkpoint
    seen: list[int] = []
    summary = fit(resumed, train_data, test_data, config, tmp_path / "b", resume=True,
                  progress=False, on_epoch_start=lambda e, m: seen.append(e))
    assert seen == [2, 3]
    _assert_same_weights(straight, resumed)
    lines = _lines(tmp_path / "b" / "metrics.jsonl")
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4]
    strip = [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in full["history"]]
    assert [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in lines] == strip
    assert summary["epochs"] == 4
    assert summary["wall_seconds"] == pytest.approx(sum(r["epoch_seconds"] for r in lines))


def test_metrics_lines_and_summary(tmp_path, train_data, test_data) -> None:
    summary = fit(make_model(), train_data, test_data, CONFIG, tmp_path, progress=False)
    lines = _lines(tmp_path / "metrics.jsonl")
    assert len(lines) == 4
    assert set(lines[0]) == {"epoch", "train_loss", "train_accuracy", "test_loss",
                             "test_accuracy", "lr", "lr_last", "epoch_seconds"}
    assert lines == summary["history"]
    assert summary["test_accuracy"] == lines[-1]["test_accuracy"]
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert lines[0]["lr"] == 0.05 and lines[-1]["lr"] < 0.05  # cosine schedule
    # resuming a finished run trains nothing and keeps exactly one line per epoch
    again = fit(make_model(), train_data, test_data, CONFIG, tmp_path, resume=True,
                progress=False)
    assert _lines(tmp_path / "metrics.jsonl") == lines
    assert again["history"] == summary["history"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "metrics.jsonl"]


def test_fresh_run_overwrites_stale_metrics(tmp_path, train_data, test_data) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 7}\n')
    fit(make_model(), train_data, test_data, TrainConfig(epochs=1, batch_size=16), tmp_path,
        progress=False)
    assert [r["epoch"] for r in _lines(tmp_path / "metrics.jsonl")] == [1]


def test_resume_without_checkpoint_starts_fresh(tmp_path, train_data, test_data, caplog):
    with caplog.at_level("INFO", logger="lowbit.train.loop"):
        summary = fit(make_model(), train_data, test_data, TrainConfig(epochs=1, batch_size=16),
                      tmp_path, resume=True, progress=False)
    assert summary["epochs"] == 1
    assert "starting from scratch" in caplog.text


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not_a_checkpoint"])
def test_corrupt_checkpoint_raises(tmp_path, train_data, test_data, damage) -> None:
    config = TrainConfig(epochs=2, batch_size=16)
    fit(make_model(), train_data, test_data, config, tmp_path, progress=False)
    path = tmp_path / "checkpoint.pt"
    if damage == "garbage":
        path.write_bytes(b"\x00not a zip file at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="checkpoint.pt"):
        fit(make_model(), train_data, test_data, config, tmp_path, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="checkpoint.pt"):
        load_checkpoint(path)


def test_resume_with_other_config_raises(tmp_path, train_data, test_data) -> None:
    fit(make_model(), train_data, test_data, TrainConfig(epochs=1, batch_size=16), tmp_path,
        progress=False)
    with pytest.raises(CheckpointError, match="lr"):
        fit(make_model(), train_data, test_data, TrainConfig(epochs=1, batch_size=16, lr=0.1),
            tmp_path, resume=True, progress=False)


def test_nan_loss_names_epoch_and_batch(tmp_path, train_data, test_data) -> None:
    model = make_model()
    calls = []

    def poison(epoch: int, m: nn.Module) -> None:
        calls.append(epoch)
        if epoch == 1:
            with torch.no_grad():
                m[4].bias.fill_(float("nan"))

    with pytest.raises(FloatingPointError, match="epoch 2, batch 1 of 3"):
        fit(model, train_data, test_data, TrainConfig(epochs=3, batch_size=16), tmp_path,
            progress=False, on_epoch_start=poison)
    assert calls == [0, 1]


def test_learning_happens(tmp_path) -> None:
    train, test = make_data(256, seed=5), make_data(64, seed=6)
    model = make_model()
    before, _ = evaluate(model, *test)
    summary = fit(model, train, test, TrainConfig(epochs=5, batch_size=32, lr=0.01),
                  tmp_path, progress=False)
    losses = [r["train_loss"] for r in summary["history"]]
    assert losses[-1] < losses[0]
    assert summary["test_loss"] < before
    assert summary["test_accuracy"] >= 0.95


def test_progress_bar_does_not_change_results(tmp_path, train_data, test_data) -> None:
    a, b = make_model(), make_model()
    fit(a, train_data, test_data, CONFIG, tmp_path / "a", progress=True)
    fit(b, train_data, test_data, CONFIG, tmp_path / "b", progress=False)
    _assert_same_weights(a, b)


def _conv_model(seed: int = 0) -> nn.Module:
    import lowbit
    from lowbit.recipe import Recipe

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    return lowbit.quantize(net, Recipe(weight="ivan", w_bits=2, act="ivan", a_bits=4))


def test_fast_path_with_augmentation_resumes_exactly_and_learns(tmp_path) -> None:
    """bf16 autocast + channels-last + crop-flip on a quantized conv net: resume is still bit
    exact (the augmentation draws from the epoch's generator), and the model learns."""
    def big(data):  # 16x16 images, so a 4-pixel shift keeps most of each one
        return data[0].repeat_interleave(4, 2).repeat_interleave(4, 3), data[1]

    train, test = big(make_data(128, seed=5)), big(make_data(64, seed=6))
    config = TrainConfig(epochs=4, batch_size=32, lr=0.05, augment="crop-flip",
                         precision="bf16", channels_last=True, seed=1)
    straight = _conv_model()
    full = fit(straight, train, test, config, tmp_path / "a", progress=False)
    with pytest.raises(Interrupt):
        fit(_conv_model(), train, test, config, tmp_path / "b", progress=False,
            on_epoch_start=_stop_at(2))
    resumed = _conv_model(seed=7)
    fit(resumed, train, test, config, tmp_path / "b", resume=True, progress=False)
    _assert_same_weights(straight, resumed)
    assert straight[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert full["test_accuracy"] >= 0.9
    plain = fit(_conv_model(), train, test, replace_config(config, augment="none"),
                tmp_path / "c", progress=False)
    assert plain["history"][0]["train_loss"] != full["history"][0]["train_loss"]


def replace_config(config: TrainConfig, **changes) -> TrainConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)


def test_checkpoint_from_before_new_fields_resumes(tmp_path, train_data, test_data) -> None:
    """A checkpoint whose stored config predates a field counts that field as its default."""
    config = TrainConfig(epochs=2, batch_size=16)
    with pytest.raises(Interrupt):
        fit(make_model(), train_data, test_data, config, tmp_path, progress=False,
            on_epoch_start=_stop_at(1))
    path = tmp_path / "checkpoint.pt"
    state = load_checkpoint(path)
    for key in ("augment", "precision", "channels_last"):
        del state["config"][key]
    torch.save(state, path)
    summary = fit(make_model(), train_data, test_data, config, tmp_path, resume=True,
                  progress=False)
    assert summary["epochs"] == 2
    with pytest.raises(CheckpointError, match="augment"):
        fit(make_model(), train_data, test_data,
            replace_config(config, augment="crop-flip"), tmp_path, resume=True,
            progress=False)
