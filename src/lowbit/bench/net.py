"""``lowbit bench net.lowbit``: size, batch-1 latency and batch-64 / 1024 throughput of one
exported network in six engines (:mod:`lowbit.bench.models`), timed in one run, interleaved
(:mod:`lowbit.bench.timing`), at one stated thread count set for all.

Inputs: the first ``max(batches)`` images of the test split of the dataset the file's header
names (``meta.model.dataset``; ``--data-dir``, else ``$LOWBIT_DATA``, as ``lowbit eval``),
scaled to [0, 1]; ONNX Runtime's int8 model is calibrated on 4 batches of 64 train images.
When the file names no dataset or its files are not there: uniform random inputs in [0, 1)
(seeded) for both; ``inputs`` and ``calibration`` say which. Batch ``b`` times the first ``b``
inputs; each contender's argmax on them is compared with the reference runtime's.

The JSON (:func:`bench_file`'s result; ``lowbit bench --json``, ``bench.json``):

- ``file``, ``file_bytes``, ``input_shape`` (without the batch), ``inputs``, ``calibration``
- ``threads``: ``requested`` and the counts of ``torch`` / ``numba`` (read after the last
  round) / numpy's ``blas`` / ``onnxruntime``
- ``repeat`` (rounds), ``batches``, ``min_seconds`` (least duration of one sample)
- ``cpu`` (/proc/cpuinfo model name), ``cpu_kind`` (``sapphire_rapids`` / ``zen4`` / null),
  ``versions`` (python, torch, numba, numpy, onnxruntime, onnx, lowbit), ``provenance``
  (:func:`lowbit.report.provenance.provenance`: command, commit, load, time)
- ``contenders``: name -> ``engine`` (what runs it), ``file_bytes`` (its model file: the
  .lowbit file, the .onnx file, or ``torch.save(state_dict)``), and ``paths`` (reference: layer
  -> runtime path) or ``kernels`` (fast: layer -> kernel, "reference" where none serves it)
- ``rows``: one per (contender, batch): ``contender``, ``batch``, ``file_bytes``, ``calls``
  (calls per sample), ``seconds`` (median seconds per call over the rounds), ``seconds_q1``,
  ``seconds_q3``, ``seconds_min``, ``seconds_max``, ``samples_per_s`` (``batch / seconds``),
  ``speedup_vs_torch_fp32`` (median over rounds of torch fp32's time / this one's, same
  round), ``agreement`` (fraction of the batch whose argmax equals the reference runtime's).
"""

from __future__ import annotations

import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

from lowbit.bench import timing
from lowbit.bench.models import NAMES, build_contenders

BATCHES = (1, 64, 1024)
CALIB_BATCHES, CALIB_SIZE = 4, 64


def input_shape_of(meta: dict, given=None) -> tuple[int, ...]:
    """The input shape without the batch: ``given``, else the header's ``input.shape``, else
    the architecture's ``in_channels`` / ``image_size``, else a first linear layer's width."""
    if given:
        return tuple(int(d) for d in given)
    shape = (meta.get("input") or {}).get("shape")
    if shape:
        return tuple(int(d) for d in shape)
    arch = (meta.get("model") or {}).get("architecture") or {}
    if arch.get("image_size"):
        from lowbit.deploy import _input_shape

        return tuple(_input_shape(arch))
    first = next((op for op in meta["graph"] if op["op"] not in ("input", "normalize")), None)
    if first is not None and first["op"] == "linear":
        return (int(first["weight"]["shape"][1]),)
    raise ValueError("the file records no input shape: give --input-shape (e.g. 1,28,28)")


def _dataset_inputs(name: str, shape, n: int, data_dir):
    """``(x, calibration, inputs, calib_text)`` from dataset ``name`` (module doc)."""
    from lowbit.data import load_dataset

    test, train = load_dataset(name, "test", data_dir), load_dataset(name, "train", data_dir)
    if tuple(test.images.shape[1:]) != tuple(shape):
        raise ValueError(f"its images are {tuple(test.images.shape[1:])}, the net takes "
                         f"{tuple(shape)}")
    reps = -(-n // len(test))
    x = np.tile(test.images.numpy(), (reps, 1, 1, 1))[:n].astype(np.float32) / np.float32(255)
    c = train.images[:CALIB_BATCHES * CALIB_SIZE].numpy().astype(np.float32) / np.float32(255)
    calib = [np.ascontiguousarray(c[i:i + CALIB_SIZE]) for i in range(0, len(c), CALIB_SIZE)]
    return (x, calib, f"{name} test split, first {n} images" + (", repeated" if reps > 1 else ""),
            f"{name} train split, {len(calib)} batches of {CALIB_SIZE}")


def bench_inputs(meta: dict, shape, n: int, data_dir=None, seed: int = 0):
    """``(x, calibration, inputs, calib_text)``: ``n`` timed inputs (float32), the calibration
    batches, and what each is (module doc)."""
    name = (meta.get("model") or {}).get("dataset")
    why = "the file names no dataset"
    if name:
        try:
            return _dataset_inputs(name, shape, n, data_dir)
        except (ValueError, OSError) as e:  # DataError is an OSError: files not there
            why = f"{name}: {e}"
    rng = np.random.default_rng(seed)
    x = rng.random((n, *shape), dtype=np.float32)
    calib = [rng.random((CALIB_SIZE, *shape), dtype=np.float32) for _ in range(CALIB_BATCHES)]
    return (x, calib, f"uniform random in [0, 1), seed {seed} ({why})",
            f"{CALIB_BATCHES} random batches of {CALIB_SIZE} ({why})")


def versions() -> dict:
    import numba
    import numpy
    import onnx
    import onnxruntime
    import torch

    import lowbit

    return {"python": platform.python_version(), "torch": torch.__version__,
            "numba": numba.__version__, "numpy": numpy.__version__,
            "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
            "lowbit": lowbit.__version__}


def _counts() -> dict:
    import numba
    import torch

    return {"torch": torch.get_num_threads(), "numba": numba.get_num_threads()}


def _measure(cons: dict, x: np.ndarray, batches, repeat: int, min_seconds: float, bar):
    rows = []
    for b in batches:
        xb = np.ascontiguousarray(x[:b])
        fns = {k: (lambda c=c, xb=xb: c.predict(xb)) for k, c in cons.items()}
        calls = {k: timing.calls_for(fn, min_seconds) for k, fn in fns.items()}
        ref = cons["lowbit_reference"].predict(xb).argmax(1)
        agree = {k: float((c.predict(xb).argmax(1) == ref).mean()) for k, c in cons.items()}
        bar.update(len(cons))
        t = timing.interleave(fns, repeat, calls, tick=lambda: bar.update(1))
        for k, c in cons.items():
            s = timing.stats(t[k])
            rows.append({"contender": k, "batch": int(b), "file_bytes": c.file_bytes,
                         "calls": calls[k], **s, "samples_per_s": b / s["seconds"],
                         "speedup_vs_torch_fp32": (timing.ratio(t["torch_fp32"], t[k])
                                                   if "torch_fp32" in t else None),
                         "agreement": agree[k]})
    return rows


def bench_file(path: str | Path, batches=BATCHES, repeat: int = 5, threads: int = 1,
               data_dir: str | None = None, input_shape=None, min_seconds: float = 0.02,
               progress: bool = False, names: tuple[str, ...] = NAMES, seed: int = 0) -> dict:
    """Benchmark the ``.lowbit`` file at ``path`` (module doc); returns the JSON record."""
    from tqdm.auto import tqdm

    from lowbit.bench.kernels import cpu_kind
    from lowbit.report.provenance import cpu_model, provenance
    from lowbit.runtime.container import read_header

    path = Path(path)
    names = tuple(dict.fromkeys(("lowbit_reference", *names)))  # the reference is the oracle
    meta = read_header(path)["meta"]
    shape = input_shape_of(meta, input_shape)
    batches = sorted({int(b) for b in batches})
    x, calib, inputs, calib_text = bench_inputs(meta, shape, max(batches), data_dir, seed)
    with timing.threads_set(threads) as given, tempfile.TemporaryDirectory() as work:
        cons = build_contenders(path, shape, calib, threads, Path(work), names)
        cons = {k: cons[k] for k in NAMES if k in cons}
        with tqdm(total=len(batches) * (repeat + 1) * len(cons), desc="lowbit bench",
                  file=sys.stderr, disable=not progress, leave=False) as bar:
            rows = _measure(cons, x, batches, repeat, min_seconds, bar)
        given = {**given, **_counts()}  # as they were at the end (a kernel could reset them)
    return {"file": str(path), "file_bytes": path.stat().st_size, "input_shape": list(shape),
            "inputs": inputs, "calibration": calib_text,
            "threads": {"requested": threads, **given, "onnxruntime": threads},
            "repeat": repeat, "batches": batches, "min_seconds": min_seconds,
            "cpu": cpu_model(), "cpu_kind": cpu_kind(), "versions": versions(),
            "provenance": provenance(),
            "contenders": {k: {"engine": c.engine, "file_bytes": c.file_bytes, **c.info}
                           for k, c in cons.items()},
            "rows": rows}
