"""Pure tensor math of every quantizer: no state, no I/O. Import as ``lowbit.functional as F``."""

from lowbit.functional.checks import check_bits, check_finite, check_nonempty
from lowbit.functional.codebook import decode
from lowbit.functional.ivan import ivan_activation, ivan_scaled_weight, ivan_weight
from lowbit.functional.ste import ceil_ste, floor_ste, round_ste
from lowbit.functional.uniform import minmax, minmax_qparams, uniform, uniform_codes

__all__ = [
    "ceil_ste",
    "check_bits",
    "check_finite",
    "check_nonempty",
    "decode",
    "floor_ste",
    "ivan_activation",
    "ivan_scaled_weight",
    "ivan_weight",
    "minmax",
    "minmax_qparams",
    "round_ste",
    "uniform",
    "uniform_codes",
]
