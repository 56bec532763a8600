"""Batches made on the training device: epoch order, pad-crop-flip as one gather, normalization,
colour jitter and cutout.

Everything random derives from (seed, epoch, purpose), so a resumed or distributed run sees the same
order and the same augmentations as an uninterrupted single-process run.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dawntrain import seeds
from dawntrain.runtime.device import memory_format

# keras_preprocessing's samplewise_std_normalization epsilon (standalone Keras <= 2.1 used 1e-7).
KERAS_STD_EPS = 1e-6


def channel_stats(images: np.ndarray | torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0..255 scale) of NHWC images, in float64. uint8 images go
    through a histogram of each channel: exact sums, and 17x faster than the float64 copy
    (0.13 s for CIFAR-10's training set, not 2.2)."""
    x = torch.as_tensor(images).reshape(-1, images.shape[-1])
    if x.dtype != torch.uint8:
        x = x.double()
        return x.mean(0).tolist(), x.std(0, correction=0).tolist()
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for channel in x.unbind(1):
        counts = torch.bincount(channel.contiguous(), minlength=256).double()
        mean = (counts * values).sum() / len(channel)
        means.append(mean.item())
        stds.append(((counts * (values - mean) ** 2).sum() / len(channel)).sqrt().item())
    return means, stds


def reflect_index(size: int, pad: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Source index of each position of a reflect-padded axis (no edge repeat, like np.pad 'reflect')."""
    i = torch.arange(-pad, size + pad, device=device).abs()
    return torch.where(i >= size, 2 * (size - 1) - i, i)


@dataclass
class EpochPlan:
    """The order and augmentation of every training example in one epoch."""

    order: torch.Tensor  # permutation of the training set
    dx: torch.Tensor  # crop offsets in [0, 2·pad], per position in `order`
    dy: torch.Tensor
    flip: torch.Tensor  # bool


@functools.lru_cache(maxsize=2)
def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of the training set that epoch `epoch` visits it in (its plan's order)."""
    return torch.randperm(n, generator=seeds.generator(seed, epoch, seeds.EPOCH_PLAN))


def epoch_plan(
    n: int, seed: int, epoch: int, pad: int, flip: bool, device, alternate_flip: bool = False
) -> EpochPlan:
    """Order and augmentation for one epoch. With `alternate_flip` (from airbench), each image is
    flipped at random in epoch 0 and then in every other epoch exactly when it was not before, so
    both views are seen equally often instead of by chance."""
    g = seeds.generator(seed, epoch, seeds.EPOCH_PLAN)
    order = torch.randperm(n, generator=g)  # epoch_order's: the plan draws on from there
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    if not flip:
        flips = torch.zeros(n, dtype=torch.bool)
    elif alternate_flip:
        per_image = (
            torch.rand(n, generator=seeds.generator(seed, 0, seeds.FLIP_PARITY)) < 0.5
        ) ^ bool(epoch % 2)
        flips = per_image[order]
    else:
        flips = torch.rand(n, generator=g) < 0.5
    return EpochPlan(*(t.to(device) for t in (order, dx, dy, flips)))


@functools.lru_cache(maxsize=2)
def jitter_plan(
    n: int, seed: int, epoch: int, brightness: float, contrast: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour jitter for each position of one epoch's order (hiverge's cifar10-speedrun): a shift
    uniform in ±brightness and a scale uniform in 1 ± contrast, for color_jitter. Like the plan,
    a function of (seed, epoch) only, so resumed and distributed runs draw the same."""
    g = seeds.generator(seed, epoch, seeds.COLOR_JITTER)
    shift = (torch.rand(n, generator=g) * 2 - 1) * brightness
    scale = 1 + (torch.rand(n, generator=g) * 2 - 1) * contrast
    return shift, scale


def color_jitter(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(x + shift) · scale per image of a normalized float NCHW batch, in its memory layout:
    brightness moves every channel by the same number of standard deviations, contrast scales
    the image about the data set's mean."""
    return x.add(shift.view(-1, 1, 1, 1).to(x.dtype)).mul_(scale.view(-1, 1, 1, 1).to(x.dtype))


@functools.lru_cache(maxsize=2)
def cutout_plan(
    n: int, seed: int, epoch: int, size: int, side: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners (rows, columns) of each position's cutout box in one epoch, uniform over
    the boxes that fit inside a side x side image (airbench96), from (seed, epoch) only."""
    g = seeds.generator(seed, epoch, seeds.CUTOUT)
    high = max(side - size, 0) + 1
    return torch.randint(0, high, (n,), generator=g), torch.randint(0, high, (n,), generator=g)


def cutout(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """Zero a size x size box per image of a normalized float NCHW batch (DeVries & Taylor's
    Cutout, as airbench96: after normalization 0 is the data set's mean colour), in its layout."""
    h, w = x.shape[-2:]
    rows = torch.arange(h, device=x.device) - top.to(x.device)[:, None]
    cols = torch.arange(w, device=x.device) - left.to(x.device)[:, None]
    inside = ((rows >= 0) & (rows < size))[:, None, :, None] & ((cols >= 0) & (cols < size))[
        :, None, None, :
    ]
    return x.clone().masked_fill_(inside, 0)  # masked_fill would return NCHW for channels_last


def steps_per_epoch(n: int, batch_size: int, world_size: int = 1) -> int:
    """Batches per epoch, the last one partial (the original's tf.data .batch()); a last batch too
    small to give every rank an example is dropped so all ranks take the same number of steps."""
    full, rest = divmod(n, batch_size)
    return full + (rest >= world_size)


def batch_positions(
    n: int, batch_size: int, step: int, rank: int = 0, world_size: int = 1
) -> slice | torch.Tensor:
    """Positions in the epoch's order for this rank's share of global batch `step`."""
    start, stop = step * batch_size, min(n, (step + 1) * batch_size)
    if world_size == 1:
        return slice(start, stop)
    return torch.arange(start + rank, stop, world_size)


def crop_flip(
    images: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, flip: torch.Tensor, pad: int
) -> torch.Tensor:
    """Random crop of the reflect-padded images plus horizontal flip, as one gather on uint8 NHWC."""
    b, h, w, _ = images.shape
    rows_src, cols_src = reflect_index(h, pad, images.device), reflect_index(w, pad, images.device)
    rows = rows_src[dy[:, None] + torch.arange(h, device=images.device)]
    cols = cols_src[dx[:, None] + torch.arange(w, device=images.device)]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    n = torch.arange(b, device=images.device)[:, None, None]
    return images[n, rows[:, :, None], cols[:, None, :]]


class Normalizer:
    """uint8 NHWC → float NCHW in channels_last memory, per-channel or per-image standardized."""

    def __init__(self, mean: list[float] | None, std: list[float] | None, samplewise: bool = False):
        self.samplewise = samplewise
        self.mean = torch.tensor(mean or [0.0, 0.0, 0.0]).view(1, -1, 1, 1)
        self.std = torch.tensor(std or [1.0, 1.0, 1.0]).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
        # permute of a contiguous NHWC tensor is already channels_last: no copy.
        x = images.permute(0, 3, 1, 2).float()
        if self.samplewise:
            # Keras samplewise_center + samplewise_std_normalization on [0, 1] images.
            x = x / 255.0
            x = x - x.mean(dim=(1, 2, 3), keepdim=True)
            x = x / (x.std(dim=(1, 2, 3), keepdim=True, correction=0) + KERAS_STD_EPS)
        else:
            x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x.contiguous(memory_format=memory_format(channels_last))

    def state(self) -> dict:
        return {
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
            "samplewise": self.samplewise,
        }


def samplewise_standardize(x: torch.Tensor, eps: float = KERAS_STD_EPS) -> torch.Tensor:
    """The original's Keras preprocessing on a batch: rescale=1/255, samplewise_center and
    samplewise_std_normalization, i.e. per image (x - mean) / (std + eps), the mean and the
    population std taken over all of the image's pixels and channels.

    x is either uint8 (N, H, W, C) as stored, rescaled to [0, 1] and returned as float32
    (N, C, H, W), or a float (N, C, H, W) batch already on the [0, 1] scale (for instance after
    augmentation), returned in its own dtype. Statistics are taken in at least float32.
    """
    scale = 1.0
    if x.dtype == torch.uint8:
        # Work on the 0..255 scale, where float32 sums of the pixels are exact (a constant image
        # gives exact zeros): (x/255 - m/255) / (s/255 + eps) = (x - m) / (s + 255 eps).
        x, scale = x.permute(0, 3, 1, 2).float(), 255.0
    elif not x.is_floating_point():
        raise TypeError(f"expected uint8 NHWC or float NCHW images, got {x.dtype}")
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    mean = work.mean(dim=(1, 2, 3), keepdim=True)
    std = work.std(dim=(1, 2, 3), keepdim=True, correction=0)
    return ((work - mean) / (std + eps * scale)).to(x.dtype)


def train_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    plan: EpochPlan,
    batch_size: int,
    pad: int,
    augment: bool = True,
    start_step: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 NHWC augmented images, labels) for each of this rank's steps from `start_step` on."""
    n = len(plan.order)
    for step in range(start_step, steps_per_epoch(n, batch_size, world_size)):
        pos = batch_positions(n, batch_size, step, rank, world_size)
        idx = plan.order[pos]
        x = images[idx]
        if augment:
            x = crop_flip(x, plan.dx[pos], plan.dy[pos], plan.flip[pos], pad)
        yield x, labels[idx]


def resized(x: torch.Tensor, side: int) -> torch.Tensor:
    """Float NCHW images resized to side x side (bilinear, antialiased when shrinking), in the
    memory layout they came in; the same images when they are that size already."""
    if x.shape[-2:] == (side, side):
        return x
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else None
    y = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return y.contiguous(memory_format=fmt) if fmt else y


def train_side(sizes: list[int], epoch: int, full: int) -> int:
    """The image side of 0-based `epoch` under progressive resizing (config.train_sizes)."""
    return sizes[epoch] if epoch < len(sizes) else full


def eval_batches(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, len(images), batch_size):
        yield images[i : i + batch_size], labels[i : i + batch_size]
