"""TrainConfig validation, atomic_save, the batch iterator and evaluate()."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from train_synthetic import make_data, make_model

from lowbit.train import TrainConfig, atomic_save, evaluate
from lowbit.train.loop import shuffle_seed


@pytest.mark.parametrize(
    ("field", "value"),
    [("epochs", 0), ("epochs", 2.0), ("epochs", True), ("batch_size", -1), ("lr", 0.0),
     ("lr", float("nan")), ("optimizer", "rmsprop"), ("momentum", 1.0), ("weight_decay", -1e-4),
     ("schedule", "linear"), ("seed", -1), ("seed", 2**32), ("label_smoothing", 1.0),
     ("num_threads", 0), ("augment", "mixup"), ("precision", "fp16"), ("channels_last", 1)],
)
def test_config_rejects(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_config_is_frozen() -> None:
    config = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0  # type: ignore[misc]


def test_atomic_save_replaces_and_leaves_no_temp(tmp_path) -> None:
    path = tmp_path / "model.pt"
    atomic_save({"a": torch.arange(3)}, path)
    atomic_save({"a": torch.arange(4)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.arange(4))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_atomic_save_gives_the_umask_mode_not_0600(tmp_path) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        atomic_save({"a": 1}, tmp_path / "m.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.pt").stat().st_mode) == 0o644


def test_atomic_save_failure_keeps_old_file(tmp_path) -> None:
    path = tmp_path / "model.pt"
    atomic_save({"a": torch.arange(3)}, path)
    with pytest.raises(Exception):  # noqa: B017 - lambdas cannot be pickled; any error will do
        atomic_save({"bad": lambda: 0}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_shuffle_seeds_do_not_overlap_across_runs() -> None:
    seeds = {shuffle_seed(s, e) for s in range(5) for e in range(100)}
    assert len(seeds) == 500


def test_evaluate_matches_manual_and_restores_mode() -> None:
    images, labels = make_data(25, seed=0)
    model = make_model().train()
    loss, accuracy = evaluate(model, images, labels, batch_size=7)
    assert model.training
    model.eval()
    with torch.no_grad():
        logits = model(images.float() / 255)
    torch.testing.assert_close(loss, nn.functional.cross_entropy(logits, labels).item())
    assert accuracy == int((logits.argmax(1) == labels).sum()) / 25


def test_evaluate_rejects_float_images() -> None:
    images, labels = make_data(4, seed=0)
    with pytest.raises(ValueError, match="uint8"):
        evaluate(make_model(), images.float(), labels)


def test_shuffle_orders_differ_for_seeds_4096_apart() -> None:
    """torch keeps 32 bits of a generator's seed: the old ``(seed << 20) + epoch`` gave seeds
    0 and 4096 one order."""
    orders = [torch.randperm(50, generator=torch.Generator().manual_seed(shuffle_seed(s, 1)))
              for s in (0, 4096, 2**32)]
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[0], orders[2])
