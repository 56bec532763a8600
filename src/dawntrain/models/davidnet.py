"""DavidNet: the ResNet-9 that won DAWNBench's CIFAR-10 speed category, as the TF-eager recipe builds it.

ConvBN(c) = Conv3x3(no bias) → Dropout(0.05) → BatchNorm → ReLU
ResBlk(c, res) = h = MaxPool2(ConvBN(x)); h + ConvBN(ConvBN(h)) if res
DavidNet(c) = ConvBN(c) → ResBlk(2c, res) → ResBlk(4c) → ResBlk(8c, res) → global max pool → Linear → ×0.125
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dawntrain.models.conv import Conv3x3
from dawntrain.models.dropout import BankDropout


def init_uniform_fan_in(weight: torch.Tensor) -> None:
    """U(±1/sqrt(fan_in)): the original's `init_pytorch`, i.e. PyTorch's default conv/linear init."""
    fan_in = weight[0].numel()
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        weight.uniform_(-bound, bound)


class ConvBN(nn.Module):
    def __init__(self, c_in: int, c_out: int, dropout: float = 0.05):
        super().__init__()
        self.conv = Conv3x3(c_in, c_out)  # nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        init_uniform_fan_in(self.conv.weight)
        self.drop = BankDropout(dropout)
        # Keras BatchNormalization(momentum=0.9) keeps 0.9 of the old average: PyTorch's momentum=0.1.
        self.bn = nn.BatchNorm2d(c_out, momentum=0.1, eps=1e-5)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.drop(self.conv(x))))


class ResBlk(nn.Module):
    def __init__(self, c_in: int, c_out: int, res: bool, dropout: float = 0.05):
        super().__init__()
        self.conv_bn = ConvBN(c_in, c_out, dropout)
        self.pool = nn.MaxPool2d(2)
        self.res = (
            nn.Sequential(ConvBN(c_out, c_out, dropout), ConvBN(c_out, c_out, dropout))
            if res
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.conv_bn(x))
        return h + self.res(h) if self.res is not None else h


class DavidNet(nn.Module):
    """Returns logits. c=64 gives the original 6,573,120 trainable parameters."""

    def __init__(
        self,
        c: int = 64,
        weight: float = 0.125,
        dropout: float = 0.05,
        num_classes: int = 10,
        stem_pool: bool = False,
    ):
        super().__init__()
        # stem_pool halves the input after the first ConvBN: DavidNet's 32x32 budget for 64x64 inputs.
        self.prep = (
            nn.Sequential(ConvBN(3, c, dropout), nn.MaxPool2d(2))
            if stem_pool
            else ConvBN(3, c, dropout)
        )
        self.blk1 = ResBlk(c, 2 * c, res=True, dropout=dropout)
        self.blk2 = ResBlk(2 * c, 4 * c, res=False, dropout=dropout)
        self.blk3 = ResBlk(4 * c, 8 * c, res=True, dropout=dropout)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.linear = nn.Linear(8 * c, num_classes, bias=False)
        init_uniform_fan_in(self.linear.weight)
        # The original scales logits by 0.125 so the summed loss starts near uniform predictions.
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blk3(self.blk2(self.blk1(self.prep(x))))
        return self.linear(self.pool(h).flatten(1)) * self.weight
