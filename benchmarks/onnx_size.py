"""File sizes of one quantized net in four forms: the float ONNX (every weight decoded to
float32, same graph), lowbit's ONNX (``lowbit.exporter.onnx.export_onnx``: weights at their
width), the packed ``.lowbit`` file (``lowbit.export``) and Brevitas 0.13.4's
``export_onnx_qcdq`` of the equivalent Brevitas net (same layers and bit widths), when
brevitas imports.

    PYTHONPATH=src:/tmp/brevitas_pkgs python benchmarks/onnx_size.py

Nets: LeNet300 (784-300-100-10) and ResNet-20 (CIFAR, option-B shortcuts) with uniform weights
and activations at W8A8, W4A4, W2A2 and W4/W2 with float activations (a_bits 32); first and last
layer at 8 bits in both libraries (lowbit's keep_first/keep_last). Weights are random and
calibrated on one batch of random data: sizes do not depend on training. Writes
benchmarks/results/onnx_size/{results.json,results.md}.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

import lowbit
from lowbit.exporter.onnx import export_onnx, forms_of
from lowbit.models import build_model

OUT = Path(__file__).parent / "results" / "onnx_size"
ARCHS = {"lenet300": (1, 28, 28), "resnet20": (3, 32, 32)}
CONFIGS = [(8, 8), (4, 4), (2, 2), (4, 32), (2, 32)]


def lowbit_net(arch: str, w_bits: int, a_bits: int) -> nn.Module:
    torch.manual_seed(0)
    shape = ARCHS[arch]
    net = build_model(arch, shape[0], shape[1], 10, 0.5, 0.25)
    net = lowbit.quantize(net, lowbit.Recipe(weight="uniform", act="uniform", w_bits=w_bits,
                                             a_bits=a_bits))
    net.train()
    with torch.no_grad():
        net(torch.rand(64, *shape))
    return net.eval()


def brevitas_net(arch: str, w_bits: int, a_bits: int) -> nn.Module:
    """The same architecture in Brevitas: QuantLinear/QuantConv2d at ``w_bits`` (first and
    last at 8), QuantReLU at ``a_bits`` (plain ReLU for 32)."""
    import brevitas.nn as qnn

    def act():
        return nn.ReLU() if a_bits >= 32 else qnn.QuantReLU(bit_width=a_bits)

    if arch == "lenet300":
        return nn.Sequential(nn.Flatten(), qnn.QuantLinear(784, 300, True, weight_bit_width=8),
                             act(), qnn.QuantLinear(300, 100, True, weight_bit_width=w_bits),
                             act(), qnn.QuantLinear(100, 10, True, weight_bit_width=8)).eval()

    def conv(cin, cout, k, stride, bits):
        return qnn.QuantConv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False,
                               weight_bit_width=bits)

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(conv(cin, cout, 3, stride, w_bits), nn.BatchNorm2d(cout),
                                      act(), conv(cout, cout, 3, 1, w_bits),
                                      nn.BatchNorm2d(cout))
            self.short = nn.Identity() if cin == cout and stride == 1 else nn.Sequential(
                conv(cin, cout, 1, stride, w_bits), nn.BatchNorm2d(cout))
            self.out = act()

        def forward(self, x):
            return self.out(self.body(x) + self.short(x))

    layers, cin = [conv(3, 16, 3, 1, 8), nn.BatchNorm2d(16), act()], 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(3):
            layers.append(Block(cin, cout, stride if i == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), qnn.QuantLinear(64, 10, True,
                                                                      weight_bit_width=8)]
    return nn.Sequential(*layers).eval()


def brevitas_size(arch: str, w_bits: int, a_bits: int, tmp: Path) -> tuple[int | str, dict]:
    """The file size (or why there is none) and its initializers' element counts by type."""
    try:
        from brevitas.export import export_onnx_qcdq
    except Exception as e:  # not installed, or broken against this torch
        return f"brevitas unavailable: {type(e).__name__}: {e}", {}
    path = tmp / f"brevitas_{arch}_{w_bits}_{a_bits}.onnx"
    try:
        export_onnx_qcdq(brevitas_net(arch, w_bits, a_bits), torch.rand(1, *ARCHS[arch]),
                         export_path=str(path))
    except Exception as e:
        return f"export_onnx_qcdq failed: {type(e).__name__}: {str(e)[:300]}", {}
    import onnx

    counts: dict[str, int] = {}
    for t in onnx.load(str(path)).graph.initializer:
        name = onnx.TensorProto.DataType.Name(t.data_type)
        counts[name] = counts.get(name, 0) + int(onnx.numpy_helper.to_array(t).size)
    return path.stat().st_size, counts


def measure(arch: str, w_bits: int, a_bits: int, tmp: Path) -> dict:
    net, shape = lowbit_net(arch, w_bits, a_bits), ARCHS[arch]
    base = tmp / f"{arch}_{w_bits}_{a_bits}"
    fl = export_onnx(net, f"{base}_float.onnx", input_shape=shape, weights="float")
    lb = export_onnx(net, f"{base}.onnx", input_shape=shape)
    packed = lowbit.export(net, f"{base}.lowbit", input_shape=shape)
    row = {"arch": arch, "w_bits": w_bits, "a_bits": a_bits,
           "float_onnx": fl.stat().st_size, "lowbit_onnx": lb.stat().st_size,
           "lowbit_file": packed.stat().st_size,
           "brevitas_qcdq": None, "brevitas_initializer_elements": None,
           "forms": sorted(set(forms_of(lb).values()))}
    row["brevitas_qcdq"], row["brevitas_initializer_elements"] = brevitas_size(
        arch, w_bits, a_bits, tmp)
    return row


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| net | W | A | float ONNX | lowbit ONNX | ratio | .lowbit | Brevitas "
             "QCDQ | lowbit forms |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = r["brevitas_qcdq"]
        b = f"{b:,}" if isinstance(b, int) else "n/a (see json)"
        lines.append(f"| {r['arch']} | {r['w_bits']} | {r['a_bits']} | {r['float_onnx']:,} | "
                     f"{r['lowbit_onnx']:,} | {r['float_onnx'] / r['lowbit_onnx']:.1f}x | "
                     f"{r['lowbit_file']:,} | {b} | {'; '.join(r['forms'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    torch.set_num_threads(1)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()
    command = "PYTHONPATH=src:/tmp/brevitas_pkgs python " + " ".join(
        ["benchmarks/onnx_size.py", *sys.argv[1:]])
    with tempfile.TemporaryDirectory() as d:
        rows = [measure(a, w, x, Path(d)) for a in ARCHS for w, x in CONFIGS]
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"command": command, "commit": commit, "torch": torch.__version__}
    try:
        import brevitas
        meta["brevitas"] = brevitas.__version__
    except Exception as e:
        meta["brevitas"] = f"not importable: {e}"
    (OUT / "results.json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    header = (f"# ONNX file sizes (bytes)\n\n`{command}` at commit {commit}, torch "
              f"{torch.__version__}, brevitas {meta['brevitas']}. Float ONNX = the same graph "
              "with every weight decoded to float32. First/last layer at 8 bits in both "
              "libraries; uniform weights and activations; random calibrated weights.\n\n"
              "Brevitas 0.13.4 (installed with --no-deps into a separate --target directory, "
              "with onnxoptimizer 0.4.2, on PYTHONPATH) exports through torch 2.13's dynamo "
              "exporter: its weights stay FLOAT initializers quantized at run time "
              "(QuantizeLinear -> Clip -> DequantizeLinear), so its file is float-sized at every "
              "bit width (results.json: brevitas_initializer_elements). The .lowbit file also "
              "holds every activation grid's exact thresholds, values and codes (about 2.6 kB "
              "per 8-bit quantizer) and a JSON header, which the QDQ ONNX does not.")
    (OUT / "results.md").write_text(markdown(rows, header))
    print(markdown(rows, header))


if __name__ == "__main__":
    main()
