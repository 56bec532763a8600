"""Pre-activation bottleneck ResNet for Tiny ImageNet (64x64 images, 200 classes).

A port of the original Keras model (a CIFAR-style ResNet with levels (4, 6, 3) plus a fourth
level for the larger images). Every residual branch is made of units, BN -> ReLU -> Conv
(He et al. 2016, "Identity Mappings in Deep Residual Networks"):

    Tail               conv 3x3 -> BN -> ReLU -> max pool 2x2/2              W     x 32x32
    SpecialBottleneck  units 1x1, 3x3, 1x1 to W/4, W/4, W + a 1x1 conv shortcut
    level i            levels[i] Bottlenecks at Ni = W * 2**i, then a Downsample to 2Ni, /2
    head               BN -> ReLU -> global average pool -> Linear(num_classes)

For a 64x64 input and width W=64 the levels end at 128x16x16, 256x8x8, 512x4x4 and 1024x2x2.

Choices where the original is silent or wrong
---------------------------------------------
- Tail kernel: 3x3, stride 1, padding 1. The original's text does not settle it (versions of
  it show a 7x7 kernel, with or without stride 2, as in the ImageNet ResNet); at 64x64 a small
  stride-1 kernel keeps the detail that a strided 7x7 throws away, as CIFAR ResNets do.
- Tail pool: 2x2 with stride 2. The original passes the width as the first argument of
  MaxPool2D, which makes the pool size 64 (a 64x64 window), clearly meant as 2x2. Keras'
  'same' padding is ceil_mode=True here: no padding for even sizes, as Keras for odd ones.
- Every level, the last included, ends with a Downsample, as the original's level loop is
  written; so the head sees 2x2 maps with 16W channels. `downsample_last=False` stops at 4x4
  with 8W channels instead.
- Branch widths follow the original's code, not its diagrams: Bottleneck Ni/4, Ni/4, Ni and
  Downsample Ni/2, Ni/2, 2Ni with a 2Ni main path (the diagrams' Ni, 4Ni and Ni/2 could not be
  added to the shortcut).
- The SpecialBottleneck's shortcut is a bare 1x1 conv (no BN/ReLU); the Downsample's is a full
  unit with its own BN, both as in the original's code.
- Init: He (Kaiming) normal, fan_in, for every conv, because every conv but the tail's reads
  a ReLU output; Keras' default glorot_uniform suits linear/tanh layers and, after a ReLU,
  halves the variance each conv passes on (BN renormalizes the branches, but not the residual
  sum). BN weight 1, bias 0. The Linear layer keeps the original's Keras default: glorot
  (Xavier) uniform weight, zero bias.
- BN keeps PyTorch's defaults (momentum 0.1, eps 1e-5), not Keras' (0.99, i.e. 0.01 here, and
  1e-3): the running statistics of short, fast runs would lag far behind with 0.01.
- L2 on the classifier kernel: Keras adds l2(0.01) = 0.01 * sum(W**2) to the mean batch loss;
  here `l2_penalty()` returns that term for the training loop to add (times the batch size
  when the loss is summed over the batch). The bias is not penalized.
- No ReLU after the Linear layer (the original's docstring says "+ ReLU", its code has none).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dawntrain.errors import ConfigError


class Unit(nn.Sequential):
    """Pre-activation unit: BN -> ReLU -> Conv (no bias, 'same' padding)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1):
        # k//2 padding is Keras' 'same' for every conv here: stride 1, or 1x1 with stride 2.
        super().__init__(
            nn.BatchNorm2d(c_in),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_in, c_out, kernel_size, stride, padding=kernel_size // 2, bias=False),
        )

    @property
    def conv(self) -> nn.Conv2d:
        return self[2]


class Bottleneck(nn.Module):
    """x + f(x), f = units 1x1, 3x3, 1x1 to widths N/4, N/4, N."""

    def __init__(self, channels: int):
        super().__init__()
        narrow = channels // 4
        self.residual = nn.Sequential(
            Unit(channels, narrow, 1), Unit(narrow, narrow, 3), Unit(narrow, channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual(x)


class SpecialBottleneck(Bottleneck):
    """A Bottleneck whose shortcut is a 1x1 conv: main(x) + f(x)."""

    def __init__(self, channels: int):
        super().__init__(channels)
        self.main = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.residual(x)


class Downsample(nn.Module):
    """main(x) + f(x) at half the resolution and twice the width.

    f = units 1x1/2, 3x3, 1x1 to widths N/2, N/2, 2N; main = one unit 1x1/2 to 2N.
    """

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.residual = nn.Sequential(
            Unit(channels, half, 1, stride=2), Unit(half, half, 3), Unit(half, 2 * channels, 1)
        )
        self.main = Unit(channels, 2 * channels, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.residual(x)


class Tail(nn.Sequential):
    """Conv 3x3 -> BN -> ReLU -> max pool 2x2/2 on the input image."""

    def __init__(self, width: int, c_in: int = 3):
        super().__init__(
            nn.Conv2d(c_in, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            # ceil_mode reproduces Keras' 'same' pooling on odd sizes (a partial last window).
            nn.MaxPool2d(2, 2, ceil_mode=True),
        )


class PreActResNet(nn.Module):
    """The Tiny ImageNet ResNet; `width=32` gives the half-width model."""

    def __init__(
        self,
        num_classes: int = 200,
        width: int = 64,
        levels: tuple[int, ...] = (4, 6, 3, 2),
        head_l2: float = 0.01,
        downsample_last: bool = True,
    ):
        super().__init__()
        if width % 4:
            raise ConfigError(
                f"model width {width}: must be a multiple of 4 (bottlenecks use width/4)"
            )
        self.head_l2 = head_l2
        self.tail = Tail(width)
        blocks: list[nn.Module] = [SpecialBottleneck(width)]
        channels = width
        for i, repeats in enumerate(levels):
            blocks += [Bottleneck(channels) for _ in range(repeats)]
            if downsample_last or i < len(levels) - 1:
                blocks.append(Downsample(channels))
                channels *= 2
        self.blocks = nn.Sequential(*blocks)
        self.final_bn = nn.BatchNorm2d(channels)
        self.classifier = nn.Linear(channels, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.tail(x))
        x = F.relu(self.final_bn(x))
        return self.classifier(x.mean(dim=(2, 3)))

    def l2_penalty(self) -> torch.Tensor:
        """Keras l2(head_l2) on the classifier kernel: head_l2 * sum(W**2), bias excluded."""
        return self.head_l2 * self.classifier.weight.square().sum()
