"""Dropout whose mask costs one multiply: slices of a fixed bank of Bernoulli(1-p) draws.

PyTorch's CPU dropout draws every element from a sequential generator; at batch 128 in bf16 it took
about 0.35 s of DavidNet's 0.7 s step here. This module draws one bank of 2^25 values per
(p, dtype, device) from a fixed seed, then masks each chunk of up to 2^24 elements with the bank
read at a random offset. Every element is still Bernoulli(1-p), elements within one chunk are
independent, and one element's draws in two calls are independent unless their offsets coincide.
The offsets come from torch's global generator, so checkpointed RNG state makes resume exact, and
the bank never depends on what ran before. Measured on a 16.7M-element bf16 tensor on 2 Zen 4
cores: 18 ms against 155 ms for F.dropout (docs/benchmarks.md).
"""

from __future__ import annotations

import torch
from torch import nn

BANK_SIZE = 1 << 25
CHUNK = BANK_SIZE // 2
_BANK_SEED = 0x5EED
_banks: dict[tuple[float, torch.dtype, torch.device], torch.Tensor] = {}


def _bank(p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (p, dtype, device)
    if key not in _banks:
        g = torch.Generator().manual_seed(_BANK_SEED)
        keep = torch.rand(BANK_SIZE, generator=g) >= p
        # Inverted dropout: kept elements are scaled by 1/(1-p) so eval needs no rescale.
        _banks[key] = (keep.to(torch.float32) / (1.0 - p)).to(device=device, dtype=dtype)
    return _banks[key]


def _flat(x: torch.Tensor) -> torch.Tensor:
    """The elements of a dense tensor in memory order (channels_last or not), as a 1-D view."""
    return x.as_strided((x.numel(),), (1,), x.storage_offset())


def _apply(x: torch.Tensor, p: float, offsets: list[int]) -> torch.Tensor:
    bank, out = _bank(p, x.dtype, x.device), torch.empty_like(x)
    src, dst = _flat(x), _flat(out)
    for i, offset in enumerate(offsets):
        a, b = i * CHUNK, min(x.numel(), (i + 1) * CHUNK)
        torch.mul(src[a:b], bank[offset : offset + b - a], out=dst[a:b])
    return out


def _dense(x: torch.Tensor) -> torch.Tensor:
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


class _BankDropoutFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float, offsets: list[int]) -> torch.Tensor:
        ctx.p, ctx.offsets = p, offsets
        return _apply(x, p, offsets)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # The incoming gradient may have any layout (even stride 0): lay it out like the output.
        # Through apply (not _apply) so the backward is itself differentiable: Hessian-vector
        # products (the curvature probe) differentiate it again with the same mask.
        return _BankDropoutFn.apply(_dense(grad), ctx.p, ctx.offsets), None, None


def bank_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    x = _dense(x)
    n = x.numel()
    sizes = [min(CHUNK, n - a) for a in range(0, n, CHUNK)]
    offsets = [int(v) for v in (torch.rand(len(sizes)) * (BANK_SIZE - CHUNK + 1)).long()]
    return _BankDropoutFn.apply(x, p, offsets)


class BankDropout(nn.Module):
    """Drop-in for nn.Dropout(p) with the cheap bank mask; `exact=True` falls back to F.dropout."""

    def __init__(self, p: float = 0.05, exact: bool = False):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p, self.exact = p, exact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.exact:
            return nn.functional.dropout(x, self.p, self.training)
        return bank_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}, exact={self.exact}"
