"""``lowbit bench``: the JSON of the network bench, ``--kernels`` and ``--cold-start`` parse and
have the fields their module docstrings document (lowbit.bench.net, .kernels, .coldstart).
Timings are not checked (benchmarks are not tests), only that they are positive numbers."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch

import lowbit
from lowbit.bench import kernels as kb
from lowbit.bench.models import NAMES, build_contenders
from lowbit.cli import main
from lowbit.exporter import export
from lowbit.models import build_model

ROW = {"contender", "batch", "file_bytes", "calls", "seconds", "seconds_q1", "seconds_q3",
       "seconds_min", "seconds_max", "samples_per_s", "speedup_vs_torch_fp32", "agreement"}
TOP = {"file", "file_bytes", "input_shape", "inputs", "calibration", "threads", "repeat",
       "batches", "min_seconds", "cpu", "cpu_kind", "versions", "provenance", "contenders",
       "rows"}
KROW = {"kernel", "module", "M", "N", "K", "macs", "seconds", "seconds_q1", "seconds_q3",
        "seconds_min", "seconds_max", "calls", "macs_per_s", "speedup_vs_fp32", "unit",
        "ceiling_macs_per_s", "fraction_of_ceiling"}


def _lenet300(path, dataset=None):
    """A tiny LeNet300 on 8x8 inputs (the bundled digits' size), W8A8, exported."""
    torch.manual_seed(0)
    net = lowbit.quantize(build_model("lenet300", 1, 8, 10, 0.3, 0.3),
                          lowbit.Recipe(weight="uniform", act="uniform", w_bits=8, a_bits=8))
    net.train()
    with torch.no_grad():
        net(torch.rand(32, 1, 8, 8))
    info = {"dataset": dataset} if dataset else {}
    return export(net.eval(), path, input_shape=(1, 8, 8), model_info=info)


@pytest.fixture(scope="module")
def net_file(tmp_path_factory):
    return _lenet300(tmp_path_factory.mktemp("bench") / "net.lowbit", "digits")


def test_bench_json_has_the_documented_fields(net_file, tmp_path, capsys):
    capsys.readouterr()
    assert main(["bench", str(net_file), "--batches", "1,4", "--repeat", "2", "--json",
                 "-o", str(tmp_path / "out")]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r) == TOP
    assert r["batches"] == [1, 4] and r["repeat"] == 2 and r["input_shape"] == [1, 8, 8]
    assert r["inputs"].startswith("digits test split") and r["calibration"].startswith("digits")
    assert r["threads"]["requested"] == r["threads"]["torch"] == r["threads"]["onnxruntime"] == 1
    assert set(r["contenders"]) == set(NAMES)
    assert r["contenders"]["lowbit_reference"]["file_bytes"] == net_file.stat().st_size
    assert set(r["contenders"]["lowbit_fast"]["kernels"]) == {"fc1", "fc2", "fc3"}
    assert {"torch", "onnxruntime", "numba", "numpy"} <= set(r["versions"])
    assert len(r["rows"]) == len(NAMES) * 2
    for row in r["rows"]:
        assert set(row) == ROW
        assert row["seconds"] > 0 and row["seconds_min"] <= row["seconds"] <= row["seconds_max"]
        assert row["samples_per_s"] == pytest.approx(row["batch"] / row["seconds"])
        assert 0 <= row["agreement"] <= 1 and row["speedup_vs_torch_fp32"] > 0
        if row["contender"].startswith("lowbit"):
            assert row["agreement"] == 1.0
    for f in ("bench.json", "bench.md", "bench.png"):
        assert (tmp_path / "out" / f).stat().st_size > 0
    assert "| lowbit_fast |" in (tmp_path / "out" / "bench.md").read_text()


def test_without_a_dataset_the_inputs_are_random_and_the_table_prints(tmp_path, capsys):
    path = _lenet300(tmp_path / "n.lowbit")
    capsys.readouterr()
    assert main(["bench", str(path), "--batches", "2", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "uniform random" in out and "| torch_fp32 |" in out and "batch 2 samples/s" in out


def test_the_torch_and_onnx_twins_compute_the_same_float_net(net_file, tmp_path):
    x = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)
    calib = [x[:8], x[8:]]
    c = build_contenders(net_file, (1, 8, 8), calib, 1, tmp_path,
                         ("torch_fp32", "torch_int8_dynamic", "ort_fp32", "ort_int8_qdq"))
    want = c["torch_fp32"].predict(x)
    np.testing.assert_allclose(c["ort_fp32"].predict(x), want, rtol=1e-4, atol=1e-4)
    for k in ("torch_int8_dynamic", "ort_int8_qdq"):  # int8: close, not equal
        assert np.abs(c[k].predict(x) - want).max() < 0.1 * np.abs(want).max() + 0.1
    assert c["ort_int8_qdq"].file_bytes < c["ort_fp32"].file_bytes


def _fake_kernels():
    mod = types.ModuleType("lowbit.runtime.kernels.fake")

    def bench_cases(m, n, k, rng):  # stand-ins: any zero-argument callable and its MACs
        a = rng.integers(-1, 2, (m, k)).astype(np.int8)
        return {"xnor_gemm": (a.sum, m * n * k), "int8_gemm": (a.max, m * n * k),
                "q4_gemv": (a.min, m * n * k)}

    mod.bench_cases = bench_cases
    return mod


def test_kernels_quick_with_a_fake_kernel_module(monkeypatch, tmp_path, capsys):
    from lowbit.runtime import fast

    monkeypatch.setitem(sys.modules, "lowbit.runtime.kernels.fake", _fake_kernels())
    monkeypatch.setitem(sys.modules, "lowbit.runtime.kernels.plain", types.ModuleType("plain"))
    monkeypatch.setattr(fast, "KERNELS", ("fake", "plain", "absent"))
    monkeypatch.setattr(kb, "cpu_kind", lambda text=None: "zen4")
    capsys.readouterr()
    assert main(["bench", "--kernels", "--quick", "--repeat", "2",
                 "--json", "-o", str(tmp_path)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["skipped"] == {"plain": "no bench_cases", "absent": "not present"}
    assert r["cpu_kind"] == "zen4" and r["ceilings"] == kb.CEILINGS["zen4"]
    names = ["torch_fp32", "fake.xnor_gemm", "fake.int8_gemm", "fake.q4_gemv"]
    assert [row["kernel"] for row in r["rows"]] == names * len(kb.QUICK_SIZES)
    units = {"torch_fp32": "fp32", "fake.xnor_gemm": "binary", "fake.int8_gemm": "int8",
             "fake.q4_gemv": "fp32"}
    for row in r["rows"]:
        assert set(row) >= KROW and row["unit"] == units[row["kernel"]]
        assert (row["M"], row["N"], row["K"]) in kb.QUICK_SIZES
        assert row["macs_per_s"] == pytest.approx(row["macs"] / row["seconds"])
        assert row["speedup_vs_fp32"] > 0
        top = kb.CEILINGS["zen4"][row["unit"]] / 2  # one thread of a 2-vCPU ceiling
        assert row["ceiling_macs_per_s"] == pytest.approx(top)
        assert row["fraction_of_ceiling"] == pytest.approx(row["macs_per_s"] / top)
    assert (tmp_path / "kernels.json").exists() and (tmp_path / "kernels.md").exists()


def test_cpu_kind_and_units():
    spr = "vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\nflags\t\t: avx512f\n"
    zen4 = "vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nflags\t\t: avx2 avx512f\n"
    zen3 = "vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nflags\t\t: avx2\n"
    # a Sapphire Rapids VM as this machine kind reports it (model 167, AMX flags)
    rocket = "vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 167\nflags\t\t: avx512f"
    spr_vm = rocket + " amx_tile\n"
    rocket += "\n"
    assert ([kb.cpu_kind(t) for t in (spr, zen4, zen3, spr_vm, rocket)]
            == ["sapphire_rapids", "zen4", None, "sapphire_rapids", None])
    assert kb.ceiling("binary", None, 2) is None
    assert kb.ceiling("int8", "sapphire_rapids", 2) == 0.55e12
    assert kb.parse_sizes("1024,1x4096x4096") == [(1024,) * 3, (1, 4096, 4096)]
    assert [kb.unit_of(k) for k in ("binary.gemm", "integer.bitserial_w2a2", "integer.int8",
                                    "lowbit.q4_gemv")] == ["binary", "binary", "int8", "fp32"]
    with pytest.raises(ValueError):
        kb.parse_sizes("1x2")


def test_cold_start_returns_numbers(net_file):
    from lowbit.bench.coldstart import cold_start

    r = cold_start(net_file, runs=1)
    assert set(r["settings"]) == {"numpy", "fast_compile", "fast_cached"}
    assert isinstance(r["meets_target"], bool) and r["target_seconds"] == 0.5
    for s in r["settings"].values():
        assert 0 < s["import_seconds"] < s["seconds"] < s["process_seconds"]
        assert s["peak_rss_mb"] > 0 and s["torch_imported"] is False
    assert r["settings"]["numpy"]["kernels"] is None
    assert set(r["settings"]["fast_cached"]["kernels"]) == {"fc1", "fc2", "fc3"}
