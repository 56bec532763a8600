"""Training throughput: the reference path against the engine, in one run, with a matmul peak.

Rows share one process, one data set and one step function, so their ratio is meaningful even on
a noisy machine. Images/s is the median over timed windows after warm-up.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from dawntrain.analysis.flop_count import training_flops_per_image
from dawntrain.config import Config, apply, parse_set, validate
from dawntrain.data import ImageDataset
from dawntrain.engine.build import build
from dawntrain.engine.step import StepStats
from dawntrain.errors import ConfigError
from dawntrain.models import model_for
from dawntrain.models.conv import matmul_layers
from dawntrain.runtime.device import describe, resolve_device, resolve_precision, synchronize
from dawntrain.runtime.malloc import freed_memory_kept


@dataclass
class Variant:
    name: str
    precision: str  # fp32 | bf16 | fp16 | auto
    channels_last: bool
    exact_dropout: bool  # torch's dropout (the reference) instead of the bank mask
    compiled: bool = False
    keep_freed_memory: bool = True  # train/malloc.py; the reference runs with glibc's defaults
    # models/conv.py's matmul path for small maps: auto | on | off; None: the config's.
    matmul_conv: str | None = None
    changes: dict[str, Any] = field(default_factory=dict)  # config keys this row sets (--vs)


def split_top_level(spec: str) -> list[str]:
    """spec split at its commas, except those inside [lists]: "a=[1,2],b" -> ["a=[1,2]", "b"]."""
    return re.split(r",(?![^\[]*\])", spec)


def changed_engine(config: Config, spec: str) -> Variant:
    """The engine row with config changes, from `--vs KEY=VALUE[,KEY=VALUE...]`: an A/B of any
    setting in the same process as the engine it is compared with. Checked against `config`
    here, so a misspelt key fails before any row is timed."""
    items = split_top_level(spec)
    changes = parse_set(items)
    validate(apply(config, changes, f"--vs {spec}"))
    # Named with spaces between the changes, so that `--rows` can list rows by commas.
    return Variant(" ".join(["engine", *items]), "auto", True, False, changes=changes)


def select(variants: list[Variant], names: list[str]) -> list[Variant]:
    """The variants named (in the given order), for `--rows`."""
    known = {v.name: v for v in variants}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"--rows: no row named {unknown}; the rows here are {', '.join(known)}")
    return [known[n] for n in names]


def default_variants(
    compile_too: bool = False, dropout: bool = True, cpu: bool = True, matmul_row: str = ""
) -> list[Variant]:
    """The reference path, the engine, and the engine with one choice undone. The exact-dropout
    row only means something for a model with dropout, the malloc row only on a CPU.
    `matmul_row` "off": the engine takes the matmul path for some convolutions, and a row without
    it shows what that is worth; "on": it could but does not on this CPU kind (matmul_pays),
    and a row with it forced shows why; "": no convolution could take it."""
    rows = [
        Variant("reference", "fp32", False, True, keep_freed_memory=False, matmul_conv="off"),
        Variant("engine", "auto", channels_last=True, exact_dropout=False),
        Variant("engine-fp32", "fp32", channels_last=True, exact_dropout=False),
    ]
    if matmul_row == "off":
        rows.append(Variant("engine-library-conv", "auto", True, False, matmul_conv="off"))
    elif matmul_row == "on":
        rows.append(Variant("engine-matmul-conv", "auto", True, False, matmul_conv="on"))
    if cpu:
        rows.append(Variant("engine-malloc-default", "auto", True, False, keep_freed_memory=False))
    if dropout:
        rows.append(Variant("engine-exact-dropout", "auto", True, exact_dropout=True))
    if compile_too:
        rows.append(Variant("engine-compiled", "auto", True, False, compiled=True))
    return rows


def variants_for(config: Config, image_size: int, compile_too: bool = False) -> list[Variant]:
    """default_variants with only the rows that mean something for this model and device."""
    device = resolve_device(config.device)
    matmul_row, shape = "", (3, image_size, image_size)
    if device.type == "cpu":
        if matmul_layers(model_for(config, 10), shape):
            matmul_row = "off"
        elif matmul_layers(model_for(dataclasses.replace(config, matmul_conv="on"), 10), shape):
            matmul_row = "on"
    return default_variants(compile_too, config.dropout > 0, device.type == "cpu", matmul_row)


def random_dataset(n: int, image_size: int, classes: int = 10) -> ImageDataset:
    """n random uint8 images (seeded), as the benchmark's data set."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, image_size, image_size, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    return ImageDataset(
        images.numpy(), labels.numpy(), images.numpy(), labels.numpy(),
        [str(i) for i in range(classes)], source="random",
    )  # fmt: skip


def _best_gflops(
    product: Callable[[], object], flops: float, device: torch.device, reps: int
) -> float:
    product()
    seconds = float("inf")
    for _ in range(reps):
        synchronize(device)
        t = time.perf_counter()
        product()
        synchronize(device)
        seconds = min(seconds, time.perf_counter() - t)
    return round(flops / seconds / 1e9, 1)


def matmul_peak_gflops(
    dtype: torch.dtype, device: torch.device, n: int = 4096, reps: int = 3
) -> float:
    """Best achieved GFLOP/s of an n³ torch matmul."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return _best_gflops(lambda: a @ b, 2 * n**3, device, reps)


def conv1x1_peak_gflops(
    dtype: torch.dtype, device: torch.device, n: int = 4096, reps: int = 3
) -> float:
    """Best achieved GFLOP/s of the same n³ product as a 1x1 convolution of n channels over n
    pixels, channels_last: the library convolutions' own matmul."""
    side = 64 if n % 64 == 0 else 1
    x = torch.randn(1, n, n // side, side, device=device).to(dtype)
    w = torch.randn(n, n, 1, 1, device=device).to(dtype)
    x, w = (t.contiguous(memory_format=torch.channels_last) for t in (x, w))
    return _best_gflops(lambda: torch.nn.functional.conv2d(x, w), 2 * n**3, device, reps)


def peak_gflops_by_route(
    dtype: torch.dtype, device: torch.device, n: int = 4096, reps: int = 3
) -> dict[str, float]:
    """The n³ product by torch's matmul and as a 1x1 convolution. On a CPU these are two
    libraries: torch's fp32 matmul calls MKL, which on Zen 5 runs at the rate of 256-bit vectors
    (about 200 GFLOP/s; its log does not name its code path), while oneDNN's convolutions use the
    full 512-bit width (the engine's fp32 convolutions 400-440), so the matmul alone understates
    the peak there."""
    return {
        "matmul": matmul_peak_gflops(dtype, device, n, reps),
        "conv1x1": conv1x1_peak_gflops(dtype, device, n, reps),
    }


def _timer(device: torch.device):
    """Seconds between two points, by CUDA events on a GPU (no stall inside the window)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()

        def stop() -> float:
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3

        return stop
    t = time.perf_counter()
    return lambda: time.perf_counter() - t


def measure(
    config: Config,
    variant: Variant,
    steps: int,
    warmup: int,
    windows: int = 5,
    image_size: int = 32,
) -> dict[str, Any]:
    """Median training images/s of `variant` on random uint8 data through the full step."""
    device = resolve_device(config.device)
    with freed_memory_kept(variant.keep_freed_memory, device.type == "cpu"):
        return _measure(config, variant, device, steps, warmup, windows, image_size)


def _measure(
    config: Config,
    variant: Variant,
    device: torch.device,
    steps: int,
    warmup: int,
    windows: int,
    image_size: int,
) -> dict[str, Any]:
    row_config = dataclasses.replace(
        config,
        device=str(device),
        precision=variant.precision,
        channels_last=variant.channels_last,
        exact_dropout=variant.exact_dropout,
        compile=variant.compiled,
        matmul_conv=variant.matmul_conv or config.matmul_conv,
        val_from_train=0,
    )
    if variant.changes:
        row_config = validate(apply(row_config, variant.changes, f"row '{variant.name}'"))
    torch.manual_seed(0)
    # One batch of random images is the whole data set: each step is one epoch of it, with its
    # own crops and flips, through the step fit() takes (the preset's optimizer, lr schedule,
    # lookahead), so the "engine" row is what training runs.
    run = build(row_config, random_dataset(row_config.batch_size, image_size))
    precision, b, stats = run.precision, row_config.batch_size, StepStats.zeros(run.device)
    done = 0

    def step() -> None:
        nonlocal done
        epoch = done % row_config.epochs
        run.start_epoch(epoch)
        for x, y in run.batches(epoch):
            run.step(stats, x, y, epoch, 0)
        done += 1

    for _ in range(warmup):
        step()
    synchronize(device)
    rates = []
    per_window = max(1, steps // windows)
    for _ in range(windows):
        stop = _timer(device)
        for _ in range(per_window):
            step()
        rates.append(per_window * b / stop())
    ips = statistics.median(rates)
    flops = training_flops_per_image(run.model, (3, image_size, image_size))
    return {
        "name": variant.name,
        "batch_size": row_config.batch_size,
        "images_per_s": round(ips, 2),
        "gflops": round(ips * flops / 1e9, 2),
        "precision": precision,
        "layout": "channels_last" if variant.channels_last else "NCHW",
        "compiled": variant.compiled,
        "exact_dropout": variant.exact_dropout,
        "keep_freed_memory": variant.keep_freed_memory and device.type == "cpu",
        "matmul_conv": matmul_layers(run.model, (3, image_size, image_size))
        if device.type == "cpu"
        else 0,  # how many convolutions took the matmul path
        "changes": variant.changes,
        "window_images_per_s": [round(r, 2) for r in rates],
    }


def run(
    config: Config,
    steps: int = 20,
    warmup: int = 3,
    variants: list[Variant] | None = None,
    image_size: int = 32,
    peak_size: int = 4096,
) -> dict[str, Any]:
    device = resolve_device(config.device)
    variants = variants or default_variants()
    # Rows on glibc's default malloc go first: once a kept-memory row has grown the heap, its free
    # blocks serve the later rows too, whatever the thresholds (measured: 306 vs 295 img/s).
    order = sorted(range(len(variants)), key=lambda i: variants[i].keep_freed_memory)
    measured = {
        i: measure(config, variants[i], steps, warmup, image_size=image_size) for i in order
    }
    rows = [measured[i] for i in range(len(variants))]
    dtypes = {"fp32": torch.float32}
    if resolve_precision("auto", device) != "fp32":
        dtypes["bf16"] = torch.bfloat16
    routes = {p: peak_gflops_by_route(dtype, device, peak_size) for p, dtype in dtypes.items()}
    peaks = {p: max(by_route.values()) for p, by_route in routes.items()}
    ref = rows[0]["images_per_s"]
    for row in rows:
        row["ratio"] = round(row["images_per_s"] / ref, 3)
        peak = peaks.get(row["precision"], peaks["fp32"])
        row["fraction_of_peak"] = round(row["gflops"] / peak, 3)
    return {
        "preset": config.preset,
        "batch_size": config.batch_size,
        "device": describe(device),
        "torch": torch.__version__,
        "training_flops_per_image": None
        if not rows
        else training_flops_per_image(model_for(config, 10), (3, image_size, image_size)),
        "rows": rows,
        "peak_gflops": peaks,
        "peak_gflops_by_route": routes,
        "peak_size": peak_size,
        "config": {
            k: v
            for k, v in dataclasses.asdict(config).items()
            if k in ("model", "width", "dropout")
        },
    }


def format_table(result: dict[str, Any]) -> str:
    w = max([22] + [len(r["name"]) + 2 for r in result["rows"]])
    head = f"{'variant':<{w}}{'precision':>10}{'layout':>15}{'compiled':>9}{'images/s':>10}{'ratio':>7}{'GFLOP/s':>9}{'of peak':>8}"
    lines = [
        f"{result['preset']} batch {result['batch_size']} on {result['device']}, torch {result['torch']}",
        head,
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['name']:<{w}}{r['precision']:>10}{r['layout']:>15}{str(r['compiled']):>9}"
            f"{r['images_per_s']:>10.1f}{r['ratio']:>7.2f}{r['gflops']:>9.1f}{r['fraction_of_peak']:>8.0%}"
        )
    lines.append(
        f"peak GFLOP/s ({result['peak_size']}³ product, same run, the faster route): "
        + format_peaks(result)
    )
    return "\n".join(lines)


def format_peaks(result: dict[str, Any]) -> str:
    """Peaks as "fp32 430 (matmul 202, conv1x1 430), bf16 ..."; older results carry no routes."""
    parts = []
    for precision, peak in result["peak_gflops"].items():
        by_route = result.get("peak_gflops_by_route", {}).get(precision, {})
        detail = ", ".join(f"{route} {gflops:.0f}" for route, gflops in by_route.items())
        parts.append(f"{precision} {peak:.0f}" + (f" ({detail})" if detail else ""))
    return ", ".join(parts)
