"""The integer path's GEMM kernels with and without VNNI, side by side in one process
(interleaved rounds, one thread): should a VNNI CPU take the VNNI kernels by default?

For each shape (M x N x K) and activation/weight range, the kernel each ISA would choose
(:func:`lowbit.runtime.kernels.integer.choose_kind` under AVX2 vs VNNI; ``Matmul(...,
vnni=...)``), timed by :mod:`lowbit.bench.timing` (the GEMM call alone, packing excluded):

- 8-bit (activations 0..255, weights -128..127): AVX2 ``s16`` (int16 pairs, ``vpmaddwd``: exact
  where ``vpmaddubsw`` would saturate) vs VNNI ``u8s8`` (``vpdpbusd``);
- 4-bit (0..15, -8..7): AVX2 ``u8s8`` with int16 chunks (``vpmaddubsw``, flushed every
  ``chunk`` steps) vs VNNI ``u8s8``;
- 2-bit (0..3, -2..1): as 4-bit.

Every result is checked against the int64 product before it is timed. Needs a CPU with
AVX512-VNNI or AVX-VNNI (exits otherwise).

    python benchmarks/int8_vnni.py [--repeat 7] [--threads 1]

Writes benchmarks/results/int8_vnni/{results.json,results.md,int8_vnni.png}.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "results" / "int8_vnni"
SHAPES = [(64, 4096, 4096), (1, 4096, 4096), (1024, 1024, 1024), (64, 300, 784),
          (4096, 16, 144), (1024, 64, 576)]  # big GEMMs, LeNet300 fc1, ResNet-20 convs (im2col)
RANGES = {"8-bit": ((0, 255), (-128, 127)), "4-bit": ((0, 15), (-8, 7)),
          "2-bit": ((0, 3), (-2, 1))}


def main(argv=None) -> int:
    import numba

    from lowbit.bench import timing
    from lowbit.bench.kernels import ceiling, cpu_kind
    from lowbit.report.provenance import provenance, provenance_line
    from lowbit.runtime.kernels import int_gemm as ig
    from lowbit.runtime.kernels.integer import Matmul
    from lowbit.train.files import atomic_write_text

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args(argv)
    if not ig.HAS_VNNI:
        raise SystemExit("this CPU has no VNNI: nothing to compare")
    numba.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    rows = []
    top = ceiling("int8", cpu_kind(), a.threads)  # PERFORMANCE.md's int8 VNNI ceiling
    from tqdm import tqdm

    cases = [(s, r) for s in SHAPES for r in RANGES]
    for (m, n, k), rname in tqdm(cases, desc="int8 vnni"):
        (alo, ahi), (wlo, whi) = RANGES[rname]
        act, wt = rng.integers(alo, ahi + 1, (m, k)), rng.integers(wlo, whi + 1, (n, k))
        want = act @ wt.T
        mms, fns = {}, {}
        for isa in ("avx2", "vnni"):
            mm = Matmul(wt, alo, ahi, vnni=isa == "vnni")  # choose_kind's pick for that ISA
            assert np.array_equal(mm(act), want), (isa, mm.kind, m, n, k, rname)
            mms[isa], fns[isa] = mm, functools.partial(mm.run, mm.pack(act))  # the GEMM alone
        calls = {isa: timing.calls_for(fn, 0.05) for isa, fn in fns.items()}
        t = timing.interleave(fns, a.repeat, calls)
        row = {"m": m, "n": n, "k": k, "range": rname}
        for isa, mm in mms.items():
            med = timing.stats(t[isa])["seconds"]
            row[isa] = {"kind": mm.kind + (f"-chunk{mm.chunk}" if mm.chunk else ""),
                        "seconds": med, "gmacs": m * n * k / med / 1e9,
                        "spread": [min(t[isa]), max(t[isa])]}
        row["vnni_over_avx2"] = row["avx2"]["seconds"] / row["vnni"]["seconds"]
        row["vnni_fraction_of_int8_ceiling"] = row["vnni"]["gmacs"] * 1e9 / top if top else None
        rows.append(row)
    prov = provenance()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"provenance": prov, "threads": a.threads, "repeat": a.repeat, "rows": rows}
    atomic_write_text(json.dumps(result, indent=1) + "\n", out / "results.json")
    atomic_write_text(_markdown(result, provenance_line(prov)), out / "results.md")
    _plot(rows, out / "int8_vnni.png")
    print(_markdown(result, provenance_line(prov)))
    return 0


def _markdown(r: dict, prov_line: str) -> str:
    lines = ["# Integer GEMM kernels: AVX2 vs VNNI (one process, interleaved)", "",
             f"{prov_line}  ", f"Threads {r['threads']}, median of {r['repeat']} "
             "interleaved rounds; every result equal to the int64 product.", "",
             "| M x N x K | range | AVX2 kernel | AVX2 GMAC/s | VNNI kernel | VNNI GMAC/s "
             "| VNNI / AVX2 | VNNI of int8 ceiling |", "|---|---|---|---:|---|---:|---:|---:|"]
    for w in r["rows"]:
        frac = w["vnni_fraction_of_int8_ceiling"]
        lines.append(f"| {w['m']}x{w['n']}x{w['k']} | {w['range']} | {w['avx2']['kind']} | "
                     f"{w['avx2']['gmacs']:.1f} | {w['vnni']['kind']} | {w['vnni']['gmacs']:.1f}"
                     f" | {w['vnni_over_avx2']:.2f}x | "
                     f"{'-' if frac is None else f'{100 * frac:.0f} %'} |")
    lines += ["", "Ceiling: ../shared/PERFORMANCE.md's int8 VNNI rate of this CPU kind "
              "(lowbit.bench.kernels.CEILINGS) at this many threads."]
    return "\n".join(lines) + "\n"


def _plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{w['m']}x{w['n']}x{w['k']}\n{w['range']}" for w in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.7), 4))
    ax.bar(x - 0.2, [w["avx2"]["gmacs"] for w in rows], 0.4, label="AVX2 kernels")
    ax.bar(x + 0.2, [w["vnni"]["gmacs"] for w in rows], 0.4, label="VNNI kernels")
    ax.set_xticks(x, labels, fontsize=6, rotation=90)
    ax.set_ylabel("GMAC/s (1 thread)")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
