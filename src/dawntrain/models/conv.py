"""A 3x3 convolution that runs small feature maps as one matrix multiply on a CPU.

oneDNN's bf16 convolution backward is slow where the map is tiny and the channels many: at
4x4 with 512 channels in and out, batch 512 (DavidNet's last residual convolutions), forward and
backward took 245 ms on 2 Xeon cores against 116 ms for the same arithmetic as im2col and
matmuls; at 384 channels 130 against 77 ms; at 256 channels they tie, and at 8x8 and larger,
copying the 9 shifted views costs more than the matmul gains (`dawntrain bench conv`,
docs/benchmarks.md). Those stay with oneDNN, and GPUs always use the library convolution.

The matmul form, for NHWC x and a filter laid out (K, kh, kw, C):
  forward      y (NHW, K)   = cols (NHW, 9C) @ w (9C, K),  cols = the 9 shifted, padded views of x
  grad weight  gw (K, 9C)   = gy^T (K, NHW) @ cols
  grad input   gx           = the 9 shifted slices of gy @ w (NHW, 9C), summed back into place
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dawntrain.runtime.device import cpu_has_amx, cpu_has_avx512

# The maps that go through matmuls (`dawntrain bench conv` on Xeon-AMX, bf16, fwd + bwd): at
# most 4x4 (8x8 lost 1.7x), with at least 384 input channels (4x4: 512 won 2.1x, 384 1.7x,
# 256 tied).
MATMUL_MAX_PIXELS = 16
MATMUL_MIN_CHANNELS = 384


def matmul_pays() -> bool:
    """Whether the matmul form beats oneDNN on such maps on this CPU kind (`dawntrain bench
    conv`, docs/benchmarks.md): on Xeon-AMX in bf16 (2.1x at 4x4x512) and on Zen 3, AVX2 only, in
    fp32 (DavidNet's step 1.10x) it wins; on Zen 4, AVX-512 without AMX, oneDNN's kernels win in
    bf16 (0.76x) and fp32 (0.57x). AMX machines in fp32 were not measured and keep the matmuls."""
    return cpu_has_amx() or not cpu_has_avx512()


def _cols(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) → (N*H*W, 9*C): each pixel's padded 3x3 neighbourhood, ordered (kh, kw, c)."""
    n, c, h, w = x.shape
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))
    views = [padded[:, i : i + h, j : j + w, :] for i in range(3) for j in range(3)]
    return torch.cat(views, dim=3).reshape(n * h * w, 9 * c)


def _filter_matrix(weight: torch.Tensor) -> torch.Tensor:
    """(K, C, 3, 3) → (K, 9*C), ordered (kh, kw, c) as _cols."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


class _Conv3x3Matmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)  # cols are rebuilt in backward: 9x x's memory
        n, _, h, w = x.shape
        y = _cols(x) @ _filter_matrix(weight).t()
        return y.view(n, h, w, -1).permute(0, 3, 1, 2)  # channels_last memory

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        n, c, h, w = x.shape
        k = weight.shape[0]
        g = grad.permute(0, 2, 3, 1).reshape(n * h * w, k)
        grad_x = grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = (g.t() @ _cols(x)).view(k, 3, 3, c).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[0]:
            shifted = (g @ _filter_matrix(weight)).view(n, h, w, 3, 3, c)
            padded = torch.zeros(n, h + 2, w + 2, c, dtype=shifted.dtype, device=x.device)
            for i in range(3):
                for j in range(3):
                    padded[:, i : i + h, j : j + w, :] += shifted[:, :, :, i, j, :]
            grad_x = padded[:, 1 : h + 1, 1 : w + 1, :].permute(0, 3, 1, 2)
        return grad_x, grad_w


def conv3x3_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """conv2d(x, weight, padding=1) for a (K, C, 3, 3) weight, computed with matmuls, in the
    autocast dtype where autocast is on (as F.conv2d would)."""
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        with torch.autocast(x.device.type, enabled=False):
            return _Conv3x3Matmul.apply(x.to(dtype), weight.to(dtype))
    return _Conv3x3Matmul.apply(x, weight.to(x.dtype))


class Conv3x3(nn.Conv2d):
    """nn.Conv2d(c_in, c_out, 3, padding=1, bias=False) that multiplies small, many-channel maps
    on a CPU (same parameters, state dict and hooks as the nn.Conv2d it is)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, 3, padding=1, bias=False)
        # config.matmul_conv: auto (small wide maps where matmul_pays), on (every small wide
        # map), off (always the library convolution: the benchmarks' reference path).
        self.matmul = "auto"

    def takes_matmul_path(self, x: torch.Tensor) -> bool:
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return False  # an exported model holds plain convolutions, for any runtime
        if self.matmul == "off" or x.device.type != "cpu":
            return False
        small = x.shape[-2] * x.shape[-1] <= MATMUL_MAX_PIXELS
        wide = self.in_channels >= MATMUL_MIN_CHANNELS
        return small and wide and (self.matmul == "on" or matmul_pays())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.takes_matmul_path(x):
            return conv3x3_matmul(x, self.weight)
        return super().forward(x)


def matmul_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """How many of the model's convolutions take the matmul path for a CPU input of
    input_shape (C, H, W): one forward pass of a single zero image, in eval mode."""
    taken = []
    hooks = [
        m.register_forward_pre_hook(lambda m, args: taken.append(m.takes_matmul_path(args[0])))
        for m in model.modules()
        if isinstance(m, Conv3x3)
    ]
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return sum(taken)
