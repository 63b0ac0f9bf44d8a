"""Ivan's Figures 2 and 4: the transfer functions Q_b(x) on [-1, 1] (eq. 3) and A_b(x) on
[-3, 16] (eq. 5) for b in {1, 2, 4, 8}, drawn from lowbit.functional.

    .venv/bin/python benchmarks/ivan_transfer.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from lowbit.functional import ivan_activation, ivan_weight  # noqa: E402
from lowbit.report.provenance import write_provenance  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "ivan_transfer"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    x = torch.linspace(-1, 1, 4001)
    for b in (1, 2, 4, 8):
        ax1.plot(x, ivan_weight(x, b), label=f"b = {b}", drawstyle="steps-post")
    ax1.set(title="Fig. 2: Q_b(x), eq. (3)", xlabel="x", ylabel="Q_b(x)")
    x = torch.linspace(-3, 16, 4001)
    for b in (1, 2, 4, 8):
        ax2.plot(x, ivan_activation(x, b), label=f"b = {b}", drawstyle="steps-post")
    ax2.set(title="Fig. 4: A_b(x), eq. (5) (M = max over the interval)", xlabel="x",
            ylabel="A_b(x)")
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(OUT / "ivan_fig2_fig4.png", dpi=120)
    write_provenance(OUT)
    print(f"wrote {OUT / 'ivan_fig2_fig4.png'}")


if __name__ == "__main__":
    main()
