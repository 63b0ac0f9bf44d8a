"""Modules for Quantization Networks (Yang et al., CVPR 2019): the soft quantization function
eq. (6) in training, the step function eq. (11) in inference (``hard = True``).

Formulas, level sets and deviations: :mod:`lowbit.functional.soft`. Training schedule (temperature
T = epoch x factor, the three phases of sec. 4.1): :mod:`lowbit.train.qnet`.

Bit widths (BITS = 1..5) and level sets Y (paper's table 2 notation):
- weights: 1 -> {-1, 1}; 2 -> {-1, 0, 1} (ternary); 3 -> {-4, -2, -1, 0, 1, 2, 4} ("3(±4)");
  4 -> {-7..7} (ours, the paper has no 4-bit set); 5 -> {-15..15}. Other sets (e.g. "3(±2)")
  through ``levels=``;
- activations: {0, 1, ..., 2^b - 1} (sec. 4.1: {0, 1} for 1 bit, {0, 1, 2, 3} for 2 bits).
Per layer ("layer-wise quantization", sec. 4.1): one alpha, beta and bias vector per tensor.
alpha and beta are trained; the biases are frozen buffers, as in every experiment of the paper
(sec. 4.3, "we freeze the biases after the initialization"); ``learn_biases=True`` trains them
with eq. (10) instead.

``freeze()`` is the way into inference: it sets ``hard`` and the saved ``frozen`` flag, and a
frozen quantizer computes eq. (11) whatever ``hard`` says later (``set_hard`` of the training
schedule keeps working on unfrozen ones). Records: :func:`lowbit.functional.soft.hard_grid`,
an IntegerGrid of the integer level set times alpha (contract: tests/quantizers/test_contract.py).

State: ``hard`` (eq. 11 vs eq. 6) is a plain bool for the forward, and is saved in the state
dict as the 0-dim bool tensor ``<prefix>hard`` so that a saved model evaluates with the function
it was evaluated with (issue 7 item 5). A state dict written before (without the key) loads and
leaves ``hard`` as the module has it. ``temperature`` is a buffer; ``grad_temperature`` only
shapes the backward and is fixed by the constructor (not saved).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from lowbit.functional.checks import check_finite, check_nonempty
from lowbit.functional.codebook import Codebook
from lowbit.functional.soft import (
    fit_alpha,
    hard_encode,
    hard_grid,
    hard_quantize,
    init_soft_params,
    levels_for,
    soft_quantize,
)
from lowbit.quantizers.base import ActQuantizer, WeightQuantizer


class _SoftMixin:
    """State shared by SoftWeight and SoftAct: levels, biases, alpha, beta, T, hard switch."""

    levels: torch.Tensor
    biases: torch.Tensor
    temperature: torch.Tensor

    def _setup(self, levels: Sequence[float], learn_biases: bool) -> None:
        lv = torch.tensor(list(levels), dtype=torch.float32)
        self.learn_biases = bool(learn_biases)
        self.register_buffer("levels", lv)
        mid = (lv[1:] + lv[:-1]) / 2  # until initialised: steps halfway between the levels
        if learn_biases:
            self.biases = nn.Parameter(mid)
        else:
            self.register_buffer("biases", mid)
        self.alpha = nn.Parameter(torch.ones(()))
        self.beta = nn.Parameter(torch.ones(()))
        self.register_buffer("temperature", torch.ones(()))
        self.hard = False
        self.grad_temperature: float | None = None
        self.grad_keeps_t = False  # with grad_temperature: keep the chain-rule factor T

    @torch.no_grad()
    def _init(self, x: torch.Tensor, q: float | None = None) -> None:
        biases, alpha, beta = init_soft_params(x, self.levels, q=q)
        self.biases.copy_(biases)
        self.alpha.fill_(alpha)
        self.beta.fill_(beta)

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self.hard or self.is_frozen:
            return hard_quantize(x, self.levels, self.biases, self.alpha, self.beta)
        return soft_quantize(x, self.levels, self.biases, self.temperature, self.alpha,
                             self.beta, grad_temperature=self.grad_temperature,
                             grad_keeps_t=self.grad_keeps_t)

    def _freeze(self) -> None:
        self.hard = True  # eq. (11) from now on, whatever set_hard says

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, Codebook]:
        """codes k = #{i : beta x >= b_i}, record alpha * Y (eq. 11, as the hard forward)."""
        return hard_encode(x, self.levels, self.biases, self.alpha, self.beta, self.bits)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "hard"] = torch.tensor(bool(self.hard))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "hard"
        if key in state_dict:
            self.hard = bool(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if key in unexpected_keys:
            unexpected_keys.remove(key)

    def _repr(self) -> str:
        lv = ", ".join(f"{v:g}" for v in self.levels.tolist())
        return f"bits={self.bits}, levels=({lv}), hard={self.hard}"


class SoftWeight(_SoftMixin, WeightQuantizer):
    """Weights through eq. (6) (training) or eq. (11) (``hard``: inference, export).

    ``init_from(weight)``: k-means biases, beta = 5p/(4q), alpha = 1/beta (sec. 4.1).
    1-bit: b = 0, and the backward's sigmoids use T = 1 ("freezing T = 1 for the
    back-propagation of binary quantization", sec. 4.1) while the chain-rule factor T of eq.
    (7)/(9) stays (``grad_keeps_t``): the T = 1 derivative times T, as the authors' reference
    code computes it (anybit.py, ``y_grad = self.backward(x, 1, ...).mul(T)``; see
    :mod:`lowbit.functional.soft`). ``grad_keeps_t = False`` drops that factor (lowbit before
    issue 12: gradients T times smaller); ``grad_temperature = None`` uses T throughout.
    ``encode`` describes the hard (inference) function: decode(encode(w)) equals forward(w)
    exactly when ``hard`` is True or after ``freeze()`` (which sets ``hard`` for good); in soft
    mode forward is the smooth eq. (6) and differs.
    """

    BITS: ClassVar[tuple[int, ...]] = (1, 2, 3, 4, 5)

    def __init__(self, bits: int, levels: Sequence[float] | None = None,
                 learn_biases: bool = False) -> None:
        super().__init__(bits)
        lv = levels_for(bits, signed=True) if levels is None else tuple(levels)
        if len(lv) > 2**bits:
            raise ValueError(f"{len(lv)} levels do not fit in {bits} bits")
        self._setup(lv, learn_biases)
        binary = len(lv) == 2
        self.grad_temperature = 1.0 if binary else None
        self.grad_keeps_t = binary

    def init_from(self, weight: torch.Tensor) -> None:
        check_nonempty(weight, "weight")
        check_finite(weight, "weight")
        self._init(weight)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        check_nonempty(weight, "weight")
        check_finite(weight, "weight")
        return self._quantize(weight)

    @torch.no_grad()
    def encode(self, weight: torch.Tensor) -> tuple[torch.Tensor, Codebook]:
        """Eq. (11): codes k = #{i : beta w >= b_i}, IntegerGrid alpha * Y (Table for a
        fractional ``levels=``); decode equals the forward once hard (or frozen)."""
        check_nonempty(weight, "weight")
        check_finite(weight, "weight")
        return self._encode(weight)

    def extra_repr(self) -> str:
        return self._repr()


class SoftAct(_SoftMixin, ActQuantizer):
    """Activations through eq. (6)/(11) with levels {0, ..., 2^b - 1} and o = 0.

    REPLACES_ACTIVATION is False: the paper quantizes the outputs of the ReLU units
    ("Conv-BN-ReLU(-Pooling)-Quant", sec. 4.1), and calibrates on them.
    ``calibrate(activations)``: k-means biases and beta = 5p/(4q) from activations of (the
    paper: 1000) calibration samples; ``q`` overrides max |activations| when the values given
    are a subsample (see :func:`lowbit.train.qnet.calibrate_activations`).
    """

    BITS: ClassVar[tuple[int, ...]] = (1, 2, 3, 4, 5)
    REPLACES_ACTIVATION: ClassVar[bool] = False

    def __init__(self, bits: int, learn_biases: bool = False) -> None:
        super().__init__(bits)
        self._setup(levels_for(bits, signed=False), learn_biases)

    def calibrate(self, activations: torch.Tensor, q: float | None = None,
                  init: str = "kmeans", alpha: str = "reciprocal") -> None:
        """``init="kmeans"``: the paper's (biases at beta x the k-means midpoints); ``"linear"``:
        the same beta and alpha = 1/beta with evenly spaced steps b_i = i + 1/2 (a uniform
        quantizer of step 1/beta, whose outputs alpha k do keep the inputs' magnitude -- what
        the paper says alpha = 1/beta is for, sec. 4.1; with k-means steps of skewed ReLU
        outputs they do not: issue 12 item 3).

        ``alpha="reciprocal"``: the paper's alpha = 1/beta; ``"fit"``: the least-squares scale
        of the hard levels to these activations (:func:`lowbit.functional.soft.fit_alpha`),
        which keeps their magnitude whatever the steps."""
        check_nonempty(activations, "activations")
        check_finite(activations, "activations")
        if init not in ("kmeans", "linear"):
            raise ValueError(f"init must be 'kmeans' or 'linear', got {init!r}")
        if alpha not in ("reciprocal", "fit"):
            raise ValueError(f"alpha must be 'reciprocal' or 'fit', got {alpha!r}")
        self._init(activations, q=q)
        with torch.no_grad():
            if init == "linear":
                self.biases.copy_((self.levels[1:] + self.levels[:-1]) / 2)
            if alpha == "fit":
                self.alpha.fill_(fit_alpha(activations, self.levels, self.biases, self.beta))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._quantize(x)

    def codebook(self) -> Codebook:
        """alpha * {0..2^b - 1}: IntegerGrid(LevelRange(0, 2^b - 1), alpha), once frozen."""
        self._check_frozen()
        return hard_grid(self.levels, self.alpha.detach(), self.bits)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, Codebook]:
        self._check_frozen()
        return self._encode(x)

    def _check_frozen(self) -> None:
        self.require_frozen("eq. 6 is not a grid; freeze switches to eq. 11")

    def extra_repr(self) -> str:
        return self._repr()
