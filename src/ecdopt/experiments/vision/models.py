"""The networks of the image experiments (paper §4.5), in plain torch.

- :class:`MnistCNN`: the paper's MNIST network, "two convolutional layers with maxpool in
  between and a final dense layer" (5×5 convolutions with 16 and 32 channels, a 2×2 max-pool after
  each, one linear layer; the authors' notebook uses the same layers).
- :class:`ResNet18`: the CIFAR ResNet-18 (3×3 stride-1 stem, no max-pool, basic blocks
  [2, 2, 2, 2] with 64-128-256-512 channels, 4×4 average pool, linear 512→10).
- :class:`DigitsCNN`: a small CNN for scikit-learn's 8×8 digits.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MODELS", "BasicBlock", "DigitsCNN", "MnistCNN", "ResNet18", "build_model"]


class MnistCNN(nn.Module):
    """Conv(1→16, 5×5) → ReLU → max-pool → Conv(16→32, 5×5) → ReLU → max-pool → Linear.

    Input (N, 1, 28, 28); output (N, num_classes) logits. The authors' notebook ends in a
    1568→120 layer (120 logits for 10 classes, a harmless quirk); here the dense layer has
    ``num_classes`` outputs.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=5, padding=2)
        side = image_size // 4
        self.fc = nn.Linear(32 * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(torch.flatten(x, 1))


class DigitsCNN(nn.Module):
    """Small CNN for 8×8 digits: two 3×3 convolutions (32, 64 channels), a max-pool, a
    128-unit hidden layer and the output layer. About 0.17M parameters."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of (N, 1, 8, 8) images."""
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or 1×1 conv-BN projection) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block output."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 3×3 stride-1 stem (no max-pool), stages [2, 2, 2, 2] of basic blocks with
    64/128/256/512 channels (strides 1, 2, 2, 2), 4×4 average pool, linear 512→num_classes.

    Input (N, 3, 32, 32); 11,173,962 parameters for 10 classes.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(
                nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1))
            )
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of 32×32 images."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, 4)
        return self.linear(torch.flatten(out, 1))


MODELS = {"mnist_cnn": MnistCNN, "digits_cnn": DigitsCNN, "resnet18": ResNet18}


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """A fresh model by name (``mnist_cnn``, ``digits_cnn`` or ``resnet18``)."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None
    return cls(num_classes=num_classes)
