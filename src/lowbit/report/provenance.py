"""Where a result came from: the one provenance record every benchmark writes (issue 8 item 10).

:func:`provenance` gathers the command as invoked, the git commit and whether the tree was
dirty, the library versions, the CPU, the thread counts, the load and the time;
:func:`provenance_line` is its one-line form for a markdown header.
Test: tests/report/test_provenance.py.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy
import torch

# Paths a benchmark writes while it runs: not a change to the code that produced the result.
RESULT_PATHS = ("benchmarks/results/",)
MAX_LISTED = 8  # dirty files named in the record; the count says how many there are
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_WAIT_POLICY")
# the ISA extensions that tell this project's two CPU kinds (and Zen 3, which reports the same
# "AMD EPYC" model name as Zen 4) apart and that its kernels and bf16 paths depend on
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_vpopcntdq", "avx512_bf16",
             "amx_tile")


def command(argv: Sequence[str] | None = None) -> str:
    """The command line as invoked, shell-quoted (``shlex.join``), the interpreter as ``python``.

    ``argv`` defaults to ``sys.orig_argv`` (interpreter, its options such as ``-m``, the script
    and its arguments); an absolute script path inside the working directory is made relative."""
    args = list(sys.orig_argv if argv is None else argv)
    if not args:
        return "python"
    rest, cwd = args[1:], Path.cwd()
    for i, arg in enumerate(rest):
        if arg.startswith("-"):
            continue
        path = Path(arg)
        if path.is_absolute() and path.is_relative_to(cwd):
            rest[i] = path.relative_to(cwd).as_posix()
        break  # only the script (the first non-option argument)
    return shlex.join(["python", *rest])


def _git(root: Path, *args: str) -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                           timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def git_state(root: str | Path | None = None,
              ignore: Sequence[str] = RESULT_PATHS) -> dict[str, Any]:
    """{"commit": short hash, "dirty": bool, "dirty_files": up to MAX_LISTED "XY path" entries of
    ``git status --porcelain``, "dirty_count"} of the repository holding ``root`` (default: the
    lowbit source). Paths starting with one of ``ignore`` do not count. Outside a repository
    (or without git) every value is None."""
    root = Path(root) if root is not None else Path(__file__).resolve().parent
    commit = _git(root, "rev-parse", "--short", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=all")
    if commit is None or status is None:
        return {"commit": None, "dirty": None, "dirty_files": None, "dirty_count": None}
    files = [line for line in status.splitlines()
             if line and not any(line[3:].strip('"').startswith(p) for p in ignore)]
    return {"commit": commit.strip(), "dirty": bool(files), "dirty_files": files[:MAX_LISTED],
            "dirty_count": len(files)}


def cpu_model(text: str | None = None) -> str:
    """The CPU's model name from /proc/cpuinfo (or ``text``), else what :mod:`platform` knows."""
    from lowbit.bench.kernels import _cpuinfo

    text = _cpuinfo_text() if text is None else text
    name = _cpuinfo(text or "").get("model name")
    return name or platform.processor() or platform.machine()


def _numba() -> Any:
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency
        return None
    return numba


def versions() -> dict[str, str | None]:
    numba = _numba()
    return {"python": platform.python_version(), "torch": torch.__version__,
            "numba": numba.__version__ if numba else None, "numpy": numpy.__version__}


def threads() -> dict[str, Any]:
    """torch's intra-/inter-op threads, numba's, the cores, and the thread variables set."""
    numba = _numba()
    return {"torch": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads(),
            "numba": numba.get_num_threads() if numba else None, "cores": os.cpu_count(),
            "env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ}}


def _cpuinfo_text() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def cpu_isa(text: str | None = None) -> list[str]:
    """The :data:`ISA_FLAGS` the first CPU of /proc/cpuinfo (or ``text``) has, in that order
    ([] where it cannot be read)."""
    from lowbit.bench.kernels import _cpuinfo

    text = _cpuinfo_text() if text is None else text
    flags = set(_cpuinfo(text or "").get("flags", "").split())
    return [f for f in ISA_FLAGS if f in flags]


def provenance(argv: Sequence[str] | None = None, root: str | Path | None = None) -> dict:
    """The provenance record of a result: command, git commit and dirty files, versions, CPU,
    threads, load average (1, 5, 15 min) and the UTC time. Plain JSON values."""
    from lowbit.bench.kernels import cpu_kind

    info = _cpuinfo_text()  # read once for the model, the kind and the flags
    return {"command": command(argv), **git_state(root), "versions": versions(),
            "cpu": cpu_model(info or ""),
            "cpu_kind": cpu_kind(info) if info is not None else None,
            "cpu_isa": cpu_isa(info or ""),
            "threads": threads(), "load_average": list(os.getloadavg()),
            "utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def provenance_line(p: dict) -> str:
    """``p`` in one markdown line: command, commit (and dirty files), versions, CPU, threads,
    load and time."""
    commit = p.get("commit") or "unknown"
    if p.get("dirty"):
        more = p["dirty_count"] - len(p["dirty_files"])
        files = ", ".join(f.strip() for f in p["dirty_files"]) + (f" +{more}" if more > 0 else "")
        commit += f" + uncommitted changes ({files})"
    v, t = p.get("versions", {}), p.get("threads", {})
    env = "".join(f", {k}={val}" for k, val in t.get("env", {}).items())
    load = " ".join(f"{x:.2f}" for x in p.get("load_average", ()))
    isa = (f" ({p.get('cpu_kind') or 'kind unknown'}: {' '.join(p['cpu_isa']) or 'no AVX2'})"
           if "cpu_isa" in p else "")
    return (f"Command: `{p.get('command')}` at commit `{commit}`; torch {v.get('torch')}, "
            f"numba {v.get('numba')}, numpy {v.get('numpy')}; {p.get('cpu')}{isa}; threads torch "
            f"{t.get('torch')}, numba {t.get('numba')}{env}; load {load}; {p.get('utc')}")


def meta_header(meta: dict) -> str:
    """The markdown header line of a results file's ``meta``: :func:`provenance_line` of its
    ``provenance`` record, or, for files written before it, their command and commit."""
    if "provenance" in meta:
        return provenance_line(meta["provenance"])
    return f"Command: `{meta.get('command')}` at commit `{meta.get('commit')}`"


def write_provenance(out_dir: str | Path) -> dict:
    """Write ``out_dir/provenance.json`` (for outputs that are only plots) and return it."""
    p = provenance()
    path = Path(out_dir) / "provenance.json"
    path.write_text(json.dumps(p, indent=1) + "\n")
    return p
