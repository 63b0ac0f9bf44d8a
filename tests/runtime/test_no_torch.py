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
assert all(m in ("lowbit", "lowbit.errors") or m.startswith("lowbit.runtime")
           for m in loaded), loaded
"""

RUN_MODEL = PROBE.split("import numpy as np")[0] + """
import sys
import numpy as np
import lowbit.runtime as rt
net = rt.load(sys.argv[1])
x = np.load(sys.argv[2])
np.save(sys.argv[3], net(x))
assert not any(m.split(".")[0] == "torch" for m in sys.modules if sys.modules[m] is not None)
"""


def test_runtime_imports_without_torch():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


def test_an_exported_model_runs_without_torch(tmp_path):
    import numpy as np
    import torch

    import lowbit
    from lowbit.exporter import export, frozen_copy
    from lowbit.models import build_model

    torch.manual_seed(0)
    net = lowbit.quantize(build_model("lenet5", 1, 28, 10, 0.5, 0.25),
                          lowbit.Recipe(weight="xnor", act="xnor", w_bits=1, a_bits=1))
    net.train()
    with torch.no_grad():
        net(torch.rand(8, 1, 28, 28))
    path = export(net.eval(), tmp_path / "n.lowbit")
    x = torch.rand(6, 1, 28, 28)
    np.save(tmp_path / "x.npy", x.numpy())
    done = subprocess.run([sys.executable, "-c", RUN_MODEL, str(path), str(tmp_path / "x.npy"),
                           str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with torch.no_grad():
        want = frozen_copy(net)(x).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, rtol=1e-5, atol=1e-5)


def test_plain_import_lowbit_runtime_does_not_import_torch():
    code = "import lowbit.runtime, sys; assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(SRC), "PATH": ""})
    assert done.returncode == 0, done.stderr
