"""``lowbit export`` / ``lowbit eval net.lowbit`` / ``lowbit inspect`` (issue 10, "What a user
gets"): the exported file evaluates to what model.pt and summary.json say, and bad files give
a clear error (exit code 2), never a traceback."""

from __future__ import annotations

import json

import pytest

from lowbit.cli import main

BASE = ["train", "--model", "lenet300", "--dataset", "digits", "--epochs", "1",
        "--batch-size", "64", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main([*BASE, "--method", "dorefa", "--w-bits", "2", "--a-bits", "2",
                 "--out", str(out)]) == 0
    return out


def test_export_eval_inspect(run_dir, tmp_path, capsys):
    s = json.loads((run_dir / "summary.json").read_text())
    net = tmp_path / "net.lowbit"
    capsys.readouterr()
    assert main(["export", str(run_dir / "model.pt"), "-o", str(net), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["bytes"] == net.stat().st_size == s["packed_bytes"]
    assert main(["eval", str(net), "--json"]) == 0  # the dataset comes from the header
    e = json.loads(capsys.readouterr().out)
    assert e["dataset"] == "digits" and e["engine"].startswith("lowbit.runtime")
    assert e["test_accuracy"] == pytest.approx(s["test_accuracy"], abs=2e-3)
    assert main(["inspect", str(net), "--json"]) == 0
    i = json.loads(capsys.readouterr().out)
    assert [layer["name"] for layer in i["layers"]] == ["fc1", "fc2", "fc3"]
    assert i["layers"][1]["path"] == "integer" and i["layers"][1]["bits"] == 2
    assert i["layers"][1]["code_bytes"] == -(-300 * 100 * 2 // 8)
    assert i["file_bytes"] == (i["sections_bytes"] + i["header_bytes"] + i["padding_bytes"])
    assert main(["inspect", str(net)]) == 0
    assert "total:" in capsys.readouterr().out


def test_onnx_export_and_eval(run_dir, tmp_path, capsys):
    s = json.loads((run_dir / "summary.json").read_text())
    net = tmp_path / "net.onnx"
    assert main(["export", str(run_dir / "model.pt"), "--onnx", "-o", str(net)]) == 0
    capsys.readouterr()
    assert main(["eval", str(net), "--json"]) == 0  # the dataset from the metadata
    e = json.loads(capsys.readouterr().out)
    assert e["engine"] == "onnxruntime" and e["dataset"] == "digits"
    assert e["test_accuracy"] == pytest.approx(s["test_accuracy"], abs=2e-3)


def test_a_corrupt_file_is_a_clear_error(run_dir, tmp_path, capsys):
    net = tmp_path / "net.lowbit"
    assert main(["export", str(run_dir / "model.pt"), "-o", str(net)]) == 0
    data = bytearray(net.read_bytes())
    data[-10] ^= 0xFF
    bad = tmp_path / "bad.lowbit"
    bad.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["eval", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "sha256" in err.lower() or "checksum" in err.lower() or "digest" in err.lower(), err
    bad.write_bytes(bytes(data[: len(data) // 2]))
    assert main(["inspect", str(bad)]) == 2
    assert "lowbit inspect: error:" in capsys.readouterr().err


def test_eval_of_another_suffix_or_missing_dataset(tmp_path, capsys):
    f = tmp_path / "x.bin"
    f.write_bytes(b"0")
    assert main(["eval", str(tmp_path / "nothing.onnx")]) == 2
    assert "give --dataset" in capsys.readouterr().err
