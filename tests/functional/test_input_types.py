"""Python lists where ``lowbit.functional`` expects tensors (checks.tensor_arg): the data being
quantized must be a tensor (TypeError naming the argument, never an AttributeError); parameter
tables (levels, biases, scales, steps, ...) may be numbers, lists or tuples, and then give the
same result as the tensors they stand for."""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import pytest
import torch

from lowbit.functional.checks import tensor_arg

MODULES = ["binary", "checks", "codebook", "dorefa", "hwgq", "ivan", "learned", "log2", "soft",
           "ste", "stochastic", "ternary", "uniform"]  # every module but kernels (numba)
# by import_module: lowbit.functional re-exports the functions hwgq and uniform under those names
(binary, checks, codebook, dorefa, hwgq, ivan, learned, log2, soft, ste, stochastic, ternary,
 uniform) = (importlib.import_module(f"lowbit.functional.{name}") for name in MODULES)

X = [0.3, -0.7, 0.0, 1.2]
W = [[0.3, -0.7], [0.05, 1.2]]
T = torch.tensor(X)
TW = torch.tensor(W)

# name -> (argument named in the message, call with a list where the data tensor goes)
DATA_CALLS = {
    "binary.sign": ("x", lambda: binary.sign(X)),
    "binary.bnn_sign": ("x", lambda: binary.bnn_sign(X)),
    "binary.binaryconnect": ("x", lambda: binary.binaryconnect(X)),
    "binary.clip_": ("w", lambda: binary.clip_(W)),
    "binary.xnor_alpha": ("w", lambda: binary.xnor_alpha(W)),
    "binary.xnor_weight": ("w", lambda: binary.xnor_weight(W)),
    "binary.xnor_scale": ("x", lambda: binary.xnor_scale(W, 1)),
    "binary.xnor_activation": ("x", lambda: binary.xnor_activation(X)),
    "binary.abc_encode": ("w", lambda: binary.abc_encode(W, 2)),
    "binary.abc_activation_encode": ("x", lambda: binary.abc_activation_encode(X, [0.0], [1.0])),
    "binary.sign_encode": ("x", lambda: binary.sign_encode(X)),
    "binary.binaryconnect_encode": ("x", lambda: binary.binaryconnect_encode(X)),
    "binary.xnor_encode": ("w", lambda: binary.xnor_encode(W)),
    "binary.abc_weight": ("w", lambda: binary.abc_weight(W, 2)),
    "binary.abc_activation": ("x", lambda: binary.abc_activation(X, [0.0], [1.0])),
    "checks.check_finite": ("tensor", lambda: checks.check_finite(X)),
    "checks.check_nonempty": ("tensor", lambda: checks.check_nonempty(X)),
    "checks.along": ("p", lambda: checks.along(X, torch.zeros(4), 0)),
    "codebook.decode": ("codes", lambda: codebook.decode([0, 1], torch.tensor([-1.0, 1.0]))),
    "dorefa.quantize_k": ("r", lambda: dorefa.quantize_k(X, 2)),
    "dorefa.dorefa_weight_encode": ("w", lambda: dorefa.dorefa_weight_encode(W, 2)),
    "dorefa.dorefa_activation_encode": ("x", lambda: dorefa.dorefa_activation_encode(X, 2)),
    "dorefa.dorefa_weight": ("w", lambda: dorefa.dorefa_weight(W, 2)),
    "dorefa.dorefa_activation": ("x", lambda: dorefa.dorefa_activation(X, 2)),
    "dorefa.dorefa_gradient": ("g", lambda: dorefa.dorefa_gradient(X, 4)),
    "dorefa.quantize_gradient": ("x", lambda: dorefa.quantize_gradient(X, 4)),
    "hwgq.hwgq_grad": ("x", lambda: hwgq.hwgq_grad(X, 1.0, hwgq.HWGQBackward.RELU)),
    "hwgq.hwgq": ("x", lambda: hwgq.hwgq(X, 2)),
    "hwgq.hwgq_encode": ("x", lambda: hwgq.hwgq_encode(X, 2)),
    "ivan.ivan_weight_encode": ("x", lambda: ivan.ivan_weight_encode(X, 2)),
    "ivan.ivan_weight": ("x", lambda: ivan.ivan_weight(X, 2)),
    "ivan.ivan_scaled_encode": ("w", lambda: ivan.ivan_scaled_encode(W, 1.0, 2)),
    "ivan.ivan_activation_encode": ("x", lambda: ivan.ivan_activation_encode(X, 2)),
    "ivan.ivan_scaled_weight": ("w", lambda: ivan.ivan_scaled_weight(W, torch.tensor(1.0), 2)),
    "ivan.ivan_activation": ("x", lambda: ivan.ivan_activation(X, 2)),
    "learned.lsq_encode": ("x", lambda: learned.lsq_encode(X, torch.tensor(0.5), 2, 1)),
    "learned.pact_encode": ("x", lambda: learned.pact_encode(X, torch.tensor(1.0), 2)),
    "learned.lsq": ("x", lambda: learned.lsq(X, torch.tensor(0.5), 2, 1)),
    "learned.lsq_init_step": ("x", lambda: learned.lsq_init_step(X, 1)),
    "learned.pact": ("x", lambda: learned.pact(X, torch.tensor(1.0), 2)),
    "log2.round_log2": ("a", lambda: log2.round_log2(X)),
    "log2.pow2": ("x", lambda: log2.pow2(X, 3, 0)),
    "log2.log_quant": ("x", lambda: log2.log_quant(X, 3, 0)),
    "log2.pow2_encode": ("x", lambda: log2.pow2_encode([0.5, 1.0], 3, 0)),
    "log2.inq_quantize": ("w", lambda: log2.inq_quantize(W, 0, -1)),
    "log2.inq_encode": ("w", lambda: log2.inq_encode([0.5, 1.0], 0, -1)),
    "soft.soft_quantize": ("x", lambda: soft.soft_quantize(X, torch.tensor([-1.0, 1.0]),
                                                           torch.zeros(1), 2.0)),
    "soft.hard_encode": ("x", lambda: soft.hard_encode(X, torch.tensor([-1.0, 1.0]),
                                                       torch.zeros(1))),
    "soft.hard_quantize": ("x", lambda: soft.hard_quantize(X, torch.tensor([-1.0, 1.0]),
                                                           torch.zeros(1))),
    "soft.kmeans_1d": ("x", lambda: soft.kmeans_1d(X, 2)),
    "soft.init_soft_params": ("x", lambda: soft.init_soft_params(X, torch.tensor([-1.0, 1.0]))),
    "soft.fit_alpha": ("x", lambda: soft.fit_alpha(X, torch.tensor([-1.0, 1.0]), torch.zeros(1),
                                                   1.0)),
    "ste.ste": ("x", lambda: ste.ste(X, torch.zeros(3))),
    "stochastic.finite_absmax": ("w", lambda: stochastic.finite_absmax(W)),
    "stochastic.fixed_point_round": ("x", lambda: stochastic.fixed_point_round(X, 0.25)),
    "stochastic.stochastic_round": ("x", lambda: stochastic.stochastic_round(X, 0.25)),
    "stochastic.fixed_point_encode": ("x", lambda: stochastic.fixed_point_encode(X, 0.25, -4, 4)),
    "stochastic.stochastic_encode": ("x", lambda: stochastic.stochastic_encode(X, 0.25)),
    "codebook.decode_lookup": ("codes", lambda: codebook.decode_lookup(
        [0, 1], stochastic.wu_encode(torch.zeros(2), 2)[1])),
    "stochastic.polino_uniform": ("x", lambda: stochastic.polino_uniform(X, 2)),
    "stochastic.stochastic_uniform": ("x", lambda: stochastic.stochastic_uniform(X, 2)),
    "stochastic.wu_round": ("x", lambda: stochastic.wu_round(X, 2)),
    "stochastic.wu_encode": ("x", lambda: stochastic.wu_encode(X, 2)),
    "ternary.twn_delta_alpha": ("w", lambda: ternary.twn_delta_alpha(W)),
    "ternary.ternary_codes": ("w", lambda: ternary.ternary_codes(W, torch.tensor(0.1))),
    "ternary.twn": ("w", lambda: ternary.twn(W)),
    "ternary.twn_encode": ("w", lambda: ternary.twn_encode(W)),
    "ternary.ttq_encode": ("w", lambda: ternary.ttq_encode(W, torch.tensor(1.0), 1.0)),
    "ternary.ttq_delta": ("w", lambda: ternary.ttq_delta(W)),
    "ternary.ttq": ("w", lambda: ternary.ttq(W, torch.tensor(1.0), torch.tensor(1.0))),
    "uniform.uniform_encode": ("x", lambda: uniform.uniform_encode(X, 0.1, 0, -8, 7)),
    "uniform.uniform": ("x", lambda: uniform.uniform(X, 0.1, 0, -8, 7)),
    "uniform.minmax": ("x", lambda: uniform.minmax(X, None)),
}

LEVELS, BIASES = [-1.0, 0.0, 1.0], [-0.5, 0.5]
TL, TB = torch.tensor(LEVELS), torch.tensor(BIASES)

# name -> (call with tensor tables, the same call with lists / tuples / numbers / numpy)
TABLE_CALLS = {
    "binary.abc_activation_encode": (
        lambda: binary.abc_activation_encode(T, torch.tensor([0.1]), torch.tensor([0.5]))[0],
        lambda: binary.abc_activation_encode(T, (0.1,), [0.5])[0]),
    "binary.abc_activation": (
        lambda: binary.abc_activation(T, torch.tensor([0.1, -0.2]), torch.tensor([0.5, 0.5])),
        lambda: binary.abc_activation(T, (0.1, -0.2), [0.5, 0.5])),
    "codebook.plane_table": (lambda: codebook.plane_table([0.5, 0.25]),
                             lambda: codebook.plane_table(torch.tensor([0.5, 0.25]))),
    "codebook.decode": (lambda: codebook.decode(torch.tensor([0, 2, 1]), TL),
                        lambda: codebook.decode(torch.tensor([0, 2, 1]), LEVELS)),
    "hwgq.hwgq": (lambda: hwgq.hwgq(T, torch.tensor([0.5, 1.0])),
                  lambda: hwgq.hwgq(T, [0.5, 1.0])),
    "hwgq.hwgq_codebook": (lambda: hwgq.hwgq_codebook(torch.tensor([0.5, 1.0])).values,
                           lambda: hwgq.hwgq_codebook([0.5, 1.0]).values),
    "ivan.ivan_scaled_weight": (lambda: ivan.ivan_scaled_weight(TW, torch.tensor(0.5), 2),
                                lambda: ivan.ivan_scaled_weight(TW, 0.5, 2)),
    "ivan.ivan_scaled_encode": (
        lambda: ivan.ivan_scaled_encode(TW, torch.tensor(0.5), 2)[1].scale,
        lambda: ivan.ivan_scaled_encode(TW, 0.5, 2)[1].scale),
    "ivan.ivan_activation_encode": (
        lambda: ivan.ivan_activation_encode(T, 2, torch.tensor(1.0))[1].scale,
        lambda: ivan.ivan_activation_encode(T, 2, 1.0)[1].scale),
    "ivan.ivan_activation": (lambda: ivan.ivan_activation(T, 2, torch.tensor(1.0)),
                             lambda: ivan.ivan_activation(T, 2, 1.0)),
    "learned.lsq_encode": (lambda: learned.lsq_encode(T, torch.tensor(0.25), 2, 1)[0],
                           lambda: learned.lsq_encode(T, 0.25, 2, 1)[0]),
    "learned.pact_encode": (lambda: learned.pact_encode(T, torch.tensor(1.0), 2)[1].scale,
                            lambda: learned.pact_encode(T, 1.0, 2)[1].scale),
    "learned.lsq": (lambda: learned.lsq(TW, torch.tensor([0.25, 0.5]), 2, 1, axis=0),
                    lambda: learned.lsq(TW, [0.25, 0.5], 2, 1, axis=0)),
    "learned.pact": (lambda: learned.pact(T, torch.tensor(1.0), 2),
                     lambda: learned.pact(T, 1.0, 2)),
    "log2.pow2": (lambda: log2.pow2(T, 3, torch.tensor(0)), lambda: log2.pow2(T, 3, 0)),
    "log2.log_quant": (lambda: log2.log_quant(T, 3, torch.tensor(0)),
                       lambda: log2.log_quant(T, 3, np.int64(0))),
    "soft.soft_quantize": (lambda: soft.soft_quantize(T, TL, TB, 2.0, 0.5, 1.5),
                           lambda: soft.soft_quantize(T, LEVELS, tuple(BIASES), 2.0, 0.5, 1.5)),
    "soft.hard_encode": (lambda: soft.hard_encode(T, TL, TB)[0],
                         lambda: soft.hard_encode(T, LEVELS, BIASES)[0]),
    "soft.hard_grid": (lambda: soft.hard_grid(TL, 0.5).decode(torch.arange(3)),
                       lambda: soft.hard_grid(LEVELS, 0.5).decode(torch.arange(3))),
    "soft.hard_quantize": (lambda: soft.hard_quantize(T, TL, TB, 0.5),
                           lambda: soft.hard_quantize(T, LEVELS, BIASES, 0.5)),
    "soft.init_soft_params": (lambda: soft.init_soft_params(T, TL)[0],
                              lambda: soft.init_soft_params(T, LEVELS)[0]),
    "soft.fit_alpha": (lambda: torch.tensor(soft.fit_alpha(T, TL, TB, torch.tensor(1.5))),
                       lambda: torch.tensor(soft.fit_alpha(T, LEVELS, BIASES, 1.5))),
    "stochastic.fixed_point_round": (lambda: stochastic.fixed_point_round(T, torch.tensor(0.25)),
                                     lambda: stochastic.fixed_point_round(T, [0.25])),
    "stochastic.pow2_step": (lambda: stochastic.pow2_step(torch.tensor(1.2), 4),
                             lambda: stochastic.pow2_step(1.2, 4)),
    "ternary.ternary_codes": (lambda: ternary.ternary_codes(TW, torch.tensor(0.1)),
                              lambda: ternary.ternary_codes(TW, 0.1)),
    "ternary.ttq": (lambda: ternary.ttq(TW, torch.tensor(0.8), torch.tensor(0.6)),
                    lambda: ternary.ttq(TW, 0.8, [0.6])),
    "uniform.uniform": (
        lambda: uniform.uniform(TW, torch.tensor([0.1, 0.2]), torch.tensor([0, 1]), -8, 7, 0),
        lambda: uniform.uniform(TW, [0.1, 0.2], (0, 1), -8, 7, 0)),
    "uniform.uniform_encode": (
        lambda: uniform.uniform_encode(T, torch.tensor(0.1), 0, -8, 7)[1].scale,
        lambda: uniform.uniform_encode(T, [0.1], [0], -8, 7)[1].scale),
    "uniform.minmax_qparams": (
        lambda: uniform.minmax_qparams(torch.tensor(-1.0), torch.tensor(2.0), -8, 7, False),
        lambda: uniform.minmax_qparams(-1.0, 2.0, -8, 7, False)),
}

# Public functions that take no tensor at all (bits, names, plain numbers).
NO_TENSOR = {
    "binary.abc_shifts", "binary.abc_activation_init", "checks.check_bits", "checks.tensor_arg",
    "hwgq.hwgq_levels", "hwgq.lloyd_half_normal", "hwgq.hwgq_thresholds",
    "hwgq.uniform_half_normal", "learned.lsq_range", "learned.lsq_grad_scale",
    "log2.pow2_grid", "log2.inq_exponents",
    "soft.levels_for",
    "ternary.check_ttq_scale_grad",
}


def test_every_public_function_is_covered():
    public = set()
    for name in MODULES:
        module = importlib.import_module(f"lowbit.functional.{name}")
        for attr, obj in vars(module).items():
            if inspect.isfunction(obj) and not attr.startswith("_"):
                if obj.__module__ == module.__name__:
                    public.add(f"{name}.{attr}")
    covered = set(DATA_CALLS) | set(TABLE_CALLS) | NO_TENSOR
    assert public - covered == set(), "add these to DATA_CALLS / TABLE_CALLS / NO_TENSOR"


@pytest.mark.parametrize("name", sorted(DATA_CALLS))
def test_list_as_data_is_a_type_error_naming_it(name):
    what, call = DATA_CALLS[name]
    with pytest.raises(TypeError, match=rf"^{what} must be a torch.Tensor, got list"):
        call()


@pytest.mark.parametrize("name", sorted(TABLE_CALLS))
def test_list_as_table_equals_the_tensor(name):
    with_tensors, with_lists = TABLE_CALLS[name]
    want, got = with_tensors(), with_lists()
    for w, g in zip(want, got, strict=True) if isinstance(want, tuple) else [(want, got)]:
        assert isinstance(g, torch.Tensor)
        torch.testing.assert_close(g, w, rtol=0, atol=0, check_dtype=True)


@pytest.mark.parametrize(
    "bad", ["0.5", None, True, [[1.0], [2.0, 3.0]], ["a"], {"scale": 1.0}],
    ids=["str", "None", "bool", "ragged", "list-of-str", "dict"],
)
def test_unusable_table_is_a_type_error_naming_it(bad):
    with pytest.raises(TypeError, match="^scale must be a torch.Tensor, a number or a list"):
        uniform.uniform(T, bad, 0, -8, 7)
    with pytest.raises(TypeError, match="^levels must be a torch.Tensor, a number or a list"):
        soft.hard_quantize(T, bad, TB)


def test_tensor_arg_rule():
    t = torch.zeros(2, dtype=torch.float64)
    assert tensor_arg(t, "x") is t and tensor_arg(t, "x", table=True) is t
    assert tensor_arg([1, 2], "levels", like=t, table=True).dtype == torch.float64
    assert tensor_arg([1, 2], "levels", table=True).dtype == torch.get_default_dtype()
    assert tensor_arg(np.arange(3), "levels", like=t, table=True).tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(TypeError, match="^x must be a torch.Tensor, got ndarray"):
        tensor_arg(np.zeros(2), "x")
