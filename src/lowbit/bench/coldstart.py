"""``lowbit bench --cold-start net.lowbit``: ``import lowbit.runtime`` + ``load`` + the first
prediction, each in a fresh Python process that cannot import torch (``sys.modules["torch"] =
None``, as tests/runtime/test_no_torch.py blocks it: any ``import torch`` raises).

Three settings: ``numpy`` (the reference runtime; target <= 0.5 s), ``fast_compile``
(``fast=True`` with ``NUMBA_CACHE_DIR`` a new empty directory: numba compiles every kernel)
and ``fast_cached`` (``fast=True`` again with that directory: numba's on-disk cache). The
process's own clock runs from before ``import lowbit.runtime`` to after the first prediction
(one input of the file's shape, uniform random); ``process_seconds`` is the parent's wall time
of the whole subprocess (interpreter start-up included). "Cold" is a fresh process, not a cold
disk cache: the files are in the OS page cache after the first run.

JSON (:func:`cold_start`): ``file``, ``python`` (the interpreter), ``cpu``, ``provenance``,
``runs`` (processes per
setting; ``fast_compile`` runs once per fresh cache), ``target_seconds`` (0.5, numpy path),
``meets_target``, and ``settings``: name -> ``seconds`` (median in-process time),
``seconds_all``, ``import_seconds``, ``load_seconds``, ``predict_seconds`` (medians),
``process_seconds`` (median), ``peak_rss_mb`` (max over the runs of the child's peak
resident set, ``VmHWM`` of /proc/self/status: ``ru_maxrss`` survives ``exec`` and would report
the parent's), ``numba_imported``, ``torch_imported`` (always false: blocked), ``kernels``
(layer -> kernel, fast settings).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 0.5

CHILD = r"""
import sys, time
t0 = time.perf_counter()
sys.modules["torch"] = None  # any import of torch now fails
import lowbit.runtime as rt
t1 = time.perf_counter()
fast = sys.argv[2] == "1"
net = rt.load(sys.argv[1], fast=fast)
t2 = time.perf_counter()
import numpy as np
shape = tuple(int(d) for d in sys.argv[3].split(","))
y = net(np.random.default_rng(0).random((1, *shape), dtype=np.float32))
t3 = time.perf_counter()


def peak_mb():
    # VmHWM: this process's peak resident set (ru_maxrss would keep the parent's across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


import json
kernels = None
if fast:
    from lowbit.runtime.fast import kernels as _k
    kernels = _k(net)
loaded = {m.split(".")[0] for m, mod in sys.modules.items() if mod is not None}
print(json.dumps({"seconds": t3 - t0, "import_seconds": t1 - t0, "load_seconds": t2 - t1,
                  "predict_seconds": t3 - t2, "logits": int(y.shape[-1]),
                  "peak_rss_mb": peak_mb(),
                  "numba_imported": "numba" in loaded, "torch_imported": "torch" in loaded,
                  "kernels": kernels}))
"""


def _src() -> str:
    import lowbit

    return str(Path(lowbit.__file__).resolve().parents[1])


def run_once(path: str | Path, shape, fast: bool, cache_dir: str, timeout: float = 300) -> dict:
    """One fresh process (module doc); its record plus ``process_seconds``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_src(), env.get("PYTHONPATH")) if p)
    env["NUMBA_CACHE_DIR"] = cache_dir
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), "1" if fast else "0",
                           ",".join(str(int(d)) for d in shape)], capture_output=True,
                          text=True, timeout=timeout, env=env)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"cold-start process failed: {done.stderr.strip()[-2000:]}")
    rec = json.loads(done.stdout.strip().splitlines()[-1])
    rec["process_seconds"] = wall
    return rec


def _summary(recs: list[dict]) -> dict:
    med = {k: statistics.median(r[k] for r in recs)
           for k in ("seconds", "import_seconds", "load_seconds", "predict_seconds",
                     "process_seconds")}
    return {**med, "seconds_all": [r["seconds"] for r in recs],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in recs),
            "numba_imported": any(r["numba_imported"] for r in recs),
            "torch_imported": any(r["torch_imported"] for r in recs),
            "kernels": recs[-1]["kernels"]}


def cold_start(path: str | Path, input_shape=None, runs: int = 3) -> dict:
    """Cold-start records of the three settings (module doc) for the file at ``path``."""
    from lowbit.bench.net import input_shape_of
    from lowbit.runtime.container import read_header

    shape = input_shape_of(read_header(path)["meta"], input_shape)
    settings = {}
    with tempfile.TemporaryDirectory() as tmp:
        empty = os.path.join(tmp, "numpy_cache")
        settings["numpy"] = _summary([run_once(path, shape, False, empty) for _ in range(runs)])
        cache = os.path.join(tmp, "numba_cache")
        settings["fast_compile"] = _summary([run_once(path, shape, True, cache)])
        settings["fast_cached"] = _summary([run_once(path, shape, True, cache)
                                            for _ in range(runs)])
    from lowbit.report.provenance import cpu_model, provenance

    return {"file": str(path), "python": sys.executable, "runs": runs, "cpu": cpu_model(),
            "provenance": provenance(),
            "input_shape": list(shape), "target_seconds": TARGET_SECONDS,
            "meets_target": settings["numpy"]["seconds"] <= TARGET_SECONDS,
            "settings": settings}
