"""CIFAR ResNets (He, Zhang, Ren, Sun, "Deep residual learning for image recognition",
CVPR 2016, arXiv:1512.03385).

``resnet20`` is the paper's CIFAR-10 net (sec. 4.2, n = 3): a 3x3 stem with 16 channels, then
3 stages of 3 BasicBlocks with 16/32/64 channels, global average pooling and a linear classifier.
``resnet18`` is the ImageNet ResNet-18 (table 1) in the common CIFAR adaptation used by ivan
(sec. 2): 3x3 stride-1 stem, no max-pool, 4 stages of 2 BasicBlocks with 64/128/256/512 channels.

Deviation (resnet20): shortcuts that change shape use the paper's option B, a 1x1 conv + BN
projection, instead of option A (zero-padded identity) used for the CIFAR nets in the paper.
This keeps every weight in an ``nn.Conv2d`` the quantizer can see, and adds 2,752 parameters
(272,474 instead of 269,722).

Quantizer contract: every activation is its own ``nn.ReLU`` (a block has ``relu1`` after the
first conv and ``relu2`` after the residual add), and Linear/Conv2d modules are registered in
execution order (stem, then per block conv1, conv2, shortcut conv, and the classifier last).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from lowbit.models.normalize import Normalize


def _conv3x3(in_channels: int, out_channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; ``relu2(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(out_channels, out_channels, 1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:  # option B projection
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
    strides = [stride] + [1] * (blocks - 1)
    layers = []
    for s in strides:
        layers.append(BasicBlock(in_channels, out_channels, s))
        in_channels = out_channels
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """A CIFAR-style ResNet: 3x3 stride-1 stem, stages of BasicBlocks, average pool, linear.

    Stage ``i`` has ``blocks[i]`` blocks of ``widths[i]`` channels; every stage after the first
    starts with stride 2. Convs use He (kaiming normal, fan_out) initialization as in the paper.
    """

    def __init__(
        self,
        blocks: Sequence[int],
        widths: Sequence[int],
        in_channels: int = 3,
        num_classes: int = 10,
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
    ) -> None:
        super().__init__()
        if len(blocks) != len(widths) or not blocks:
            raise ValueError(f"blocks {blocks} and widths {widths} must be non-empty, same length")
        self.normalize = Normalize(mean, std)
        self.conv1 = _conv3x3(in_channels, widths[0], 1)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu1 = nn.ReLU()
        stages, previous = [], widths[0]
        for i, (count, width) in enumerate(zip(blocks, widths, strict=True)):
            stages.append(_stage(previous, width, count, 1 if i == 0 else 2))
            previous = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(previous, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu1(self.bn1(self.conv1(self.normalize(x))))
        x = self.stages(x)
        return self.fc(self.flatten(self.pool(x)))


def resnet20(
    in_channels: int = 3,
    image_size: int | Sequence[int] = 32,
    num_classes: int = 10,
    mean: float | Sequence[float] = 0.0,
    std: float | Sequence[float] = 1.0,
) -> ResNet:
    """ResNet-20 for CIFAR (He et al. 2016, sec. 4.2): 3 stages x 3 blocks, 16/32/64 channels.

    ``image_size`` is accepted for a uniform builder signature; global pooling makes the net
    independent of it.
    """
    del image_size
    return ResNet((3, 3, 3), (16, 32, 64), in_channels, num_classes, mean, std)


def resnet18(
    in_channels: int = 3,
    image_size: int | Sequence[int] = 32,
    num_classes: int = 10,
    mean: float | Sequence[float] = 0.0,
    std: float | Sequence[float] = 1.0,
) -> ResNet:
    """ResNet-18 (He et al. 2016, table 1) adapted to 32x32 inputs: 3x3 stride-1 stem, no
    max-pool, 4 stages x 2 blocks with 64/128/256/512 channels (the setting of ivan, sec. 2).

    ``image_size`` is accepted for a uniform builder signature; global pooling makes the net
    independent of it.
    """
    del image_size
    return ResNet((2, 2, 2, 2), (64, 128, 256, 512), in_channels, num_classes, mean, std)
