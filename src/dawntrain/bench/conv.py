"""One 3x3 convolution, forward + backward: the library's against models/conv.py's matmuls.

The default shapes are the small maps where the two part ways (DavidNet's last residual
convolutions are 512 channels at 4x4, the fast net's 256, fast-wide's 384); the table decides
MATMUL_MAX_PIXELS and MATMUL_MIN_CHANNELS for a machine. `preset_shapes` takes instead every 3x3
convolution of a preset's model at its own batch and map, so a layer the library runs far below
the machine's peak shows in its GFLOP/s. Each time is the median of `repeats` calls after two
warm-up calls, in bf16 autocast where the CPU has it (or the precision asked for),
channels_last, with freed memory kept (as the engine trains).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from dawntrain.analysis.summary import layer_rows
from dawntrain.config import Config
from dawntrain.errors import ConfigError
from dawntrain.models import input_size, model_for
from dawntrain.models.conv import conv3x3_matmul
from dawntrain.runtime.device import autocast, describe, resolve_precision
from dawntrain.runtime.malloc import freed_memory_kept

# (batch, channels in, channels out, side)
Shape = tuple[int, int, int, int]

SHAPES: list[Shape] = [
    (512, 512, 512, 4),
    (512, 384, 384, 4),
    (512, 256, 256, 4),
    (1024, 256, 256, 4),
    (512, 512, 512, 2),
    (512, 256, 256, 8),
    (512, 128, 128, 16),
]


def preset_shapes(config: Config, side: int | None = None) -> list[tuple[str, Shape]]:
    """Each stride-1 3x3 convolution of the config's model (name, shape) at its batch size, for
    input images of `side` (default the model's), in the order the forward pass runs them (from
    the summary's layer table: such a convolution's map is its output's)."""
    model = model_for(config, num_classes=10)
    side = side or input_size(config) or 32
    modules = dict(model.named_modules())
    shapes = [
        (row.name, (config.batch_size, m.in_channels, m.out_channels, row.output_shape[-1]))
        for row in layer_rows(model, (3, side, side))
        if isinstance(m := modules[row.name], torch.nn.Conv2d)
        and (m.kernel_size, m.padding, m.stride) == ((3, 3), (1, 1), (1, 1))
    ]
    if not shapes:
        raise ConfigError(
            f"the {config.preset} preset's model ({config.model}) has no stride-1 3x3 "
            "convolution to time; run bench conv without --preset for the default shapes"
        )
    return shapes


def _median_ms(fn, repeats: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _time_shape(shape: Shape, precision: str, repeats: int) -> dict:
    batch, c_in, c_out, side = shape
    device = torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c_in, side, side, generator=g)
    x = x.to(memory_format=torch.channels_last).requires_grad_()
    w = (torch.randn(c_out, c_in, 3, 3, generator=g) / c_in).requires_grad_()
    grad = torch.randn(batch, c_out, side, side, generator=g)
    grad = grad.to(memory_format=torch.channels_last)

    def step(conv) -> None:
        with autocast(device, precision):
            y = conv(x, w)
        y.backward(grad.to(y.dtype))

    library = _median_ms(lambda: step(lambda x, w: F.conv2d(x, w, padding=1)), repeats)
    matmul = _median_ms(lambda: step(conv3x3_matmul), repeats)
    flop = 3 * 2 * batch * side * side * c_in * c_out * 9  # forward + 2 backward matmuls
    return {
        "batch": batch,
        "channels": c_in,
        "c_out": c_out,
        "side": side,
        "library_ms": round(library, 2),
        "matmul_ms": round(matmul, 2),
        "speedup": round(library / matmul, 3),
        "library_gflops": round(flop / library / 1e6, 3),
        "matmul_gflops": round(flop / matmul / 1e6, 1),
    }


def run(
    shapes: list[Shape] = SHAPES,
    repeats: int = 5,
    precision: str = "auto",
    names: list[str] | None = None,
) -> dict[str, Any]:
    """Time each shape both ways; `names` (a preset's layers, from preset_shapes) label rows."""
    device = torch.device("cpu")  # the matmul path is a CPU path
    precision = resolve_precision(precision, device)
    with freed_memory_kept():
        rows = [_time_shape(shape, precision, repeats) for shape in shapes]
    for row, name in zip(rows, names or []):
        row["layer"] = name
    return {"device": describe(device), "precision": precision, "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    width = max([16, *(len(r.get("layer", "")) + 1 for r in result["rows"])])
    lines = [
        f"3x3 convolution, forward + backward, {result['precision']}, on {result['device']}",
        f"{'layer':<{width}}{'batch':>6} {'channels':>10} {'map':>6} {'library ms':>11} "
        f"{'GFLOP/s':>8} {'matmul ms':>10} {'GFLOP/s':>8} {'speedup':>8}",
    ]
    for r in result["rows"]:
        side = f"{r['side']}x{r['side']}"
        # Results written before c_out and library_gflops existed: square convolutions.
        channels = f"{r['channels']}>{r.get('c_out', r['channels'])}"
        library_gflops = r.get("library_gflops", r["matmul_gflops"] / r["speedup"])
        lines.append(
            f"{r.get('layer', ''):<{width}}{r['batch']:>6} {channels:>10} {side:>6} "
            f"{r['library_ms']:>11.1f} {library_gflops:>8.0f} {r['matmul_ms']:>10.1f} "
            f"{r['matmul_gflops']:>8.0f} {r['speedup']:>8.2f}"
        )
    return "\n".join(lines)
