"""The one registry: method name (the CLI's ``--method``, a recipe's ``weight``/``act``) ->
its weight and activation quantizer classes. A literal dict, no registration side effects."""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.errors import BitsError, MethodError
from lowbit.functional.checks import FLOAT_BITS, check_bits
from lowbit.quantizers.base import ActQuantizer, WeightQuantizer, bits_span
from lowbit.quantizers.binary import (
    ABCAct,
    ABCWeight,
    BinaryConnectWeight,
    BNNAct,
    BNNWeight,
    XNORAct,
    XNORWeight,
)
from lowbit.quantizers.dorefa import DoReFaAct, DoReFaGradient, DoReFaWeight
from lowbit.quantizers.half import BFloat16Weight, Float16Weight
from lowbit.quantizers.hwgq import HWGQAct
from lowbit.quantizers.ivan import IvanAct, IvanWeight
from lowbit.quantizers.learned import LSQAct, LSQWeight, PACTAct
from lowbit.quantizers.log2 import INQWeight, Pow2Act, Pow2Weight
from lowbit.quantizers.soft import SoftAct, SoftWeight
from lowbit.quantizers.spec import QuantSpec
from lowbit.quantizers.stochastic import StochasticAct, StochasticWeight, WuWeight
from lowbit.quantizers.ternary import TTQWeight, TWNWeight
from lowbit.quantizers.uniform import UniformAct, UniformWeight


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    weight: type[WeightQuantizer] | None = None
    act: type[ActQuantizer] | None = None
    grad: type | None = None  # identity forward, quantized backward (for ``output_grad_quant``)


METHODS: dict[str, Method] = {
    "ivan": Method(
        "ivan",
        "Ivan: weights |alpha| Q_b(w/max|w|) with trainable alpha (eq. 3-4), activations A_b "
        "(eq. 5); 1..31 bits",
        IvanWeight,
        IvanAct,
    ),
    "uniform": Method(
        "uniform",
        "Uniform affine, min-max observer: per-channel symmetric weights, moving-average "
        "activations (Jacob et al. 2018); 2..16 bits",
        UniformWeight,
        UniformAct,
    ),
    "lsq": Method(
        "lsq",
        "LSQ (Esser et al. 2020): learned step size, eq. 1-3 with gradient scale; signed "
        "weights 2..8 bits, unsigned activations after the ReLU 1..8 bits",
        LSQWeight,
        LSQAct,
    ),
    "pact": Method(
        "pact",
        "PACT (Choi et al. 2018): learned clipping level alpha replaces the ReLU, eq. 1-3, "
        "1..8 bits; activations only (pair with a weight method, e.g. dorefa)",
        None,
        PACTAct,
    ),
    "binaryconnect": Method(
        "binaryconnect",
        "BinaryConnect (Courbariaux et al. 2015, eq. 1-3): weights sign(w) in {-1, +1}, "
        "straight-through gradient, real weights clipped to [-1, 1] after each step; 1 bit, "
        "weights only",
        BinaryConnectWeight,
        None,
    ),
    "bnn": Method(
        "bnn",
        "BNN (Hubara/Courbariaux et al. 2016): sign weights (clipped to [-1, 1]) and sign "
        "activations with the gradient cancelled where |x| > 1; 1 bit",
        BNNWeight,
        BNNAct,
    ),
    "xnor": Method(
        "xnor",
        "XNOR-Net (Rastegari et al. 2016, eq. 2-4): weights alpha_c sign(w), alpha_c = mean|w| "
        "per output channel, sign activations; 1 bit (a_bits 32 = BWN)",
        XNORWeight,
        XNORAct,
    ),
    "abc": Method(
        "abc",
        "ABC-Net (Lin et al. 2017): weights as M = bits shifted-sign bases with least-squares "
        "scales; activations as N = bits binary bases with learned shifts and scales; 1..5 bits",
        ABCWeight,
        ABCAct,
    ),
    "twn": Method(
        "twn",
        "TWN (Li & Liu 2016): ternary weights alpha {-1, 0, 1}, delta = 0.7 mean|w|; 2 bits, "
        "weights only",
        TWNWeight,
        None,
    ),
    "ttq": Method(
        "ttq",
        "TTQ (Zhu et al. 2017): ternary weights {-W_n, 0, W_p} with trained scales, "
        "delta = 0.05 max|w|; 2 bits, weights only",
        TTQWeight,
        None,
    ),
    "qnet": Method(
        "qnet",
        "Quantization Networks (Yang et al. 2019): sum of sigmoids with temperature, eq. 6 "
        "(training) / steps eq. 11 (inference), k-means biases; weights 1..5 bits ({-1,1}, "
        "{-1,0,1}, 3(+-4), {-7..7}, {-15..15}), activations {0..2^b-1} after the ReLU",
        SoftWeight,
        SoftAct,
    ),
    "hwgq": Method(
        "hwgq",
        "HWGQ (Cai et al. 2017): half-wave Gaussian quantizer replacing the ReLU, levels fitted "
        "to N(0,1), clipped-ReLU backward; 1..8 bits, activations only (pair with xnor weights)",
        None,
        HWGQAct,
    ),
    "dorefa": Method(
        "dorefa",
        "DoReFa-Net (Zhou et al. 2016): weights 2 quantize_k(tanh(w)/(2 max|tanh w|) + 1/2) - 1 "
        "(eq. 9; 1 bit: E|w| sign(w)), activations quantize_k(clip(x, 0, 1)) replacing the "
        "ReLU; 1..16 bits (gradients: DoReFaGradient module, 2..16 bits)",
        DoReFaWeight,
        DoReFaAct,
        DoReFaGradient,
    ),
    "pow2": Method(
        "pow2",
        "Logarithmic / power-of-two (Miyashita et al. 2016): {0, +-2^e}, e rounded in the log "
        "domain below a top exponent fsr fixed from max|w|; weights 2..8 bits (sign + log "
        "code), activations 1..8 bits (unsigned LogQuant of the ReLU output)",
        Pow2Weight,
        Pow2Act,
    ),
    "inq": Method(
        "inq",
        "INQ (Zhou et al. 2017): powers of two {0, +-2^n2..2^n1}, n1 = floor(log2(4 max|w|/3)), "
        "frozen incrementally by magnitude (lowbit.train.inq.fit_inq); 2..8 bits, weights only",
        INQWeight,
        None,
    ),
    "stochastic": Method(
        "stochastic",
        "Fixed point with stochastic rounding (Gupta et al. 2015) in training, round to "
        "nearest at eval; step 2^-FL from max|w| (weights, signed) or the running max "
        "(ReLU outputs, unsigned); 2..16 bits",
        StochasticWeight,
        StochasticAct,
    ),
    "wu": Method(
        "wu",
        "WAGE rounding (Wu et al. 2018, survey eq. 10): clip(sigma round(w/sigma), -1+sigma, "
        "1-sigma), sigma = 2^(1-k), with a fixed power-of-two layer scale; 2..8 bits, weights only",
        WuWeight,
        None,
    ),
    "float16": Method(
        "float16",
        "Float16 weights (post-training half precision, ptq-vs-qat-overview): weights rounded "
        "to IEEE float16 and stored at 16 bits, computed in float; 16 bits, weights only",
        Float16Weight,
        None,
    ),
    "bfloat16": Method(
        "bfloat16",
        "Bfloat16 weights: as float16 with float32's exponent range and 8 significant bits; "
        "16 bits, weights only",
        BFloat16Weight,
        None,
    ),
}


def get_method(name: str) -> Method:
    """The registered method called ``name``; :class:`MethodError` lists the known ones."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(METHODS))
        raise MethodError(f"unknown quantization method {name!r}; known methods: {known}") from None


def _check(cls: type | None, name: str, role: str, bits: int) -> type:
    if cls is None:
        raise MethodError(f"method {name!r} has no {role} quantizer")
    if bits not in cls.BITS:
        raise BitsError(f"method {name!r} cannot quantize {role}s to {bits} bits; it takes "
                        f"{bits_span(cls.BITS)}")
    return cls


KEEP_FALLBACK = "uniform"  # kept first/last layers when the recipe's method cannot take keep_bits


def _role_class(name: str, role: str) -> type | None:
    m = get_method(name)
    return {"weight": m.weight, "activation": m.act, "gradient": m.grad}[role]


def accepts(name: str, bits: int, role: str = "weight") -> bool:
    """True if method ``name`` has a ``role`` quantizer taking ``bits`` (32 = float: always)."""
    cls = _role_class(name, role)
    return bits == FLOAT_BITS or (cls is not None and bits in cls.BITS)


def allowed_bits(name: str, role: str = "weight") -> str:
    """The bit widths method ``name`` takes for ``role``, as text (e.g. "2..16 (or 32 = float)")."""
    cls = _role_class(name, role)
    return bits_span(cls.BITS) if cls is not None else f"none (no {role} quantizer)"


def validate(name: str, role: str, bits: int) -> None:
    """Raise if ``name`` cannot quantize ``role`` ("weight", "activation", "gradient") to
    ``bits``."""
    check_bits(bits, what=f"{role} bits")
    cls = _role_class(name, role)  # an unknown name is an error even where unused (32 bits)
    if bits == FLOAT_BITS:
        return
    _check(cls, name, role, bits)


def make_weight_quantizer(name: str, bits: int, options=()) -> WeightQuantizer:
    """Method ``name``'s weight quantizer at ``bits`` with its constructor ``options``."""
    return QuantSpec(name, "weight", bits, tuple(dict(options).items())).build()


def make_act_quantizer(name: str, bits: int, options=()) -> ActQuantizer:
    """Method ``name``'s activation quantizer at ``bits`` with its constructor ``options``."""
    return QuantSpec(name, "activation", bits, tuple(dict(options).items())).build()


def make_grad_quantizer(name: str, bits: int, options=()):
    return QuantSpec(name, "gradient", bits, tuple(dict(options).items())).build()
