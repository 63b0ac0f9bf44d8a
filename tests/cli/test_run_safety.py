"""Issue 7 regressions of the run directory and the console: resume checks the job, a used
directory is refused, the plan and sizes are printed and recorded, eval knows its dataset, and
what is saved evaluates to what the summary says for every registered method."""

from __future__ import annotations

import argparse
import json

import pytest

from lowbit.cli import build_parser, main
from lowbit.experiment import Job, default_config, evaluate_file, run
from lowbit.quantizers import METHODS
from lowbit.recipe import Recipe

BASE = ["train", "--model", "lenet300", "--dataset", "digits", "--epochs", "1",
        "--batch-size", "64", "--no-progress"]
W4A4 = [*BASE, "--method", "ivan", "--w-bits", "4", "--a-bits", "4"]


def test_resume_with_another_recipe_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*W4A4, "--out", str(out)]) == 0
    before = (out / "model.pt").read_bytes(), (out / "summary.json").read_text()
    capsys.readouterr()
    w2a2 = [*BASE, "--method", "ivan", "--w-bits", "2", "--a-bits", "2"]
    assert main([*w2a2, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "another job" in err and "w_bits: 4 -> 2" in err
    assert ((out / "model.pt").read_bytes(), (out / "summary.json").read_text()) == before
    other_model = [*W4A4[:2], "lenet5", *W4A4[3:]]
    assert main([*other_model, "--out", str(out), "--resume"]) == 2
    assert "model: 'lenet300' -> 'lenet5'" in capsys.readouterr().err
    assert main([*W4A4, "--out", str(out), "--resume"]) == 0  # the same job resumes
    assert "all 1 epochs were already trained" in capsys.readouterr().err


def test_used_directory_is_refused_unless_resume_or_overwrite(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main([*W4A4, "--out", str(out)]) == 0
    metrics = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main([*W4A4, "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == metrics  # nothing wiped
    (out / "notes.txt").write_text("mine")

    import lowbit.experiment as experiment

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "fit", dies)
    with pytest.raises(KeyboardInterrupt):
        main([*W4A4, "--out", str(out), "--overwrite"])
    # a run that dies after --overwrite leaves no stale summary/model beside its files
    assert not (out / "summary.json").exists() and not (out / "model.pt").exists()
    assert (out / "notes.txt").read_text() == "mine"  # not a lowbit file: kept


def test_out_naming_a_file_is_a_clear_error(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main([*W4A4, "--out", str(f)]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err


def test_plan_and_size_are_printed_and_recorded(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*W4A4, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    s = json.loads((out / "summary.json").read_text())
    names = [layer["name"] for layer in s["layers"]]
    assert names == ["fc1", "relu1", "fc2", "relu2", "fc3"]
    assert all({"kind", "method", "bits", "why"} <= set(layer) for layer in s["layers"])
    assert s["size_ratio"] == pytest.approx(s["packed_bytes"] / s["float_bytes"])
    err = captured.err
    for name in names:
        assert f"  {name} " in err  # the plan, one line per layer
    # the estimate at the start, the exported model.lowbit's real size at the end
    assert f"packed {s['packed_bytes_estimate']:,} B" in err
    assert f"packed {s['packed_bytes']:,} B" in err
    assert s["packed_bytes"] == (out / "model.lowbit").stat().st_size
    assert "epoch 1/1  train" in err and "ETA" in err  # the epoch line, without a bar
    assert "\r" not in err  # stderr is not a terminal: no bar spam
    assert f"{100 * s['test_accuracy']:.2f} %" in captured.out


def test_eval_takes_the_dataset_from_the_model_file(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*W4A4, "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(out / "model.pt"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["dataset"] == "digits" and r["test_accuracy"] == s["test_accuracy"]
    assert main(["eval", str(out / "model.pt"), "--dataset", "mnist"]) == 2
    err = capsys.readouterr().err
    assert "takes 1x8x8 images" in err and "trained on digits" in err and "1x28x28" in err


def test_version_methods_json_and_help_texts(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("lowbit 0.")
    assert main(["methods", "--json"]) == 0
    methods = json.loads(capsys.readouterr().out)
    assert sorted(m["name"] for m in methods) == sorted(METHODS)
    assert next(m for m in methods if m["name"] == "xnor")["weight_bits"] == [1]
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subs.choices.items():
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            text = action.help or ""
            assert text, f"lowbit {name} {action.dest} has no help"
            for internal in ("TrainConfig", "lowbit.experiment", "``", ":func:"):
                assert internal not in text, (name, action.dest, text)
    train = subs.choices["train"]
    choices = {a.dest: a.choices for a in train._actions}
    assert "resnet20" in choices["model"] and "cifar10" in choices["dataset"]


def _registry_recipes():
    """One small recipe per registered weight/activation method at its smallest bit width."""
    for name, m in sorted(METHODS.items()):
        if m.weight is None and m.act is None:
            continue
        weight = name if m.weight else "dorefa"
        w_bits = min(m.weight.BITS) if m.weight else 4
        act = name if m.act else "dorefa"
        a_bits = min(m.act.BITS) if m.act else 4
        yield pytest.param(Recipe(weight=weight, w_bits=w_bits, act=act, a_bits=a_bits,
                                  keep_first=False, keep_last=False), id=name)


@pytest.mark.parametrize("recipe", list(_registry_recipes()))
def test_saved_model_evaluates_to_the_summary_for_every_method(tmp_path, recipe):
    """What is saved evaluates to what the summary says (issue 7 item 5: qnet's hard flag was
    lost in model.pt, so eval measured the soft training function)."""
    config = default_config("lenet300", epochs=1, batch_size=64)
    s = run(Job("lenet300", "digits", recipe, config), tmp_path / "run", progress=False)
    r = evaluate_file(tmp_path / "run" / "model.pt")
    assert r["test_accuracy"] == s["test_accuracy"]
    assert r["test_loss"] == pytest.approx(s["test_loss"], rel=1e-6)


def test_old_qnet_model_file_without_hard_flag_evaluates_hard(tmp_path):
    """A model.pt written before the hard flag was saved evaluates with eq. (11), as its run's
    summary measured it."""
    import torch

    from lowbit.train.files import save_verified

    recipe = Recipe(weight="qnet", w_bits=2, act="qnet", a_bits=32, keep_first=False,
                    keep_last=False)
    config = default_config("lenet300", epochs=1, batch_size=64)
    s = run(Job("lenet300", "digits", recipe, config), tmp_path / "run", progress=False)
    blob = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    blob.pop("sha256", None)
    blob["state_dict"] = {k: v for k, v in blob["state_dict"].items() if not k.endswith(".hard")}
    save_verified(blob, tmp_path / "old.pt")
    assert evaluate_file(tmp_path / "old.pt")["test_accuracy"] == s["test_accuracy"]


def test_numpy_integers_are_plain_ints_in_a_recipe():
    import numpy as np

    from lowbit.recipe import LayerRule

    r = Recipe(w_bits=np.int64(4), a_bits=np.int32(4),
               rules=(LayerRule("fc2", w_bits=np.int16(8)),))
    assert type(r.w_bits) is int and type(r.a_bits) is int and type(r.rules[0].w_bits) is int
    json.dumps(r.to_dict())  # was: "Object of type int64 is not JSON serializable"


def test_model_file_keeps_input_quantizers(tmp_path):
    """Input quantizers (add_input_quantizers, for PTQ) are not in the recipe: model.pt records
    them, and load_model rebuilds them with their state."""
    import torch

    import lowbit
    from lowbit.experiment import load_model, save_model

    config = default_config("lenet300", epochs=1, batch_size=64)
    job = Job("lenet300", "digits", Recipe(weight="ivan", w_bits=4), config)
    s = run(job, tmp_path / "run", progress=False)
    net, blob = load_model(tmp_path / "run" / "model.pt")
    lowbit.add_input_quantizers(net, "uniform", 8, rules=[lowbit.LayerRule("fc3", a_bits=4)])
    x = torch.rand(16, 1, 8, 8)
    lowbit.calibrate(net, [x], freeze=True)
    save_model(net, blob["model_kwargs"], job, tmp_path / "with_inputs.pt")
    again, blob2 = load_model(tmp_path / "with_inputs.pt")
    inputs = [(e["names"], e["slots"]["input_quant"]) for e in blob2["layers"]
              if e["slots"].get("input_quant")]
    assert [(n, d["method"], d["role"], d["bits"], d["options"]["observer"])
            for n, d in inputs] == [(["fc2"], "uniform", "activation", 8, "ema"),
                                    (["fc3"], "uniform", "activation", 4, "ema")]
    assert torch.equal(again(x), net.eval()(x)) and s["test_accuracy"] > 0
