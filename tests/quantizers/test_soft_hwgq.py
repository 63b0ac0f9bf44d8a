"""SoftWeight/SoftAct (qnet), HWGQAct (hwgq), registry entries and lowbit.train.qnet."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import BitsError, MethodError
from lowbit.functional.codebook import decode
from lowbit.functional.hwgq import HWGQBackward, LevelFit
from lowbit.nn.layers import QuantAct
from lowbit.quantizers.hwgq import HWGQAct
from lowbit.quantizers.registry import make_act_quantizer, make_weight_quantizer
from lowbit.quantizers.soft import SoftAct, SoftWeight
from lowbit.train.config import TrainConfig
from lowbit.train.qnet import (
    PAPER_PHASES,
    calibrate_activations,
    fit_qnet,
    qnet_batch_callback,
    qnet_epoch_callback,
    set_hard,
    set_temperature,
    temperature_schedule,
)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5])
def test_soft_weight_encode_decode_equals_hard_forward(bits):
    gen = torch.Generator().manual_seed(bits)
    w = torch.randn(16, 9, generator=gen) * 0.1
    q = SoftWeight(bits)
    q.init_from(w)
    q.hard = True
    codes, codebook = q.encode(w)
    assert codes.dtype == torch.int64 and 0 <= int(codes.min()) and int(codes.max()) < 2**bits
    assert codebook.num_codes <= 2**bits and codebook.bits == bits
    assert torch.equal(decode(codes, codebook), q(w))
    q.hard = False
    q.temperature.fill_(1e4)
    torch.testing.assert_close(q(w), decode(codes, codebook), atol=1e-3, rtol=0)


def test_bits_rejected_clearly():
    for bits in (0, 6, 8):
        with pytest.raises(BitsError):
            SoftWeight(bits)
        with pytest.raises(BitsError):
            make_weight_quantizer("qnet", bits)
    with pytest.raises(BitsError):
        make_act_quantizer("hwgq", 9)
    with pytest.raises(MethodError):
        make_weight_quantizer("hwgq", 2)
    with pytest.raises(TypeError):
        HWGQAct(2, backward="clipped")


def test_module_flags_and_defaults():
    assert SoftAct.REPLACES_ACTIVATION is False and HWGQAct.REPLACES_ACTIVATION is True
    assert SoftWeight(1).grad_temperature == 1.0 and SoftWeight(2).grad_temperature is None
    a = SoftAct(2)
    assert a.levels.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert not isinstance(a.biases, nn.Parameter)  # frozen (sec. 4.3)
    assert isinstance(SoftAct(2, learn_biases=True).biases, nn.Parameter)
    h = HWGQAct(2, HWGQBackward.LOG_TAILED, LevelFit.LLOYD)
    assert h.levels.numel() == 3 and "LOG_TAILED" in repr(h)


def test_soft_act_calibrate():
    x = torch.relu(torch.randn(5000, generator=torch.Generator().manual_seed(0)))
    a = SoftAct(2)
    a.calibrate(x)
    beta = 5 * 3 / (4 * float(x.max()))
    assert float(a.beta.detach()) == pytest.approx(beta)
    assert float(a.alpha.detach()) == pytest.approx(1 / beta)
    assert bool((a.biases[1:] > a.biases[:-1]).all())
    a.hard = True
    y = a(x)
    assert set(torch.unique(y / a.alpha).round().tolist()) <= {0.0, 1.0, 2.0, 3.0}


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))


@pytest.mark.parametrize("weight,w_bits,act,a_bits", [
    ("qnet", 3, "qnet", 2), ("qnet", 1, "qnet", 1), ("qnet", 5, "hwgq", 2), ("xnor", 1, "hwgq", 2),
])
def test_end_to_end_grads_finite(weight, w_bits, act, a_bits):
    model = lowbit.quantize(mlp(), lowbit.Recipe(weight=weight, w_bits=w_bits, act=act,
                                                 a_bits=a_bits, keep_first=False, keep_last=False))
    set_temperature(model, 5.0)
    x = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    model(x).pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_schedule_callback_and_switches():
    assert temperature_schedule(0, 10) == 10.0 and temperature_schedule(4, 5) == 25.0
    for bad in ((-1, 10), (0, 0), (0, float("inf")), (1.0, 10)):
        with pytest.raises(ValueError):
            temperature_schedule(*bad)
    model = lowbit.quantize(mlp(), lowbit.Recipe(weight="qnet", w_bits=2, act="qnet", a_bits=2,
                                                 keep_first=False, keep_last=False))
    qnet_epoch_callback(10, offset=3, kinds=(SoftWeight,))(1, model)
    ts = {type(m): float(m.temperature) for m in model.modules() if hasattr(m, "temperature")}
    assert ts == {SoftWeight: 50.0, SoftAct: 1.0}
    assert set_hard(model, True) == 3
    assert all(m.hard for m in model.modules() if isinstance(m, (SoftWeight, SoftAct)))
    # per-step ramp: T reaches the per-epoch value at the epoch's last step
    assert temperature_schedule(2, 10, 0.5) == 25.0
    with pytest.raises(ValueError):
        temperature_schedule(0, 10, 0.0)
    qnet_batch_callback(10, offset=3, kinds=(SoftAct,))(1, 0, 4, model)
    ts = {type(m): float(m.temperature) for m in model.modules() if hasattr(m, "temperature")}
    assert ts == {SoftWeight: 50.0, SoftAct: 42.5}


def images(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 1, 4, 4), generator=gen, dtype=torch.uint8),
            torch.randint(0, 3, (n,), generator=gen))


def test_calibrate_activations_uses_relu_outputs():
    model = lowbit.quantize(mlp(), lowbit.Recipe(weight="qnet", w_bits=2, act="qnet", a_bits=2,
                                                 keep_first=False, keep_last=False))
    x, _ = images(64, 2)
    assert calibrate_activations(model, x, n=50, generator=torch.Generator().manual_seed(0)) == 1
    act = next(m for m in model.modules() if isinstance(m, QuantAct))
    assert act.quant_enabled and model.training
    index = torch.randperm(64, generator=torch.Generator().manual_seed(0))[:50]
    with torch.no_grad():
        hidden = torch.relu(model[1](model[0](x[index].float() / 255)))
    assert float(act.quant.beta.detach()) == pytest.approx(5 * 3 / (4 * float(hidden.max())))


def test_fit_qnet_three_phases_and_resume(tmp_path):
    model = lowbit.quantize(mlp(), lowbit.Recipe(weight="qnet", w_bits=2, act="qnet", a_bits=2,
                                                 keep_first=False, keep_last=False))
    cfg = TrainConfig(epochs=1, batch_size=32, lr=1e-2, seed=0)
    train, test = images(96, 3), images(32, 4)
    out = fit_qnet(model, train, test, cfg, tmp_path, factor=10, progress=False)
    assert len(out["phases"]) == 3 and 0.0 <= out["hard_test_accuracy"] <= 1.0
    dirs = sorted(p.name for p in tmp_path.iterdir())
    assert dirs == [f"phase{k + 1}-{ph.name}" for k, ph in enumerate(PAPER_PHASES)]
    assert all(p.requires_grad for p in model.parameters())
    ts = [float(m.temperature) for m in model.modules() if isinstance(m, (SoftWeight, SoftAct))]
    assert ts == [30.0, 30.0, 30.0]  # third global epoch, factor 10
    lines = (tmp_path / "phase3-joint" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["epoch"] == 1
    again = fit_qnet(model, train, test, cfg, tmp_path, factor=10, resume=True, progress=False)
    assert again["hard_test_accuracy"] == out["hard_test_accuracy"]


def test_fit_qnet_weights_only_runs_phase_one_with_a_per_step_ramp(tmp_path):
    """No quantized activations: only the "weights" phase; per_step ends at T = epochs x factor
    and differs from the per-epoch schedule's run."""
    recipe = lowbit.Recipe(weight="qnet", w_bits=2, act="qnet", a_bits=32, keep_first=False,
                           keep_last=False)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=1e-2, seed=0)
    train, test = images(96, 3), images(32, 4)
    model = lowbit.quantize(mlp(), recipe)
    seen: list[float] = []
    orig = SoftWeight.forward

    def spy(self, w):
        seen.append(float(self.temperature))
        return orig(self, w)

    SoftWeight.forward = spy
    try:
        out = fit_qnet(model, train, test, cfg, tmp_path / "a", factor=10, progress=False,
                       per_step=True)
    finally:
        SoftWeight.forward = orig
    assert len(out["phases"]) == 1
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["phase1-weights"]
    train_ts = list(dict.fromkeys(seen))  # two SoftWeight layers per forward; evals repeat T
    assert train_ts[:3] == pytest.approx([10 / 3, 20 / 3, 10.0])  # 3 batches per epoch
    assert train_ts[-1] == pytest.approx(20.0)
    epochwise = fit_qnet(lowbit.quantize(mlp(), recipe), train, test, cfg, tmp_path / "b",
                         factor=10, progress=False)
    assert len(epochwise["phases"]) == 1


@pytest.mark.parametrize("a_bits", [2, 3, 4])
def test_calibrate_activations_auto_steps_by_bit_width(a_bits):
    """init="auto" (fit_qnet's default): the paper's k-means steps up to AUTO_KMEANS_MAX_BITS,
    evenly spaced steps b_i = i + 1/2 above, each SoftAct by its own bit width."""
    from lowbit.train.qnet import AUTO_KMEANS_MAX_BITS, act_init_for

    x, _ = images(64, 2)
    model = {}
    for init in ("auto", "kmeans", "linear"):
        model[init] = lowbit.quantize(mlp(), lowbit.Recipe(
            weight="qnet", w_bits=2, act="qnet", a_bits=a_bits, keep_first=False,
            keep_last=False))
        calibrate_activations(model[init], x, n=50, init=init,
                              generator=torch.Generator().manual_seed(0))
    acts = {k: next(m for m in v.modules() if isinstance(m, QuantAct)).quant
            for k, v in model.items()}
    want = "kmeans" if a_bits <= AUTO_KMEANS_MAX_BITS else "linear"
    assert act_init_for("auto", a_bits) == want
    assert torch.equal(acts["auto"].biases, acts[want].biases)
    lv = acts["linear"].levels
    assert torch.equal(acts["linear"].biases, (lv[1:] + lv[:-1]) / 2)
    assert not torch.equal(acts["kmeans"].biases, acts["linear"].biases)
    with pytest.raises(ValueError, match="act_init"):
        act_init_for("uniform", a_bits)
