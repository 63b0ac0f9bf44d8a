"""Per-layer sensitivity and the mixed-precision suggestion: the knapsack against brute force,
the budget, the drops at high and low bits, the recipe round trip through `lowbit ptq
--recipe` and `lowbit train --recipe`, and `lowbit ptq --sensitivity`'s files."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from lowbit.cli import main
from lowbit.data import load_dataset
from lowbit.errors import LowbitError
from lowbit.experiment import load_model
from lowbit.ptq.driver import PTQConfig
from lowbit.ptq.knapsack import knapsack
from lowbit.ptq.run import calibration_batches, load_float
from lowbit.ptq.sensitivity import (
    SensitivityReport,
    layer_sensitivity,
    pattern_of,
    suggest_bits,
    suggestion_bytes,
    to_recipe,
)


def _brute_force(sizes, losses, capacity):
    best = None
    for pick in itertools.product(*(range(len(s)) for s in sizes)):
        if sum(s[j] for s, j in zip(sizes, pick, strict=True)) <= capacity:
            loss = sum(v[j] for v, j in zip(losses, pick, strict=True))
            best = loss if best is None else min(best, loss)
    return best


@pytest.mark.parametrize("seed", range(20))
def test_knapsack_finds_the_brute_force_optimum(seed):
    rng = random.Random(seed)
    groups = rng.randint(1, 5)
    sizes = [[rng.choice([0, 3, 6, 9, 12, 27, 40]) * rng.randint(1, 4) for _ in range(4)]
             for _ in range(groups)]
    losses = [[rng.uniform(-0.1, 1.0) for _ in range(4)] for _ in range(groups)]
    low, high = sum(map(min, sizes)), sum(map(max, sizes))
    capacity = rng.randint(low, high + 5)
    picked, exact = knapsack(sizes, losses, capacity)
    assert exact
    assert sum(s[j] for s, j in zip(sizes, picked, strict=True)) <= capacity
    got = sum(v[j] for v, j in zip(losses, picked, strict=True))
    assert got == pytest.approx(_brute_force(sizes, losses, capacity), abs=1e-12)


def test_knapsack_coarse_units_still_fit_and_refuse_infeasible():
    sizes, losses = [[700, 301, 5], [999, 404, 7]], [[0.0, 0.5, 2.0], [0.0, 0.4, 3.0]]
    picked, exact = knapsack(sizes, losses, 1000, max_units=10)
    assert not exact
    assert sum(s[j] for s, j in zip(sizes, picked, strict=True)) <= 1000
    with pytest.raises(LowbitError, match="12 B"):
        knapsack(sizes, losses, 11)


def _report(weights, drops, other=100):
    layers = list(weights)
    bits = (8, 4, 2)
    return SensitivityReport(layers, dict(weights), bits, 0.9, 100, 0, other,
                             {n: dict(zip(bits, d, strict=True)) for n, d in drops.items()})


def test_suggestion_respects_the_budget_and_refuses_a_too_small_one():
    report = _report({"a": 1000, "b.0": 64, "c": 4000},
                     {"a": (0.0, 0.01, 0.2), "b.0": (0.0, 0.05, 0.3), "c": (0.0, 0.0, 0.02)})
    smallest = 100 + (1000 + 64 + 4000) * 2 // 8
    for budget in (smallest, 2000, 3000, 10_000):
        s = suggest_bits(report, budget)
        assert suggestion_bytes(report, s) <= budget
    assert suggest_bits(report, 10_000) == {"a": 8, "b.0": 8, "c": 8}
    assert suggest_bits(report, smallest) == {"a": 2, "b.0": 2, "c": 2}
    assert suggest_bits(report, smallest + 1000)["c"] == 2  # the insensitive big layer
    with pytest.raises(LowbitError, match=f"{smallest:,} B"):
        suggest_bits(report, smallest - 1)
    with pytest.raises(LowbitError, match="not measured"):
        suggest_bits(report, 10_000, bits=(8, 3))
    assert SensitivityReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report


def test_drops_vanish_at_high_bits_and_grow_as_bits_go_down(float_model):
    net, _ = load_float(float_model)
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    batches = calibration_batches(train.images, 200, 100)
    r = layer_sensitivity(net, batches, test.images, test.labels, bits=(32, 16, 8, 2),
                          base=PTQConfig())
    assert r.layers == ["fc1", "fc2", "fc3"] and r.eval_samples == test.labels.numel()
    assert r.weights == {"fc1": 64 * 300, "fc2": 300 * 100, "fc3": 100 * 10}
    for drops in (r.weight_drop, r.input_drop):
        assert all(drops[n][32] == 0.0 for n in r.layers)
        assert all(abs(drops[n][16]) <= 2 / r.eval_samples for n in r.layers)
        mean = {b: sum(drops[n][b] for n in r.layers) / 3 for b in r.bits}
        assert mean[16] <= mean[8] + 2 / r.eval_samples <= mean[2] + 4 / r.eval_samples
    assert sum(r.weight_drop[n][2] + r.input_drop[n][2] for n in r.layers) > 0


def test_recipe_round_trips_through_ptq_and_train(float_model, tmp_path):
    suggestion = {"fc1": 3, "fc2": 5, "fc3": 2}
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(to_recipe(suggestion)))
    assert main(["ptq", str(float_model), "--recipe", str(recipe), "--calib", "100",
                 "--out", str(tmp_path / "ptq"), "--no-progress"]) == 0
    net, _ = load_model(tmp_path / "ptq" / "model.pt")
    assert {n: net.get_submodule(n).weight_quant.bits for n in suggestion} == suggestion
    assert main(["train", "--model", "lenet300", "--dataset", "digits", "--epochs", "1",
                 "--w-method", "uniform", "--recipe", str(recipe), "--no-progress",
                 "--out", str(tmp_path / "train")]) == 0
    s = json.loads((tmp_path / "train" / "summary.json").read_text())
    assert {p["name"]: p["bits"] for p in s["layers"] if p["kind"] == "weight"} == suggestion
    assert pattern_of("a.b[0]*") == "a.b[[]0][*]"


def test_cli_sensitivity_writes_its_files(float_model, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["ptq", str(float_model), "--sensitivity", "--size-kb", "20", "--sens-bits",
                 "8", "4", "2", "--sens-eval", "200", "--calib", "100", "--out", str(out),
                 "--no-progress"]) == 0
    assert "fc2" in capsys.readouterr().out
    for name in ("sensitivity.json", "sensitivity.md", "sensitivity.png", "recipe.json"):
        assert (out / name).stat().st_size > 0, name
    r = json.loads((out / "sensitivity.json").read_text())
    assert r["sensitivity"]["eval_samples"] == 200 and r["sensitivity"]["bits"] == [8, 4, 2]
    v = r["verify"]
    assert v["predicted_bytes"] == v["packed_bytes_weights_only"] <= 20_000
    rules = json.loads((out / "recipe.json").read_text())["rules"]
    assert {x["pattern"]: x["w_bits"] for x in rules} == r["suggestion"]
    assert main(["ptq", str(float_model), "--sensitivity", "--size-kb", "5", "--sens-eval",
                 "50", "--calib", "50", "--out", str(tmp_path / "t"), "--no-progress"]) == 2
    assert "below the smallest 2-bit model" in capsys.readouterr().err
    assert main(["ptq", str(float_model), "--size-kb", "5", "--out", str(tmp_path / "u"),
                 "--no-progress"]) == 2


def test_monotone_drops_clamp_noise_and_order():
    from lowbit.ptq.sensitivity import monotone_drops

    got = monotone_drops({8: -0.002, 6: 0.001, 4: -0.001, 3: 0.02, 2: 0.015})
    assert got == {8: 0.0, 6: 0.001, 4: 0.001, 3: 0.02, 2: 0.02}
