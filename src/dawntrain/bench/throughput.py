"""Training throughput: the reference path against the engine, in one run, with a matmul peak.

Rows share one process, one data set and one step function, so their ratio is meaningful even on
a noisy machine. Images/s is the median over timed windows after warm-up, the rows' windows taken
in turn (the rows on glibc's default malloc settings first, in turn among themselves).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from dawntrain.analysis.flop_count import step_flops_per_image, training_flops_per_image
from dawntrain.config import Config, apply, parse_set, validate
from dawntrain.data import ImageDataset
from dawntrain.engine.build import Run, build
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


@dataclass
class _Row:
    variant: Variant
    run: Run
    step: Callable[[], None]  # one pass over the one-batch data set: one optimizer step


def _prepare(config: Config, variant: Variant, device: torch.device, image_size: int) -> _Row:
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
    stats, done = StepStats.zeros(run.device), 0

    def step() -> None:
        nonlocal done
        epoch = done % row_config.epochs
        run.start_epoch(epoch)
        for x, y in run.batches(epoch):
            run.step(stats, x, y, epoch, 0)
        done += 1

    return _Row(variant, run, step)


def interleaved_rates(
    steps: list[Callable[[], None]],
    batch: list[int],
    windows: int,
    per_window: int,
    timer: Callable[[], Callable[[], float]],
) -> list[list[float]]:
    """Images/s of each step function in each window, the windows taken in turn (A B A B ...):
    a machine that speeds up or slows down during the bench shifts every row alike, where rows
    timed one after another would take the drift into their ratio."""
    rates: list[list[float]] = [[] for _ in steps]
    for _ in range(windows):
        for step, b, row_rates in zip(steps, batch, rates):
            stop = timer()
            for _ in range(per_window):
                step()
            row_rates.append(per_window * b / stop())
    return rates


def measure(
    config: Config,
    variants: list[Variant],
    steps: int,
    warmup: int,
    windows: int = 5,
    image_size: int = 32,
) -> list[dict[str, Any]]:
    """Median training images/s of each variant on random uint8 data through the full step, the
    variants' timed windows interleaved. They must agree on `keep_freed_memory` (the allocator
    setting is the process's)."""
    if len({v.keep_freed_memory for v in variants}) > 1:
        raise ValueError("measure: variants with and without keep_freed_memory time apart")
    device = resolve_device(config.device)
    keep = bool(variants) and variants[0].keep_freed_memory
    with freed_memory_kept(keep, device.type == "cpu"):
        rows = [_prepare(config, v, device, image_size) for v in variants]
        for row in rows:
            for _ in range(warmup):
                row.step()
        synchronize(device)
        batch = [row.run.batch for row in rows]
        timer = functools.partial(_timer, device)
        per_window = max(1, steps // windows)
        rates = interleaved_rates([r.step for r in rows], batch, windows, per_window, timer)
        return [_result(row, r, image_size) for row, r in zip(rows, rates)]


def _result(row: _Row, rates: list[float], image_size: int) -> dict[str, Any]:
    variant, run = row.variant, row.run
    ips = statistics.median(rates)
    shape = (3, image_size, image_size)
    # The work the step does: a filtered row trains on its kept share only.
    flops = step_flops_per_image(run.model, run.config, shape)
    cpu = run.device.type == "cpu"
    return {
        "name": variant.name,
        "batch_size": run.batch,
        "images_per_s": round(ips, 2),
        "gflops": round(ips * flops / 1e9, 2),
        "step_flops_per_image": round(flops),
        "precision": run.precision,
        "layout": "channels_last" if variant.channels_last else "NCHW",
        "compiled": variant.compiled,
        "exact_dropout": variant.exact_dropout,
        "keep_freed_memory": variant.keep_freed_memory and cpu,
        # how many convolutions took the matmul path
        "matmul_conv": matmul_layers(run.model, shape) if cpu else 0,
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
    measured: dict[int, dict[str, Any]] = {}
    for keep in (False, True):
        group = [i for i, v in enumerate(variants) if v.keep_freed_memory == keep]
        if group:
            timed = measure(
                config, [variants[i] for i in group], steps, warmup, image_size=image_size
            )
            measured.update(zip(group, timed))
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
