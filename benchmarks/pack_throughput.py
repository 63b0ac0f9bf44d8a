"""Throughput of lowbit.runtime.pack_bits / unpack_bits for 1M codes at every bit width 1..8,
next to the textbook numpy method (an (n, bits) bit matrix through np.packbits /
np.unpackbits with bitorder="little"), which lays out the same bytes.

    PYTHONPATH=src python benchmarks/pack_throughput.py [--n 1000000] [--repeat 5]

Writes benchmarks/results/pack_throughput/{results.json,README.md}. Best of ``--repeat``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

from lowbit.runtime import pack_bits, unpack_bits

OUT = Path(__file__).parent / "results" / "pack_throughput"


def matrix_pack(codes: np.ndarray, bits: int) -> np.ndarray:
    m = (codes.reshape(-1, 1) >> np.arange(bits, dtype=codes.dtype)) & 1
    return np.packbits(m.astype(np.uint8).reshape(-1), bitorder="little")


def matrix_unpack(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    m = np.unpackbits(data, count=count * bits, bitorder="little").reshape(count, bits)
    return (m << np.arange(bits, dtype=np.uint8)).sum(axis=1, dtype=np.uint8)


def best(fn, fn_args, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(*fn_args)
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for bits in range(1, 9):
        codes = rng.integers(0, 2**bits, args.n).astype(np.uint8)
        packed = pack_bits(codes, bits)
        assert matrix_pack(codes, bits).tobytes() == packed.tobytes()
        assert (matrix_unpack(packed, bits, args.n) == codes).all()
        row = {"bits": bits}
        cases = {"pack": (pack_bits, codes, bits), "unpack": (unpack_bits, packed, bits, args.n),
                 "matrix_pack": (matrix_pack, codes, bits),
                 "matrix_unpack": (matrix_unpack, packed, bits, args.n)}
        for key, (fn, *fn_args) in cases.items():
            row[key] = round(args.n / best(fn, fn_args, args.repeat) / 1e6, 1)  # Mcodes/s
        rows.append(row)
        print(row, flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result = {"n": args.n, "repeat": args.repeat, "unit": "Mcodes/s", "commit": commit,
              "numpy": np.__version__, "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "load_average_1min": load, "rows": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# pack_bits / unpack_bits throughput ({args.n} codes, Mcodes/s, best of "
             f"{args.repeat})", "", f"Commit {commit}, numpy {np.__version__}, {os.cpu_count()} "
             f"CPUs, 1-min load average {load} at the end of the run.", "",
             "Command: `PYTHONPATH=src python benchmarks/pack_throughput.py`", "",
             "| bits | pack | unpack | bit-matrix pack | bit-matrix unpack |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['bits']} | {r['pack']} | {r['unpack']} | {r['matrix_pack']} | "
              f"{r['matrix_unpack']} |" for r in rows]
    (OUT / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
