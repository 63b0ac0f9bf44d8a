"""Transfer functions of every registered quantizer, and Quantization Networks' relaxation from
a line to a staircase as the temperature grows (yang2019 Fig. 2). Drawn from the registry and
lowbit.functional, so a new method appears here without editing this script.

    .venv/bin/python benchmarks/zoo_transfer.py
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from lowbit import functional as F  # noqa: E402
from lowbit.quantizers import METHODS  # noqa: E402
from lowbit.report.provenance import write_provenance  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "zoo_transfer"


def _bits(cls) -> list[int]:
    return [b for b in (1, 2, 3, 4) if b in cls.BITS][:3]


def _curve(cls, bits: int, x: torch.Tensor, weight: bool) -> torch.Tensor:
    """The quantizer's inference function on the tensor x (one output channel for weights)."""
    torch.manual_seed(0)
    q = cls(bits)
    with torch.no_grad():
        if weight:
            w = x.clone().reshape(1, -1)  # INQ overwrites the weights it freezes
            q.init_from(w)
            if hasattr(q, "partition_"):  # INQ: every weight frozen (the final, 100 % step)
                q.partition_(w, 1.0)
            out = q.eval()(w).reshape(-1)
        else:
            if hasattr(q, "calibrate"):
                q.calibrate(x.clamp(min=0))
            q.train()(x)  # one training batch sets data-driven ranges
            out = q.eval()(x)
        if hasattr(q, "hard"):  # Quantization Networks: the inference function is eq. (11)
            q.hard = True
            out = q(w).reshape(-1) if weight else q(x)
    return out


def plot_methods(role: str, x: torch.Tensor, path: Path) -> None:
    weight = role == "weight"
    items = [(n, getattr(m, role)) for n, m in sorted(METHODS.items()) if getattr(m, role)]
    cols = 4
    rows = math.ceil(len(items) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(14, 3 * rows + 1), squeeze=False)
    for ax, (name, cls) in zip(axes.flat, items, strict=False):
        for b in _bits(cls):
            ax.plot(x, _curve(cls, b, x, weight), label=f"{b} bit")
        ax.set_title(f"{name} ({cls.__name__})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(items):]:
        ax.axis("off")
    fig.suptitle(f"{role} quantizers: output vs input (input tensor = the x axis)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_relaxation(path: Path) -> None:
    levels = torch.tensor(F.levels_for("3(+-4)"), dtype=torch.float32)
    sample = torch.randn(20000, generator=torch.Generator().manual_seed(0))
    biases, alpha, beta = F.init_soft_params(sample, levels)
    x = torch.linspace(-4, 4, 2001)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for t in (1, 2, 5, 10, 50):
        ax.plot(x, F.soft_quantize(x, levels, biases, t, alpha, beta), label=f"T = {t}")
    ax.plot(x, F.hard_quantize(x, levels, biases, alpha, beta), "k--", label="eq. (11), T -> inf")
    ax.set(title="Quantization Networks: soft eq. (6) -> hard eq. (11), levels 3(+-4)",
           xlabel="x", ylabel="output")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    plot_methods("weight", torch.linspace(-1, 1, 2001), OUT / "weight_quantizers.png")
    plot_methods("act", torch.linspace(-1, 4, 2001), OUT / "activation_quantizers.png")
    plot_relaxation(OUT / "qnet_relaxation.png")
    write_provenance(OUT)
    print(f"wrote {sorted(p.name for p in OUT.glob('*.png'))} to {OUT}")


if __name__ == "__main__":
    main()
