"""`lowbit ptq` end to end on the bundled digits: model.pt that `lowbit eval` reads back to the
summary's accuracy, the summary's fields, and the refusals."""

from __future__ import annotations

import json

import pytest
import torch

from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.ptq.run import calibration_batches


@pytest.mark.parametrize("flags", [
    ["--bits", "8", "--observer", "mse"],
    ["--w-bits", "4", "--a-bits", "8", "--bias-correction", "--adaround",
     "--adaround-iters", "20"],
    ["--mode", "dynamic", "--bits", "8", "--per-row"],
    ["--mode", "bfloat16"],
], ids=["static-mse", "w4a8-bc-ada", "dynamic", "bf16"])
def test_ptq_writes_what_eval_reads_back(float_model, tmp_path, capsys, flags):
    out = tmp_path / "ptq"
    assert main(["ptq", str(float_model), "--out", str(out), "--calib", "200",
                 "--no-progress", *flags]) == 0
    s = json.loads((out / "summary.json").read_text())
    for key in ("test_accuracy", "float_test_accuracy", "float_bytes", "packed_bytes",
                "mode", "observer", "w_bits", "a_bits", "calibration_samples", "ptq_seconds",
                "step_seconds", "layers", "steps"):
        assert key in s, key
    assert s["packed_bytes"] < s["float_bytes"]
    capsys.readouterr()
    assert main(["eval", str(out / "model.pt"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["test_accuracy"] == s["test_accuracy"] and r["dataset"] == "digits"
    if "--mode" not in flags:
        assert s["calibration_samples"] == 200
        assert s["float_test_accuracy"] - s["test_accuracy"] < 0.05


def test_ptq_refusals(float_model, tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["ptq", str(float_model), "--out", str(out), "--calib", "50",
                 "--no-progress"]) == 0
    assert main(["ptq", str(float_model), "--out", str(out), "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["ptq", str(out / "model.pt"), "--out", str(tmp_path / "q"),
                 "--no-progress"]) == 2
    assert "quantized model" in capsys.readouterr().err
    assert main(["ptq", str(float_model), "--out", str(tmp_path / "r"), "--calib", "0",
                 "--no-progress"]) == 2
    assert "--calib" in capsys.readouterr().err
    assert main(["ptq", str(float_model), "--out", str(tmp_path / "s"), "--bits", "1",
                 "--no-progress"]) == 2
    assert "2..16" in capsys.readouterr().err


def test_calibration_batches_come_from_a_seeded_draw():
    images = torch.arange(50, dtype=torch.uint8).reshape(50, 1, 1, 1)
    a = calibration_batches(images, 20, 8, seed=3)
    assert [x.shape[0] for x in a] == [8, 8, 4]
    b = calibration_batches(images, 20, 8, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    drawn = torch.cat(a).flatten() * 255
    assert len(set(drawn.round().tolist())) == 20  # without replacement
    assert [x.shape[0] for x in calibration_batches(images, 5, 128)] == [5]  # one small batch
    with pytest.raises(LowbitError, match="only 50"):
        calibration_batches(images, 51, 8)


def test_added_biases_and_folding_are_replayed_on_load(tmp_path):
    """ResNet-20 without folding: bias correction gives its bias-free convs biases; model.pt
    records them and load_model recreates them before loading the state dict (with folding,
    the BN pairs are replayed likewise)."""
    from pathlib import Path

    from lowbit.data import load_dataset
    from lowbit.experiment import load_model, save_model_file
    from lowbit.models import build_model
    from lowbit.ptq import PTQConfig
    from lowbit.ptq.run import run_ptq

    torch.manual_seed(0)
    kw = {"name": "resnet20", "in_channels": 1, "image_size": 8, "num_classes": 10,
          "mean": [0.3], "std": [0.3]}
    save_model_file(Path(tmp_path / "f.pt"), build_model(**kw).eval(), kw, {}, "digits")
    test = load_dataset("digits", "test")
    x = test.images[:50].float() / 255
    for fold in (False, True):
        out = tmp_path / f"q{fold}"
        s = run_ptq(tmp_path / "f.pt", out, PTQConfig(fold_bn=fold, bias_correction=True),
                    calib=32)
        assert bool(s["steps"]["added_bias"]) is not fold
        assert bool(s["steps"]["fold_bn"]) is fold
        q, _ = load_model(out / "model.pt")
        again, _ = load_model(out / "model.pt")
        assert torch.equal(q(x), again(x))
        from lowbit.train import evaluate

        assert evaluate(q, test.images, test.labels)[1] == s["test_accuracy"]
