"""Pure tensor math of every quantizer: no state, no I/O. Import as ``lowbit.functional as F``.

Each function's docstring (or its module's) is the formula of record: paper, equation numbers,
forward, surrogate gradient, deviations, and the test that checks it.
"""

from lowbit.functional.binary import (
    abc_activation,
    abc_weight,
    binaryconnect,
    bnn_sign,
    sign,
    xnor_activation,
    xnor_weight,
)
from lowbit.functional.checks import check_bits, check_finite, check_nonempty, tensor_arg
from lowbit.functional.codebook import decode
from lowbit.functional.dorefa import (
    dorefa_activation,
    dorefa_activation_encode,
    dorefa_gradient,
    dorefa_weight,
    dorefa_weight_encode,
)
from lowbit.functional.hwgq import HWGQBackward, hwgq, hwgq_levels, lloyd_half_normal
from lowbit.functional.ivan import (
    ivan_activation,
    ivan_activation_encode,
    ivan_scaled_encode,
    ivan_scaled_weight,
    ivan_weight,
    ivan_weight_encode,
)
from lowbit.functional.learned import lsq, lsq_encode, pact, pact_encode
from lowbit.functional.log2 import inq_quantize, log_quant, pow2
from lowbit.functional.soft import hard_quantize, init_soft_params, levels_for, soft_quantize
from lowbit.functional.ste import ste
from lowbit.functional.stochastic import (
    fixed_point_round,
    polino_uniform,
    stochastic_round,
    stochastic_uniform,
    wu_round,
)
from lowbit.functional.ternary import ttq, twn
from lowbit.functional.uniform import minmax, minmax_qparams, uniform, uniform_encode

__all__ = [
    "HWGQBackward",
    "abc_activation",
    "abc_weight",
    "binaryconnect",
    "bnn_sign",
    "check_bits",
    "check_finite",
    "check_nonempty",
    "decode",
    "dorefa_activation",
    "dorefa_activation_encode",
    "dorefa_gradient",
    "dorefa_weight",
    "dorefa_weight_encode",
    "fixed_point_round",
    "hard_quantize",
    "hwgq",
    "hwgq_levels",
    "init_soft_params",
    "inq_quantize",
    "ivan_activation",
    "ivan_activation_encode",
    "ivan_scaled_encode",
    "ivan_scaled_weight",
    "ivan_weight",
    "ivan_weight_encode",
    "levels_for",
    "lloyd_half_normal",
    "log_quant",
    "lsq",
    "lsq_encode",
    "minmax",
    "minmax_qparams",
    "pact",
    "pact_encode",
    "polino_uniform",
    "pow2",
    "ste",
    "sign",
    "soft_quantize",
    "stochastic_round",
    "stochastic_uniform",
    "tensor_arg",
    "ttq",
    "twn",
    "uniform",
    "uniform_encode",
    "wu_round",
    "xnor_activation",
    "xnor_weight",
]
