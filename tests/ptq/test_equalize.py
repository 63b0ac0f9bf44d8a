"""Cross-layer equalization (Nagel et al. 2019, sec. 4.1, eq. 4-8): the float function is kept,
paired ranges become equal (r1_i / s_i = r2_i s_i), unsafe pairs (residual adds, two
consumers, ReLU6) are skipped with reasons, unfolded BatchNorm is refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.fold import fold_batchnorm
from lowbit.models import build_model
from lowbit.ptq import equalize

RTOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max() / b.detach().abs().max())


def unbalance(first: nn.Module, second: nn.Module, g: torch.Generator) -> None:
    """Scale first's output channels by 10^U(-1.5, 1.5) and second's inputs inversely (keeps the
    function, with ReLU between), so that equalization has something to do."""
    c = first.weight.shape[0]
    f = 10 ** (torch.rand(c, generator=g) * 3 - 1.5)
    with torch.no_grad():
        first.weight.mul_(f.reshape(-1, *([1] * (first.weight.dim() - 1))))
        if first.bias is not None:
            first.bias.mul_(f)
        w = second.weight
        if isinstance(second, nn.Conv2d) and second.groups == c:  # depthwise
            w.div_(f.reshape(-1, 1, 1, 1))
        else:
            k = w.shape[1] // c
            w.div_(f.repeat_interleave(k).reshape(1, -1, *([1] * (w.dim() - 2))))


def r_out(layer: nn.Module) -> torch.Tensor:
    return layer.weight.detach().abs().flatten(1).max(dim=1).values


def r_in(layer: nn.Module, c: int) -> torch.Tensor:
    """Independent: max |w| over all weights that multiply input channel i."""
    w = layer.weight.detach()
    if isinstance(layer, nn.Conv2d) and layer.groups == c:  # depthwise: input i = filter i
        return w.abs().flatten(1).max(dim=1).values
    k = w.shape[1] // c
    return torch.stack([w[:, i * k:(i + 1) * k].abs().max() for i in range(c)])


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.relu2 = nn.LeakyReLU(0.1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(self.flatten(self.pool(x)))


def test_small_net_function_kept_and_ranges_equal():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    net = Small().eval()
    unbalance(net.conv1, net.conv2, g)
    unbalance(net.conv2, net.fc, g)
    x = torch.randn(4, 3, 8, 8, generator=g)
    expected = net(x)
    before = r_out(net.conv1) / r_in(net.conv2, 8)
    assert float(before.max() / before.min()) > 10
    report = equalize(net, max_iter=200, tol=1e-7)
    assert [(p.first, p.second) for p in report.pairs] == [("conv1", "conv2"), ("conv2", "fc")]
    assert report.pairs[1].via == ("relu2", "pool", "flatten")
    assert report.converged
    assert rel_err(net(x), expected) <= RTOL
    for first, second in ((net.conv1, net.conv2), (net.conv2, net.fc)):
        r1, r2 = r_out(first), r_in(second, first.weight.shape[0])
        assert torch.allclose(r1, r2, rtol=1e-4, atol=0)
    assert [s.first for s in report.skipped] == ["fc"]


def test_one_pair_is_eq_8():
    """One sweep on one Linear-ReLU-Linear pair: s_i = (1/r2_i) sqrt(r1_i r2_i),
    W1 <- S^-1 W1, b1 <- S^-1 b1, W2 <- W2 S, written out independently."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    w1, b1, w2 = (t.detach().clone().double() for t in (net[0].weight, net[0].bias,
                                                        net[2].weight))
    r1, r2 = w1.abs().max(dim=1).values, w2.abs().max(dim=0).values
    s = (r1 * r2).sqrt() / r2
    equalize(net, max_iter=1)
    assert torch.allclose(net[0].weight.double(), w1 / s[:, None], rtol=1e-6)
    assert torch.allclose(net[0].bias.double(), b1 / s, rtol=1e-6)
    assert torch.allclose(net[2].weight.double(), w2 * s[None, :], rtol=1e-6)


def test_depthwise_second_layer():
    torch.manual_seed(3)
    g = torch.Generator().manual_seed(4)
    net = nn.Sequential(nn.Conv2d(4, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                        nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    unbalance(net[0], net[2], g)
    x = torch.randn(2, 4, 6, 6, generator=g)
    expected = net(x)
    report = equalize(net, max_iter=200, tol=1e-7)
    assert len(report.pairs) == 2 and report.converged
    assert rel_err(net(x), expected) <= RTOL
    assert torch.allclose(r_out(net[0]), r_in(net[2], 8), rtol=1e-4, atol=0)
    assert torch.allclose(r_out(net[2]), r_in(net[4], 8), rtol=1e-4, atol=0)


def randomize_bn(model: nn.Module, g: torch.Generator) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(10 ** (torch.rand(c, generator=g) * 2 - 1))  # unbalanced
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)


def resnet20() -> nn.Module:
    torch.manual_seed(5)
    model = build_model("resnet20", 3, 32, 10, 0.5, 0.25)
    randomize_bn(model, torch.Generator().manual_seed(6))
    return model.eval()


def test_resnet20_refuses_unfolded_batchnorm():
    with pytest.raises(LowbitError, match=r"fold_batchnorm"):
        equalize(resnet20())


def test_resnet20_equalizes_only_safe_pairs():
    model = resnet20()
    fold_batchnorm(model)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    expected = model(x)
    report = equalize(model, max_iter=50, tol=1e-6)
    assert rel_err(model(x), expected) <= RTOL
    pairs = {(p.first, p.second) for p in report.pairs}
    assert pairs == {(f"stages.{i}.{j}.conv1", f"stages.{i}.{j}.conv2")
                     for i in range(3) for j in range(3)}
    reasons = dict((s.first, s.reason) for s in report.skipped)
    assert "residual add" in reasons["stages.0.0.conv2"]  # conv2 -> bn2 -> add
    assert "residual add" in reasons["stages.1.0.shortcut.0"]
    assert "2 users" in reasons["conv1"]  # relu1 feeds block 1 and its identity shortcut
    for i in range(3):
        block = model.stages[i][0]
        r1, r2 = r_out(block.conv1), r_in(block.conv2, block.conv1.weight.shape[0])
        assert torch.allclose(r1, r2, rtol=1e-4, atol=0)


@pytest.mark.parametrize("act", [nn.ReLU6(), nn.Hardtanh(), nn.GELU()])
def test_not_positively_homogeneous_is_skipped(act):
    torch.manual_seed(8)
    net = nn.Sequential(nn.Linear(4, 6), act, nn.Linear(6, 2))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    report = equalize(net)
    assert report.pairs == ()
    assert "not positively homogeneous" in report.skipped[0].reason
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


def test_two_consumers_are_skipped():
    class Fork(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.relu = nn.Linear(4, 6), nn.ReLU()
            self.b, self.c = nn.Linear(6, 2), nn.Linear(6, 2)

        def forward(self, x):
            h = self.relu(self.a(x))
            return self.b(h) * self.c(h)

    report = equalize(Fork())
    assert report.pairs == ()
    assert "2 users" in report.skipped[0].reason
