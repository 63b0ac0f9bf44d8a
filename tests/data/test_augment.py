"""crop-flip augmentation (He et al. 2016 sec. 4.2): every output is a 32x32 window of the
zero-padded image or its mirror, offsets cover 0..2*pad, flips happen half the time."""

from __future__ import annotations

import pytest
import torch

from lowbit.data.augment import augment_batch, crop_flip


def _windows(img: torch.Tensor, pad: int) -> list[torch.Tensor]:
    """Every crop (and its mirror) of the zero-padded ``img``: the reference, by slicing."""
    c, h, w = img.shape
    padded = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=img.dtype)
    padded[:, pad:pad + h, pad:pad + w] = img
    out = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy:dy + h, dx:dx + w]
            out += [crop, crop.flip(-1)]
    return out


def test_each_output_is_a_padded_crop_or_its_mirror() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 8, 8, generator=g) + 0.1  # no zeros: padding is recognisable
    out = crop_flip(x, 2, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.is_contiguous()
    for img, aug in zip(x, out, strict=True):
        assert any(torch.equal(aug, win) for win in _windows(img, 2))


def test_offsets_and_flips_cover_their_range_deterministically() -> None:
    x = torch.arange(1, 1 + 1 * 1 * 1 * 9, dtype=torch.float32).view(1, 1, 1, 9)
    x = x.expand(4000, 1, 1, 9).contiguous()
    out = crop_flip(x, 4, torch.Generator().manual_seed(3))
    again = crop_flip(x, 4, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)
    rows_kept = (out.abs().sum(dim=(1, 2, 3)) > 0)  # a vertical shift can leave only padding
    assert abs(rows_kept.float().mean() - 1 / 9) < 0.02  # only dy == pad keeps the one row
    kept = out[rows_kept, 0, 0]
    visible = [row[row > 0] for row in kept]  # 1..9 in order, or reversed if flipped
    flipped = torch.tensor([bool(v[0] > v[-1]) for v in visible])
    assert len(visible) > 300 and 0.42 < flipped.float().mean() < 0.58
    shifts = {int((row > 0).sum()) for row in kept}
    assert shifts == {5, 6, 7, 8, 9}  # 0..4 pixels cut off: every offset was drawn


def test_pad_zero_is_flip_only_and_none_is_identity() -> None:
    x = torch.rand(64, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    out = crop_flip(x, 0, torch.Generator().manual_seed(0))
    same = [torch.equal(o, i) or torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=True)]
    assert all(same)
    assert augment_batch(x, "none", None) is x


@pytest.mark.parametrize(("args", "match"), [
    ((torch.zeros(3, 8, 8), 4), "N, C, H, W"),
    ((torch.zeros(1, 3, 8, 8), -1), "pad"),
    ((torch.zeros(1, 3, 8, 8), 1.5), "pad"),
])
def test_bad_input(args, match) -> None:
    with pytest.raises(ValueError, match=match):
        crop_flip(*args)
    with pytest.raises(ValueError, match="augmentation"):
        augment_batch(torch.zeros(1, 1, 2, 2), "mixup", None)
