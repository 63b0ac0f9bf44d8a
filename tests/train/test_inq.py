"""INQ procedure: accumulated magnitude partitions, frozen weights, fit_inq with resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import LowbitError
from lowbit.functional.codebook import decode
from lowbit.functional.log2 import inq_quantize
from lowbit.train import TrainConfig
from lowbit.train.inq import fit_inq, inq_layers, inq_partition_


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable 1x4x4 uint8 images: class 1 bright, class 0 dark."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    noise = torch.randint(0, 106, (n, 1, 4, 4), generator=g)
    return (noise + 150 * labels.view(-1, 1, 1, 1)).to(torch.uint8), labels


def inq_model(seed: int = 0, bits: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
    return lowbit.quantize(model, lowbit.Recipe(weight="inq", w_bits=bits,
                                                keep_first=False, keep_last=False))


def test_partition_freezes_largest_magnitudes_accumulated():
    model = inq_model()
    _, layer, q = inq_layers(model)[0]
    w0 = layer.weight.detach().clone()
    counts = inq_partition_(model, 0.5)
    assert counts["1"] == 64 and q.frozen_fraction == 0.5
    frozen = q.frozen_mask
    assert float(w0.abs()[frozen].min()) >= float(w0.abs()[~frozen].max())
    n1, n2 = int(q.n1), q.n2
    expect = inq_quantize(w0, n1, n2)
    assert torch.equal(layer.weight.detach()[frozen], expect[frozen])  # float copy set too
    assert torch.equal(layer.weight.detach()[~frozen], w0[~frozen])
    assert inq_partition_(model, 0.75)["1"] == 32 and bool(q.frozen_mask[frozen].all())
    assert inq_partition_(model, 0.75)["1"] == 0  # idempotent
    assert inq_partition_(model, 1.0)["1"] == 32 and bool(q.frozen_mask.all())


def test_frozen_weights_get_no_gradient_and_ignore_weight_decay():
    model = inq_model()
    inq_partition_(model, 0.5)
    _, layer, q = inq_layers(model)[0]
    model(torch.rand(4, 1, 4, 4)).sum().backward()
    assert bool((layer.weight.grad[q.frozen_mask] == 0).all())
    assert bool((layer.weight.grad[~q.frozen_mask] != 0).any())
    before = layer.quantized_weight().detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.5)
    opt.step()
    after = layer.quantized_weight().detach()
    assert torch.equal(after[q.frozen_mask], before[q.frozen_mask])


def test_partition_errors():
    with pytest.raises(LowbitError, match="no INQ layer"):
        inq_partition_(nn.Sequential(nn.Linear(2, 2)), 0.5)
    with pytest.raises(ValueError):
        inq_partition_(inq_model(), 1.5)


def test_fit_inq_quantizes_everything_and_resumes_exactly(tmp_path):
    train, test = make_data(96, seed=1), make_data(32, seed=2)
    config = TrainConfig(epochs=1, batch_size=32, lr=0.01, schedule="none")
    model = inq_model()
    out = fit_inq(model, train, test, config, tmp_path / "a", portions=(0.5, 0.875, 1.0),
                  progress=False)
    assert [s["portion"] for s in out["steps"]] == [0.5, 0.875, 1.0]
    assert out["steps"][-1]["frozen_fraction"] == 1.0
    assert (tmp_path / "a" / "step1" / "checkpoint.pt").exists()
    assert (tmp_path / "a" / "step2" / "checkpoint.pt").exists()
    for _, layer, q in inq_layers(model):
        codes, codebook = q.encode(layer.weight)
        assert torch.equal(decode(codes, codebook), layer.quantized_weight())
        assert codebook.num_codes == 2 ** (5 - 1) + 1
    # resume after the run finished: nothing retrains, the same model comes back
    again = inq_model()
    out2 = fit_inq(again, train, test, config, tmp_path / "a", portions=(0.5, 0.875, 1.0),
                   resume=True, progress=False)
    assert out2["test_accuracy"] == out["test_accuracy"]
    for (_, a, _), (_, b, _) in zip(inq_layers(model), inq_layers(again), strict=True):
        assert torch.equal(a.quantized_weight(), b.quantized_weight())


def test_fit_inq_epochs_per_step_and_bad_portions(tmp_path):
    train, test = make_data(64, seed=1), make_data(16, seed=2)
    config = TrainConfig(epochs=5, batch_size=32, schedule="none")
    out = fit_inq(inq_model(), train, test, config, tmp_path, portions=(0.5, 1.0),
                  epochs_per_step=1, progress=False)
    assert out["steps"][0]["summary"]["epochs"] == 1
    for bad in [(0.5, 0.75), (0.75, 0.5, 1.0), (), (0.0, 1.0)]:
        with pytest.raises(ValueError):
            fit_inq(inq_model(), train, test, config, tmp_path, portions=bad)


def test_partition_with_channels_last_buffers_matches_contiguous():
    """model.to(channels_last) also converts INQ's 4-d mask/value buffers; partitioning must
    freeze the same weights to the same levels as in the contiguous layout."""
    from lowbit.quantizers.log2 import INQWeight

    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3) * 0.2
    a, b = INQWeight(5), INQWeight(5)
    a.init_from(w)
    b.init_from(w)
    wa, wb = w.clone(), w.clone().contiguous(memory_format=torch.channels_last)
    b.frozen_mask = b.frozen_mask.contiguous(memory_format=torch.channels_last)
    b.frozen_values = b.frozen_values.contiguous(memory_format=torch.channels_last)
    for portion in (0.5, 0.75, 1.0):
        assert a.partition_(wa, portion) == b.partition_(wb, portion)
        assert torch.equal(a.frozen_mask, b.frozen_mask)
        assert torch.equal(a.frozen_values, b.frozen_values) and torch.equal(wa, wb)
    assert torch.equal(a(wa), b(wb))


def test_each_retraining_step_draws_a_new_order(tmp_path, monkeypatch):
    """Issue 12 item 5: every step fits with its own seed, so shuffle/augmentation orders differ."""
    import lowbit.train.inq as inq
    from lowbit.data.batches import iterate_batches
    from lowbit.train.loop import shuffle_seed

    seeds = []
    real_fit = inq.fit

    def spy(model, train, test, config, out_dir, **kw):
        seeds.append(config.seed)
        return real_fit(model, train, test, config, out_dir, **kw)

    monkeypatch.setattr(inq, "fit", spy)
    train, test = make_data(64, seed=1), make_data(16, seed=2)
    config = TrainConfig(epochs=1, batch_size=8, lr=0.01, schedule="none", seed=7)
    fit_inq(inq_model(), train, test, config, tmp_path, portions=(0.5, 0.75, 0.875, 1.0),
            progress=False)
    assert seeds == [7, (7 + 0x9E3779B1) % 2**32, (7 + 2 * 0x9E3779B1) % 2**32]
    assert seeds[0] == inq.step_seed(7, 1) and len(set(seeds)) == 3

    def order(seed):  # the sample indices of the first epoch in fit()'s shuffled order
        g = torch.Generator().manual_seed(shuffle_seed(seed, 0))
        dummy = torch.zeros(64, 1, 1, 1, dtype=torch.uint8)
        return torch.cat([i for _, i in iterate_batches(dummy, torch.arange(64), 8, True, g)])

    perms = [order(s) for s in seeds]
    assert all(sorted(p.tolist()) == list(range(64)) for p in perms)
    assert not torch.equal(perms[0], perms[1]) and not torch.equal(perms[1], perms[2])
    assert not torch.equal(perms[0], perms[2])
