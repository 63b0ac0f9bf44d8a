"""Quantizer specs (issue 8 item 5): every registered quantizer, with every option set to a
non-default value, reads back the spec it was built from, and the spec survives JSON and
model.pt (through :func:`lowbit.slots.quantizer_slots` / :func:`lowbit.slots.apply_specs`)."""

from __future__ import annotations

import enum
import json

import pytest
import torch
from torch import nn

from lowbit.errors import BitsError, CheckpointError, LowbitError, MethodError
from lowbit.quantizers import METHODS
from lowbit.quantizers.options import signature_options
from lowbit.quantizers.spec import QuantSpec, spec_or_none
from lowbit.slots import apply_specs, quantizer_slots

ROLE_ATTR = {"weight": "weight", "activation": "act", "gradient": "grad"}
OTHER_STR = {("TTQWeight", "scale_grad"): "mean", ("TTQWeight", "init"): "mean",
             ("UniformWeight", "observer"): "mse", ("UniformAct", "observer"): "dynamic",
             ("PACTAct", "alpha_from"): "mse"}


def _other(cls: type, name: str, kind: type, default):
    """A valid value of option ``name`` other than its default."""
    if kind is bool:
        return not default
    if issubclass(kind, enum.Enum):
        members = list(kind)
        return members[(members.index(default) + 1) % len(members)]
    if kind is float:
        return default * 0.5 if default else 0.5
    if kind is int:
        return default + 1
    return OTHER_STR[(cls.__name__, name)]


def _cases():
    for method, m in sorted(METHODS.items()):
        for role, attr in ROLE_ATTR.items():
            cls = getattr(m, attr)
            if cls is not None:
                opts = {n: _other(cls, n, k, d) for n, (k, d) in signature_options(cls).items()}
                yield pytest.param(method, role, cls.BITS[len(cls.BITS) // 2], opts,
                                   id=f"{method}-{role}")


CASES = list(_cases())


@pytest.mark.parametrize("method,role,bits,opts", CASES)
def test_spec_round_trips_with_non_default_options(method, role, bits, opts):
    spec = QuantSpec(method, role, bits, tuple(opts.items()))
    q = spec.build()
    assert QuantSpec.of(q) == spec
    assert dict(spec.options) == opts  # every option reached the quantizer and came back
    assert QuantSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    if hasattr(q, "freeze"):
        assert q.spec == spec


def _host(role: str, q: nn.Module) -> tuple[nn.Module, nn.Module]:
    """A float net and the same net with ``q`` in the matching slot."""
    torch.manual_seed(0)
    float_net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    net = nn.Sequential(*[m for m in float_net])  # same modules, swapped below
    from lowbit.nn.layers import QuantAct, QuantLinear

    if role == "activation":
        net[1] = QuantAct(q, nn.ReLU())
    else:
        layer = QuantLinear.from_float(float_net[0], q if role == "weight" else None)
        if role == "gradient":
            layer.output_grad_quant = q
        net[0] = layer
    return net, nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


@pytest.mark.parametrize("method,role,bits,opts", CASES)
def test_every_spec_survives_model_pt_slots(method, role, bits, opts, tmp_path):
    spec = QuantSpec(method, role, bits, tuple(opts.items()))
    net, fresh = _host(role, spec.build())
    entries = json.loads(json.dumps(quantizer_slots(net)))
    torch.save({"layers": entries, "state_dict": net.state_dict()}, tmp_path / "m.pt")
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    again = apply_specs(fresh, blob["layers"])
    again.load_state_dict(blob["state_dict"])
    got = [QuantSpec.of(m) for m in again.modules() if type(m) is spec.cls]
    assert got == [spec]


def test_float_has_no_spec_and_bad_specs_are_clear():
    assert spec_or_none("ivan", "weight", 32) is None
    assert spec_or_none("ivan", "weight", 4) == QuantSpec("ivan", "weight", 4)
    with pytest.raises(LowbitError, match="32 bits means float"):
        QuantSpec("ivan", "weight", 32)
    with pytest.raises(BitsError):
        QuantSpec("xnor", "weight", 3)
    with pytest.raises(MethodError):
        QuantSpec("nope", "weight", 4)
    with pytest.raises(ValueError, match="role"):
        QuantSpec("ivan", "weights", 4)
    with pytest.raises(LowbitError, match="no option"):
        QuantSpec("lsq", "weight", 4, (("per_chanel", True),))
    with pytest.raises(LowbitError, match="not a quantizer spec"):
        QuantSpec.from_dict({"method": "ivan"})


def test_apply_specs_names_what_does_not_fit():
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU())
    entry = {"names": ["0"], "kind": "conv2d",
             "slots": {"weight_quant": QuantSpec("ivan", "weight", 4).to_dict()}}
    with pytest.raises(CheckpointError, match="conv2d '0'.*has Linear"):
        apply_specs(net, [entry])
    with pytest.raises(CheckpointError, match="'7'"):
        apply_specs(net, [dict(entry, names=["7"])])
    bad = {"names": ["0"], "kind": "linear",
           "slots": {"weight_quant": {"method": "ivan", "role": "weight", "bits": 99}}}
    with pytest.raises(CheckpointError, match="linear '0'"):
        apply_specs(net, [bad])


def test_shared_modules_are_one_entry_with_every_name():
    import lowbit

    relu = nn.ReLU()
    lin = nn.Linear(4, 4)
    net = nn.Sequential(lin, relu, nn.Linear(4, 4), nn.ReLU())
    net.add_module("again", lin)
    lowbit.quantize(net, lowbit.Recipe("uniform", 4, "uniform", 4, keep_first=False,
                                       keep_last=False))
    entries = quantizer_slots(net)
    assert [e["names"] for e in entries][0] == ["0", "again"]
    fresh = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU())
    fresh.add_module("again", fresh[0])
    apply_specs(fresh, entries)
    assert fresh[0] is fresh.again and type(fresh[0]).__name__ == "QuantLinear"
