"""One 3x3 convolution, forward + backward: the library's against models/conv.py's matmuls.

The shapes are the small maps where the two part ways (DavidNet's last residual convolutions
are 512 channels at 4x4, the fast net's 256, fast-wide's 384); the table decides
MATMUL_MAX_PIXELS and MATMUL_MIN_CHANNELS for a machine. Each time is the median of `repeats`
calls after two warm-up calls, in bf16 autocast where the CPU has it (or the precision asked
for), channels_last, with freed memory kept (as the engine trains).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from dawntrain.models.conv import conv3x3_matmul
from dawntrain.runtime.device import autocast, describe, resolve_precision
from dawntrain.runtime.malloc import freed_memory_kept

# (batch, channels in = out, side)
SHAPES = [
    (512, 512, 4),
    (512, 384, 4),
    (512, 256, 4),
    (1024, 256, 4),
    (512, 512, 2),
    (512, 256, 8),
    (512, 128, 16),
]


def _median_ms(fn, repeats: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _time_shape(batch: int, channels: int, side: int, precision: str, repeats: int) -> dict:
    device = torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, side, side, generator=g)
    x = x.to(memory_format=torch.channels_last).requires_grad_()
    w = (torch.randn(channels, channels, 3, 3, generator=g) / channels).requires_grad_()
    grad = torch.randn(batch, channels, side, side, generator=g)
    grad = grad.to(memory_format=torch.channels_last)

    def step(conv) -> None:
        with autocast(device, precision):
            y = conv(x, w)
        y.backward(grad.to(y.dtype))

    library = _median_ms(lambda: step(lambda x, w: F.conv2d(x, w, padding=1)), repeats)
    matmul = _median_ms(lambda: step(conv3x3_matmul), repeats)
    flop = 3 * 2 * batch * side * side * channels * channels * 9  # forward + 2 backward matmuls
    return {
        "batch": batch,
        "channels": channels,
        "side": side,
        "library_ms": round(library, 2),
        "matmul_ms": round(matmul, 2),
        "speedup": round(library / matmul, 3),
        "matmul_gflops": round(flop / matmul / 1e6, 1),
    }


def run(
    shapes: list[tuple[int, int, int]] = SHAPES, repeats: int = 5, precision: str = "auto"
) -> dict[str, Any]:
    device = torch.device("cpu")  # the matmul path is a CPU path
    precision = resolve_precision(precision, device)
    with freed_memory_kept():
        rows = [_time_shape(*shape, precision, repeats) for shape in shapes]
    return {"device": describe(device), "precision": precision, "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"3x3 convolution, forward + backward, {result['precision']}, on {result['device']}",
        f"{'batch':>6} {'channels':>9} {'map':>6} {'library ms':>11} {'matmul ms':>10} "
        f"{'speedup':>8} {'GFLOP/s':>8}",
    ]
    for r in result["rows"]:
        side = f"{r['side']}x{r['side']}"
        lines.append(
            f"{r['batch']:>6} {r['channels']:>9} {side:>6} {r['library_ms']:>11.1f} "
            f"{r['matmul_ms']:>10.1f} {r['speedup']:>8.2f} {r['matmul_gflops']:>8.0f}"
        )
    return "\n".join(lines)
