"""lowbit.runtime needs numpy and the standard library only (GUIDE.md, issue 10).

``import lowbit.runtime`` runs ``lowbit/__init__.py`` first, which loads its public names lazily
(PEP 562), so neither torch nor the training code is imported. The first test goes further and
loads the runtime the way a device without torch would: ``lowbit`` registered as a bare package
over src/lowbit (its ``__init__`` not run) and torch blocked (``sys.modules['torch'] = None``
makes any ``import torch`` fail). The runtime package and :mod:`lowbit.errors`, which it
shares, must then import and work.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

PROBE = f"""
import sys, types
sys.modules["torch"] = None          # any import of torch now raises ImportError
pkg = types.ModuleType("lowbit")     # lowbit without running lowbit/__init__.py
pkg.__path__ = [{str(SRC / "lowbit")!r}]
sys.modules["lowbit"] = pkg
import numpy as np
import lowbit.runtime as rt
codes = np.arange(10) % 8
assert (rt.unpack_bits(rt.pack_bits(codes, 3), 3, 10) == codes).all()
import tempfile, os
path = os.path.join(tempfile.mkdtemp(), "t.lowbit")
rt.write_container(path, {{"c": rt.pack_bits(codes, 3)}}, {{"bits": 3}})
meta, sections = rt.read_container(path)
assert meta == {{"bits": 3}}
heavy = sorted(m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in
               ("torch", "numba", "scipy", "sklearn", "matplotlib", "tqdm"))
loaded = sorted(m for m in sys.modules if m.startswith("lowbit"))
print(heavy, loaded)
assert not heavy, heavy
assert set(loaded) <= {{"lowbit", "lowbit.errors", "lowbit.runtime", "lowbit.runtime.container",
                       "lowbit.runtime.errors", "lowbit.runtime.pack"}}, loaded
"""


def test_runtime_imports_without_torch():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


def test_plain_import_lowbit_runtime_does_not_import_torch():
    code = "import lowbit.runtime, sys; assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(SRC), "PATH": ""})
    assert done.returncode == 0, done.stderr
