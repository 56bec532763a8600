"""The `fast` preset's network: a frozen patch-whitening layer, then three conv groups.

Ideas from the public CIFAR-10 speed records (Page's DAWNBench follow-ups, tysam-code's hlb-CIFAR10,
Keller Jordan's airbench), implemented here from their descriptions:
- the first layer is a fixed 2x2 conv whose filters whiten image patches (eigenvectors of the
  training patches' covariance, scaled by 1/sqrt(eigenvalue)), in ± pairs so ReLU-like
  activations keep both signs;
- conv filters start as identity (dirac) on their first c_in outputs, so each group begins close
  to passing its input through;
- BatchNorm scale is frozen at 1 and only its shift trains (with a larger lr, see train/optim.py);
- the logits are scaled by 1/9 (a temperature that keeps early softmax outputs soft).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dawntrain.models.conv import Conv3x3


class GhostBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics come from ghost batches of about `ghost` images each
    (the batch split into equal parts), not the whole batch: the noisier statistics regularise
    (Hoffer et al., "Train longer, generalize better", 2017; Page's DAWNBench follow-ups split
    batches of 512 into 32s). The running statistics move by the mean of the parts'. Evaluation
    uses the running statistics, as BatchNorm does; ghost = 0: plain BatchNorm."""

    def __init__(self, c: int, ghost: int = 0, **kwargs):
        super().__init__(c, **kwargs)
        self.ghost = ghost

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        if not self.training or not self.ghost or n < 2 * self.ghost:
            return super().forward(x)
        parts = n // self.ghost
        while n % parts:
            parts -= 1
        # Each part through the native kernel, its statistics caught in buffers of its own
        # (momentum 1: the buffer becomes the part's mean and unbiased variance).
        means = x.new_zeros(parts, x.shape[1], dtype=self.running_mean.dtype)
        variances = torch.ones_like(means)
        y = torch.cat(
            [
                F.batch_norm(
                    part, means[i], variances[i], self.weight, self.bias, True, 1.0, self.eps
                )
                for i, part in enumerate(x.split(n // parts))
            ]
        )
        with torch.no_grad():
            self.running_mean.lerp_(means.mean(0), self.momentum)
            self.running_var.lerp_(variances.mean(0), self.momentum)
            self.num_batches_tracked += 1
        return y


def batchnorm(c: int, frozen_scale: bool = True, ghost: int = 0) -> nn.BatchNorm2d:
    # Fast-moving running statistics (torch momentum 0.4) suit 10-epoch runs; eps≈0 because the
    # whitened inputs are well scaled already.
    bn = GhostBatchNorm(c, ghost, momentum=0.4, eps=1e-12)
    bn.weight.requires_grad_(not frozen_scale)
    return bn


def conv3x3(c_in: int, c_out: int, dirac: bool = True) -> nn.Conv2d:
    conv = Conv3x3(c_in, c_out)
    if dirac:
        with torch.no_grad():
            nn.init.dirac_(conv.weight[: min(c_in, c_out)])
    return conv


ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU}


class ConvGroup(nn.Module):
    """conv → max pool → BN → act → conv → BN → act (act: GELU, or SiLU as hiverge's)."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        dirac: bool = True,
        frozen_bn_scale: bool = True,
        ceil_pool: bool = True,
        activation: str = "gelu",
        ghost_batch: int = 0,
    ):
        super().__init__()
        # ceil_pool: 31x31 after the unpadded whitening conv pools to 16x16 → 8 → 4; without it
        # to 15 → 7 → 3, as airbench does, for 19% fewer FLOPs. ceil came first because oneDNN's
        # input-gradient kernel for a 64→256 conv at 15x15 once ran 7x slower than at 16x16.
        self.conv1 = conv3x3(c_in, c_out, dirac)
        self.norm1 = batchnorm(c_out, frozen_bn_scale, ghost_batch)
        self.pool = nn.MaxPool2d(2, ceil_mode=ceil_pool)
        self.conv2 = conv3x3(c_out, c_out, dirac)
        self.norm2 = batchnorm(c_out, frozen_bn_scale, ghost_batch)
        self.act = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


def patch_covariance(images: torch.Tensor, k: int, chunk: int = 500) -> torch.Tensor:
    """The float64 second moment (C·k·k)² of every k x k patch of float NCHW `images`, entries
    ordered (channel, row, column) as a conv's filters. A chunk of images at a time: the patches of
    all 5,000 whitening images at once are 461 MB in float64, and writing them into fresh pages
    took up to 1.8 s on 2 Zen 4 cores in a virtual machine, against 0.15 s in chunks (the model
    and the data filter's proxy each whiten at start-up)."""
    n, c, h, w = images.shape
    rows, cols = h - k + 1, w - k + 1
    total = torch.zeros(c * k * k, c * k * k, dtype=torch.float64, device=images.device)
    for x in images.split(chunk):
        x = x.double()
        shifts = [x[:, :, i : i + rows, j : j + cols] for i in range(k) for j in range(k)]
        patches = torch.stack(shifts, 2).permute(1, 2, 0, 3, 4).reshape(c * k * k, -1)
        total += patches @ patches.T
    return total / (n * rows * cols)


class FastNet(nn.Module):
    def __init__(
        self,
        widths: tuple[int, int, int] = (64, 256, 256),
        num_classes: int = 10,
        patch: int = 2,
        scale: float = 1 / 9,
        whiten: bool = True,
        dirac: bool = True,
        frozen_bn_scale: bool = True,
        ceil_pool: bool = True,
        activation: str = "gelu",
        whiten_eps: float = 5e-4,
        ghost_batch: int = 0,
    ):
        """`whiten`, `dirac` and `frozen_bn_scale` switch the tricks off for ablations; with
        `whiten=False` the first layer is an ordinary trained conv and `init_from_data` is a no-op.
        `ceil_pool` False pools the 31x31 map to 15x15 (see ConvGroup). `activation` is the conv
        groups'; the whitened patches always go through GELU. `whiten_eps` is added to each
        patch eigenvalue before the filters divide by its square root (see init_from_data).
        `ghost_batch` > 0: the groups' BatchNorm statistics from parts of about that many images
        (GhostBatchNorm)."""
        super().__init__()
        whiten_width = 2 * 3 * patch * patch
        self.whiten = nn.Conv2d(3, whiten_width, patch, bias=True)
        self.whiten.weight.requires_grad_(not whiten)
        self.use_whitening = whiten
        self.whiten_eps = whiten_eps
        self.act = nn.GELU()
        tricks = (dirac, frozen_bn_scale, ceil_pool, activation, ghost_batch)
        self.groups = nn.Sequential(
            ConvGroup(whiten_width, widths[0], *tricks),
            ConvGroup(widths[0], widths[1], *tricks),
            ConvGroup(widths[1], widths[2], *tricks),
        )
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        self.scale = scale

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> None:
        """Set the whitening filters from normalized float NCHW training images. whiten_eps caps
        the gain of the faintest patch directions at 1/sqrt(whiten_eps): on JPEG images the two
        faintest (colour detail inside 2x2 patches, mostly removed by the chroma subsampling) have
        eigenvalues of about 1e-4, under airbench's 5e-4."""
        if not self.use_whitening:
            return
        covariance = patch_covariance(images, self.whiten.kernel_size[0])
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = eigenvectors.T / torch.sqrt(eigenvalues + self.whiten_eps)[:, None]
        filters = filters.reshape(-1, images.shape[1], *self.whiten.kernel_size)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(self.act(self.whiten(x)))
        return self.head(self.pool(x).flatten(1)) * self.scale
