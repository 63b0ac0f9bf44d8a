"""End-to-end: `lowbit train` / `eval` / `methods` / `demo` on the bundled digits (no download)."""

from __future__ import annotations

import json

import pytest
import torch

from lowbit.cli import main
from lowbit.errors import CheckpointError
from lowbit.experiment import load_model

TRAIN = ["train", "--model", "lenet300", "--dataset", "digits", "--method", "ivan",
         "--w-bits", "4", "--a-bits", "4", "--epochs", "2", "--batch-size", "64",
         "--no-progress"]


def test_train_writes_model_summary_and_metrics(tmp_path, capsys):
    assert main([*TRAIN, "--out", str(tmp_path)]) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    for key in ("test_accuracy", "test_loss", "epochs", "wall_seconds", "w_bits", "a_bits",
                "method", "model", "dataset", "float_bytes", "packed_bytes"):
        assert key in s
    assert 0.5 < s["test_accuracy"] <= 1.0  # 10 classes: chance is 0.1
    assert (s["w_bits"], s["a_bits"], s["method"], s["epochs"]) == (4, 4, "ivan", 2)
    assert s["packed_bytes"] < s["float_bytes"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "model.pt"), "--dataset", "digits", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["test_accuracy"] == pytest.approx(s["test_accuracy"], abs=0)


def test_fast_path_flags_reach_the_config(tmp_path):
    """--precision/--channels-last/--augment land in the run's config; digits default to no
    augmentation (cifar10 defaults to crop-flip: lowbit.experiment.DEFAULT_AUGMENT)."""
    from lowbit.experiment import default_config

    assert main([*TRAIN, "--out", str(tmp_path / "a")]) == 0
    s = json.loads((tmp_path / "a" / "summary.json").read_text())["config"]
    assert (s["precision"], s["channels_last"], s["augment"]) == ("fp32", False, "none")
    assert main([*TRAIN, "--precision", "bf16", "--channels-last", "--augment", "crop-flip",
                 "--out", str(tmp_path / "b")]) == 0
    s = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert (s["config"]["precision"], s["config"]["channels_last"],
            s["config"]["augment"]) == ("bf16", True, "crop-flip")
    assert s["test_accuracy"] > 0.3  # 2 epochs of 8x8 digits shifted by 1 pixel and mirrored
    assert default_config("resnet20", "cifar10").augment == "crop-flip"
    assert default_config("resnet20", "cifar10", augment="none").augment == "none"


def _state(path):
    return load_model(path)[0].state_dict()


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, monkeypatch):
    import lowbit.experiment as experiment

    main([*TRAIN, "--out", str(tmp_path / "a"), "--seed", "3"])
    real_fit = experiment.fit

    def stop_before_epoch_2(epoch, model):
        if epoch == 1:
            raise KeyboardInterrupt

    def interrupted_fit(*args, **kwargs):
        return real_fit(*args, **kwargs, on_epoch_start=stop_before_epoch_2)

    monkeypatch.setattr(experiment, "fit", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        main([*TRAIN, "--out", str(tmp_path / "b"), "--seed", "3"])
    assert (tmp_path / "b" / "checkpoint.pt").exists()
    assert not (tmp_path / "b" / "model.pt").exists()
    monkeypatch.setattr(experiment, "fit", real_fit)
    main([*TRAIN, "--out", str(tmp_path / "b"), "--seed", "3", "--resume"])
    a, b = _state(tmp_path / "a" / "model.pt"), _state(tmp_path / "b" / "model.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    main([*TRAIN, "--out", str(tmp_path / "c"), "--seed", "4"])
    c = _state(tmp_path / "c" / "model.pt")
    assert not torch.equal(a["fc1.weight"], c["fc1.weight"])


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    assert main([*TRAIN[:5], "--w-bits", "0", "--out", str(tmp_path)]) == 2
    assert "bits" in capsys.readouterr().err
    assert main([*TRAIN[:5], "--method", "nope", "--w-bits", "4", "--out", str(tmp_path)]) == 2
    assert "unknown quantization method 'nope'" in capsys.readouterr().err
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="model.pt"):
        load_model(bad)
    assert main(["eval", str(bad), "--dataset", "digits"]) == 2
    assert main(["eval", str(tmp_path / "missing.pt"), "--dataset", "digits"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_methods_lists_every_registered_method(capsys):
    from lowbit.quantizers import METHODS

    assert main(["methods"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[0] for line in out) == sorted(METHODS)
    assert all(len(line.split()) > 3 for line in out)  # each has a description


def test_demo_runs_and_writes_table_and_plot(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--epochs", "1"]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["w_bits"] for r in rows] == [32, 8, 4, 2, 1]
    sizes = [r["packed_bytes"] for r in rows]
    assert sizes == sorted(sizes, reverse=True)
    assert (tmp_path / "demo.png").stat().st_size > 1000
    assert "| float |" in capsys.readouterr().out


@pytest.mark.parametrize("method,w,a", [("inq", "5", "32"), ("qnet", "3", "32"),
                                        ("dorefa", "4", "4")])
def test_method_procedures_from_a_float_init(tmp_path, method, w, a):
    """INQ (accumulated portions) and qnet (three phases) run through `lowbit train --method`,
    started from a float model with --init; the saved model evaluates to the summary's value."""
    base = ["train", "--model", "lenet300", "--dataset", "digits", "--epochs", "1",
            "--batch-size", "64", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "float")]) == 0
    out = tmp_path / method
    args = [*base, "--method", method, "--w-bits", w, "--a-bits", a, "--g-bits", "8",
            "--g-method", "dorefa", "--init", str(tmp_path / "float" / "model.pt")]
    assert main([*args, "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["init"].endswith("model.pt") and s["g_bits"] == 8
    net, _ = load_model(out / "model.pt")
    assert any(getattr(m, "output_grad_quant", None) is not None for m in net.modules())
    from lowbit.data import load_dataset
    from lowbit.train import evaluate

    test = load_dataset("digits", "test")
    assert evaluate(net, test.images, test.labels)[1] == pytest.approx(s["test_accuracy"])
    if method == "inq":
        assert sorted(p.name for p in out.glob("step*")) == ["step1", "step2", "step3"]
    if method == "qnet":  # weights only: phase 1 alone (fit_qnet's docstring)
        assert [p.name for p in out.glob("phase*")] == ["phase1-weights"]


def test_init_must_be_a_float_model_of_the_same_shape(tmp_path, capsys):
    q = tmp_path / "q"
    main([*TRAIN, "--out", str(q)])
    assert main([*TRAIN, "--init", str(q / "model.pt"), "--out", str(tmp_path / "x")]) == 2
    assert "quantized model" in capsys.readouterr().err


def spy_fit_qnet(monkeypatch) -> dict:
    """The keyword arguments lowbit.experiment passes to fit_qnet, filled in as it runs."""
    import lowbit.experiment as ex

    seen, real = {}, ex.fit_qnet

    def spy(*args, **kw):
        seen.update(kw)
        return real(*args, **kw)

    monkeypatch.setattr(ex, "fit_qnet", spy)
    return seen


@pytest.mark.parametrize("flags,alpha,grad_t", [
    ([], "fit", 1.0),
    (["--qnet-act-alpha", "reciprocal", "--qnet-act-grad-temperature", "0"], "reciprocal", None),
])
def test_qnet_activation_flags_reach_fit_qnet_and_job_json(tmp_path, monkeypatch, capsys, flags,
                                                           alpha, grad_t):
    """--qnet-act-alpha / --qnet-act-grad-temperature (issue 12 item 3) reach fit_qnet and are
    recorded in job.json, so --resume refuses a run trained with the other reading."""
    seen = spy_fit_qnet(monkeypatch)
    out = tmp_path / "run"
    argv = ["train", "--model", "lenet300", "--dataset", "digits", "--method", "qnet",
            "--w-bits", "2", "--a-bits", "2", "--epochs", "1", "--batch-size", "256",
            "--qnet-bn-batches", "1", "--no-progress", "--out", str(out), *flags]
    assert main(argv) == 0
    assert (seen["act_alpha"], seen["act_grad_temperature"]) == (alpha, grad_t)
    job = json.loads((out / "job.json").read_text())
    assert (job["qnet_act_alpha"], job["qnet_act_grad_temperature"]) == (alpha, grad_t)
    other = ["--qnet-act-alpha", "fit" if alpha == "reciprocal" else "reciprocal"]
    capsys.readouterr()
    assert main([*argv[:len(argv) - len(flags)], *other, "--resume"]) != 0
    assert "qnet_act_alpha" in capsys.readouterr().err


def test_qnet_act_init_flag_reaches_fit_qnet(tmp_path, monkeypatch):
    seen = spy_fit_qnet(monkeypatch)
    out = tmp_path / "run"
    assert main(["train", "--model", "lenet300", "--dataset", "digits", "--method", "qnet",
                 "--w-bits", "2", "--a-bits", "2", "--epochs", "1", "--batch-size", "256",
                 "--qnet-bn-batches", "1", "--no-progress", "--out", str(out),
                 "--qnet-act-init", "linear"]) == 0
    assert seen["act_init"] == "linear"
    assert json.loads((out / "job.json").read_text())["qnet_act_init"] == "linear"
