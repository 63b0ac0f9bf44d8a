"""``lowbit bench --kernels``: the raw GEMM kernels of the fast runtime against torch's fp32
matmul of the same shape, interleaved in one run, in MAC/s, as a ratio to fp32 and as a
fraction of this CPU's measured ceiling.

Kernels: every module named in ``lowbit.runtime.fast.KERNELS`` that imports and has
``bench_cases(M, N, K, rng) -> {name: (fn, macs)}`` (a zero-argument callable running the
kernel once on pre-packed random operands of that GEMM shape, and the MACs it performs);
modules that are missing or have no ``bench_cases`` are listed in ``skipped``. The fp32 side is
``torch.matmul(a, b)`` of float32 (M, K) x (K, N) random matrices, into a preallocated output.
Shapes: M = N = K in {1024, 2048, 4096} and M in {1, 64} with N = K = 4096 (``--quick``: small
ones, for tests); ``--sizes`` takes ``S`` (a cube) or ``MxNxK`` items.

Ceilings (:data:`CEILINGS`, shared PERFORMANCE.md, hand-written kernels on 2 vCPUs), in MAC/s:
fp32 FMA, int8 VNNI (``vpdpbusd``) and binary XOR/AND + popcount, for Sapphire Rapids and Zen
4, chosen by :func:`cpu_kind` from /proc/cpuinfo (None on any other CPU, then the fractions are
None). They are for 2 vCPUs; at T threads the ceiling taken is ``min(T, 2) / 2`` of it (one
vCPU's share: the machine kind has one thread per core). A kernel's unit follows its
``module.case`` name: ``xnor``, ``and``, ``binary``, ``ternary`` or ``bitserial`` -> binary,
``int8`` or ``matmulinteger`` -> int8, anything else -> fp32 (its MACs are then
fp32-equivalent MACs).

JSON (:func:`bench_kernels`): ``cpu``, ``cpu_kind``, ``threads`` (requested; torch / numba /
numpy's blas), ``repeat``, ``min_seconds``, ``ceilings`` (this CPU's row of :data:`CEILINGS`),
``versions``, ``provenance``, ``skipped`` (module -> why), and ``rows``, one per (kernel,
shape):

- ``kernel`` (``torch_fp32`` or ``module.case``), ``module``, ``M``, ``N``, ``K``, ``macs``
- ``seconds`` (median per call), ``seconds_q1``, ``seconds_q3``, ``seconds_min``,
  ``seconds_max``, ``calls`` (calls per sample)
- ``macs_per_s`` (``macs / seconds``), ``speedup_vs_fp32`` (median over rounds of fp32's time
  per MAC / the kernel's, i.e. the MAC/s ratio, both measured in the same round)
- ``unit``, ``ceiling_macs_per_s``, ``fraction_of_ceiling`` (``macs_per_s / ceiling``; None
  when the CPU is unknown).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np

from lowbit.bench import timing

SIZES = ((1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096), (1, 4096, 4096),
         (64, 4096, 4096))
QUICK_SIZES = ((128, 128, 128), (1, 256, 256), (16, 256, 256))
CEILINGS = {  # MAC/s on 2 vCPUs (shared PERFORMANCE.md)
    "sapphire_rapids": {"fp32": 0.145e12, "int8": 0.55e12, "binary": 1.5e12},
    "zen4": {"fp32": 0.117e12, "int8": 0.47e12, "binary": 2.56e12},
}
CEILING_THREADS = 2
BINARY_WORDS = ("xnor", "and", "binary", "ternary", "bitserial")


def _cpuinfo(text: str) -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo text."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if out:
                break
            continue
        k, _, v = line.partition(":")
        out.setdefault(k.strip(), v.strip())
    return out


def cpu_kind(text: str | None = None) -> str | None:
    """``"sapphire_rapids"`` (GenuineIntel family 6 with AMX tiles, or model 143), ``"zen4"``
    (AuthenticAMD family 25 with AVX-512: Zen 3 has the same family and none) or None.

    The Sapphire Rapids VMs of this machine kind report model 167 (Rocket Lake's number) and
    the model name "Intel(R) Xeon(R) Processor", so the model number alone misses them; the
    ``amx_tile`` flag is what tells them apart (no other Intel family-6 part before Sapphire
    Rapids has AMX; its successors share its ceilings' instruction set)."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    info = _cpuinfo(text)
    vendor, family, model = info.get("vendor_id"), info.get("cpu family"), info.get("model")
    flags = set(info.get("flags", "").split())
    if vendor == "GenuineIntel" and family == "6" and (model == "143" or "amx_tile" in flags):
        return "sapphire_rapids"
    if vendor == "AuthenticAMD" and family == "25" and "avx512f" in flags:
        return "zen4"
    return None


def unit_of(kernel: str) -> str:
    """binary / int8 / fp32 from the kernel's ``module.case`` name (module doc)."""
    name = kernel.lower()
    if any(w in name for w in BINARY_WORDS):
        return "binary"
    return "int8" if "int8" in name or "matmulinteger" in name else "fp32"  # ORT's u8 x s8


def ceiling(unit: str, kind: str | None, threads: int) -> float | None:
    if kind not in CEILINGS:
        return None
    return CEILINGS[kind][unit] * min(threads, CEILING_THREADS) / CEILING_THREADS


def ceiling_fields(kernel: str, macs_per_s: float, kind: str | None, threads: int) -> dict:
    """A row's ``unit``, ``ceiling_macs_per_s`` and ``fraction_of_ceiling`` (module doc)."""
    unit = unit_of(kernel)
    top = ceiling(unit, kind, threads)
    return {"unit": unit, "ceiling_macs_per_s": top,
            "fraction_of_ceiling": None if top is None else macs_per_s / top}


def parse_sizes(items) -> list[tuple[int, int, int]]:
    """``["1024", "64x4096x4096"]`` (or one comma-separated string) -> (M, N, K) triples."""
    if isinstance(items, str):
        items = items.split(",")
    out = []
    for item in items:
        parts = [int(p) for p in str(item).lower().split("x") if p]
        if len(parts) == 1:
            parts = parts * 3
        if len(parts) != 3 or min(parts) < 1:
            raise ValueError(f"size {item!r}: give S (M = N = K) or MxNxK")
        out.append(tuple(parts))
    return out


def kernel_modules() -> tuple[dict, dict[str, str]]:
    """``({name: module}, {name: why skipped})`` over ``lowbit.runtime.fast.KERNELS``."""
    from lowbit.runtime import fast

    mods, skipped = {}, {}
    for name in fast.KERNELS:
        full = f"lowbit.runtime.kernels.{name}"
        try:
            mod = importlib.import_module(full)
        except ModuleNotFoundError as e:
            if e.name != full:
                raise
            skipped[name] = "not present"
            continue
        if not callable(getattr(mod, "bench_cases", None)):
            skipped[name] = "no bench_cases"
            continue
        mods[name] = mod
    return mods, skipped


def _fp32_case(m: int, n: int, k: int, rng):
    import torch

    a = torch.from_numpy(rng.standard_normal((m, k), dtype=np.float32))
    b = torch.from_numpy(rng.standard_normal((k, n), dtype=np.float32))
    c = torch.empty(m, n)
    return (lambda: torch.matmul(a, b, out=c)), float(m) * n * k


def _shape_rows(mods: dict, shape, repeat: int, threads: int, kind, min_seconds, rng):
    m, n, k = shape
    cases = {"torch_fp32": ("torch",) + _fp32_case(m, n, k, rng)}
    for name, mod in mods.items():
        for case, (fn, macs) in mod.bench_cases(m, n, k, rng).items():
            cases[f"{name}.{case}"] = (name, fn, float(macs))
    fns = {key: c[1] for key, c in cases.items()}
    calls = {key: timing.calls_for(fn, min_seconds) for key, fn in fns.items()}
    t = timing.interleave(fns, repeat, calls)
    per_mac = {key: np.asarray(t[key]) / cases[key][2] for key in cases}
    rows = []
    for key, (module, _, macs) in cases.items():
        s = timing.stats(t[key])
        rate = macs / s["seconds"]
        rows.append({"kernel": key, "module": module, "M": m, "N": n, "K": k, "macs": macs,
                     **s, "calls": calls[key], "macs_per_s": rate,
                     "speedup_vs_fp32": timing.ratio(per_mac["torch_fp32"], per_mac[key]),
                     **ceiling_fields(key, rate, kind, threads)})
    return rows


def bench_kernels(sizes=None, quick: bool = False, repeat: int = 5, threads: int = 1,
                  min_seconds: float | None = None, seed: int = 0, progress: bool = False) -> dict:
    """Time every kernel case against torch fp32 at each shape (module doc); the JSON record.
    ``min_seconds``: least duration of one sample (default 0.05 s, 0.01 s with ``quick``)."""
    from tqdm.auto import tqdm

    from lowbit.bench.net import versions
    from lowbit.report.provenance import cpu_model, provenance

    shapes = parse_sizes(sizes) if sizes else list(QUICK_SIZES if quick else SIZES)
    if min_seconds is None:
        min_seconds = 0.01 if quick else 0.05
    kind = cpu_kind()
    mods, skipped = kernel_modules()
    rng = np.random.default_rng(seed)
    rows = []
    with timing.threads_set(threads) as given, tqdm(
            total=len(shapes), desc="lowbit bench --kernels", file=sys.stderr,
            disable=not progress, leave=False) as bar:
        for shape in shapes:
            rows += _shape_rows(mods, shape, repeat, threads, kind, min_seconds, rng)
            bar.update(1)
    return {"cpu": cpu_model(), "cpu_kind": kind, "threads": {"requested": threads, **given},
            "repeat": repeat, "min_seconds": min_seconds, "versions": versions(),
            "provenance": provenance(), "ceilings": CEILINGS.get(kind),
            "skipped": skipped, "rows": rows}

