"""Histogram observers for post-training quantization: percentile, MSE and KL clipping ranges.

Each keeps a running histogram of everything it has seen (one per channel when ``axis`` is
given), picks a clipping range [lo, hi] from it, and hands that range to
:func:`lowbit.functional.uniform.minmax_qparams` like every :class:`Observer` (so 0 stays exact
and an all-zero tensor gets the float32-eps scale). The range is kept inside the observed
[min, max] widened to contain 0 (symmetric: max |x|). Wu et al. 2020, "Integer Quantization
for Deep Learning Inference: Principles and Empirical Evaluation", arXiv:2004.09602, sec. 4.1
compares these calibrations (max, percentile, entropy).

Histogram: ``bins`` equal bins per channel (2048 as TensorRT). The percentile and KL observers
on a symmetric grid histogram |x| over [0, max |x|]; otherwise the histogram is of x over
[min(x, 0), max(x, 0)] (the MSE observer always histograms x, so the signed grid's one extra
negative level is accounted exactly). Within a bin the density is taken as uniform.
Re-binning: when a batch falls outside the histogram, it grows by ``below`` old bins at the
bottom and its bin width by an integer ``factor``; old bin i goes whole into new bin
(i + below) // factor, so counts are conserved exactly. Approximation: after growing, the
histogram can be up to twice as coarse as one built from all the data at once, and its top
bins may stay empty (torch.ao's HistogramObserver instead spreads old counts over new bins).

- :class:`PercentileObserver`: percentiles of the histogram (linear within a bin).
- :class:`MSEObserver`: the range of least expected squared error, coarse-to-fine grid search.
- :class:`KLObserver`: TensorRT's entropy calibration (Migacz 2017).

``OBSERVERS`` / :func:`make_observer` turn the names a CLI or recipe file uses into classes.
Test: tests/quantizers/test_histogram_observers.py (brute-force MSE on raw samples, a plain
numpy TensorRT loop, numpy.percentile, torch's fake-quant ops as peers).
"""

from __future__ import annotations

import math

import torch

from lowbit.errors import LowbitError, MethodError
from lowbit.functional.uniform import minmax_qparams
from lowbit.quantizers.observers import MinMaxObserver, MovingAverageMinMaxObserver, Observer

DEFAULT_BINS = 2048
_TIE = 1e-9  # KL divergences this close (relative) are a tie, won by the smaller threshold
_CHUNK = 16  # MSE candidates evaluated at once (16 x 2048 float64 temporaries stay in cache)


def _rows(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``x`` as (channels, values) float64: one row per tensor, or per channel along ``axis``."""
    if axis is None:
        return x.reshape(1, -1).double()
    return x.transpose(0, axis).reshape(x.shape[axis], -1).double()


def histogram_percentile(counts: torch.Tensor, edge: torch.Tensor, width: torch.Tensor,
                         q: float) -> torch.Tensor:
    """The q-quantile (q in [0, 1]) of each row of ``counts`` (channels, bins), whose bins start
    at ``edge`` with ``width`` (per row): the value below which a fraction q of the count lies,
    the density uniform within a bin."""
    c = counts.double()
    cum = c.cumsum(1)
    target = (q * cum[:, -1]).unsqueeze(1)
    k = torch.searchsorted(cum, target).clamp(max=c.shape[1] - 1)
    before = torch.where(k > 0, cum.gather(1, (k - 1).clamp(min=0)), 0.0)
    n = c.gather(1, k)
    frac = torch.where(n > 0, (target - before) / n.clamp(min=1), 0.0).clamp(0.0, 1.0)
    return edge + (k + frac).squeeze(1).double() * width


def _sawtooth_integral(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """integral from 0 to x of (u - s round(u / s))^2 du (rounding error on the grid s Z)."""
    k = torch.floor(x / s + 0.5)
    v = x - k * s
    return k * s**3 / 12 + v**3 / 3


def histogram_mse(counts: torch.Tensor, edge: float, width: float, scale: torch.Tensor,
                  zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Total squared error of fake quantization, rounding and clipping, on the grid
    ``scale * (q - zero_point)``, q in [qmin, qmax], for K candidate (scale, zero_point) pairs,
    of the 1-D histogram ``counts`` (bins from ``edge``, ``width`` each), each bin's count spread
    uniformly over the bin: sum over bins of count / width * integral over the bin of
    (Q(x) - x)^2, in closed form. Returns (K,) float64."""
    a = edge + width * torch.arange(counts.numel(), dtype=torch.float64)
    b = a + width
    weight = counts.double() / width
    s = scale.double().unsqueeze(1)
    z = zero_point.double().unsqueeze(1)
    top, bottom = s * (qmax - z), s * (qmin - z)  # the end levels
    z_hi, z_lo = top + s / 2, bottom - s / 2  # the rounding zone; beyond it values clip
    inside = (_sawtooth_integral(torch.clamp(b, z_lo, z_hi), s)
              - _sawtooth_integral(torch.clamp(a, z_lo, z_hi), s))
    above = (torch.maximum(b, z_hi) - top) ** 3 - (torch.maximum(a, z_hi) - top) ** 3
    below = (torch.minimum(b, z_lo) - bottom) ** 3 - (torch.minimum(a, z_lo) - bottom) ** 3
    return ((inside + (above + below) / 3) * weight).sum(1)


def mse_range(counts: torch.Tensor, edge: float, width: float, qmin: int, qmax: int,
              symmetric: bool, grid: int = 16, rounds: int = 4) -> tuple[float, float]:
    """The clipping range [lo, hi] of least :func:`histogram_mse` (its grid from
    ``minmax_qparams``) over candidates lo = f_lo * bottom, hi = f_hi * top, the histogram
    spanning [bottom, top] (symmetric: lo = -f amax, hi = f amax, amax = max(-bottom, top)).
    Round 1 tries f in {0, 1/grid, ..., 1} for each end (affine: all (grid + 1)^2 pairs, or
    grid + 1 when one end is 0, as for ReLU outputs), each later round grid + 1 values spanning
    the best f +- the previous spacing, clamped to [0, 1]: 4 rounds of 16 reach a spacing of
    1/8192 of the extreme, 68 candidates (symmetric) or 1156 (affine). Ties go to the first
    candidate. A coarse-to-fine search: it assumes the error is unimodal at the coarse spacing."""
    bottom, top = edge, edge + width * counts.numel()
    amax = max(-bottom, top)
    ends = (-amax, amax) if symmetric else (bottom, top)
    free = [True] if symmetric else [bottom < 0, top > 0]
    best, step = [1.0] * len(free), 1.0
    for r in range(rounds):
        span = torch.linspace(0.0 if r == 0 else -step, 1.0 if r == 0 else step, grid + 1,
                              dtype=torch.float64)
        axes = [(span + (0.0 if r == 0 else f)).clamp(0.0, 1.0) if on
                else torch.ones(1, dtype=torch.float64) for f, on in zip(best, free, strict=True)]
        cand = torch.cartesian_prod(*axes).reshape(-1, len(axes))
        scale, zp = minmax_qparams(cand[:, 0] * ends[0], cand[:, -1] * ends[1], qmin, qmax,
                                   symmetric)
        err = torch.cat([histogram_mse(counts, edge, width, scale[i:i + _CHUNK],
                                       zp[i:i + _CHUNK], qmin, qmax)
                         for i in range(0, len(cand), _CHUNK)])
        best = cand[int(torch.argmin(err))].tolist()
        step = 1.0 / grid if r == 0 else 2.0 * step / grid
    return best[0] * ends[0], best[-1] * ends[1]


def _xlogx(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x * torch.log(x.clamp(min=1e-300)), 0.0)


def kl_threshold(counts: torch.Tensor, levels: int, start: int = 0) -> int:
    """TensorRT's entropy calibration (Migacz 2017) on one histogram: the number of bins i,
    ``levels`` <= i <= bins, to keep. For each i: P = bins 0..i-1 with the count of bins >= i
    added to bin i-1; Q = bins 0..i-1 (without the outliers) merged into ``levels`` groups of
    i // levels bins (the last group takes the remainder), each group's count spread evenly over
    its bins where P is non-zero; both normalised; the i of least KL(P || Q) wins, the first
    on ties (divergences within 1e-9 relative of the least count as tied: they are equal in
    exact arithmetic when, say, a stretch of empty bins makes several i alike). Computed for
    all i at once from cumulative sums (O(levels) per i), the same numbers as the loop. A Q
    that is 0 where P is not (outliers clipped into an empty group) gives an infinite
    divergence (no smoothing). Candidates start at ``max(levels, start)`` bins (TensorRT starts
    at 128 of 2048). Returns ``bins`` when levels >= bins."""
    h = counts.double()
    n_bins = h.numel()
    if levels >= n_bins:
        return n_bins
    zero = h.new_zeros(1)
    ch = torch.cat([zero, h.cumsum(0)])  # ch[k] = sum of h[:k]
    cz = torch.cat([zero, (h > 0).double().cumsum(0)])
    chl = torch.cat([zero, _xlogx(h).cumsum(0)])
    total = ch[-1]
    i = torch.arange(min(max(levels, start), n_bins), n_bins + 1)
    bounds = torch.arange(levels + 1).unsqueeze(0) * (i // levels).unsqueeze(1)
    bounds[:, -1] = i
    mass = ch[bounds[:, 1:]] - ch[bounds[:, :-1]]  # Q's counts per group
    nonzero = cz[bounds[:, 1:]] - cz[bounds[:, :-1]]
    outliers = total - ch[i]
    last = h[i - 1] + outliers  # P's last bin
    nonzero[:, -1] += ((h[i - 1] == 0) & (outliers > 0)).double()
    p_mass = mass.clone()
    p_mass[:, -1] += outliers
    log_q = torch.log(mass / nonzero.clamp(min=1))  # -inf where a group of P has no Q
    cross = torch.where(p_mass > 0, p_mass * log_q, 0.0).sum(1)
    kl = ((chl[i - 1] + _xlogx(last) - cross) / total - torch.log(total)
          + torch.log(ch[i]))
    kl = torch.where(torch.isnan(kl) | (ch[i] == 0), math.inf, kl)
    least = float(kl.min())
    return int(i[kl <= least + _TIE * abs(least) + 1e-15][0])


class HistogramObserver(Observer):
    """Base: the running per-channel histogram (``counts`` (channels, bins), ``edge`` and
    ``width`` (channels,), buffers); subclasses choose the clipping range in ``_choose``."""

    _sized_by_first_update = (*Observer._sized_by_first_update, "counts", "edge", "width")
    folds = True  # a symmetric grid looks at |x|

    def __init__(self, bits: int = 8, signed: bool = False, symmetric: bool = False,
                 axis: int | None = None, bins: int = DEFAULT_BINS) -> None:
        super().__init__(bits, signed, symmetric, axis)
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
            raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
        self.bins = bins
        rows = 1 if axis is None else 0
        self.register_buffer("counts", torch.zeros(rows, bins, dtype=torch.long))
        self.register_buffer("edge", torch.zeros(rows, dtype=torch.float64))
        self.register_buffer("width", torch.zeros(rows, dtype=torch.float64))

    @property
    def _abs(self) -> bool:
        return self.symmetric and self.folds

    def _merge(self, lo: torch.Tensor, hi: torch.Tensor) -> None:  # the running min and max
        self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)

    def _covered(self, folded: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row, [min, max] of what was seen widened to contain 0 (|x|: [0, max |x|])."""
        lo, hi = self.lo.double().reshape(-1), self.hi.double().reshape(-1)
        if folded:
            return torch.zeros_like(lo), torch.maximum(-lo, hi)
        return lo.clamp(max=0.0), hi.clamp(min=0.0)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> torch.Tensor:
        """Add ``x`` to the histogram (re-binned first if it falls outside); returns ``x``."""
        first = int(self.count) == 0
        super().update(x)  # checks x, keeps the running min/max in lo/hi
        v = _rows(x.detach(), self.axis)
        v = v.abs() if self._abs else v
        need_lo, need_hi = self._covered(self._abs)
        if first:
            self.counts = torch.zeros(v.shape[0], self.bins, dtype=torch.long)
            self.edge, self.width = need_lo, (need_hi - need_lo) / self.bins
        else:
            self._widen(need_lo, need_hi)
        live = self.width > 0
        safe = torch.where(live, self.width, 1.0).unsqueeze(1)
        idx = torch.floor((v - self.edge.unsqueeze(1)) / safe) * live.unsqueeze(1)
        idx = idx.clamp(0, self.bins - 1).long()
        idx += self.bins * torch.arange(v.shape[0]).unsqueeze(1)
        self.counts += torch.bincount(idx.reshape(-1), minlength=self.counts.numel()).view(
            self.counts.shape)
        return x

    def _widen(self, need_lo: torch.Tensor, need_hi: torch.Tensor) -> None:
        """Grow each row's range to cover [need_lo, need_hi], merging whole bins (see module)."""
        n, edge, width = self.bins, self.edge, self.width
        live = width > 0  # a zero-width row has seen only zeros: its count sits at 0
        safe = torch.where(live, width, 1.0)
        below = torch.ceil((edge - need_lo) / safe - 1e-9).clamp(min=0)
        above = torch.ceil((need_hi - edge) / safe - 1e-9).clamp(min=n)
        factor = torch.ceil((below + above) / n)
        new_edge = torch.where(live, edge - below * width, need_lo)
        new_width = torch.where(live, width * factor, (need_hi - need_lo) / n)
        target = torch.div(torch.arange(n) + below.unsqueeze(1), factor.unsqueeze(1),
                           rounding_mode="floor")
        zero_bin = torch.where(new_width > 0, torch.floor(-new_edge / new_width.clamp(
            min=1e-300)), 0.0).unsqueeze(1)
        target = torch.where(live.unsqueeze(1), target, zero_bin).clamp(0, n - 1).long()
        self.counts = torch.zeros_like(self.counts).scatter_add_(1, target, self.counts)
        self.edge, self.width = new_edge, new_width

    def _choose(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _each_row(self, fn) -> tuple[torch.Tensor, torch.Tensor]:
        """(lo, hi) per row from ``fn(counts_row, edge, width)``; (0, 0) for an all-zero row."""
        lo, hi = torch.zeros_like(self.edge), torch.zeros_like(self.edge)
        for r in torch.nonzero(self.width > 0).flatten().tolist():
            lo[r], hi[r] = fn(self.counts[r], float(self.edge[r]), float(self.width[r]))
        return lo, hi

    def clip_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The chosen [lo, hi] (float32, shaped like ``lo``) that ``qparams`` hands to
        ``minmax_qparams``; inside [min, max] widened to 0 (symmetric: lo = -hi, hi <= max|x|)."""
        if int(self.count) == 0:
            raise LowbitError(f"{type(self).__name__} has observed nothing yet")
        lo, hi = self._choose()
        low, high = self._covered(False)
        if self.symmetric:
            hi = torch.minimum(torch.maximum(-lo, hi).clamp(min=0.0), torch.maximum(-low, high))
            lo = -hi
        else:
            lo = torch.minimum(torch.maximum(lo, low), torch.zeros_like(lo))
            hi = torch.minimum(hi.clamp(min=0.0), high)
        return lo.float().reshape(self.lo.shape), hi.float().reshape(self.hi.shape)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero_point) of :meth:`clip_range`, by ``minmax_qparams``."""
        return minmax_qparams(*self.clip_range(), self.qmin, self.qmax, self.symmetric)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bins={self.bins}"


def _percentiles(percentile: object, symmetric: bool) -> tuple[float, float]:
    pair = isinstance(percentile, tuple | list)
    values = tuple(percentile) if pair else (percentile,)
    if not values or len(values) > 2 or any(
            isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 100
            for p in values):
        raise ValueError(f"percentile must be a number or a (low, high) pair in [0, 100], "
                         f"got {percentile!r}")
    if pair and (symmetric or len(values) != 2 or not values[0] < values[1]):
        raise ValueError(f"a (low, high) percentile pair needs an affine grid and low < high, "
                         f"got {percentile!r} (symmetric={symmetric})")
    if not pair and (values[0] == 0 or (not symmetric and values[0] < 50)):
        raise ValueError(f"percentile must be in (0, 100] (affine: [50, 100], the range being "
                         f"[100 - p, p]), got {percentile!r}")
    return (float(values[0]), float(values[1])) if pair else (100.0 - values[0], values[0])


class PercentileObserver(HistogramObserver):
    """Symmetric: [-t, t], t the ``percentile`` of |x|; affine: the (100 - p)th and pth
    percentiles of x, or a ``(low, high)`` pair; from the histogram (linear within a bin, so
    within one bin width of numpy.percentile of the raw data)."""

    def __init__(self, bits: int = 8, signed: bool = False, symmetric: bool = False,
                 axis: int | None = None, percentile: float | tuple[float, float] = 99.99,
                 bins: int = DEFAULT_BINS) -> None:
        super().__init__(bits, signed, symmetric, axis, bins)
        self.percentile = percentile
        self._low, self._high = _percentiles(percentile, symmetric)

    def _choose(self) -> tuple[torch.Tensor, torch.Tensor]:
        hi = histogram_percentile(self.counts, self.edge, self.width, self._high / 100)
        if self._abs:
            return -hi, hi
        return histogram_percentile(self.counts, self.edge, self.width, self._low / 100), hi

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, percentile={self.percentile!r}"


class MSEObserver(HistogramObserver):
    """The range of least expected squared quantization error (rounding and clipping, each bin's
    count uniform over the bin, on the grid ``minmax_qparams`` gives the range): the grid search
    of :func:`mse_range`, ``rounds`` rounds of ``grid`` + 1 candidates per end (symmetric: one
    end). Banner et al. 2019, "Post training 4-bit quantization of convolutional networks for
    rapid-deployment", NeurIPS, arXiv:1810.05723 motivates MSE clipping. Deviation: they solve
    for the clip analytically under a Laplace/Gauss prior; this searches the observed histogram.
    """

    folds = False

    def __init__(self, bits: int = 8, signed: bool = False, symmetric: bool = False,
                 axis: int | None = None, bins: int = DEFAULT_BINS, grid: int = 16,
                 rounds: int = 4) -> None:
        super().__init__(bits, signed, symmetric, axis, bins)
        for name, value, least in (("grid", grid, 2), ("rounds", rounds, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        self.grid, self.rounds = grid, rounds

    def _choose(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._each_row(lambda c, e, w: mse_range(
            c, e, w, self.qmin, self.qmax, self.symmetric, self.grid, self.rounds))


class KLObserver(HistogramObserver):
    """Entropy calibration as TensorRT does it: Migacz 2017, "8-bit Inference with TensorRT",
    GTC 2017: a 2048-bin histogram of |x|, the threshold of least KL divergence
    between the clipped reference P and its quantized Q (:func:`kl_threshold`), range [-t, t].
    TensorRT's 128 levels are the grid's: 2^(bits-1) on |x| for a symmetric grid, 2^bits on the
    non-negative histogram for an affine (ReLU) grid, range [min(x, 0), t]. Deviations: t is
    the upper edge of the last kept bin, i * width (the slides say (i + 0.5) * width); i = bins
    (no clipping) is a candidate too; Q is not smoothed; an affine grid on data of both signs
    has only its top clipped; grids with >= bins levels are not clipped.
    The bin holding 0 (the first bin when the histogram starts at 0: |x|, ReLU outputs, images)
    gets its neighbour's count before the search, as NVIDIA's pytorch-quantization entropy
    calibrator does (``bins[0] = bins[1]``): values at exactly 0 are on every grid here, and
    their spike otherwise dominates P (81 % of MNIST pixels are 0: the 4-bit grid of LeNet300's
    input was clipped at 0.04 and the network fell to 88.7 % at W4A4,
    benchmarks/results/ptq_table/lenet300 at commit 6f71bce). Thresholds start at bins / 16
    (TensorRT's 128 of 2048): without the bound, a few-level grid on near-binary data (MNIST at
    3 bits) found a zero divergence at a threshold of 1/255, where P's whole clipped mass sits
    in its last bin."""

    def _choose(self) -> tuple[torch.Tensor, torch.Tensor]:
        levels = 2 ** (self.bits - 1) if self._abs else 2**self.bits

        def pick(counts, edge, width):
            if float(edge) == 0.0 and counts.numel() > 1:
                counts = counts.clone()
                counts[0] = counts[1]
            top = edge + kl_threshold(counts, levels, counts.numel() // 16) * width
            return (-top, top) if self._abs else (edge, top)

        return self._each_row(pick)


OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "ema": MovingAverageMinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
    "kl": KLObserver,
}

ACT_OBSERVERS = (*OBSERVERS, "dynamic")  # UniformAct's observer option ("dynamic": per batch)
WEIGHT_OBSERVERS = ("minmax", "percentile", "mse", "kl")  # UniformWeight's (no EMA of weights)


def make_observer(name: str, **kw) -> Observer:
    """``OBSERVERS[name](**kw)``; an unknown name raises MethodError listing the known ones."""
    if name not in OBSERVERS:
        raise MethodError(f"unknown observer {name!r}; known observers: {', '.join(OBSERVERS)}")
    return OBSERVERS[name](**kw)
