"""fold_batchnorm (issue 8 item 8): W' = W gamma/sqrt(var+eps), b' = (b - mean) gamma/sqrt(var+eps)
+ beta per output channel, the BN replaced by nn.Identity; eval outputs equal within float
rounding on ResNet-20 and a LeNet-5 with BatchNorm, random statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit import LowbitError, Recipe, fold_batchnorm, quantize, set_quantization
from lowbit.fold import batchnorm_pairs
from lowbit.models.lenet import LeNet5
from lowbit.models.resnet import resnet20
from lowbit.quantizers import IvanWeight

RTOL = 1e-5  # of the output's scale: the folded product is reassociated in float32


class LeNet5BN(LeNet5):
    """LeNet-5 with a BatchNorm after each conv and hidden linear layer (traceable)."""

    def __init__(self) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(6), nn.BatchNorm2d(16)
        self.bn3, self.bn4 = nn.BatchNorm1d(120, affine=False), nn.BatchNorm1d(84)

    def forward(self, x):
        x = self.pool1(self.relu1(self.bn1(self.conv1(self.normalize(x)))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        x = self.relu3(self.bn3(self.fc1(self.flatten(x))))
        x = self.relu4(self.bn4(self.fc2(x)))
        return self.fc3(x)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g))
                m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.05)
                if m.affine:
                    m.weight.copy_(torch.randn(c, generator=g))
                    m.bias.copy_(torch.randn(c, generator=g))
    return model.eval()


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert (a - b).abs().max() <= RTOL * b.abs().max()


@pytest.mark.parametrize("make,shape,pairs", [
    (resnet20, (4, 3, 32, 32), 21), (LeNet5BN, (4, 1, 28, 28), 4)])
def test_fold_keeps_eval_outputs(make, shape, pairs):
    torch.manual_seed(0)
    model = randomize_bn(make())
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    expected = model(x)
    folded = fold_batchnorm(model)
    assert len(folded) == pairs
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert_close(model(x), expected)


def test_fold_formula_per_channel():
    torch.manual_seed(0)
    model = randomize_bn(nn.Sequential(nn.Conv2d(2, 3, 3, bias=False), nn.BatchNorm2d(3)))
    conv, bn = model[0], model[1]
    w = conv.weight.detach().clone()
    s = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    b = -bn.running_mean * s + bn.bias.detach()
    weight = conv.weight
    assert fold_batchnorm(model) == [("0", "1")]
    assert conv.weight is weight  # folded in place
    torch.testing.assert_close(conv.weight, w * s.reshape(3, 1, 1, 1), rtol=0, atol=0)
    torch.testing.assert_close(conv.bias, b, rtol=0, atol=0)
    assert type(model[1]) is nn.Identity


def test_training_mode_bn_is_refused_and_nothing_changes():
    model = randomize_bn(resnet20())
    model.stages[1][0].bn2.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(LowbitError, match=r"'stages.1.0.bn2'.*training mode.*model.eval\(\)"):
        fold_batchnorm(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_untraceable_model_falls_back_to_sequential_pairs():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU())
            self.conv, self.bn = nn.Linear(5, 5), nn.BatchNorm1d(5)

        def forward(self, x):
            x = self.body(x)
            return self.bn(self.conv(x)) if x.sum() > 0 else x  # data-dependent: not traceable

    model = randomize_bn(Branchy())
    assert batchnorm_pairs(model) == [("body.0", "body.1")]


def test_layer_output_used_twice_is_not_folded():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.bn = nn.Linear(4, 4), nn.BatchNorm1d(4)

        def forward(self, x):
            y = self.fc(x)
            return self.bn(y) + y

    assert batchnorm_pairs(randomize_bn(Twice())) == []


def test_fold_then_quantize_equals_quantize_of_the_folded_float_model():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    a = randomize_bn(resnet20())
    b = randomize_bn(resnet20())
    b.load_state_dict(a.state_dict())
    fold_batchnorm(a)
    quantize(a, Recipe(w_bits=4, keep_first=False, keep_last=False)).eval()
    quantize(b, Recipe(w_bits=4, keep_first=False, keep_last=False)).eval()
    fold_batchnorm(b)  # quantized, weights not observed yet: quantizers re-initialised
    assert torch.equal(a(x), b(x))
    set_quantization(a, False)
    assert torch.isfinite(a(x)).all()


def test_frozen_weight_quantizer_is_refused():
    model = randomize_bn(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)))
    quantize(model, Recipe(w_bits=4, keep_first=False, keep_last=False))
    assert isinstance(model[0].weight_quant, IvanWeight)
    model[0].weight_quant.freeze()
    with pytest.raises(LowbitError, match="frozen; fold before quantizing"):
        fold_batchnorm(model)
