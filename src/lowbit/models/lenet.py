"""LeNet-300-100 and LeNet-5 (LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied
to document recognition", Proc. IEEE 86(11), 1998).

Both follow the quantizer contract of ``lowbit.models``: a :class:`Normalize` first, every
activation its own ``nn.ReLU`` instance, and Linear/Conv2d modules registered in execution order
(the last one registered is the classifier).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from lowbit.models.normalize import Normalize


def image_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    """Return ``(height, width)`` from an int (square) or a pair; both must be positive."""
    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(hw) != 2 or not all(isinstance(v, int) and v > 0 for v in hw):
        raise ValueError(f"image_size must be a positive int or (height, width), got {image_size}")
    return hw[0], hw[1]


class LeNet300(nn.Module):
    """The 784-300-100-10 fully connected net of LeCun et al. (1998), used by ivan (sec. 2).

    Inputs (N, C, H, W) are flattened, so ``in_features = in_channels * H * W`` (784 for MNIST).
    Deviation: ReLU instead of the paper's scaled tanh, as in modern re-implementations.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int | Sequence[int] = 28,
        num_classes: int = 10,
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
    ) -> None:
        super().__init__()
        height, width = image_hw(image_size)
        self.normalize = Normalize(mean, std)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_channels * height * width, 300)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.flatten(self.normalize(x))
        x = self.relu1(self.fc1(x))
        x = self.relu2(self.fc2(x))
        return self.fc3(x)


def _conv2_padding(pooled: int) -> int:
    """Padding of the second 5x5 conv: 0 as in LeNet-5, 2 ("same") if the map is too small."""
    return 0 if pooled >= 6 else 2


class LeNet5(nn.Module):
    """LeNet-5 of LeCun et al. (1998): conv 6@5x5, pool, conv 16@5x5, pool, fc 120, 84, classes.

    The first conv is padded by 2, so a 28x28 MNIST image plays the role of the paper's padded
    32x32 input (feature maps 28 -> 14 -> 10 -> 5, fc1 has 16*5*5 = 400 inputs).
    Deviations: max pooling and ReLU (as modern implementations) instead of trainable subsampling
    and scaled tanh; a full C3 connection table; and for small inputs (e.g. 8x8 digits) where the
    map after the first pool is narrower than 6, the second conv is padded by 2 too
    (8 -> 8 -> 4 -> 4 -> 2, fc1 has 16*2*2 = 64 inputs). Inputs must be at least 4x4.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int | Sequence[int] = 28,
        num_classes: int = 10,
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
    ) -> None:
        super().__init__()
        height, width = image_hw(image_size)
        if min(height, width) < 4:
            raise ValueError(f"LeNet5 needs inputs of at least 4x4, got {height}x{width}")
        pad = _conv2_padding(min(height, width) // 2)
        out_h, out_w = ((s // 2 + 2 * pad - 4) // 2 for s in (height, width))
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5, padding=2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5, padding=pad)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * out_h * out_w, 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.relu1(self.conv1(self.normalize(x))))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.fc1(self.flatten(x)))
        x = self.relu4(self.fc2(x))
        return self.fc3(x)
