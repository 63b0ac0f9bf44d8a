"""PACTAct(alpha_from="mse"): alpha from the first training batch (issue 12, item 6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowbit.errors import LowbitError
from lowbit.quantizers.learned import PACTAct, pact_mse_alpha


def _numpy_pact(x: np.ndarray, alpha: float, bits: int) -> np.ndarray:
    """PACT eq. (1)-(2) in numpy: round(clip(x, 0, alpha) n / alpha) alpha / n."""
    n = 2**bits - 1
    return np.round(np.clip(x, 0, alpha) * n / alpha) * alpha / n


def test_mse_alpha_is_the_best_candidate_by_an_independent_search():
    x = torch.randn(4000, generator=torch.Generator().manual_seed(0)) * 1.7
    for bits in (2, 4):
        got = float(pact_mse_alpha(x, bits))
        xs, top = x.numpy().astype(np.float64), float(x.max())
        relu = np.maximum(xs, 0)
        cands = top * np.arange(1, 65) / 64
        errs = [np.mean((_numpy_pact(relu, a, bits) - relu) ** 2) for a in cands]
        assert got == pytest.approx(cands[int(np.argmin(errs))], rel=1e-5)
    # 2 bits clip well below the max (levels spread over the bulk), 4 bits clip higher
    assert float(pact_mse_alpha(x, 2)) < float(pact_mse_alpha(x, 4)) < float(x.max())


def test_first_training_batch_sets_alpha_default_keeps_ten():
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert float(PACTAct(2).alpha) == 10.0  # from scratch: the paper's 10
    q = PACTAct(2, alpha_from="mse")
    q.eval()
    y_eval = q(x)  # eval before training: derived from this batch, not stored
    assert float(q.alpha) == 10.0 and not bool(q.initialized)
    with pytest.raises(LowbitError, match="no training batch"):
        PACTAct(2, alpha_from="mse").freeze()
    q.train()
    q(x)
    expected = float(pact_mse_alpha(x, 2))
    assert float(q.alpha) == pytest.approx(expected) and bool(q.initialized)
    assert torch.equal(y_eval, q(x))
    q(3 * x)  # later batches do not move alpha: it is learned from here on
    assert float(q.alpha) == pytest.approx(expected)
    assert "initialized" not in dict(PACTAct(2).named_buffers())  # old files still load
    with pytest.raises(ValueError, match="alpha_from"):
        PACTAct(2, alpha_from="max")
