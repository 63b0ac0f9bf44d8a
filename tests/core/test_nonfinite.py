"""Non-finite input to a quantized layer (issue 7 item 8): a NonFiniteError naming the layer,
raised before any statistic is updated, for every method and role of the registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit import NonFiniteError, QuantAct, Recipe, quantize
from lowbit.nn import set_finite_check
from lowbit.quantizers.registry import METHODS

CASES = [(name, role, min(cls.BITS)) for name, m in METHODS.items()
         for role, cls in (("weight", m.weight), ("activation", m.act)) if cls is not None]


def model_for(method: str, role: str, bits: int) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    kw = {"weight": method, "w_bits": bits} if role == "weight" else {"act": method,
                                                                    "a_bits": bits}
    return quantize(net, Recipe(keep_first=False, keep_last=False, **kw))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"{k} changed"


def poisoned(shape, bad: float) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    x[1, 2] = bad
    return x


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")],
                         ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("method,role,bits", CASES, ids=[f"{m}-{r}" for m, r, _ in CASES])
def test_nonfinite_input_raises_naming_the_layer_and_keeps_state(method, role, bits, bad):
    model = model_for(method, role, bits)
    model.train()
    model(torch.randn(8, 6))  # one clean batch: running ranges / learned steps initialised
    first, middle = ("0", "2") if role == "weight" else ("1", "3")
    for mode in ("train", "eval"):
        model.train(mode == "train")
        before = snapshot(model)
        with pytest.raises(NonFiniteError, match=f"layer '{first}'"):
            model(poisoned((8, 6), bad))  # through the model: the first quantized layer stops it
        with pytest.raises(NonFiniteError, match=f"layer '{middle}'"):
            model[int(middle)](poisoned((8, 5 if role == "weight" else 4), bad))
        assert_same_state(model, before)
    model.train()
    y = model(torch.randn(8, 6))  # and the model still works on clean input
    assert bool(torch.isfinite(y).all())


def test_nonfinite_fresh_quantizer_is_not_initialised_from_nan():
    """Before any clean batch (num_batches = 0, LSQ step uninitialised) nothing is set either."""
    for method in ("ivan", "uniform", "lsq", "stochastic", "pow2"):
        model = model_for(method, "activation", 2)
        before = snapshot(model.train())
        with pytest.raises(NonFiniteError):
            model(poisoned((8, 6), float("nan")))
        assert_same_state(model, before)


def test_the_check_can_be_switched_off_and_is_off_with_quantization_off():
    model = model_for("ivan", "activation", 2).train()
    set_finite_check(model, False)
    model(poisoned((8, 6), float("nan")))  # no error: the caller asked for it
    assert torch.isnan(model[1].quant.running_max)  # ... and this is what the check prevents
    model = model_for("ivan", "activation", 2).train()
    for m in model.modules():
        if isinstance(m, QuantAct):
            m.quant_enabled = False
    assert torch.isnan(model(poisoned((8, 6), float("nan")))).any()  # float layers: NaN flows


def test_error_counts_the_bad_values():
    model = model_for("uniform", "activation", 4)
    x = poisoned((8, 6), float("nan"))
    x[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"'1' \(QuantAct\) holds \d+ NaN and \d+ Inf"):
        model(x)


def test_finite_input_whose_sum_overflows_is_not_an_error():
    """The fast check sums the input; a finite sum overflow falls back to the exact check."""
    model = model_for("uniform", "activation", 4)
    x = torch.full((8, 6), 3e38)
    x[:, 1] = -1e38  # finite values, and the sum overflows to inf
    assert not torch.isfinite(x.sum())
    model[1](x)  # no error
