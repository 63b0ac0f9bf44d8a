"""Issue 12, Quantization Networks (yang2019): the binary backward's factor T (reference code),
the final-temperature ramp restarted per phase, BatchNorm re-estimation under eq. (11), labelled
soft/hard accuracies and per-phase seeds."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import lowbit
from lowbit.functional.soft import soft_quantize
from lowbit.quantizers.soft import SoftAct, SoftWeight
from lowbit.train.config import TrainConfig
from lowbit.train.loop import shuffle_seed
from lowbit.train.qnet import (
    FINAL_TEMPERATURE,
    fit_qnet,
    phase_seed,
    qnet_ramp_callback,
    ramp_temperature,
    reestimate_batchnorm,
    set_hard,
)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # torch path, fused kernel
def test_binary_backward_is_the_t1_derivative_times_t(dtype):
    """Reference (anybit.py): y_grad = T * sigma'(beta w - b) at T = 1; dL/dw = y_grad alpha
    beta g, dL/dbeta = sum y_grad alpha w g. Closed form, s = 2 for {-1, 1}."""
    gen = torch.Generator().manual_seed(0)
    w = (torch.randn(40, generator=gen, dtype=torch.float64) * 0.3).to(dtype)
    g = torch.randn(40, generator=gen, dtype=torch.float64).to(dtype)
    t, alpha, beta = 37.0, 0.7, 1.6
    wr = w.clone().requires_grad_()
    be = torch.tensor(beta, dtype=dtype, requires_grad=True)
    y = soft_quantize(wr, torch.tensor([-1.0, 1.0], dtype=dtype), torch.zeros(1, dtype=dtype), t,
                      alpha, be, grad_temperature=1.0, grad_keeps_t=True)
    y.backward(g)
    sig = torch.sigmoid(beta * w.double())
    dy = 2.0 * sig * (1 - sig) * t  # s sigma'(u) at T = 1, times T
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5,
                                                                          "atol": 1e-5}
    torch.testing.assert_close(wr.grad.double(), dy * alpha * beta * g.double(), **tol)
    torch.testing.assert_close(be.grad.double(), (dy * alpha * w.double() * g.double()).sum(),
                               **tol)


def test_backward_with_t_equals_finite_differences_and_binary_default():
    """With grad_temperature = T the backward is eq. (6)'s derivative (central differences);
    SoftWeight(1) defaults to the reference reading: T times the old T-dropped gradient."""
    lv, b = torch.tensor([-1.0, 1.0], dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    x = torch.tensor([0.05, -0.02, 0.11], dtype=torch.float64, requires_grad=True)
    t, h = 8.0, 1e-6
    soft_quantize(x, lv, b, t, 0.9, 1.3, grad_temperature=t, grad_keeps_t=True).sum().backward()
    xd = x.detach()
    fd = (soft_quantize(xd + h, lv, b, t, 0.9, 1.3) - soft_quantize(xd - h, lv, b, t, 0.9, 1.3)
          ) / (2 * h)
    torch.testing.assert_close(x.grad, fd, rtol=1e-6, atol=1e-9)
    q = SoftWeight(1)
    assert q.grad_temperature == 1.0 and q.grad_keeps_t and not SoftWeight(2).grad_keeps_t
    w = torch.tensor([0.2, -0.1, 0.4], requires_grad=True)
    q.init_from(w.detach())
    q.temperature.fill_(t)
    q(w).sum().backward()
    kept = w.grad.clone()
    w.grad = None
    q.grad_keeps_t = False
    q(w).sum().backward()
    torch.testing.assert_close(kept, t * w.grad)


def test_ramp_reaches_the_final_temperature_each_phase():
    assert FINAL_TEMPERATURE == 5.0 * 55  # ResNet: T = epoch x 5, 55 epochs (sec. 4.1)
    assert ramp_temperature(0, 4, 100.0) == 25.0 and ramp_temperature(3, 4, 100.0) == 100.0
    for bad in ((4, 4, 1.0), (-1, 4, 1.0), (0, 4, 0.0), (0, 4, float("nan"))):
        with pytest.raises(ValueError):
            ramp_temperature(*bad)
    q = SoftAct(2)
    model = nn.Sequential(q)
    cb = qnet_ramp_callback(60.0, epochs=2, offset_steps=1, total_epochs=3)
    cb(1, 2, 5, model)  # global step (1 + 1) * 5 + 2 = 12 of 15
    assert float(q.temperature) == pytest.approx(60.0 * 13 / 15)


def mlp_bn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(),
                         nn.Linear(12, 3))


def images(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 1, 4, 4), generator=gen, dtype=torch.uint8),
            torch.randint(0, 3, (n,), generator=gen))


def test_reestimate_batchnorm_is_the_cumulative_average():
    model = lowbit.quantize(mlp_bn(), lowbit.Recipe("qnet", 2, "qnet", 32, keep_first=False,
                                                    keep_last=False))
    set_hard(model, True)
    x, _ = images(64, 1)
    bn = model[2]
    bn.running_mean.fill_(5.0)
    bn.momentum = 0.3
    gen = torch.Generator().manual_seed(0)
    assert reestimate_batchnorm(model.eval(), x, batches=2, batch_size=16, generator=gen) == 1
    assert bn.momentum == 0.3 and not model.training
    index = torch.randperm(64, generator=torch.Generator().manual_seed(0))[:32]
    with torch.no_grad():  # the hard network's pre-BN outputs, batch by batch
        pre = [model[1](model[0](x[index[k:k + 16]].float() / 255)) for k in (0, 16)]
    torch.testing.assert_close(bn.running_mean, (pre[0].mean(0) + pre[1].mean(0)) / 2)
    torch.testing.assert_close(bn.running_var, (pre[0].var(0) + pre[1].var(0)) / 2)


def test_fit_qnet_reports_soft_and_hard_labelled_and_seeds_each_phase(tmp_path, monkeypatch):
    model = lowbit.quantize(mlp_bn(), lowbit.Recipe("qnet", 2, "qnet", 2, keep_first=False,
                                                    keep_last=False))
    cfg = TrainConfig(epochs=1, batch_size=32, lr=1e-2, seed=3)
    train, test = images(96, 3), images(32, 4)
    seeds, temps = [], []
    import lowbit.train.qnet as qnet_mod

    real_fit = qnet_mod.fit

    def spy_fit(m, tr, te, config, out, **kw):
        seeds.append(config.seed)
        return real_fit(m, tr, te, config, out, **kw)

    monkeypatch.setattr(qnet_mod, "fit", spy_fit)
    orig = SoftAct.forward

    def spy(self, x):
        if self.training and not self.hard:  # not the BatchNorm pass (eq. 11)
            temps.append(float(self.temperature))
        return orig(self, x)

    monkeypatch.setattr(SoftAct, "forward", spy)
    out = fit_qnet(model, train, test, cfg, tmp_path, final_temperature=90.0, progress=False)
    assert seeds == [phase_seed(3, k) for k in range(3)] and len(set(seeds)) == 3
    assert len({shuffle_seed(s, 0) for s in seeds}) == 3  # a new shuffle order per phase
    first = torch.randperm(96, generator=torch.Generator().manual_seed(shuffle_seed(seeds[0], 0)))
    second = torch.randperm(96, generator=torch.Generator().manual_seed(shuffle_seed(seeds[1], 0)))
    assert not torch.equal(first, second)
    # phases 2 and 3 train activations: each ramps 30, 60, 90 (3 batches), restarted
    assert temps == pytest.approx([30.0, 60.0, 90.0] * 2)
    assert out["soft_test_accuracy"] == out["phases"][-1]["test_accuracy"]
    assert out["bn_reestimated"] == 1 and out["temperature"] == {"final": 90.0,
                                                                 "restart_per_phase": True}
    for key in ("hard_test_accuracy", "hard_test_accuracy_soft_bn"):
        assert 0.0 <= out[key] <= 1.0
    rec = [json.loads(line) for line in
           (tmp_path / "phase2-activations" / "metrics.jsonl").read_text().splitlines()]
    assert rec[0]["eval_weights"] == "hard eq. (11)"
    assert rec[0]["eval_activations"] == "soft eq. (6)"
    rec = json.loads((tmp_path / "phase1-weights" / "metrics.jsonl").read_text())
    assert rec["eval_weights"] == "soft eq. (6)" and rec["eval_activations"] == "float"


def test_linear_activation_init_keeps_the_inputs_magnitude():
    """``init="linear"``: beta = 5p/4q as the paper's, steps at beta x = i + 1/2, so the hard
    output alpha k with alpha = 1/beta is the input rounded to the step 1/beta (sec. 4.1's
    "keeps the magnitude"); the paper's k-means steps of skewed ReLU outputs do not."""
    from lowbit.functional.soft import hard_quantize
    from lowbit.quantizers.soft import SoftAct

    torch.manual_seed(0)
    x = torch.distributions.Exponential(4.0).sample((5000,))  # skewed, as ReLU outputs
    q = float(x.max())
    lin, km = SoftAct(2), SoftAct(2)
    lin.calibrate(x, init="linear")
    km.calibrate(x)
    beta = 5 * 3 / (4 * q)
    assert float(lin.beta) == pytest.approx(beta) and float(lin.alpha) == pytest.approx(1 / beta)
    assert torch.equal(lin.biases, torch.tensor([0.5, 1.5, 2.5]))
    y = hard_quantize(x, lin.levels, lin.biases, lin.alpha, lin.beta)
    want = torch.clamp(torch.floor(x * beta + 0.5), 0, 3) / beta
    assert torch.allclose(y, want, atol=1e-6)
    err = lambda m: float((hard_quantize(x, m.levels, m.biases, m.alpha, m.beta) - x).abs().mean())  # noqa: E731
    assert err(lin) < err(km)
    with pytest.raises(ValueError, match="init"):
        lin.calibrate(x, init="uniform")


def test_ramp_with_a_start_runs_from_start_to_final():
    """The paper's ResNet ramp T = epoch x 5, epochs 1..55, compressed: 5 at the first step,
    275 at the last, linear between; never below the first epoch's T."""
    ts = [ramp_temperature(s, 11, 275.0, start=5.0) for s in range(11)]
    assert ts[0] == 5.0 and ts[-1] == 275.0
    assert ts[5] == pytest.approx(5.0 + 270.0 / 2)
    assert all(b > a for a, b in zip(ts, ts[1:], strict=False))
    assert ramp_temperature(0, 1, 275.0, start=5.0) == 275.0  # one step: the final T
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="start temperature"):
            ramp_temperature(0, 4, 100.0, start=bad)
    q = SoftAct(2)
    cb = qnet_ramp_callback(60.0, epochs=1, start=6.0)
    cb(0, 0, 10, nn.Sequential(q))
    assert float(q.temperature) == 6.0


def test_fit_alpha_is_the_least_squares_scale_of_the_hard_levels():
    """alpha = sum x Y_k / sum Y_k^2 with k = #{i : beta x >= b_i}: computed in numpy."""
    import numpy as np

    from lowbit.functional.soft import fit_alpha

    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal(4000), 0.0) ** 2  # skewed, like ReLU outputs
    levels, beta = np.array([0.0, 1.0, 2.0, 3.0]), 0.7
    biases = np.array([0.1, 0.5, 1.6])
    k = (beta * x[:, None] >= biases[None, :]).sum(1)
    y = levels[k]
    want = float((x * y).sum() / (y * y).sum())
    got = fit_alpha(torch.tensor(x), torch.tensor(levels), torch.tensor(biases), beta)
    assert got == pytest.approx(want, rel=1e-12)
    # the fitted scale is a minimum of the squared error over alpha
    err = [float(((x - a * y) ** 2).sum()) for a in (0.99 * want, want, 1.01 * want)]
    assert err[1] < err[0] and err[1] < err[2]
    # every value on the level 0: no information, alpha = 1 / beta
    assert fit_alpha(torch.zeros(10), torch.tensor(levels), torch.tensor(biases), 0.5) == 2.0


def test_soft_act_calibrate_alpha_fit_keeps_the_magnitude():
    """alpha="fit": the hard outputs' scale matches the activations' (issue 12 item 3), where
    the paper's alpha = 1 / beta blows up k-means-stepped skewed activations."""
    x = torch.relu(torch.randn(20000, generator=torch.Generator().manual_seed(0))) ** 3
    paper, fitted = SoftAct(2), SoftAct(2)
    paper.calibrate(x)
    fitted.calibrate(x, alpha="fit")
    assert torch.equal(paper.biases, fitted.biases) and paper.beta == fitted.beta
    paper.hard = fitted.hard = True
    err_paper = float((paper(x) - x).pow(2).mean())
    err_fit = float((fitted(x) - x).pow(2).mean())
    assert err_fit < err_paper
    assert float(fitted.alpha) < float(paper.alpha)
    with pytest.raises(ValueError, match="alpha must be"):
        SoftAct(2).calibrate(x, alpha="mean")


def test_fit_qnet_activation_defaults_fit_alpha_and_backward_at_t1(tmp_path):
    """Issue 12 item 3: fit_qnet calibrates the activations with the least-squares alpha and
    runs their backward at T = 1 (weights keep the paper's); None / "reciprocal" give the
    paper's reading back."""
    from lowbit.functional.soft import fit_alpha
    from lowbit.train.qnet import ACT_GRAD_TEMPERATURE, calibrate_activations, fit_qnet

    def run(**kw):
        model = lowbit.quantize(mlp_bn(), lowbit.Recipe("qnet", 2, "qnet", 2, keep_first=False,
                                                        keep_last=False))
        fit_qnet(model, images(64, 5), images(32, 6), TrainConfig(epochs=1, batch_size=32),
                 tmp_path / str(len(list(tmp_path.iterdir()))), progress=False, bn_batches=0,
                 **kw)
        return model

    act = [m for m in run().modules() if isinstance(m, SoftAct)]
    assert act and all(m.grad_temperature == ACT_GRAD_TEMPERATURE == 1.0 and not m.grad_keeps_t
                       for m in act)
    weights = [m for m in run().modules() if isinstance(m, SoftWeight)]
    assert weights and all(m.grad_temperature is None for m in weights)  # ternary: at T
    paper = [m for m in run(act_grad_temperature=None).modules() if isinstance(m, SoftAct)]
    assert all(m.grad_temperature is None for m in paper)
    with pytest.raises(ValueError, match="act_grad_temperature"):
        run(act_grad_temperature=0.0)
    # calibration: alpha "fit" is fit_alpha of the calibrated steps, "reciprocal" 1 / beta
    x, _ = images(64, 7)
    for alpha in ("reciprocal", "fit"):
        model = lowbit.quantize(mlp_bn(), lowbit.Recipe("qnet", 32, "qnet", 2,
                                                        keep_first=False, keep_last=False))
        calibrate_activations(model, x, alpha=alpha)
        (q,) = [m for m in model.modules() if isinstance(m, SoftAct)]
        with torch.no_grad():
            relu_out = torch.relu(model[2].eval()(model[1](model[0](x.float() / 255))))
        want = (fit_alpha(relu_out, q.levels, q.biases, q.beta) if alpha == "fit"
                else 1.0 / float(q.beta.detach()))
        assert float(q.alpha) == pytest.approx(want, rel=1e-5)
