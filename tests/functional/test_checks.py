"""check_bits: numpy integers are bit widths too (returned as a plain int); bools, floats and
strings are not. Functions given numpy bits behave exactly as with the plain int. And what
lowbit.functional imports from outside the standard library is a declared dependency."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lowbit import functional as F
from lowbit.errors import BitsError
from lowbit.functional import binary, dorefa, learned, log2, stochastic


@pytest.mark.parametrize("kind", [int, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint64])
def test_numpy_integers_are_bits_and_come_back_plain(kind):
    got = F.check_bits(kind(4))
    assert got == 4 and type(got) is int


@pytest.mark.parametrize(
    "bad",
    [True, False, np.bool_(True), 4.0, np.float64(4.0), np.float32(2.0), "4", None,
     np.array(4), torch.tensor(4)],
    ids=repr,
)
def test_non_integers_are_bits_errors(bad):
    with pytest.raises(BitsError, match="must be an integer"):
        F.check_bits(bad)


@pytest.mark.parametrize("bits", [np.int64(0), np.int64(33), np.int8(-1), np.uint8(200)])
def test_numpy_bits_out_of_range(bits):
    with pytest.raises(BitsError, match=f"in 1..32, got {int(bits)}$"):
        F.check_bits(bits)


W = torch.linspace(-1.0, 1.0, 11)


def _grad_through(bits):
    x = W.clone().requires_grad_(True)
    dorefa.quantize_gradient(x, bits, torch.Generator().manual_seed(0)).mul(W).sum().backward()
    return x.grad
CALLS = {
    "ivan_weight": lambda b: F.ivan_weight(W, b),
    "ivan_activation": lambda b: F.ivan_activation(W.abs() * 3, b),
    "ivan_scaled_weight": lambda b: F.ivan_scaled_weight(W, torch.tensor(0.5), b),
    "dorefa_weight": lambda b: F.dorefa_weight(W, b),
    "dorefa_weight_1bit": lambda b: F.dorefa_weight(W, b - 1),
    "dorefa_weight_encode": lambda b: dorefa.dorefa_weight_encode(W, b)[0],
    "dorefa_activation_encode": lambda b: dorefa.dorefa_activation_encode(W, b)[0],
    "dorefa_activation": lambda b: F.dorefa_activation(W, b),
    "dorefa_gradient": lambda b: F.dorefa_gradient(W, b, torch.Generator().manual_seed(0)),
    "pact": lambda b: F.pact(W, torch.tensor(0.8), b),
    "pow2": lambda b: F.pow2(W, b, 0),
    "log_quant": lambda b: F.log_quant(W, b, 0),
    "polino_uniform": lambda b: F.polino_uniform(W, b),
    "wu_round": lambda b: F.wu_round(W, b),
    "wu_encode": lambda b: stochastic.wu_encode(W, b)[0],
    "pow2_step": lambda b: stochastic.pow2_step(torch.tensor(1.5), b),
    "hwgq": lambda b: F.hwgq(W, b),
    "abc_weight": lambda b: F.abc_weight(W, b),
    "abc_activation_init": lambda b: binary.abc_activation_init(b)[0],
    "quantize_gradient": lambda b: _grad_through(b),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_numpy_bits_give_the_same_result(name):
    want, got = CALLS[name](2), CALLS[name](np.int64(2))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_integer_results_from_numpy_bits_are_plain_ints():
    qn, qp = learned.lsq_range(np.int64(4), signed=True)
    assert (qn, qp) == (8, 7) and type(qn) is int and type(qp) is int
    n1, n2 = log2.inq_exponents(1.0, np.int32(4))
    assert type(n2) is int


@pytest.mark.parametrize(("good", "bad"), [(2, 2.0), (1, True), (3, np.float64(3.0))])
def test_cached_hwgq_levels_still_check_bits(good, bad):
    """The level fits are cached by bits: once np.int64(2) is a key (a list [np.int64(2)] inside
    functools.cache, which compares equal to [2.0]), 2.0 and True must still be refused."""
    for bits in (good, np.int64(good)):
        assert F.hwgq_levels(bits) == F.hwgq_levels(good)
        assert F.lloyd_half_normal(bits) == F.lloyd_half_normal(good)
    with pytest.raises(BitsError):
        F.hwgq_levels(bad)
    with pytest.raises(BitsError):
        F.lloyd_half_normal(bad)


ROOT = Path(__file__).resolve().parents[2]
# Imported directly but installed (and version-pinned) by a declared dependency:
# kernels.py builds an intrinsic with llvmlite, which every numba release requires.
VIA = {"llvmlite": "numba"}


def test_functional_third_party_imports_are_declared_dependencies():
    """scipy (hwgq.py) was imported but not declared in pyproject.toml (issue 7)."""
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    declared = {re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower()
                for d in re.findall(r'"([^"]+)"', block)}
    imported = set()
    for path in (ROOT / "src" / "lowbit" / "functional").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"lowbit", "__future__"}
    assert third_party >= {"scipy", "torch", "numpy"}
    assert {VIA.get(m, m) for m in third_party} - declared == set()
